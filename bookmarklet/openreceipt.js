/*
 * openreceipt bookmarklet: one click in Gmail's compose window puts a read receipt in the
 * message.
 *
 * The server builds this file into a `javascript:` URL, replacing the three placeholders
 * below with its own address, the user's API token and the bookmarklet's version.
 *
 * Gmail enforces Trusted Types: nothing here uses innerHTML, insertAdjacentHTML,
 * execCommand("insertHTML"), eval or script elements. Every node is made with
 * createElement/textContent and placed with the Range API. Nothing is loaded from the server
 * but JSON.
 */
(function () {
  "use strict";

  var ORIGIN = "__OPENRECEIPT_ORIGIN__";
  var TOKEN = "__OPENRECEIPT_TOKEN__";
  var VERSION = "__OPENRECEIPT_VERSION__";

  // Gmail's class names and attributes that do not change with the interface language.
  var COMPOSE = "div.M9";
  var BODY = '[g_editable="true"], div[contenteditable][role="textbox"]';
  var SUBJECT = 'input[name="subjectbox"]';
  var RECIPIENT_FIELDS = ["to", "cc", "bcc"];
  var SIGNATURE = ".gmail_signature";
  var SIGNATURE_PREFIX = ".gmail_signature_prefix"; // the "-- " line before a signature
  var QUOTE = ".gmail_quote";
  var SEND_BUTTON = 'div[role="button"].aoO';
  var NOTICE_SECONDS = 7;

  // -- Talking to the server -------------------------------------------------------------

  function api(method, path, body) {
    return fetch(ORIGIN + path, {
      method: method,
      credentials: "omit",
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

  // What a failed answer means for the user, as [notice kind, message].
  function problem(result) {
    var error = result.answer && result.answer.error;
    if (result.status === 0) {
      return ["unreachable", "openreceipt: the server at " + ORIGIN + " cannot be reached. No receipt was added."];
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

  function composeOf(node) {
    var element = node && (node.nodeType === 1 ? node : node.parentElement);
    return element ? element.closest(COMPOSE) : null;
  }

  function findCompose() {
    var composes = Array.prototype.slice.call(document.querySelectorAll(COMPOSE)).filter(function (c) {
      return c.isConnected && c.querySelector(BODY + ', textarea, [contenteditable="plaintext-only"]');
    });
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
    return compose.querySelector(BODY);
  }

  function isPlainText(compose) {
    var body = bodyOf(compose);
    return !body || body.getAttribute("contenteditable") === "plaintext-only";
  }

  function subjectOf(compose) {
    var input = compose.querySelector(SUBJECT);
    return input ? input.value.trim() : "";
  }

  // Addresses from the To/Cc/Bcc chips; never from the autocomplete suggestions.
  function recipientsOf(compose) {
    var seen = {};
    var addresses = [];
    function add(address) {
      address = (address || "").trim().toLowerCase();
      if (address.indexOf("@") > 0 && !seen[address]) {
        seen[address] = true;
        addresses.push(address);
      }
    }
    RECIPIENT_FIELDS.forEach(function (field) {
      var chips = compose.querySelectorAll('div[name="' + field + '"] [data-hovercard-id]');
      for (var i = 0; i < chips.length; i++) {
        if (!chips[i].closest('[role="listbox"]')) add(chips[i].getAttribute("data-hovercard-id"));
      }
    });
    if (!addresses.length) {
      // Older interface: chips carry [email]; the suggestion list is a listbox.
      var old = compose.querySelectorAll("[email]");
      for (var j = 0; j < old.length; j++) {
        if (!old[j].closest('[role="listbox"]')) add(old[j].getAttribute("email"));
      }
    }
    return addresses;
  }

  // -- Putting the pixel in ---------------------------------------------------------------

  // Where the image goes: the caret, if it is in the body outside the quoted history and the
  // signature; else the end of the user's own text, before the signature and the quote.
  function insertionRange(body) {
    var selection = document.getSelection();
    if (selection && selection.rangeCount) {
      var caret = selection.getRangeAt(0);
      var node = caret.startContainer;
      var element = node.nodeType === 1 ? node : node.parentElement;
      if (body.contains(node) && !element.closest(QUOTE) && !element.closest(SIGNATURE)) {
        var range = caret.cloneRange();
        range.collapse(true);
        return range;
      }
    }
    var stop = body.querySelector(SIGNATURE_PREFIX + ", " + SIGNATURE + ", " + QUOTE);
    var end = document.createRange();
    if (stop) {
      // The body's child that holds the signature or the quote: the user's text ends before it.
      while (stop.parentNode !== body) stop = stop.parentNode;
      end.setStartBefore(stop);
    } else {
      end.selectNodeContents(body);
      end.collapse(false);
    }
    return end;
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

  function changed(body) {
    // Gmail saves the draft on input events.
    body.dispatchEvent(new InputEvent("input", { bubbles: true, inputType: "insertReplacementText" }));
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
    var range = insertionRange(body);
    var subject = subjectOf(compose);
    var recipients = recipientsOf(compose);
    api("POST", "/api/pixels", { subject: subject, recipients: recipients }).then(function (result) {
      if (result.status !== 201) {
        var why = problem(result);
        return notice(why[0], why[1]);
      }
      if (!body.isConnected) return notice("refused", "openreceipt: the message was closed before the receipt came.");
      removeQuotedPixels(body);
      range.insertNode(makeImage(result.answer.url));
      changed(body);
      // What a receipt can show for the recipients' mail providers (Apple, Proton, HEY, …).
      var caveats = (result.answer.mail_providers || [])
        .filter(function (provider) { return provider.caveat; })
        .map(function (provider) { return " " + provider.name + ": " + provider.caveat; });
      notice(
        "added",
        "Receipt added — " + (subject || "(no subject)") + " to " + (recipients.join(", ") || "(no recipients yet)") +
          caveats.join("")
      );
    });
  }

  // -- The notice -------------------------------------------------------------------------

  function notice(kind, message) {
    var old = document.querySelector("[data-openreceipt-notice]");
    if (old) old.parentNode.removeChild(old);
    var box = document.createElement("div");
    box.setAttribute("role", "status");
    box.setAttribute("data-openreceipt-notice", kind);
    box.textContent = message;
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
    style.background = kind === "added" || kind === "already" ? "#17773b" : "#8a1f11";
    style.boxShadow = "0 4px 16px rgba(0,0,0,.25)";
    document.body.appendChild(box);
    setTimeout(function () {
      if (box.parentNode) box.parentNode.removeChild(box);
    }, NOTICE_SECONDS * 1000);
  }

  // -- Watching the tab: the sender's own views and sending ----------------------------------

  function inComposeBody(node) {
    return !!(node.closest && node.closest(BODY));
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
    // Capture phase: Gmail's own handlers may close the compose before ours would run.
    document.addEventListener(
      "click",
      function (event) {
        var button = event.target.closest && event.target.closest(SEND_BUTTON);
        var compose = button && composeOf(button);
        if (compose) sent(compose);
      },
      true
    );
    document.addEventListener(
      "keydown",
      function (event) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
          var compose = composeOf(event.target);
          if (compose) sent(compose);
        }
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
