"""One fold: the summary of a run (`--summary-json`), `compare` of its file and `ls` of it
agree to the microsecond, on latency percentiles, counts and rates, per stage and for the run
(analysis/figures.py folds the same rows, live or read back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servers import loadforge

from loadforge.analysis import figures
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
    run = figures.run_figures(read_result(path), full=True)
    for fig in [*run.stages, run.run]:
        block = scopes[fig.name]
        assert (fig.requests, fig.errors, fig.sent, fig.scheduled, fig.unsent) == (
            block["requests"], block["errors"], block["sent"], block["scheduled"],
            block["unsent"]), fig.name
        assert {k: fig.outcomes.get(k, 0) for k in block["status"]} == block["status"]
        assert {k: fig.outcomes.get(k, 0) for k in block["errors_by_kind"]} == \
            block["errors_by_kind"]
    names = {name: figures.name_block(*entry) for name, entry in run.run.by_name.items()}
    assert names == summary["requests_by_name"]
