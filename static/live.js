// Live status pages: poll the server's JSON every few seconds (with ETags, so an unchanged page
// costs a 304) and update the page in place. Without JavaScript the pages work, just not live.
(function () {
  "use strict";

  var POLL_MS = 4000;

  function el(tag, text, attributes) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    Object.keys(attributes || {}).forEach(function (name) {
      node.setAttribute(name, attributes[name]);
    });
    return node;
  }

  function poll(url, apply) {
    var etag = null;
    function tick() {
      if (document.hidden) return;
      fetch(url, { headers: etag ? { "If-None-Match": etag } : {}, credentials: "same-origin" })
        .then(function (response) {
          if (response.status !== 200) return null;
          etag = response.headers.get("ETag");
          return response.json();
        })
        .then(function (data) {
          if (data) apply(data);
        })
        .catch(function () {});
    }
    setInterval(tick, POLL_MS);
    document.addEventListener("visibilitychange", tick);
  }

  // -- Browser notifications, opt-in ----------------------------------------------------------

  var notifyButton = document.getElementById("notify");
  var notifying = window.Notification && Notification.permission === "granted" &&
    localStorage.getItem("openreceipt.notify") === "yes";
  if (notifyButton && window.Notification) {
    notifyButton.hidden = false;
    notifyButton.textContent = notifying ? "Notifications on" : "Notify me of opens";
    notifyButton.addEventListener("click", function () {
      Notification.requestPermission().then(function (permission) {
        notifying = permission === "granted";
        localStorage.setItem("openreceipt.notify", notifying ? "yes" : "no");
        notifyButton.textContent = notifying ? "Notifications on" : "Notify me of opens";
      });
    });
  }

  function announceOpen(row) {
    if (!notifying) return;
    var where = [row.place, row.client].filter(Boolean).join(" · ");
    new Notification(row.title + " was opened" + (where ? " — " + where : ""));
  }

  // -- The list of receipts -----------------------------------------------------------------

  var table = document.getElementById("receipts");
  if (table && table.dataset.live) {
    var opens = {};
    Array.prototype.forEach.call(table.querySelectorAll("tbody tr[data-id]"), function (tr) {
      opens[tr.dataset.id] = Number(tr.dataset.opens);
    });
    poll(table.dataset.live, function (data) {
      var body = table.querySelector("tbody");
      var fresh = document.createDocumentFragment();
      data.rows.forEach(function (row) {
        if (opens[row.id] !== undefined && row.opens > opens[row.id]) announceOpen(row);
        opens[row.id] = row.opens;
        fresh.appendChild(listRow(row));
      });
      body.replaceChildren(fresh);
      if (data.rows.length) {
        table.hidden = false;
        var empty = document.getElementById("empty");
        if (empty) empty.hidden = true;
      }
    });
  }

  function listRow(row) {
    var tr = el("tr", null, { "data-id": row.id, "data-opens": String(row.opens) });
    var title = el("td");
    title.appendChild(el("a", row.title, { href: row.href }));
    if (row.subtitle) {
      title.appendChild(el("br"));
      title.appendChild(el("small", row.subtitle, { class: "subject" }));
    }
    tr.appendChild(title);
    tr.appendChild(el("td", row.recipients));
    var created = el("td", row.created);
    if (row.sent) {
      created.appendChild(el("br"));
      created.appendChild(el("small", "sent " + row.sent));
    }
    tr.appendChild(created);
    var mark = el("td");
    mark.appendChild(el("span", row.mark, { class: "mark state-" + row.status }));
    if (row.opens) mark.appendChild(el("span", " ×" + row.opens, { class: "count" }));
    tr.appendChild(mark);
    var last = el("td", null, { "data-label": "Last open" });
    if (row.last_open) last.appendChild(el("time", row.last_open, { title: row.last_open_exact }));
    tr.appendChild(last);
    tr.appendChild(el("td", row.place, { "data-label": "Where" }));
    tr.appendChild(el("td", row.client, { "data-label": "With" }));
    return tr;
  }

  // -- One receipt ----------------------------------------------------------------------------

  var summary = document.getElementById("summary");
  if (summary && summary.dataset.live) {
    var csrf = document.querySelector('input[name="csrf_token"]');
    var seenOpens = Number(document.getElementById("count-open").textContent);
    poll(summary.dataset.live, function (data) {
      var mark = document.getElementById("mark");
      mark.textContent = data.mark;
      mark.className = "mark big state-" + data.status;
      document.getElementById("explanation").textContent = data.explanation;
      Object.keys(data.counts).forEach(function (kind) {
        document.getElementById("count-" + kind).textContent = data.counts[kind];
      });
      if (data.counts.open > seenOpens && data.events.length) {
        var newest = data.events.filter(function (e) { return e.kind === "open"; }).pop();
        announceOpen({ title: data.title, place: newest ? newest.place : "", client: newest ? newest.client : "" });
      }
      seenOpens = data.counts.open;
      var svg = new DOMParser().parseFromString(data.timeline, "image/svg+xml").documentElement;
      document.getElementById("timeline").replaceChildren(document.importNode(svg, true));
      var table = document.getElementById("events");
      if (!table.hasAttribute("data-live-rows")) return; // a page of earlier fetches stays still
      var rows = document.createDocumentFragment();
      data.events.forEach(function (event) {
        rows.appendChild(eventRow(event, csrf ? csrf.value : ""));
      });
      table.tBodies[0].replaceChildren(rows);
      var older = document.getElementById("older");
      older.hidden = !data.older;
      if (data.older) {
        var link = older.querySelector("a");
        link.href = link.dataset.base + "?before=" + data.older + "#events";
      }
    });
  }

  function eventRow(event, csrfToken) {
    var tr = el("tr", null, { id: "event-" + event.id });
    tr.appendChild(el("td", event.at));
    var what = el("td");
    what.appendChild(el("span", event.label, { class: "kind kind-" + event.kind }));
    what.appendChild(el("br"));
    what.appendChild(el("small", event.explanation));
    tr.appendChild(what);
    // The words people read (the same as the page's own rows), each cell labelled for a phone.
    [
      ["Who", event.source_name],
      ["Why", event.reason],
      ["Network", event.network],
      ["Where", event.place],
      ["With", event.client],
    ].forEach(function (cell) {
      var td = el("td", cell[1], { "data-label": cell[0] });
      if (cell[0] === "Why" && event.link) {
        // A click: which of the message's links (as the page's own rows show it).
        var link = el("small", "Link: ");
        link.appendChild(el("span", event.link, { class: "wrap" }));
        td.appendChild(el("br"));
        td.appendChild(link);
      }
      tr.appendChild(td);
    });
    var action = el("td");
    // The server says which corrections an event of this kind offers: [[kind, label], ...].
    event.corrections.forEach(function (correction) {
      var form = el("form", null, {
        method: "post",
        action: location.pathname + "/events/" + event.id + "/kind",
      });
      form.appendChild(el("input", null, { type: "hidden", name: "csrf_token", value: csrfToken }));
      form.appendChild(el("input", null, { type: "hidden", name: "kind", value: correction[0] }));
      form.appendChild(el("button", correction[1], { type: "submit", class: "secondary" }));
      action.appendChild(form);
    });
    tr.appendChild(action);
    return tr;
  }

  // -- The bookmarklet link, clicked on its own page --------------------------------------------
  // It is meant to be dragged to the bookmarks bar; clicked here, this page's policy would block
  // it with nothing but a console message. Say what to do instead.

  Array.prototype.forEach.call(document.querySelectorAll("[data-bookmarklet]"), function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      document.getElementById("bookmarklet-clicked").hidden = false;
    });
  });

  // -- Copy buttons ---------------------------------------------------------------------------

  Array.prototype.forEach.call(document.querySelectorAll("[data-copy]"), function (button) {
    button.addEventListener("click", function () {
      var input = document.getElementById(button.dataset.copy);
      input.select();
      (navigator.clipboard ? navigator.clipboard.writeText(input.value) : Promise.reject())
        .catch(function () { document.execCommand("copy"); })
        .then(function () { button.textContent = "Copied"; });
    });
  });
})();
