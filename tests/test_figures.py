"""One fold: the summary of a run (`--summary-json`), `compare` of its file and `ls` of it
agree to the microsecond, on latency percentiles, counts and rates, per stage and for the run
(analysis/figures.py folds the same rows, in memory or read back by analysis/readback.py); and
the verdicts a run judges from memory are those its file gives when read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servers import LoggingNginx, loadforge

from loadforge.analysis import figures, readback, scaling, slo
from loadforge.results.store import read_result

PROFILE = """
name = "agree"

[load]
connections = 8
workers = 2
fail_status = ["4xx", "5xx"]

[[stages]]
name = "steady"
rate = 150
duration = "2s"

[[stages]]
name = "closed"
concurrency = 2
think = "20ms"
duration = "1s"

[[requests]]
name = "home"
path = "/"
weight = 6

[[requests]]
name = "missing"
path = "/missing"
weight = 1

[[requests]]
name = "fail"
path = "/fail"
weight = 1
"""

LATENCY = ("p50", "p90", "p99", "p999", "max", "mean")


def test_summary_compare_and_ls_agree_to_the_microsecond(nginx: Any, tmp_path: Path) -> None:
    profile = tmp_path / "agree.toml"
    profile.write_text(PROFILE)
    summary_path = tmp_path / "summary.json"
    proc = loadforge("run", str(profile), "--target", nginx.url, "--quiet", "--out",
                     str(tmp_path / "out"), "--summary-json", str(summary_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(summary_path.read_text())
    path = summary["result"]
    scopes = {s["name"]: s for s in summary["stages"]}
    scopes["all"] = summary
    assert summary["errors"] > 0 and summary["requests"] > summary["errors"]

    proc = loadforge("compare", path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    compared = {s["stage"]: s["values"][0] for s in json.loads(proc.stdout)["stages"]}
    assert set(compared) == set(scopes) == {"steady", "closed", "all"}
    for name, values in compared.items():
        block = scopes[name]
        assert {k: values[k] for k in LATENCY} == {k: float(block["latency_us"][k])
                                                   for k in LATENCY}, name
        assert values["achieved_rps"] == block["achieved_rps"], name
        assert values["error_rate"] == block["error_rate"], name
        assert values["target_rps"] == block["target_rps"], name

    proc = loadforge("ls", path, "--json")
    assert proc.returncode == 0, proc.stderr
    (listed,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert listed["p50_us"] == summary["latency_us"]["p50"]
    assert listed["p99_us"] == summary["latency_us"]["p99"]
    assert listed["achieved_rps"] == summary["achieved_rps"]
    assert listed["error_rate"] == summary["error_rate"]
    assert listed["target_rps"] == summary["target_rps"]

    # Counts, and what only a full fold keeps, from the file's rows.
    run = readback.run_figures(read_result(path), full=True)
    for fig in [*run.stages, run.run]:
        block = scopes[fig.name]
        assert (fig.requests, fig.errors, fig.sent, fig.scheduled, fig.unsent) == (
            block["requests"], block["errors"], block["sent"], block["scheduled"],
            block["unsent"]), fig.name
        assert {k: fig.outcomes.get(k, 0) for k in block["status"]} == block["status"]
        assert {k: fig.outcomes.get(k, 0) for k in block["errors_by_kind"]} == \
            block["errors_by_kind"]
    names = {name: figures.name_block(*run.run.name_figures(name)) for name in run.run.by_name}
    assert names == summary["requests_by_name"]


# Two "backends" named in a response header, a 404 and a 503 among the answers.
LOCATIONS = """
    location /a {{ add_header X-Served-By b1 always; return 200 "a\\n"; }}
    location /b {{ add_header X-Served-By b2 always; return 200 "b\\n"; }}
    location /missing {{ add_header X-Served-By b1 always; return 404; }}
    location /fail {{ add_header X-Served-By b2 always; return 503; }}
"""

JUDGED = """
name = "judged"

