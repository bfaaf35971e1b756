// loadforge live: draws the run from the server-sent events at ./events (live/__init__.py).
// Events: "start" (a run begins: the page resets), "interval" (one merged interval),
// "summary" (the run's summary: the figures that count from then on), "closed".
// Every figure shown as text also carries its exact value in data-value, and <body> says
// data-state (waiting, running, finished) and data-intervals: the browser test reads them.
(function () {
  "use strict";
  var body = document.body;
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(String(e.message || e));
    body.setAttribute("data-errors", errors.join(" | "));
  });
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
                 "#8c564b", "#e377c2"];
  var run = null;

  function $(id) { return document.getElementById(id); }
  function fmtUs(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1000) return Math.round(v) + "\u00b5s";
    if (v < 1e6) return +(v / 1e3).toPrecision(3) + "ms";
    return +(v / 1e6).toPrecision(3) + "s";
  }
  function fmtInt(v) { return v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en"); }
  function fmtRate(v) { return v === null || v === undefined ? "–" : (+v.toFixed(1)).toLocaleString("en"); }
  function set(id, value, fmt) {
    var el = $(id);
    el.textContent = fmt(value);
    el.setAttribute("data-value", value === null || value === undefined ? "" : String(value));
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function table(id, head, rows, empty) {
    var t = $(id);
    t.innerHTML = "";
    var tb = document.createElement("tbody");
    if (!rows.length) {
      var tr0 = document.createElement("tr");
      cell(tr0, empty);
      tb.appendChild(tr0);
    } else {
      var hr = document.createElement("tr");
      head.forEach(function (h) { var th = document.createElement("th"); th.textContent = h; hr.appendChild(th); });
      tb.appendChild(hr);
      rows.forEach(function (r) {
        var tr = document.createElement("tr");
        r.forEach(function (c) {
          var td = cell(tr, c.text !== undefined ? c.text : String(c), c.cls);
          if (c.value !== undefined) td.setAttribute("data-value", String(c.value));
          if (c.key) td.setAttribute("data-key", c.key);
        });
        tb.appendChild(tr);
      });
    }
    t.appendChild(tb);
  }

  // A small line plotter, redrawn whole on each interval (a few hundred points at most per
  // series for an hour at 1 s: cheap). series: [{name, color, dash, points: [[t, y]]}].
  function plot(id, series, yFmt) {
    var canvas = $(id), ctx = canvas.getContext("2d");
    var W = canvas.width, H = canvas.height, L = 70, R = 20, T = 10, B = 30;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    var xs = [], ys = [];
    series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[1] !== null && isFinite(p[1])) { xs.push(p[0]); ys.push(p[1]); } });
    });
    var legend = $(id.replace("chart", "legend"));
    legend.innerHTML = "";
    canvas.setAttribute("data-points", String(ys.length));
    if (!xs.length) {
      ctx.font = "13px system-ui, sans-serif"; ctx.fillStyle = "#5a6478"; ctx.textAlign = "center";
      ctx.fillText(series.length ? "no data yet" : "none", W / 2, H / 2);
      return;
    }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y1 = Math.max.apply(null, ys) * 1.08 || 1;
    if (x1 === x0) x1 = x0 + 1;
    var X = function (v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
    var Y = function (v) { return T + (H - T - B) * (1 - v / y1); };
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#4a5365"; ctx.strokeStyle = "#e6e9ef";
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (var k = 0; k <= 4; k++) {
      var v = y1 * k / 4, y = Math.round(Y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(W - R, y); ctx.stroke();
      ctx.fillText(yFmt(v), L - 6, y);
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (k = 0; k <= 8; k++) {
      var tv = x0 + (x1 - x0) * k / 8;
      ctx.fillText((+tv.toPrecision(3)) + "s", X(tv), H - B + 6);
    }
    series.forEach(function (s) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.6; ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      var pen = false;
      s.points.forEach(function (p) {
        if (p[1] === null || !isFinite(p[1])) { pen = false; return; }
        if (pen) ctx.lineTo(X(p[0]), Y(p[1])); else ctx.moveTo(X(p[0]), Y(p[1]));
        pen = true;
      });
      ctx.stroke();
      var item = document.createElement("span"), sw = document.createElement("i");
      sw.className = "swatch"; sw.style.background = s.color;
      item.appendChild(sw); item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
    ctx.setLineDash([]);
  }

  function start(ev) {
    run = { header: ev, points: [], errorsByKind: {}, byName: {}, byBackend: {}, summary: null };
    $("run-title").textContent = ev.profile + " → " + ev.target + " (" + ev.run_id + ")";
    body.setAttribute("data-run-id", ev.run_id);
    body.setAttribute("data-state", "running");
    body.setAttribute("data-intervals", "0");
    $("run-state").textContent = "running";
  }

  function add(map, key, n) { map[key] = (map[key] || 0) + n; }

  function interval(ev) {
    if (!run) return;
    run.points.push(ev);
    Object.keys(ev.errors_by_kind).forEach(function (k) { add(run.errorsByKind, k, ev.errors_by_kind[k]); });
    Object.keys(ev.by_backend).forEach(function (k) { add(run.byBackend, k, ev.by_backend[k]); });
    Object.keys(ev.by_name).forEach(function (k) {
      var n = run.byName[k] = run.byName[k] || { requests: 0, errors: 0, latency_us: null };
      n.requests += ev.by_name[k].requests; n.errors += ev.by_name[k].errors;
      if (ev.by_name[k].latency_us) n.latency_us = ev.by_name[k].latency_us;
    });
    body.setAttribute("data-intervals", String(run.points.length));
    $("run-clock").textContent = "· " + Math.min(ev.end_s, run.header.duration_s).toFixed(0) +
      " s of " + run.header.duration_s + " s · stage " + ev.stage;
    if (!run.summary) {
      set("requests", ev.totals.requests, fmtInt);
      set("errors", ev.totals.errors, fmtInt);
      set("achieved-rps", ev.achieved_rps, fmtRate);
      set("target-rps", ev.target_rps, fmtRate);
      set("unsent", ev.totals.unsent, fmtInt);
      ["p50", "p90", "p99", "max"].forEach(function (k) {
        set("latency-" + k, ev.latency_us.p50 || ev.requests ? ev.latency_us[k] : null, fmtUs);
      });
      slo(ev.slo);
      tables(run.errorsByKind, run.byName, run.byBackend);
    }
    charts();
  }

  function slo(verdicts) {
    table("slo", ["objective", "observed", "limit", ""], (verdicts || []).map(function (v) {
      var f = v.unit === "ratio" ? function (x) { return x === null ? "–" : (+(x * 100).toPrecision(4)) + "%"; } : fmtUs;
      return [v.name, f(v.observed), f(v.limit),
              { text: v.ok ? "ok" : "missed", cls: v.ok ? "pass" : "fail", key: v.name, value: v.ok ? 1 : 0 }];
    }), "none in the profile");
  }

  function tables(byKind, byName, byBackend) {
    table("errors-by-kind", ["kind", "count"], Object.keys(byKind).filter(function (k) { return byKind[k]; }).sort().map(function (k) {
      return [k, { text: fmtInt(byKind[k]), value: byKind[k], key: k }];
    }), "none");
    table("by-name", ["name", "requests", "errors", "p50", "p99"], Object.keys(byName).sort().map(function (k) {
      var n = byName[k], lat = n.latency_us || {};
      return [k, { text: fmtInt(n.requests), value: n.requests, key: k }, { text: fmtInt(n.errors), value: n.errors },
              { text: fmtUs(lat.p50), value: lat.p50 }, { text: fmtUs(lat.p99), value: lat.p99 }];
    }), "none yet");
    var total = 0;
    Object.keys(byBackend).forEach(function (k) { total += byBackend[k]; });
    table("by-backend", ["backend", "responses", "share"], Object.keys(byBackend).sort().map(function (k) {
      return [k, { text: fmtInt(byBackend[k]), value: byBackend[k], key: k },
              (total ? (100 * byBackend[k] / total).toFixed(1) : "0") + "%"];
    }), "no backend attribution (--backend-header)");
  }

  function charts() {
    var pts = run.points, mid = function (p) { return (p.start_s + p.end_s) / 2; };
    var per = function (p) { return p.end_s - p.start_s || 1; };
    plot("chart-rate", [
      { name: "target", color: PALETTE[0], dash: [6, 4], points: pts.map(function (p) { return [mid(p), p.target_rps]; }) },
      { name: "achieved", color: PALETTE[2], points: pts.map(function (p) { return [mid(p), p.achieved_rps]; }) },
      { name: "unsent", color: PALETTE[1], points: pts.map(function (p) { return [mid(p), p.unsent / per(p)]; }) }
    ], fmtRate);
    plot("chart-latency", ["p50", "p90", "p99", "max"].map(function (k, i) {
      return { name: k, color: PALETTE[i], points: pts.map(function (p) {
        return [mid(p), p.latency_us.max ? p.latency_us[k] : null]; }) };
    }), fmtUs);
    var kinds = Object.keys(run.errorsByKind).sort();
    plot("chart-errors", kinds.map(function (k, i) {
      return { name: k, color: PALETTE[(i + 1) % PALETTE.length], points: pts.map(function (p) {
        return [mid(p), (p.errors_by_kind[k] || 0) / per(p)]; }) };
    }), fmtRate);
  }

  function summary(ev) {
    if (!run) return;
    run.summary = ev;
    body.setAttribute("data-state", "finished");
    $("run-state").textContent = ev.ok ? "finished: every objective held" : "finished: an objective missed or the run failed";
    $("scope-note").textContent = "The run's summary (as --summary-json writes it): rates over the whole run, latency over every successful response.";
    set("requests", ev.requests, fmtInt);
    set("errors", ev.errors, fmtInt);
    set("achieved-rps", ev.achieved_rps, fmtRate);
    set("target-rps", ev.target_rps, fmtRate);
    var unsent = 0;
    run.points.forEach(function (p) { unsent += p.unsent; });
    set("unsent", ev.unsent !== undefined ? ev.unsent : unsent, fmtInt);
    ["p50", "p90", "p99", "max"].forEach(function (k) { set("latency-" + k, ev.requests ? ev.latency_us[k] : null, fmtUs); });
    slo(ev.slo);
    var byName = {};
    Object.keys(ev.requests_by_name || {}).forEach(function (k) { byName[k] = ev.requests_by_name[k]; });
    var kinds = {};
    Object.keys(ev.errors_by_kind || {}).forEach(function (k) { kinds[k] = ev.errors_by_kind[k]; });
    Object.keys(run.errorsByKind).forEach(function (k) { if (!(k in kinds)) kinds[k] = run.errorsByKind[k]; });
    tables(kinds, byName, run.byBackend);
  }

  function handle(ev) {
    if (ev.type === "start") start(ev);
    else if (ev.type === "interval") interval(ev);
    else if (ev.type === "summary") summary(ev);
    else if (ev.type === "closed") body.setAttribute("data-closed", "1");
    body.setAttribute("data-updates", String(+(body.getAttribute("data-updates") || 0) + 1));
  }

  var source = new EventSource("events");
  source.onmessage = function (m) { handle(JSON.parse(m.data)); };
  source.onerror = function () {
    // The run is over and the server gone (or not yet there): the page keeps what it shows.
    if (body.getAttribute("data-closed") || body.getAttribute("data-state") === "finished") source.close();
  };
})();
