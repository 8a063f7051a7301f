// Gmail's part in keeping a draft, as the public record describes it (docs/gmail.md, "Gmail
// sends the saved draft, not the page"):
//
// - Send sends the draft as last saved, not the page (gmail.js #802).
// - A change made through the DOM alone is never saved (gmail.js #356: plugins that change the
//   body "however they do it" do not trigger a save; gmail.js #811: nothing in the DOM forces
//   one; InboxSDK #1024: a template put into the body is not saved until the user types a
//   character).
// - Key events on the body are what gets a save. InboxSDK's only way to have Gmail save is to
//   fire keydown, keypress and keyup of "." on the body (gmail-compose-view.ts
//   #triggerDraftSave, lib/dom/simulate-key.ts), because "Gmail interprets the fake
//   keypress"; a user in InboxSDK #1272 calls it what makes Gmail "queue a save". No source
//   says that an input event does, so this model ignores input events.
//
// Which of the three key events Gmail's change detection listens to is not public: the model
// saves on each of `saveOn`, all three unless a test narrows it to one.
//
// Injected into the fixture pages by the tests: window.__gmail.sent lists what each Send sent,
// window.__gmail.saves counts the saves, window.__gmail.saveOn is the events that save.
(() => {
  // Gmail knows its own body; the fixtures' bodies are the editable divs.
  const BODY = 'div[contenteditable="true"], div[contenteditable="plaintext-only"]';
  const SEND = '.IZ .Up div > div[role="button"]:not([aria-haspopup="true"])';
  const KEY_EVENTS = ["keydown", "keypress", "keyup"];
  const drafts = new Map(); // body -> its HTML as last saved
  const model = (window.__gmail = { sent: [], saves: 0, saveOn: KEY_EVENTS.slice() });

  function save(body) {
    drafts.set(body, body.innerHTML);
    model.saves += 1;
  }

  // The subject Gmail sends: the visible subject box, else the hidden subject of older layouts.
  function subjectOf(form) {
    const inputs = ['input[name="subjectbox"]', 'input[name="subject"]'].map((selector) =>
      form.querySelector(selector),
    );
    const filled = inputs.find((input) => input && input.value);
    return filled ? filled.value : "";
  }

  // The draft as opened: what the page held when it was loaded.
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll(BODY).forEach((body) => drafts.set(body, body.innerHTML));
  });

  for (const type of KEY_EVENTS) {
    document.addEventListener(type, (event) => {
      const body = event.target.closest && event.target.closest(BODY);
      if (body && model.saveOn.includes(type)) save(body);
    });
  }

  // Send: the saved draft goes out and the compose closes.
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest(SEND);
    if (!button) return;
    const form = button.closest("form");
    const body = form.querySelector(BODY);
    model.sent.push({ subject: subjectOf(form), html: drafts.get(body) });
    (form.closest(".AD, .aSs, .ip") || form).remove();
  });
})();
