// Gmail's part in keeping a draft, as the public record describes it (docs/gmail.md): Gmail
// uploads the draft as the user writes, when its change detection sees key or input events on
// the body, and Send sends the draft as last saved, not the page (gmail.js #802). A change
// made through the DOM alone is never saved (gmail.js #356, InboxSDK #1024).
//
// Injected into the fixture pages by the tests: window.__gmail.sent lists what each Send sent,
// window.__gmail.saves counts the saves.
(() => {
  const BODY = '[g_editable="true"]';
  const SEND = '.IZ .Up div > div[role="button"]:not([aria-haspopup="true"])';
  const drafts = new Map(); // body -> its HTML as last saved
  const model = (window.__gmail = { sent: [], saves: 0 });

  function save(body) {
    drafts.set(body, body.innerHTML);
    model.saves += 1;
  }

  // The draft as opened: what the page held when it was loaded.
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll(BODY).forEach((body) => drafts.set(body, body.innerHTML));
  });

  for (const type of ["keydown", "keypress", "keyup", "input"]) {
    document.addEventListener(type, (event) => {
      const body = event.target.closest && event.target.closest(BODY);
      if (body) save(body);
    });
  }

  // Send: the saved draft goes out and the compose closes.
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest(SEND);
    if (!button) return;
    const form = button.closest("form");
    const body = form.querySelector(BODY);
    const subject = form.querySelector('input[name="subjectbox"], input[name="subject"]');
    model.sent.push({ subject: subject ? subject.value : "", html: drafts.get(body) });
    (form.closest('.AD, .aSs, .ip') || form).remove();
  });
})();
