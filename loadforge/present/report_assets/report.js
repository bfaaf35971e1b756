// loadforge report: draws the embedded JSON (#report-data) on canvases. No dependencies:
// the page must work offline, so this is a deliberately small line plotter (linear and log
// axes, dashes, stage marks, an HTML legend) rather than a charting library.
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
  var DASH = { p50: [], p90: [7, 3], p99: [2, 3], max: [9, 3, 2, 3],
               target: [6, 4], achieved: [] };
  var KIND_DASH = [[], [7, 3], [2, 3], [9, 3, 2, 3], [4, 4]];
  var W = 1240, H = 330, PAD = { l: 70, r: 44, t: 14, b: 40 };

  // A run's colour: the palette's eight, then hues a golden angle apart, so that the ninth
  // run never repeats the first.
  function runColor(i) {
    if (i < PALETTE.length) return PALETTE[i];
    return "hsl(" + Math.round((i * 137.508) % 360) + ", 70%, " + (i % 2 ? 38 : 50) + "%)";
  }
  // One run: each percentile its own colour (and dash); several: the run's colour, dashed.
  var PCT_COLORS = { p50: "#1f77b4", p90: "#2ca02c", p99: "#ff7f0e", max: "#d62728" };

  function fmtUs(v) {
    if (v < 1000) return Math.round(v) + "\u00b5s";
    if (v < 1e6) return +(v / 1e3).toPrecision(3) + "ms";
    return +(v / 1e6).toPrecision(3) + "s";
  }
  function fmtNum(v) {
    if (Math.abs(v) >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (Math.abs(v) >= 1e3) return +(v / 1e3).toPrecision(3) + "k";
    return String(+v.toPrecision(3));
  }
  function fmtSeconds(v) { return +v.toPrecision(4) + "s"; }
  function fmtPercentile(x) {
    // x = 1/(1-q): 1 -> 0%, 10 -> 90%, 100 -> 99%, ...
    var q = 100 * (1 - 1 / x);
    return (q === 0 ? "0" : String(+q.toPrecision(6))) + "%";
  }

  function linearTicks(lo, hi, n) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    var err = span / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var ticks = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(v);
    return ticks;
  }
  function logTicks(lo, hi) {
    var ticks = [];
    for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      var v = Math.pow(10, e);
      if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
    }
    if (ticks.length < 2) { ticks = [lo, hi]; }
    return ticks;
  }

  function section(title) {
    var h = document.createElement("h2");
    h.textContent = title;
    document.getElementById("report").appendChild(h);
  }

  // spec: {title, xLabel, yLabel, xLog, yLog, xFormat, yFormat, series: [{name, color, dash,
  // points: [[x, y], ...]}], marks: [{x, name}]}. Returns true when it drew data.
  function chart(spec) {
    var fig = document.createElement("figure");
    fig.className = "chart";
    var cap = document.createElement("figcaption");
    cap.textContent = spec.title;
    fig.appendChild(cap);
    var canvas = document.createElement("canvas");
    var ratio = window.devicePixelRatio || 1;
    canvas.width = W * ratio; canvas.height = H * ratio;
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    fig.appendChild(canvas);
    var legend = document.createElement("div");
    legend.className = "legend";
    fig.appendChild(legend);
    document.getElementById("report").appendChild(fig);
    body.setAttribute("data-charts", String(+(body.getAttribute("data-charts") || 0) + 1));

    var ok = function (x, y) {
      return y !== null && isFinite(x) && isFinite(y) &&
        (!spec.xLog || x > 0) && (!spec.yLog || y > 0);
    };
    var xs = [], ys = [], drawn = 0;
    spec.series.forEach(function (s) {
      s.points = s.points.filter(function (p) { return ok(p[0], p[1]); });
      s.points.forEach(function (p) {
        if (s.step) { xs.push(p[0] - s.step / 2, p[0] + s.step / 2); } else { xs.push(p[0]); }
        ys.push(p[1]);
      });
    });
    var ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    if (!xs.length) {
      var note = document.createElement("p");
      note.className = "empty";
      note.textContent = "no data";
      fig.appendChild(note);
      return false;
    }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = spec.yLog ? Math.min.apply(null, ys) : Math.min(0, Math.min.apply(null, ys));
    var y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { y1 = spec.yLog ? y0 * 10 : y0 + 1; }
    if (spec.yLog) { y0 = Math.pow(10, Math.floor(Math.log10(y0))); y1 = Math.pow(10, Math.ceil(Math.log10(y1))); }
    else { y1 = y1 * 1.08; }
    var tx = spec.xLog ? Math.log10 : function (v) { return v; };
    var ty = spec.yLog ? Math.log10 : function (v) { return v; };
    var pw = W - PAD.l - PAD.r, ph = H - PAD.t - PAD.b;
    var X = function (v) { return PAD.l + (tx(v) - tx(x0)) / (tx(x1) - tx(x0)) * pw; };
    var Y = function (v) { return PAD.t + ph - (ty(v) - ty(y0)) / (ty(y1) - ty(y0)) * ph; };

    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#e6e9ef"; ctx.fillStyle = "#4a5365"; ctx.lineWidth = 1;
    var yt = spec.yLog ? logTicks(y0, y1) : linearTicks(y0, y1, 6);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    yt.forEach(function (v) {
      var y = Math.round(Y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(PAD.l, y); ctx.lineTo(W - PAD.r, y); ctx.stroke();
      ctx.fillText(spec.yFormat(v), PAD.l - 6, y);
    });
    var xt = spec.xLog ? logTicks(x0, x1) : linearTicks(x0, x1, 10);
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    xt.forEach(function (v) {
      var x = Math.round(X(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, PAD.t); ctx.lineTo(x, PAD.t + ph); ctx.stroke();
      ctx.fillText(spec.xFormat(v), x, PAD.t + ph + 5);
    });
    ctx.fillText(spec.xLabel, PAD.l + pw / 2, H - 15);
    ctx.save();
    ctx.translate(14, PAD.t + ph / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText(spec.yLabel, 0, -6);
    ctx.restore();
    ctx.strokeStyle = "#9aa3b2";
    ctx.strokeRect(PAD.l + 0.5, PAD.t + 0.5, pw, ph);

    (spec.marks || []).forEach(function (m) {
      if (m.x < x0 || m.x > x1) return;
      var x = Math.round(X(m.x)) + 0.5;
      ctx.strokeStyle = "#b8bfcc"; ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(x, PAD.t); ctx.lineTo(x, PAD.t + ph); ctx.stroke();
      ctx.setLineDash([]); ctx.fillStyle = "#6b7486"; ctx.textAlign = "left";
      ctx.fillText(m.name, x + 3, PAD.t + 3);
    });

    ctx.save();
    ctx.beginPath(); ctx.rect(PAD.l, PAD.t, pw, ph); ctx.clip();
    spec.series.forEach(function (s) {
      if (!s.points.length) return;
      ctx.strokeStyle = s.color; ctx.fillStyle = s.color;
      ctx.lineWidth = 1.6; ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      if (s.step) {
        // A count over an interval: flat across the interval, vertical between intervals,
        // with a gap where an interval is missing.
        s.points.forEach(function (p, i) {
          var prev = s.points[i - 1];
          var x0 = p[0] - s.step / 2, x1 = p[0] + s.step / 2;
          if (i === 0 || p[0] - prev[0] > s.step * 1.5) ctx.moveTo(X(x0), Y(p[1]));
          else ctx.lineTo(X(x0), Y(p[1]));
          ctx.lineTo(X(x1), Y(p[1]));
        });
      } else {
        s.points.forEach(function (p, i) {
          if (i === 0) ctx.moveTo(X(p[0]), Y(p[1])); else ctx.lineTo(X(p[0]), Y(p[1]));
        });
      }
      ctx.stroke();
      if (s.points.length === 1 && !s.step) {
        ctx.beginPath(); ctx.arc(X(s.points[0][0]), Y(s.points[0][1]), 3, 0, 2 * Math.PI); ctx.fill();
      }
      drawn += s.points.length;
      var item = document.createElement("span");
      var sw = document.createElement("i");
      sw.className = "swatch";
      sw.style.background = s.color;
      if (s.dash && s.dash.length) {
        sw.style.background = "repeating-linear-gradient(90deg," + s.color + " 0 4px,transparent 4px 7px)";
      }
      item.appendChild(sw);
      item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
    ctx.restore();
    canvas.setAttribute("data-points", String(drawn));
    canvas.setAttribute("data-steps", String(spec.series.filter(function (s) {
      return s.step && s.points.length;
    }).length));
    return drawn > 0;
  }

  function zip(xs, ys) {
    var out = [];
    for (var i = 0; i < xs.length; i++) out.push([xs[i], ys[i]]);
    return out;
  }

  function runsTable(runs) {
    var table = document.createElement("table");
    table.className = "runs";
    var head = "<tr><th>run</th><th>started</th><th>target</th><th>target rps</th>" +
      "<th>achieved rps</th><th>unsent</th><th>error rate</th><th>p50</th><th>p99</th>" +
      "<th>max</th></tr>";
    var rows = runs.map(function (r, i) {
      var s = r.summary.all || {};
      var esc = function (t) { var d = document.createElement("div"); d.textContent = t; return d.innerHTML; };
      return "<tr><td><i class=\"swatch\" style=\"background:" + runColor(i) +
        "\"></i>" + esc(r.title) + "</td><td>" + esc(r.start_time) + "</td><td>" + esc(r.target) +
        "</td><td>" + (s.target_rps === null || s.target_rps === undefined ? "-" : fmtNum(s.target_rps)) +
        "</td><td>" + fmtNum(s.achieved_rps || 0) +
        "</td><td" + (r.unsent ? " class=\"fail\"" : "") + ">" + fmtCount(r.unsent) +
        "</td><td>" + +((s.error_rate || 0) * 100).toPrecision(3) + "%</td><td>" +
        fmtUs(s.p50 || 0) + "</td><td>" + fmtUs(s.p99 || 0) + "</td><td>" + fmtUs(s.max || 0) +
        "</td></tr>";
    });
    table.innerHTML = head + rows.join("");
    document.getElementById("report").appendChild(table);
  }

  function esc(t) { var d = document.createElement("div"); d.textContent = String(t); return d.innerHTML; }
  function fmtCount(v) { return Number(v || 0).toLocaleString("en-US"); }

  // rows: [[cell, ...], ...] of HTML strings; cls: extra class of the table.
  function table(headers, rows, cls) {
    var t = document.createElement("table");
    t.className = "runs" + (cls ? " " + cls : "");
    t.innerHTML = "<tr>" + headers.map(function (h) { return "<th>" + esc(h) + "</th>"; }).join("") +
      "</tr>" + rows.map(function (r) {
        return "<tr>" + r.map(function (c) { return "<td>" + c + "</td>"; }).join("") + "</tr>";
      }).join("");
    document.getElementById("report").appendChild(t);
    return t;
  }
  function runCell(r, i) {
    return "<i class=\"swatch\" style=\"background:" + runColor(i) + "\"></i>" + esc(r.title);
  }
  function fmtObserved(v, unit) {
    if (v === null || v === undefined) return "no data";
    return unit === "ratio" ? +(v * 100).toPrecision(4) + "%" : fmtUs(v);
  }

  function sloTable(runs) {
    var rows = [];
    runs.forEach(function (r, i) {
      (r.slo || []).forEach(function (v) {
        rows.push([runCell(r, i), esc(v.name),
                   "<span class=\"" + (v.ok ? "pass" : "fail") + "\">" + (v.ok ? "pass" : "FAIL") + "</span>",
                   fmtObserved(v.observed, v.unit), fmtObserved(v.limit, v.unit)]);
      });
    });
    if (!rows.length) {
      var p = document.createElement("p");
      p.className = "note";
      p.textContent = "No objectives: the profile of " + (many ? "these runs" : "this run") + " has no [slo] table.";
      document.getElementById("report").appendChild(p);
      return;
    }
    table(["run", "objective", "verdict", "observed", "limit"], rows, "slo");
  }

  var STATUS = ["1xx", "2xx", "3xx", "4xx", "5xx"], KINDS = ["connect", "timeout", "reset", "protocol"];
  // HTTP/2's stream-level kinds: listed in a run's outcomes only when they happened
  // ... and so are a request's expect_status verdicts (a success, an error)
  var STREAM_KINDS = ["stream_reset", "goaway", "flow_control", "expected", "unexpected"];
  function outcomesTable(runs) {
    var kinds = KINDS.concat(STREAM_KINDS.filter(function (k) {
      return runs.some(function (r) { return (r.outcomes || {})[k] !== undefined; });
    }));
    // gRPC calls' codes ("grpc:NOT_FOUND"), those any run had, in the order they were seen
    runs.forEach(function (r) {
      Object.keys(r.outcomes || {}).forEach(function (k) {
        if (k.indexOf("grpc:") === 0 && kinds.indexOf(k) < 0) { kinds.push(k); }
      });
    });
    var rows = runs.map(function (r, i) {
      var o = r.outcomes || {};
      return [runCell(r, i)].concat(STATUS.concat(kinds).map(function (k) { return fmtCount(o[k]); }));
    });
    table(["run"].concat(STATUS).concat(kinds), rows, "outcomes");
  }

  function namesTable(runs) {
    var rows = [];
    runs.forEach(function (r, i) {
      Object.keys(r.requests_by_name || {}).forEach(function (name) {
        var n = r.requests_by_name[name], lat = n.latency_us || {};
        if (!n.requests && !n.errors) return;      // a name nothing ran under (step:other)
        rows.push([runCell(r, i), esc(name), fmtCount(n.requests), fmtCount(n.errors),
                   lat.p50 ? fmtUs(lat.p50) : "-", lat.p90 ? fmtUs(lat.p90) : "-",
                   lat.p99 ? fmtUs(lat.p99) : "-"]);
      });
    });
    table(["run", "request", "responses", "errors", "p50", "p90", "p99"], rows, "names");
  }

  // Scripted flows: each check's passed / failed, failed flows by exception with a sample.
  function checksTable(runs) {
    var rows = [];
    runs.forEach(function (r, i) {
      var f = r.flows;
      if (!f) return;
      Object.keys(f.checks || {}).forEach(function (name) {
        var c = f.checks[name], total = c.passed + c.failed;
        rows.push([runCell(r, i), "check", esc(name),
                   "<span class=\"" + (c.failed ? "fail" : "pass") + "\">" + fmtCount(c.passed) +
                   " / " + fmtCount(c.failed) + "</span>",
                   total ? +(c.passed / total * 100).toPrecision(3) + "% passed" : ""]);
      });
      var samples = f.failed_flow_samples || {};
      Object.keys(f.failed_flows || {}).forEach(function (flow) {
        Object.keys(f.failed_flows[flow]).forEach(function (kind) {
          var sample = (samples[flow] || {})[kind];
          rows.push([runCell(r, i), "failed flow", esc(flow),
                     "<span class=\"fail\">" + fmtCount(f.failed_flows[flow][kind]) + " " +
                     esc(kind) + "</span>", sample ? esc(sample) : ""]);
        });
      });
    });
    if (!rows.length) return false;
    table(["run", "what", "name", "passed / failed", "rate or sample"], rows, "checks");
    return true;
  }

  // Backend attribution (--backend-header): share, latency and errors per backend.
  function backendsTable(runs) {
    var rows = [];
    runs.forEach(function (r, i) {
      Object.keys(r.backends || {}).forEach(function (stage) {
        var s = r.backends[stage];
        Object.keys(s.backends).forEach(function (b) {
          var x = s.backends[b];
          rows.push([runCell(r, i), esc(stage === "all" ? "all stages" : stage), esc(b),
                     +(x.share * 100).toPrecision(3) + "%", fmtCount(x.requests),
                     +(x.error_rate * 100).toPrecision(3) + "%",
                     x.p50 ? fmtUs(x.p50) : "-", x.p99 ? fmtUs(x.p99) : "-",
                     s.fairness === null ? "-" : s.fairness.toFixed(3)]);
        });
      });
    });
    if (!rows.length) return false;
    table(["run", "stage", "backend", "share", "responses", "error rate", "p50", "p99",
           "fairness (Jain)"], rows, "backends");
    return true;
  }

  var FIGURES = [["target_rps", "target rps", "rps"], ["achieved_rps", "achieved rps", "rps"],
                 ["error_rate", "error rate", "ratio"], ["p50", "p50", "us"], ["p90", "p90", "us"],
                 ["p99", "p99", "us"], ["p999", "p99.9", "us"], ["max", "max", "us"],
                 ["mean", "mean", "us"]];
  function fmtFigure(kind, v) {
    if (v === null || v === undefined) return "-";
    if (kind === "ratio") return +(v * 100).toPrecision(3) + "%";
    if (kind === "index") return v.toFixed(3);
    return kind === "us" ? fmtUs(v) : fmtNum(v);
  }
  // A change as people read it: +4.5%, +120%, +11,000% (never 1.1e+4), as compare prints it.
  function fmtChange(v, unit) {
    if (!isFinite(v)) return (v > 0 ? "+" : "-") + "inf" + unit;
    var body = Math.abs(v) >= 99.95 ? Math.round(v).toLocaleString("en-US") : +v.toPrecision(3);
    return (v >= 0 ? "+" : "") + body + unit;
  }
  function fmtPct(x) { return fmtChange(x * 100, "%"); }

  // Rows of compare's `scoped` figures: [key, label, kind, get(scoped of one run)].
  function scopedFigures(stage) {
    if (!stage.scoped) return [];
    var out = [], backends = {}, names = {};
    stage.scoped.forEach(function (f) {
      if (!f) return;
      Object.keys(f.backends).forEach(function (b) { backends[b] = 1; });
      Object.keys(f.names).forEach(function (n) {
        if (f.names[n].requests || f.names[n].errors) names[n] = 1;
      });
    });
    var per = function (what, key, k) {
      return function (f) { return (f[what][key] || {})[k]; };
    };
    Object.keys(backends).sort().forEach(function (b) {
      out.push(["", "backend " + b + " share", "ratio",
                function (f) { return (f.backends[b] || { share: 0 }).share; }]);
      out.push(["", "backend " + b + " error rate", "ratio", per("backends", b, "error_rate")]);
      out.push(["", "backend " + b + " p50", "us", per("backends", b, "p50")]);
      out.push(["", "backend " + b + " p99", "us", per("backends", b, "p99")]);
    });
    if (Object.keys(backends).length) {
      out.push(["", "fairness (Jain)", "index", function (f) { return f.fairness; }]);
    }
    if (Object.keys(names).length > 1) {
      Object.keys(names).forEach(function (n) {
        out.push(["", n + " error rate", "ratio", per("names", n, "error_rate")]);
        out.push(["", n + " p50", "us", per("names", n, "p50")]);
        out.push(["", n + " p99", "us", per("names", n, "p99")]);
      });
    }
    return out;
  }

  // compare's JSON (stages with values, deltas and, for groups, noise): one table per stage.
  function comparisonTables(cmp) {
    var heads = ["figure"];
    cmp.runs.forEach(function (r, i) {
      heads.push(i ? r.title : r.title + " (baseline)");
      if (i) heads.push("\u0394");
    });
    cmp.stages.forEach(function (stage) {
      var p = document.createElement("p");
      p.className = "note";
      p.textContent = stage.stage === "all" ? "all stages" : "stage " + stage.stage;
      document.getElementById("report").appendChild(p);
      var rows = FIGURES.concat(scopedFigures(stage)).map(function (f) {
        var row = [esc(f[1])];
        stage.values.forEach(function (v, i) {
          if (f[3]) {           // a backend's or a request name's figure: get(scoped figures)
            var sv = stage.scoped[i] ? f[3](stage.scoped[i]) : null;
            row.push(esc(fmtFigure(f[2], sv)));
            if (!i) return;
            var sb = stage.scoped[0] ? f[3](stage.scoped[0]) : null;
            row.push(sv === null || sv === undefined || sb === null || sb === undefined ? "" :
              esc(f[2] === "ratio" ? fmtChange((sv - sb) * 100, "pp") :
                  f[2] === "index" ? (sv - sb >= 0 ? "+" : "") + (sv - sb).toFixed(3) :
                  sb ? fmtPct((sv - sb) / sb) : ""));
            return;
          }
          row.push(esc(fmtFigure(f[2], v ? v[f[0]] : null)));
          if (!i) return;
          var d = stage.deltas[i] ? stage.deltas[i][f[0]] : null;
          var ratio = f[2] === "ratio";
          var cell = d === null || d === undefined ? "" : esc(fmtChange(d, ratio ? "pp" : "%"));
          var judged = stage.noise && stage.noise[i] ? stage.noise[i][f[0]] : null;
          if (judged && judged.p !== null && judged.p !== undefined) {
            var sure = judged.p < 0.05 && judged.ci && (judged.ci[0] > 0 || judged.ci[1] < 0);
            var ci = function (x) { return ratio ? fmtChange(x * 100, "pp") : fmtPct(x); };
            cell += " <span class=\"" + (sure ? "sig" : "nosig") + "\">" +
              (judged.ci ? "[" + ci(judged.ci[0]) + ", " + ci(judged.ci[1]) + "] " : "") +
              "p=" + +judged.p.toPrecision(2) + "</span>";
          }
          row.push(cell);
        });
        return row;
      });
      table(heads, rows, "comparison");
    });
    var note = document.createElement("p");
    note.className = "note";
    var power = (cmp.groups || []).filter(function (g) { return g.power; })
      .map(function (g) { return " " + g.title + ": " + g.power.line + "."; }).join("");
    note.textContent = (cmp.noise_estimate ?
      "\u0394 against the baseline, with the 95% interval of the change and p from a " +
      "hierarchical bootstrap (runs, then intervals within runs); bold: significant (p < 0.05 " +
      "and the interval clear of zero)." :
      "One run on a side: no noise estimate (compare groups of runs with --group-by).") + power;
    document.getElementById("report").appendChild(note);
  }

  var data = JSON.parse(document.getElementById("report-data").textContent);
  var runs = data.runs, many = runs.length > 1, ready = 0;
  var color = runColor;
  var prefix = function (r) { return many ? r.title + " " : ""; };
  var marks = (runs[0].stage_marks || []).map(function (m) { return { x: m.t, name: m.name }; });

  section("Runs");
  runsTable(runs);
  var note = document.createElement("p");
  note.className = "note";
  note.textContent = "Latency is over successful responses; failures (transport errors and " +
    "failing statuses) are counted apart.";
  document.getElementById("report").appendChild(note);
  section("SLO verdicts");
  sloTable(runs);
  section("Responses by status class and failures by kind");
  outcomesTable(runs);
  section("Requests by name");
  namesTable(runs);
  if (runs.some(function (r) { return r.flows; })) {
    section("Flows: checks and failures");
    checksTable(runs);
  }
  if (runs.some(function (r) { return Object.keys(r.backends || {}).length; })) {
    section("Backends");
    backendsTable(runs);
  }
  if (data.comparison) {
    section("Comparison");
    comparisonTables(data.comparison);
  }
  if (data.trend) {
    section("Trend over runs (in start order; dotted lines: shifts found by E-divisive)");
    var tr = data.trend, runAxis = function (v) { return "#" + Math.round(v); };
    var trendMarks = function (metric) {
      return tr.metrics[metric].shifts.map(function (i) { return { x: i + 0.5, name: "shift at #" + (i + 1) }; });
    };
    var latencySeries = ["p50", "p99"].map(function (k, j) {
      return { name: k, color: PALETTE[j], dash: DASH[k],
               points: tr.metrics[k].values.map(function (v, i) { return [i + 1, v]; }) };
    });
    if (chart({ title: "Latency of each run (successful responses)", xLabel: "run",
                yLabel: "latency", yLog: true, xFormat: runAxis, yFormat: fmtUs,
                series: latencySeries, marks: trendMarks("p99").concat(trendMarks("p50")) })) ready++;
    if (chart({ title: "Achieved rate of each run", xLabel: "run", yLabel: "requests/s",
                xFormat: runAxis, yFormat: fmtNum,
                series: [{ name: "achieved", color: PALETTE[2], dash: [],
                           points: tr.metrics.achieved_rps.values.map(function (v, i) { return [i + 1, v]; }) }],
                marks: trendMarks("achieved_rps") })) ready++;
  }
  section("Over time");
  var rate = [];
  runs.forEach(function (r, i) {
    rate.push({ name: prefix(r) + "target", color: color(i), dash: DASH.target, step: r.interval_s,
                points: zip(r.t, r.target_rps) });
    rate.push({ name: prefix(r) + "achieved", color: color(i), dash: DASH.achieved, step: r.interval_s,
                points: zip(r.t, r.achieved_rps) });
  });
  if (chart({ title: "Target vs achieved rate", xLabel: "time since start", yLabel: "requests/s",
              xFormat: fmtSeconds, yFormat: fmtNum, series: rate, marks: marks })) ready++;

  var lat = [];
  runs.forEach(function (r, i) {
    ["p50", "p90", "p99", "max"].forEach(function (k) {
      lat.push({ name: prefix(r) + k, color: many ? color(i) : PCT_COLORS[k], dash: DASH[k],
                 points: zip(r.t, r.latency_us[k]) });
    });
  });
  if (chart({ title: "Latency percentiles over time (successful responses, from intended send time)", xLabel: "time since start",
              yLabel: "latency", yLog: true, xFormat: fmtSeconds, yFormat: fmtUs, series: lat, marks: marks })) ready++;

  var reps = [];
  runs.forEach(function (r, i) {
    (r.replicas || []).forEach(function (m, j) {
      reps.push({ name: prefix(r) + m.metric, color: color(i), dash: KIND_DASH[j % KIND_DASH.length],
                  points: m.points });
    });
  });
  if (reps.length && chart({ title: "Replicas over time (scaling beside the latency above)",
                             xLabel: "time since start", yLabel: "replicas", xFormat: fmtSeconds,
                             yFormat: fmtNum, series: reps, marks: marks })) ready++;

  var errs = [];
  runs.forEach(function (r, i) {
    var kinds = Object.keys(r.errors_per_s);
    if (!kinds.length) {
      // No error of any kind: a zero line, so the chart states it rather than staying blank.
      errs.push({ name: prefix(r) + "errors (none)", color: color(i), dash: [], step: r.interval_s,
                  points: r.t.map(function (t) { return [t, 0]; }) });
    }
    kinds.forEach(function (k, j) {
      errs.push({ name: prefix(r) + k, color: color(i), dash: KIND_DASH[j % KIND_DASH.length],
                  step: r.interval_s, points: zip(r.t, r.errors_per_s[k]) });
    });
  });
  if (chart({ title: "Errors over time by kind", xLabel: "time since start", yLabel: "errors/s",
              xFormat: fmtSeconds, yFormat: fmtNum, series: errs, marks: marks })) ready++;

  section("Latency by percentile (HDR spectrum), per stage");
  var stages = [];
  runs.forEach(function (r) { r.stages.forEach(function (s) { if (stages.indexOf(s) < 0) stages.push(s); }); });
  stages.forEach(function (stage) {
    var series = [];
    runs.forEach(function (r, i) {
      if (r.spectra[stage]) {
        series.push({ name: (many ? r.title : "latency"), color: color(i), dash: [], points: r.spectra[stage] });
      }
    });
    if (chart({ title: "Stage " + stage + ": latency by percentile", xLabel: "percentile",
                yLabel: "latency", xLog: true, yLog: true, xFormat: fmtPercentile, yFormat: fmtUs,
                series: series })) ready++;
  });

  body.setAttribute("data-ready", String(ready));
  document.title = document.title + " [" + ready + "/" + body.getAttribute("data-charts") + " charts]";
})();
