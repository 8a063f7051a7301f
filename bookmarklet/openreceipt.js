/*
 * openreceipt bookmarklet: one click in Gmail's compose window puts a read receipt in the
 * message.
 *
 * The server builds this file into a `javascript:` URL, replacing the three placeholders
 * below with its own address, the user's API token and the bookmarklet's version.
 *
 * It runs on Gmail only (https://mail.google.com): anywhere else it says so and sends nothing,
 * so no other page ever sees its key.
 *
 * Gmail enforces Trusted Types: nothing here uses innerHTML, insertAdjacentHTML,
 * execCommand("insertHTML"), eval or script elements. Every node is made with
 * createElement/textContent and placed with the Range API. Nothing is loaded from the server
 * but JSON.
 *
 * Gmail's page is read with the selectors the public Gmail toolkits use (InboxSDK and gmail.js;
 * docs/gmail.md in the project names the file and line of each).
 */
(function () {
  "use strict";

  var ORIGIN = "__OPENRECEIPT_ORIGIN__";
  var TOKEN = "__OPENRECEIPT_TOKEN__";
  var VERSION = "__OPENRECEIPT_VERSION__";

  var GMAIL = "https://mail.google.com";

  // Gmail's class names and attributes that do not change with the interface language.
  // A compose: gmail.js's div.M9 (popup and inline) and .AD (its compose accepts either);
  // InboxSDK's [role=dialog] (popup, full screen) and .ip.adB (inline reply or forward). Of
  // those around a body, the innermost is the compose (composeOf).
  var COMPOSE = 'div.M9, [role="dialog"], .ip.adB, .AD';
  // The body: InboxSDK's [g_editable=true], the classes Gmail gives it, or a textbox.
  var BODY =
    '[g_editable="true"], .Am.Al.editable[contenteditable="true"], div[contenteditable="true"][role="textbox"]';
  // gmail.js's body: any editable div but a subject. Wider, so used only in a compose where
  // BODY finds nothing.
  var EDITABLE_DIV = 'div[contenteditable="true"]:not([id="subject"])';
  var PLAIN_TEXT_BODY = '[contenteditable="plaintext-only"]';
  var ANY_BODY = [BODY, EDITABLE_DIV, PLAIN_TEXT_BODY].join(", ");
  // In this order, as gmail.js's subject() reads them: the visible subject, else the hidden one
  // of older layouts and inline replies.
  var SUBJECTS = ['input[name="subjectbox"]', 'input[name="subject"]'];
  var RECIPIENT_FIELDS = ["to", "cc", "bcc"];
  var SIGNATURE = '.gmail_signature, [data-smartmail="gmail_signature"]';
  var SIGNATURE_PREFIX = ".gmail_signature_prefix"; // the "-- " line before a signature
  var QUOTE = ".gmail_quote, .gmail_extra";
  // What follows the user's own text: the signature, its "-- " line and the quoted history.
  var NOT_OWN_TEXT = [SIGNATURE_PREFIX, SIGNATURE, QUOTE].join(", ");
  // InboxSDK's Send button (not its schedule-send menu), and gmail.js's.
  var SEND_BUTTON =
    '.IZ .Up div > div[role="button"]:not([aria-haspopup="true"]), div[role="button"].T-I-atl';
  var NOTICE_SECONDS = 7;
  // The reminder the notice offers when the user has no default one (Settings): a working week
  // is long for a message that wants an answer, a day too short for one read at leisure.
  var REMIND_DAYS = 3;
  var MINT_TIMEOUT_MS = 10000;
  // How long a Send pressed while the receipt is on its way waits for it.
  var HOLD_SEND_MS = 5000;

  // Anywhere but Gmail: say so and stop, before anything could hand the key to the page.
  if (location.origin !== GMAIL) {
    return notice(
      "not-gmail",
      location.origin === new URL(ORIGIN).origin
        ? "openreceipt: this is the bookmarklet itself. Drag it to your bookmarks bar (or copy its address into a new bookmark), then click it in Gmail while you write a message."
        : "openreceipt works in Gmail only (mail.google.com). Nothing was sent from this page."
    );
  }
  // -- Talking to the server -------------------------------------------------------------

  function api(method, path, body) {
    var abort = window.AbortController ? new AbortController() : null;
    if (abort) setTimeout(function () { abort.abort(); }, MINT_TIMEOUT_MS);
    return fetch(ORIGIN + path, {
      method: method,
      credentials: "omit",
      signal: abort ? abort.signal : undefined,
      headers: {
        Authorization: "Bearer " + TOKEN,
        "Content-Type": "application/json",
        "X-Openreceipt-Bookmarklet": VERSION,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(
      function (response) {
        return response
          .json()
          .catch(function () {
            return {};
          })
          .then(function (answer) {
            return { status: response.status, answer: answer };
          });
      },
      function () {
        return { status: 0, answer: {} };
      }
    );
  }

  // What a failed answer means for the user, as [notice kind, message]. `unchanged` says what
  // was left as it was (by default: no receipt was added).
  function problem(result, unchanged) {
    var error = result.answer && result.answer.error;
    if (result.status === 0) {
      return [
        "unreachable",
        "openreceipt: the server at " + ORIGIN + " cannot be reached. " + (unchanged || "No receipt was added."),
      ];
    }
    if (result.status === 401) {
      return [
        "revoked",
        "openreceipt: this bookmarklet's key was revoked. Make a new bookmarklet at " + ORIGIN + "/bookmarklet.",
      ];
    }
    if (result.answer && result.answer.expected_version !== undefined) {
      return [
        "outdated",
        "openreceipt: this bookmarklet is out of date (version " + VERSION + ", the server expects " +
          result.answer.expected_version + "). Make a new one at " + ORIGIN + "/bookmarklet.",
      ];
    }
    return ["refused", "openreceipt: " + (error || "the server refused (HTTP " + result.status + ").")];
  }

  // -- Our pixels -------------------------------------------------------------------------

  // The public id of one of our pixels shown by `src`: our own URL, or Gmail's proxy URL
  // (https://ciN.googleusercontent.com/proxy/...#<our URL>), which keeps ours after a "#".
  function pixelId(src) {
    if (!src) return null;
    var at = src.indexOf(ORIGIN + "/p/");
    if (at !== 0 && (at < 0 || src.charAt(at - 1) !== "#")) return null;
    var token = src.slice(at + ORIGIN.length + 3);
    var id = token.split(".")[0];
    return /^[A-Za-z0-9_-]{8,64}$/.test(id) ? id : null;
  }

  function ourImages(root) {
    var found = [];
    var images = root.querySelectorAll("img");
    for (var i = 0; i < images.length; i++) {
      if (pixelId(images[i].getAttribute("src"))) found.push(images[i]);
    }
    return found;
  }

  function outsideQuote(node) {
    return !(node.closest && node.closest(QUOTE));
  }

  // -- The compose the user is writing in ---------------------------------------------------

  var state = window.__openreceipt || { lastCompose: null, beaconed: {} };
  state.saves = state.saves || []; // draft saves waiting for their timer
  state.minting = state.minting || []; // receipts on their way, by compose

  // The compose a node is in: the innermost compose element around it that holds a body.
  function composeOf(node) {
    var element = node && (node.nodeType === 1 ? node : node.parentElement);
    var compose = element ? element.closest(COMPOSE) : null;
    while (compose && !compose.querySelector(ANY_BODY)) {
      compose = compose.parentElement ? compose.parentElement.closest(COMPOSE) : null;
    }
    return compose;
  }

  // Every open compose, each once: found from the bodies being written in.
  function allComposes() {
    var found = [];
    var bodies = document.querySelectorAll(ANY_BODY);
    for (var i = 0; i < bodies.length; i++) {
      var compose = composeOf(bodies[i]);
      if (compose && found.indexOf(compose) < 0) found.push(compose);
    }
    return found;
  }

  function findCompose() {
    var composes = allComposes();
    if (!composes.length) return { kind: "no-compose" };
    var selection = document.getSelection();
    var holding = selection && selection.rangeCount ? composeOf(selection.anchorNode) : null;
    if (holding) return { compose: holding };
    var focused = composeOf(document.activeElement);
    if (focused) return { compose: focused };
    if (state.lastCompose && state.lastCompose.isConnected) return { compose: state.lastCompose };
    if (composes.length === 1) return { compose: composes[0] };
    return { kind: "ambiguous" };
  }

  function bodyOf(compose) {
    return compose.querySelector(BODY) || compose.querySelector(EDITABLE_DIV);
  }

  function isPlainText(compose) {
    var body = bodyOf(compose);
    return !body || body.getAttribute("contenteditable") === "plaintext-only";
  }

  function subjectOf(compose) {
    for (var i = 0; i < SUBJECTS.length; i++) {
      var input = compose.querySelector(SUBJECTS[i]);
      if (input && input.value.trim()) return input.value.trim();
    }
    return "";
  }

  // The address in a recipient as Gmail writes it: "Name <address>" or the bare address.
  function addressIn(text) {
    text = (text || "").trim();
    var open = text.lastIndexOf("<");
    if (open >= 0) text = text.slice(open + 1, text.indexOf(">", open) < 0 ? undefined : text.indexOf(">", open));
    text = text.trim().toLowerCase();
    return /^[^\s<>@]+@[^\s<>@]+$/.test(text) ? text : null;
  }

  // The chips of one field ("to", "cc", "bcc"), as InboxSDK's getRecipientChips reads them:
  // the older interface keeps them in the row of textarea.vO[name=field], each chip a .vR
  // holding a hidden input with "Name <address>"; the interface since 2021 keeps them in the
  // field's own listbox, each an option with the name in data-name and the address in
  // data-hovercard-id (hovercardAddress). The autocomplete suggestions are a popup outside the
  // field: never read.
  function chipAddresses(compose, field) {
    var found = [];
    var entry = compose.querySelector('textarea.vO[name="' + field + '"], tr input[name="' + field + '"]');
    var row = entry && entry.closest("tr");
    if (row) {
      var inputs = row.querySelectorAll('.vR > input[type="hidden"]');
      for (var i = 0; i < inputs.length; i++) found.push(addressIn(inputs[i].value));
      return found;
    }
    var options = compose.querySelectorAll('.anm[name="' + field + '"] [role="listbox"] [role="option"]');
    for (var j = 0; j < options.length; j++) found.push(hovercardAddress(options[j]));
    return found;
  }

  // A chip's address: on the option itself, as InboxSDK reads it, or on an element inside it,
  // as gmail.js reads it (div[data-hovercard-id] under the field).
  function hovercardAddress(option) {
    var holder = option.hasAttribute("data-hovercard-id") ? option : option.querySelector("[data-hovercard-id]");
    return holder ? addressIn(holder.getAttribute("data-hovercard-id")) : null;
  }

  // The addresses in To, Cc and Bcc: lower case, each once, without names.
  function recipientsOf(compose) {
    var addresses = [];
    RECIPIENT_FIELDS.forEach(function (field) {
      chipAddresses(compose, field).forEach(function (address) {
        if (address && addresses.indexOf(address) < 0) addresses.push(address);
      });
    });
    return addresses;
  }

  // -- Putting the pixel in ---------------------------------------------------------------

  // Where the image goes: the caret, if it is in the body outside the quoted history, the
  // signature and its "-- " line; else the end of the user's own text, before those.
  function insertionRange(body) {
    var selection = document.getSelection();
    if (selection && selection.rangeCount) {
      var caret = selection.getRangeAt(0);
      var node = caret.startContainer;
      var element = node.nodeType === 1 ? node : node.parentElement;
      if (body.contains(node) && !element.closest(NOT_OWN_TEXT)) {
        var range = caret.cloneRange();
        range.collapse(true);
        return range;
      }
    }
    var stop = body.querySelector(NOT_OWN_TEXT);
    var end = document.createRange();
    if (stop) {
      end.setStartBefore(blockStart(stop, body));
    } else {
      end.selectNodeContents(body);
      end.collapse(false);
    }
    return end;
  }

  // Where the signature or quote `node` begins, as the reader sees it. Gmail's draft wraps the
  // whole message in one <div dir="ltr">, the user's text and the signature or quote alike, and
  // can wrap a signature alone in a <div> of its own: climb out of wrappers that hold nothing
  // before it, never out of one that holds the user's text. The line break Gmail puts before a
  // signature (<br clear="all">) or a quote (<br>) goes with it.
  function blockStart(node, body) {
    while (node.parentNode !== body && !contentBefore(node)) node = node.parentNode;
    var before = contentBefore(node);
    while (before && before.nodeName === "BR") {
      node = before;
      before = contentBefore(node);
    }
    return node;
  }

  // The nearest sibling before `node` that shows something: an element or non-blank text.
  function contentBefore(node) {
    var sibling = node.previousSibling;
    while (sibling && !(sibling.nodeType === 1 || (sibling.nodeType === 3 && sibling.data.trim()))) {
      sibling = sibling.previousSibling;
    }
    return sibling;
  }

  function makeImage(url) {
    var img = document.createElement("img");
    img.src = url; // not a Trusted Types sink
    img.setAttribute("width", "1");
    img.setAttribute("height", "1");
    img.setAttribute("alt", "");
    return img;
  }

  function removeQuotedPixels(body) {
    var quotes = body.querySelectorAll(QUOTE);
    var removed = 0;
    for (var i = 0; i < quotes.length; i++) {
      ourImages(quotes[i]).forEach(function (img) {
        img.parentNode.removeChild(img);
        removed += 1;
      });
    }
    return removed;
  }

  // Gmail sends the draft it saved, not the page, and a change made through the DOM is not
  // saved by itself. As InboxSDK does after every insertion (its triggerDraftSave), press a
  // key Gmail's change detection sees on the body: "." (keyCode 190, no character), after a
  // zero-delay timer (at once, Gmail typed a stray "¾" into inline replies), and never Enter
  // (Gmail deletes the selected text on Enter). An input event goes first, for any other
  // listener of the body.
  function changed(body) {
    body.dispatchEvent(new InputEvent("input", { bubbles: true, inputType: "insertReplacementText" }));
    var pending = { body: body, done: false };
    state.saves.push(pending);
    setTimeout(function () { pressSaveKey(pending); }, 0);
  }

  function pressSaveKey(pending) {
    if (pending.done) return;
    pending.done = true;
    state.saves.splice(state.saves.indexOf(pending), 1);
    if (!pending.body.isConnected) return;
    ["keydown", "keypress", "keyup"].forEach(function (type) {
      var event = document.createEvent("Event");
      event.initEvent(type, true, true);
      event.keyCode = 190;
      event.which = 190;
      event.charCode = 0;
      pending.body.dispatchEvent(event);
    });
  }

  // Send was pressed: a save still waiting for its timer happens now, before Gmail sends.
  function saveNow(compose) {
    state.saves.slice().forEach(function (pending) {
      if (compose.contains(pending.body)) pressSaveKey(pending);
    });
  }

  function addReceipt() {
    var found = findCompose();
    if (!found.compose) {
      return found.kind === "no-compose"
        ? notice("no-compose", "openreceipt: open the message you are writing, then click the bookmark.")
        : notice(
            "ambiguous",
            "openreceipt: several messages are open. Click into the one that should get the receipt, then click the bookmark again."
          );
    }
    var compose = found.compose;
    state.lastCompose = compose;
    if (isPlainText(compose)) {
      return notice(
        "plain-text",
        "openreceipt: this message is in plain-text mode, which cannot hold an image. Turn plain-text mode off first."
      );
    }
    var body = bodyOf(compose);
    if (ourImages(body).filter(outsideQuote).length) {
      removeQuotedPixels(body) && changed(body);
      return notice("already", "openreceipt: this message has a receipt already.");
    }
    if (mintingFor(compose)) return notice("already", "openreceipt: the receipt is on its way.");
    var range = insertionRange(body);
    var subject = subjectOf(compose);
    var recipients = recipientsOf(compose);
    var minting = { compose: compose, heldSend: null };
    state.minting.push(minting);
    api("POST", "/api/pixels", { subject: subject, recipients: recipients }).then(function (result) {
      if (result.status !== 201) {
        var why = problem(result);
        notice(why[0], why[1]);
      } else if (!body.isConnected) {
        notice("refused", "openreceipt: the message was closed before the receipt came.");
      } else {
        removeQuotedPixels(body);
        range.insertNode(makeImage(result.answer.url));
        changed(body);
        // What a receipt can show for the recipients' mail providers (Apple, Proton, HEY, …).
        var caveats = (result.answer.mail_providers || [])
          .filter(function (provider) { return provider.caveat; })
          .map(function (provider) { return " " + provider.name + ": " + provider.caveat; });
        // A reminder the user asked for by default (Settings): say so, so it is no surprise. Its
        // sentence is an element of its own, which says what the user sets from the notice.
        var days = result.answer.reminder ? result.answer.reminder.after_days : null;
        var sentence = document.createElement("span");
        sentence.textContent = reminderSentence(days);
        var added = [
          "Receipt added — " + (subject || "(no subject)") + " to " + (recipients.join(", ") || "(no recipients yet)"),
          sentence,
          caveats.join(""),
        ];
        offer(added, destinationsOf(trackableLinks(body)).length, days, {
          compose: compose,
          body: body,
          id: result.answer.id,
          sentence: sentence,
        });
      }
      finishMinting(minting);
    });
  }

  // -- Tracking the message's links (on the user's word) ----------------------------------

  // The links of the user's own text that can be tracked: an http(s) href, not already one of
  // this server's tracked links, and not in the signature, its "-- " line or the quoted history
  // (NOT_OWN_TEXT, as for the pixel). Compose links are plain <a href> in the body: InboxSDK's
  // insertLinkIntoBody makes one with createElement("a") and nothing else (docs/gmail.md).
  function trackableLinks(body) {
    var found = [];
    var anchors = body.querySelectorAll("a[href]");
    for (var i = 0; i < anchors.length; i++) {
      var href = hrefOf(anchors[i]);
      if (anchors[i].closest(NOT_OWN_TEXT) || !/^https?:\/\//i.test(href)) continue;
      if (href.indexOf(ORIGIN + "/l/") !== 0) found.push(anchors[i]);
    }
    return found;
  }

  // The href as the message has it (not resolved against Gmail's address).
  function hrefOf(anchor) {
    return (anchor.getAttribute("href") || "").trim();
  }

  function destinationsOf(anchors) {
    var destinations = [];
    anchors.forEach(function (anchor) {
      if (destinations.indexOf(hrefOf(anchor)) < 0) destinations.push(hrefOf(anchor));
    });
    return destinations;
  }

  function plural(count, word) {
    return count + " " + word + (count === 1 ? "" : "s");
  }

  // The "added" notice and what it offers: to track the message's links (when it has some) and
  // a reminder for this message. It stays until the user answers it (tracking the links, or
  // "No thanks"/"OK"), another notice takes its place, or the message is sent or closed: a
  // timer could take a button away just as the user reaches for it, and reading the receipt's
  // notice and deciding takes longer than NOTICE_SECONDS.
  //
  // The reminder is one button, whose answer is the one a user most likely wants to differ from
  // what they have: without a default, "Remind me if not opened in 3 days" (REMIND_DAYS); with
  // one (the notice says so), "No reminder", for a message that wants no answer. Any other
  // number of days is a choice on the receipt's page. A number field would take the focus, and
  // the caret, out of the message (a button keeps both, see notice) and would need checking as
  // the user types; one button needs neither.
  function offer(message, count, days, receipt) {
    var actions = [];
    if (count) {
      actions.push({
        action: "track-links",
        label: "Track its " + plural(count, "link") + " too",
        run: function () { trackLinks(receipt); },
      });
    }
    actions.push({
      action: "reminder",
      label: days ? "No reminder" : "Remind me if not opened in " + plural(REMIND_DAYS, "day"),
      keep: true, // the notice stays, to say what was set, with the links offer if any
      run: function (button) { setReminder(receipt, days ? null : REMIND_DAYS, button); },
    });
    // "No thanks" declines what is offered; beside "No reminder" alone it keeps the default.
    actions.push({ action: "dismiss", label: count || !days ? "No thanks" : "OK", run: function () {} });
    var box = notice("added", message, actions);
    state.offer = { box: box, compose: receipt.compose, body: receipt.body };
  }

  function reminderSentence(days) {
    return days ? " You will be told if it is not opened within " + plural(days, "day") + "." : "";
  }

  // The user chose this message's reminder (`days`, or null for none): only the server keeps
  // it, so the message is not touched and no draft save is needed. Meanwhile the button cannot
  // be pressed again. Then the notice says what was set, and the button goes (and with it the
  // notice's reason to stay, unless the links are still offered); or the notice shows the
  // server's refusal and the button is back, to try again.
  function setReminder(receipt, days, button) {
    var box = button.closest("[data-openreceipt-notice]");
    button.disabled = true;
    button.style.opacity = "0.6";
    api("POST", "/api/pixels/" + encodeURIComponent(receipt.id) + "/reminder", { after_days: days }).then(
      function (result) {
        var refused = box.querySelector("[data-openreceipt-refused]");
        if (result.status !== 200) {
          var why = problem(result, days ? "No reminder was set." : "The reminder stays.");
          // The notice went meanwhile (answered, replaced, the message sent): the refusal
          // still needs saying, in a notice of its own.
          if (!box.isConnected) return notice(why[0], why[1]);
          if (!refused) {
            refused = document.createElement("div");
            var look = refused.style;
            look.marginTop = "8px";
            look.padding = "4px 8px";
            look.borderRadius = "4px";
            look.background = "#8a1f11";
            box.insertBefore(refused, button.parentNode);
          }
          refused.setAttribute("data-openreceipt-refused", why[0]);
          refused.textContent = why[1];
          button.disabled = false;
          button.style.opacity = "";
          return;
        }
        receipt.sentence.textContent = days ? reminderSentence(days) : " No reminder for this message.";
        if (refused) box.removeChild(refused);
        var row = button.parentNode;
        row.removeChild(button);
        if (!row.querySelector('[data-openreceipt-action="track-links"]')) {
          box.removeChild(row);
          closeLater(box);
        }
      }
    );
  }

  // Take the offer away once its message is gone (sent, closed) or another notice replaced it.
  function dropOffer(force) {
    var offer = state.offer;
    if (!offer || !(force || !offer.box.isConnected || !offer.body.isConnected)) return;
    state.offer = null;
    if (offer.box.parentNode) offer.box.parentNode.removeChild(offer.box);
  }

  // The user took the offer: the server tracks the destinations (each once, as the message has
  // them) and answers a URL of its own for each, and the links are rewritten to those, with
  // their text and other attributes as they were. Nothing changes unless the server agreed.
  function trackLinks(receipt) {
    var body = receipt.body;
    if (!body.isConnected) {
      return notice("refused", "openreceipt: the message was closed before its links were tracked.");
    }
    var pixel = ourImages(body).filter(function (img) {
      return outsideQuote(img) && pixelId(img.getAttribute("src")) === receipt.id;
    })[0];
    if (!pixel) {
      return notice(
        "refused",
        "openreceipt: the receipt is no longer in this message, so its links were left as they were."
      );
    }
    var anchors = trackableLinks(body);
    var destinations = destinationsOf(anchors);
    if (!destinations.length) return notice("refused", "openreceipt: this message has no links to track now.");
    // A Send pressed meanwhile waits for the links, as it waits for a receipt on its way.
    var job = { compose: receipt.compose, heldSend: null, waiting: "openreceipt: tracking the links, then sending…" };
    state.minting.push(job);
    api("POST", "/api/pixels/" + encodeURIComponent(receipt.id) + "/links", { links: destinations }).then(
      function (result) {
        if (result.status !== 200) {
          var why = problem(result, "No link was changed.");
          notice(why[0], why[1]);
        } else if (!body.isConnected) {
          notice("refused", "openreceipt: the message was closed before its links were tracked.");
        } else {
          var urls = {};
          (result.answer.links || []).forEach(function (link) { urls[link.destination] = link.url; });
          anchors.forEach(function (anchor) {
            var url = urls[hrefOf(anchor)];
            if (url && body.contains(anchor)) anchor.setAttribute("href", url);
          });
          if (result.answer.honeypot && body.contains(pixel)) hideHoneypot(pixel, result.answer.honeypot);
          changed(body); // as for the pixel: Gmail saves the draft with the new links
          notice("links", "Tracking " + plural(destinations.length, "link") + " in this message.");
        }
        finishMinting(job);
      }
    );
  }

  // The honeypot goes around the receipt's own image: a transparent 1x1 image with no text, so
  // no person sees it or could aim a click at it, while a scanner following every link follows
  // it too. That image is what is known to go into Gmail's draft and out with the message; no
  // public source says what Gmail keeps of an <a> with nothing in it, or of one hidden with
  // display:none (docs/gmail.md), so the link rides on the image. A link cannot hold another:
  // if the image sits in one of the user's links (the caret was there), it moves out to just
  // after that link first.
  function hideHoneypot(pixel, url) {
    var around = pixel.parentElement.closest("a");
    if (around) around.parentNode.insertBefore(pixel, around.nextSibling);
    var anchor = document.createElement("a");
    anchor.href = url; // not a Trusted Types sink
    pixel.parentNode.insertBefore(anchor, pixel);
    anchor.appendChild(pixel);
  }

  function mintingFor(compose) {
    for (var i = 0; i < state.minting.length; i++) {
      if (state.minting[i].compose === compose) return state.minting[i];
    }
    return null;
  }

  // The receipt is in (or could not be had): a Send pressed meanwhile goes ahead now, once
  // Gmail's change detection has seen the image.
  function finishMinting(minting) {
    var index = state.minting.indexOf(minting);
    if (index < 0) return;
    state.minting.splice(index, 1);
    if (minting.heldSend) {
      clearTimeout(minting.heldSend.timer);
      saveNow(minting.compose);
      pressSend(minting.heldSend.button);
    }
  }

  // Send pressed while the receipt is on its way: hold it (up to HOLD_SEND_MS), so the message
  // does not leave without the receipt the user asked for.
  function holdSend(minting, button) {
    if (minting.heldSend) return;
    minting.heldSend = {
      button: button,
      timer: setTimeout(function () { finishMinting(minting); }, HOLD_SEND_MS),
    };
    notice("waiting", minting.waiting || "openreceipt: adding the receipt, then sending…");
  }

  // Press Send as InboxSDK's simulateClick does: Gmail acts on mousedown, mouseup and click.
  function pressSend(button) {
    if (!button || !button.isConnected) return;
    state.pressing = true;
    try {
      ["mousedown", "mouseup", "click"].forEach(function (type) {
        button.dispatchEvent(new MouseEvent(type, { bubbles: true, cancelable: true, view: window }));
      });
    } finally {
      state.pressing = false;
    }
  }

  // -- The notice -------------------------------------------------------------------------

  // A notice, gone after NOTICE_SECONDS; one with `actions` (buttons: [{action, label, run}])
  // stays until one of them is clicked, which takes the notice away and runs it; one marked
  // `keep` leaves the notice where it is and runs with its button. `message` is text, or a list
  // of texts and elements.
  function notice(kind, message, actions) {
    var old = document.querySelector("[data-openreceipt-notice]");
    if (old) old.parentNode.removeChild(old);
    var box = document.createElement("div");
    box.setAttribute("role", "status");
    box.setAttribute("data-openreceipt-notice", kind);
    [].concat(message).forEach(function (part) {
      box.appendChild(typeof part === "string" ? document.createTextNode(part) : part);
    });
    var style = box.style;
    style.position = "fixed";
    style.zIndex = "2147483647";
    style.bottom = "24px";
    style.left = "24px";
    style.maxWidth = "420px";
    style.padding = "12px 16px";
    style.borderRadius = "8px";
    style.font = "14px/1.4 system-ui, sans-serif";
    style.color = "#fff";
    var good = kind === "added" || kind === "already" || kind === "waiting" || kind === "links";
    style.background = good ? "#17773b" : "#8a1f11";
    style.boxShadow = "0 4px 16px rgba(0,0,0,.25)";
    var row = document.createElement("div");
    (actions || []).forEach(function (action) {
      var button = document.createElement("button");
      button.type = "button";
      button.setAttribute("data-openreceipt-action", action.action);
      button.textContent = action.label;
      var look = button.style;
      look.margin = "8px 8px 0 0";
      look.padding = "4px 10px";
      look.border = "0";
      look.borderRadius = "4px";
      look.background = "#fff";
      look.color = "#17773b";
      look.font = "inherit";
      look.cursor = "pointer";
      // The caret stays where it was in the message.
      button.addEventListener("mousedown", function (event) { event.preventDefault(); });
      button.addEventListener("click", function () {
        if (action.keep) return action.run(button);
        if (box.parentNode) box.parentNode.removeChild(box);
        action.run();
      });
      row.appendChild(button);
    });
    if (actions) box.appendChild(row);
    document.body.appendChild(box);
    if (!actions) closeLater(box);
    return box;
  }

  function closeLater(box) {
    setTimeout(function () {
      if (box.parentNode) box.parentNode.removeChild(box);
    }, NOTICE_SECONDS * 1000);
  }

  // -- Watching the tab: the sender's own views and sending ----------------------------------

  function inComposeBody(node) {
    var compose = composeOf(node);
    var body = compose && bodyOf(compose);
    return !!body && body.contains(node);
  }

  // Gmail shows one of our pixels in a message the sender is reading: tell the server, so the
  // proxy's fetch of it is counted as the sender's own view, not an open.
  function beaconFor(img) {
    var id = pixelId(img.getAttribute("src"));
    if (!id || inComposeBody(img) || !img.isConnected) return;
    var now = Date.now();
    if (state.beaconed[id] && now - state.beaconed[id] < 10000) return;
    state.beaconed[id] = now;
    api("POST", "/api/pixels/" + encodeURIComponent(id) + "/self-view");
  }

  function scan(root) {
    if (root.nodeType !== 1) return;
    if (root.tagName === "IMG") return beaconFor(root);
    ourImages(root).forEach(beaconFor);
  }

  function sent(compose) {
    var body = bodyOf(compose);
    if (state.offer && state.offer.compose === compose) dropOffer(true);
    if (!body) return;
    ourImages(body)
      .filter(outsideQuote)
      .forEach(function (img) {
        api("POST", "/api/pixels/" + encodeURIComponent(pixelId(img.getAttribute("src"))) + "/sent", {
          subject: subjectOf(compose),
          recipients: recipientsOf(compose),
        });
      });
  }

  function install() {
    new MutationObserver(function (mutations) {
      dropOffer(false);
      mutations.forEach(function (mutation) {
        if (mutation.type === "attributes") return scan(mutation.target);
        mutation.addedNodes.forEach(scan);
      });
    }).observe(document.documentElement, {
      childList: true,
      subtree: true,
      attributes: true,
      attributeFilter: ["src"],
    });
    scan(document.documentElement);

    document.addEventListener(
      "focusin",
      function (event) {
        var compose = composeOf(event.target);
        if (compose) state.lastCompose = compose;
      },
      true
    );
    // Capture phase: ours run before Gmail's, which send and close the compose.
    function onSend(event, target) {
      var compose = composeOf(target);
      if (!compose) return;
      var minting = !state.pressing && mintingFor(compose);
      if (minting) {
        event.preventDefault();
        event.stopImmediatePropagation();
        holdSend(minting, target.closest(SEND_BUTTON) || compose.querySelector(SEND_BUTTON));
        return;
      }
      saveNow(compose);
      if (event.type === "click" || event.type === "keydown") sent(compose);
    }
    ["mousedown", "mouseup", "click"].forEach(function (type) {
      document.addEventListener(
        type,
        function (event) {
          var button = event.target.closest && event.target.closest(SEND_BUTTON);
          if (button) onSend(event, button);
        },
        true
      );
    });
    document.addEventListener(
      "keydown",
      function (event) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) onSend(event, event.target);
      },
      true
    );
  }

  if (!window.__openreceipt) {
    window.__openreceipt = state;
    state.version = VERSION;
    install();
  }
  addReceipt();
})();
