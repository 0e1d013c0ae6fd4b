// Pouchfly dashboard: renders the supernode's state stream (SSE) without
// page reloads. Plain JS, no dependencies; every string from the cluster
// goes through textContent (host names and labels come from agents).
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var state = null, openJob = null, lastDetail = 0;

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function bytes(n) {
    if (n == null || n < 0) return "?";
    var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0)) + " " + u[i];
  }
  function rate(n) { return n > 0 ? bytes(n) + "/s" : "–"; }
  function pct(p) { return (p >= 100 ? "100" : p.toFixed(1).replace(/\.0$/, "")) + "%"; }
  function short(id) { return id.length > 23 && id.indexOf("sha256:") === 0 ? id.slice(0, 19) + "…" : id; }
  function ago(t) {
    var s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
    if (s < 60) return Math.round(s) + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    return Math.round(s / 3600) + "h ago";
  }
  function bar(p, done, label) {
    var b = el("div", { cls: "bar" + (done ? " done" : ""), role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(p) });
    var fill = el("span"); fill.style.width = Math.min(100, p) + "%";
    b.appendChild(fill);
    b.appendChild(el("em", { text: label != null ? label : pct(p) }));
    return b;
  }
  function badge(s, extra) { return el("span", { cls: "badge " + s + (extra ? " " + extra : ""), text: s }); }
  function fill(tbody, rows) { tbody.replaceChildren.apply(tbody, rows); }

  function renderTotals(t) {
    $("saved-percent").textContent = t.delivered_bytes > 0 ? pct(t.saved_percent) : "–";
    $("saved-bytes").textContent = t.delivered_bytes > 0 ? bytes(t.saved_bytes) + " the origin did not send" : "nothing delivered yet";
    $("origin-bytes").textContent = bytes(t.origin_bytes);
    $("origin-split").textContent = "CDN " + bytes(t.cdn_origin_bytes) + " · hosts " + bytes(t.host_origin_bytes);
    $("p2p-bytes").textContent = bytes(t.p2p_bytes);
    $("cdn-bytes").textContent = bytes(t.cdn_bytes);
    $("cdn-served").textContent = "served " + bytes(t.cdn_served_bytes);
    $("delivered-bytes").textContent = bytes(t.delivered_bytes);
    var d = t.delivered_bytes || 1, segs = $("mix").children;
    segs[0].style.width = (100 * t.p2p_bytes / d) + "%";
    segs[1].style.width = (100 * t.cdn_bytes / d) + "%";
    segs[2].style.width = (100 * t.host_origin_bytes / d) + "%";
  }

  function zoneOf(h) { return h.zone || (h.labels && h.labels.zone) || ""; }
  function renderHosts(hosts) {
    var peers = hosts.filter(function (h) { return !h.cdn; }).length;
    $("hosts-count").textContent = peers + " agent" + (peers === 1 ? "" : "s") + (hosts.length > peers ? " + CDN" : "");
    fill($("hosts-table").tBodies[0], hosts.map(function (h) {
      var name = el("td", {}, [el("span", { cls: "phone sdot " + h.state, title: h.state }), el("span", { cls: "id", text: h.id })]);
      if (h.hostname && h.hostname !== h.id) name.appendChild(el("span", { cls: "muted wide", text: " " + h.hostname }));
      if (h.cdn) { name.appendChild(document.createTextNode(" ")); name.appendChild(badge("cdn")); }
      var labels = h.labels ? Object.keys(h.labels).sort().map(function (k) { return k + "=" + h.labels[k]; }).join(", ") : "";
      return el("tr", { "data-host": h.id }, [
        name,
        el("td", { text: zoneOf(h) || "–" }),
        el("td", { cls: "wide" }, [badge(h.state)]),
        el("td", { cls: "num rates" }, [el("span", { text: "↑ " + rate(h.tx_bps) }), el("span", { text: "↓ " + rate(h.rx_bps) })]),
        el("td", { cls: "num", text: bytes(h.bytes_served) }),
        el("td", { cls: "num wide", text: bytes(h.bytes_received) }),
        el("td", { cls: "num wide", text: String(h.tasks) }),
        el("td", { cls: "wide muted", text: labels || "–" }),
        el("td", { cls: "wide id muted", text: h.addr })
      ]);
    }));
  }

  function renderTasks(tasks, omitted) {
    $("tasks-count").textContent = tasks.length + (omitted ? " (+" + omitted + " more)" : "");
    $("tasks-empty").hidden = tasks.length > 0;
    var box = el("div", { cls: "tasks-grid" });
    tasks.forEach(function (t) {
      var done = t.hosts > 0 && t.done_hosts === t.hosts;
      var head = el("div", { cls: "task-head" }, [
        el("span", { cls: "id", text: t.id, title: t.id }),
        el("span", { cls: "meta", text: bytes(t.size) + " · " + (t.piece_count >= 0 ? t.piece_count + " pieces of " + bytes(t.piece_size) : "length unknown") + " · " + t.done_hosts + "/" + t.hosts + " hosts" }),
        t.seed === "none" ? null : badge({ done: "seeded", seeding: "seeding", failed: "seed failed" }[t.seed] || t.seed, t.seed),
        el("span", { cls: "pct", text: t.hosts > 0 ? pct(t.percent) : "–" })
      ]);
      var peers = el("div", { cls: "peers" });
      t.peers.forEach(function (p) {
        var label = p.cdn ? "CDN" : p.host_id;
        peers.appendChild(el("div", { cls: "peer", "data-peer": p.host_id }, [
          el("span", { cls: "name", text: label, title: p.host_id }),
          bar(p.percent, p.done, t.piece_count > 0 ? p.pieces + "/" + t.piece_count : pct(p.percent))
        ]));
      });
      if (t.peers_omitted) peers.appendChild(el("div", { cls: "muted", text: "+" + t.peers_omitted + " more hosts" }));
      box.appendChild(el("div", { cls: "task" + (done ? " complete" : ""), "data-task": t.id, "data-percent": String(t.percent) }, [head, peers]));
    });
    $("tasks").replaceChildren(box);
  }

  function token() { return sessionStorage.getItem("pouchfly-token") || ""; }
  function api(method, path, body) {
    var h = { "Content-Type": "application/json" };
    if (token()) h.Authorization = "Bearer " + token();
    return fetch(path, { method: method, headers: h, body: body ? JSON.stringify(body) : undefined }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) throw new Error(j.error || (r.status + " " + r.statusText));
        return j;
      });
    });
  }

  function renderJobs(s) {
    var jobs = s.jobs, admin = !s.read_only;
    $("jobs-count").textContent = jobs.length ? String(jobs.length) : "";
    $("jobs-empty").hidden = jobs.length > 0;
    $("preheat-form").hidden = !admin;
    $("token-input").hidden = !s.auth_required;
    fill($("jobs-table").tBodies[0], jobs.map(function (j) {
      var active = j.state === "resolving" || j.state === "running";
      var cancel = admin && active ? el("button", { cls: "small", type: "button", text: "Cancel", onclick: function (ev) {
        ev.stopPropagation();
        api("DELETE", "api/v1/preheats/" + encodeURIComponent(j.id)).catch(function (e) { formMsg(e.message, true); });
      } }) : null;
      var what = j.image || j.url || "";
      var row = el("tr", { cls: "clickable", "data-job": j.id, title: j.error || "", onclick: function () { openJob = openJob === j.id ? null : j.id; lastDetail = 0; detail(); } }, [
        el("td", { cls: "what" }, [el("span", { cls: "ref", text: what, title: what }), el("span", { cls: "id muted sub", text: j.id + (j.error ? " · " + j.error : "") })]),
        el("td", {}, [badge(j.state)]),
        el("td", {}, [bar(j.percent, j.state === "succeeded")]),
        el("td", { cls: "num", text: j.scope === "cdn" ? "CDN" : j.hosts_done + "/" + j.host_count }),
        el("td", { cls: "wide", text: j.scope + (j.selector ? " · " + j.selector : "") }),
        el("td", { cls: "wide muted", text: ago(j.created) }),
        el("td", {}, [cancel])
      ]);
      return row;
    }));
  }

  function detail() {
    var box = $("job-detail");
    if (!openJob) { box.hidden = true; return; }
    var now = Date.now();
    if (now - lastDetail < 2000) return;
    lastDetail = now;
    fetch("api/v1/preheats/" + encodeURIComponent(openJob)).then(function (r) { return r.ok ? r.json() : null; }).then(function (j) {
      if (!j || j.id !== openJob) return;
      var head = el("tr", {}, [el("th", { text: "Host" }), el("th", { text: "State" }), el("th", { text: "%" })].concat(
        (j.layers || []).map(function (l, i) { return el("th", { text: "#" + (i + 1), title: l.digest + " · " + bytes(l.size) }); })));
      var rows = (j.hosts || []).map(function (h) {
        return el("tr", {}, [el("td", { cls: "id", text: h.id }), el("td", {}, [badge(h.state)]), el("td", { cls: "num", text: pct(h.percent) })].concat(
          h.layers.map(function (p) {
            var f = p.done ? 100 : p.piece_count > 0 ? 100 * p.pieces / p.piece_count : 0;
            var c = el("div", { cls: "cellbox " + p.state, title: p.digest + ": " + p.pieces + "/" + (p.piece_count || "?") }, [el("span")]);
            c.firstChild.style.width = f + "%";
            return el("td", { cls: "cell" }, [c]);
          })));
      });
      var parts = [el("h3", { text: j.id + " · " + (j.image || j.url) + (j.digest ? " @ " + short(j.digest) : "") + " · " + bytes(j.bytes) + " in " + j.blob_count + " blobs" })];
      if (j.error) parts.push(el("p", { cls: "msg err", text: j.error }));
      if (rows.length) parts.push(el("div", { cls: "scroll" }, [el("table", { cls: "list matrix" }, [el("thead", {}, [head]), el("tbody", {}, rows)])]));
      box.replaceChildren.apply(box, parts);
      box.hidden = false;
    }).catch(function () {});
  }

  function formMsg(text, err) { var m = $("form-msg"); m.textContent = text; m.className = "msg" + (err ? " err" : ""); }

  $("preheat-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var f = ev.target, v = f.image.value.trim();
    if (f.token.value) { sessionStorage.setItem("pouchfly-token", f.token.value); f.token.value = ""; }
    var req = { scope: f.scope.value };
    if (/^https?:\/\//.test(v)) req.url = v; else req.image = v;
    if (f.selector.value.trim()) req.selector = f.selector.value.trim();
    var pl = f.platforms.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
    if (pl.length) req.platforms = pl;
    formMsg("starting…");
    api("POST", "api/v1/preheats", req).then(function (j) { formMsg("started " + j.id); openJob = j.id; lastDetail = 0; })
      .catch(function (e) { formMsg(e.message, true); });
  });

  function renderQuarantine(q) {
    $("quarantine-count").textContent = q.length ? String(q.length) : "";
    $("quarantine-empty").hidden = q.length > 0;
    $("quarantine").replaceChildren.apply($("quarantine"), q.map(function (h) {
      return el("li", { "data-host": h.id }, [el("span", { cls: "id", text: h.id }), " ", badge("quarantined"),
        el("span", { cls: "muted", text: " after " + (h.quarantined_after || h.bad_pieces) + " bad pieces (" + h.bad_pieces + " reported)" })]);
    }));
  }

  function render(s) {
    state = s;
    $("supernode").textContent = s.supernode;
    renderTotals(s.totals);
    renderJobs(s);
    renderHosts(s.hosts);
    renderTasks(s.tasks, s.tasks_omitted);
    renderQuarantine(s.quarantined);
    detail();
    document.body.setAttribute("data-updated", s.time);
  }

  function live(on, text) {
    $("live").className = "dot" + (on ? "" : " off");
    $("live-text").textContent = text;
  }

  function connect() {
    if (!window.EventSource) { poll(); return; }
    var es = new EventSource("api/v1/events");
    es.addEventListener("state", function (e) {
      try { render(JSON.parse(e.data)); live(true, "live"); } catch (err) { live(false, "bad data"); }
    });
    es.onopen = function () { live(true, "live"); };
    es.onerror = function () { live(false, "reconnecting…"); };
  }
  function poll() {
    fetch("api/v1/state").then(function (r) { return r.json(); }).then(function (s) { render(s); live(true, "polling"); })
      .catch(function () { live(false, "offline"); }).then(function () { setTimeout(poll, 2000); });
  }
  connect();
})();
