// Isthmus console live updates. Polls the page's JSON twin every 2 s and updates
// progress, steps and states in place. Only textContent and attributes are written,
// never HTML, so data from the appliance cannot inject markup.
(function () {
  "use strict";
  var root = document.getElementById("live-root");
  if (!root) { return; }
  var src = root.getAttribute("data-live") || location.pathname;
  var status = document.getElementById("live-status");
  var FINAL = { "done": true, "failed": true, "rolled-back": true };
  var timer = null;

  function setStatus(text, ok) {
    if (!status) { return; }
    status.textContent = text;
    status.className = ok ? "live" : "live off";
  }

  function setState(el, state) {
    if (!el || el.textContent === state) { return; }
    el.textContent = state;
    el.className = "state state-" + state;
  }

  function field(row, name) {
    return row.querySelector('[data-field="' + name + '"]');
  }

  function updateMove(row, m) {
    var step = field(row, "step");
    if (step) { step.textContent = m.step; }
    setState(field(row, "state"), m.state);
    var bar = field(row, "progress");
    if (bar) { bar.value = m.progress_pct; bar.textContent = m.progress_pct + "%"; }
    var pct = field(row, "pct");
    if (pct) { pct.textContent = m.progress_pct + "%"; }
  }

  function byAttr(attr) {
    var map = {};
    var els = root.querySelectorAll("[" + attr + "]");
    for (var i = 0; i < els.length; i++) { map[els[i].getAttribute(attr)] = els[i]; }
    return map;
  }

  // Overview: update rows in place; reload when moves appear or servers change place,
  // since the tables and the topology picture are drawn by the server.
  function applyOverview(o) {
    var moves = byAttr("data-move");
    var servers = byAttr("data-server");
    var i;
    for (i = 0; i < o.moves.length; i++) {
      var row = moves[o.moves[i].id];
      if (!row) { location.reload(); return; }
      updateMove(row, o.moves[i]);
    }
    for (i = 0; i < o.servers.length; i++) {
      var s = o.servers[i];
      var srow = servers[s.name];
      if (!srow || srow.getAttribute("data-location") !== s.location) { location.reload(); return; }
      setState(field(srow, "state"), s.state);
    }
  }

  // Move page: update the facts and append new timeline entries.
  function applyMove(m) {
    updateMove(root, m);
    var list = document.getElementById("timeline");
    var shown = list ? Number(list.getAttribute("data-count")) : 0;
    if (list && m.events.length > shown) {
      for (var i = shown; i < m.events.length; i++) {
        var e = m.events[i];
        var li = document.createElement("li");
        var t = document.createElement("time");
        t.textContent = e.at;
        var st = document.createElement("span");
        st.className = "step";
        st.textContent = e.step;
        var p = document.createElement("p");
        p.textContent = e.message;
        li.appendChild(t); li.appendChild(st); li.appendChild(p);
        list.appendChild(li);
      }
      list.setAttribute("data-count", String(m.events.length));
      var empty = document.getElementById("timeline-empty");
      if (empty) { empty.remove(); }
    }
    if (FINAL[m.state] && timer !== null) {
      clearInterval(timer);
      timer = null;
      setStatus("finished", true);
    }
  }

  function tick() {
    if (document.hidden) { return; }
    fetch(src, { headers: { "Accept": "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { location.assign("/login"); return null; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (data) {
        if (!data) { return; }
        if (Array.isArray(data.moves)) { applyOverview(data); } else { applyMove(data); }
        if (timer !== null) { setStatus("live", true); }
      })
      .catch(function () { setStatus("offline, retrying", false); });
  }

  timer = setInterval(tick, 2000);
  setStatus("live", true);
})();