[load]
connections = 8
workers = 2

[observe]
backend_header = "X-Served-By"
window = "2s"

[[stages]]
name = "steady"
rate = 120
duration = "2s"

[[stages]]
name = "ramp"
ramp = { from = 120, to = 240 }
duration = "2s"

[[stages]]
name = "closed"
concurrency = 2
think = "20ms"
duration = "1s"

[[requests]]
name = "a"
path = "/a"
weight = 5

[[requests]]
name = "b"
path = "/b"
weight = 5

[[requests]]
name = "missing"
path = "/missing"
weight = 1

[[requests]]
name = "fail"
path = "/fail"
weight = 1

[slo]
p99 = "2s"
error_rate = "50%"
rate_shortfall = "50%"

[[slo.stages]]
stage = "ramp"
grace = "1s"
p90 = "2s"
error_rate = "1%"
time_to_recover = "1s"

[[slo.windows]]
window = "2s"
p50 = "1s"
success_rate = "99%"
"""

SCOPE_KEYS = ("requests", "errors", "sent", "scheduled", "unsent", "error_rate", "latency_us",
              "service_time_us", "error_latency_us", "status", "errors_by_kind")


def test_the_summary_and_verdicts_from_memory_are_the_files_read_back(tmp_path: Path) -> None:
    """A run with stages (open, ramp, closed), four request names, errors (404, 503) and two
    backends: its summary and verdicts, folded in memory as the rows were written, equal the
    fold of its file read back (as `ls`, `compare` and `report` make it), figure for figure."""
    server = LoggingNginx("$request", LOCATIONS)
    try:
        profile = tmp_path / "judged.toml"
        profile.write_text(JUDGED)
        summary_path = tmp_path / "summary.json"
        proc = loadforge("run", str(profile), "--target", server.url, "--quiet", "--out",
                         str(tmp_path / "out"), "--summary-json", str(summary_path))
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stderr        # some objectives fail, by design
    summary = json.loads(summary_path.read_text())
    result = read_result(summary["result"])
    plan = readback.plan_of_result(result)
    assert plan is not None
    assert summary["errors"] > 0 and set(summary["backends"]) == {"b1", "b2"}
    assert {v["ok"] for v in summary["slo"]} == {True, False}

    # The verdicts: judged again from the file, as `ls` and `report` judge them.
    again: dict[str, Any] = {"stages": [{"name": s["name"]} for s in summary["stages"]]}
    from_file = slo.evaluate(plan, result) + scaling.annotate(again, plan, result)
    assert len(from_file) == len(summary["slo"]) >= 8
    assert from_file == summary["slo"]
    for key in ("backends", "fairness", "unattributed", "metrics", "actions"):
        assert again[key] == summary[key], key
    for mine, theirs in zip(summary["stages"], again["stages"], strict=True):
        assert {k: mine[k] for k in theirs} == theirs, mine["name"]

    # The figures of each scope: the file's stage and run rows folded (readback.run_figures),
    # through the summary's own blocks.
    run = readback.run_figures(result, full=True)
    blocks = {s["name"]: s for s in summary["stages"]}
    blocks["all"] = summary
    assert [f.name for f in run.stages] == ["steady", "ramp", "closed"]
    for fig in [*run.stages, run.run]:
        block = blocks[fig.name]
        folded = figures.stats_block(
            fig.latency, fig.service, fig.outcomes, fig.scheduled, fig.unsent,
            block["duration_s"], block["target_rps"], plan.fail_status,
            error_latency=fig.error_latency)
        assert {k: folded[k] for k in SCOPE_KEYS} == {k: block[k] for k in SCOPE_KEYS}, \
            fig.name
        connect = block["connect_time_us"] if fig.name != "all" else \
            summary["connections"]["connect_time_us"]
        assert figures.connect_block(fig.connect) == connect, fig.name
    names = {name: figures.name_block(*run.run.name_figures(name)) for name in run.run.by_name}
    assert names == summary["requests_by_name"]
