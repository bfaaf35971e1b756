"""`loadforge export --hlog`: the interval log of a real run reads back with hdrh's
HistogramLogReader with the same counts, one tag per stage."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
from servers import http_server, loadforge

from loadforge.present.export import hlog_tag
from loadforge.results import store as results

PROFILE = """
name = "two-stages"
target = "{target}"
[load]
connections = 8
workers = 2
[[stages]]
name = "warm up"
rate = 100
duration = "1s"
[[stages]]
name = "steady"
rate = 300
duration = "2s"
"""


def test_hlog_round_trip(tmp_path: Path) -> None:
    summary = tmp_path / "s.json"
    with http_server() as url:
        profile = tmp_path / "p.toml"
        profile.write_text(PROFILE.format(target=url))
        proc = loadforge("run", str(profile), "--out", str(tmp_path), "--quiet",
                         "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr
    run = json.loads(summary.read_text())["result"]
    log = tmp_path / "run.hlog"
    proc = loadforge("export", run, "--hlog", str(log))
    assert proc.returncode == 0, proc.stderr

    result = results.read_result(run)
    expected: dict[tuple[str, float], int] = {}
    # The headline histograms: the merged rows of successful responses.
    for row in result.rows("interval", stage=None, outcome="ok"):
        if row["stage"] != "*":
            expected[(hlog_tag(row["stage"]), row["start_ms"] / 1000)] = \
                result.histogram(row).get_total_count()
    assert {tag for tag, _ in expected} == {"warm_up", "steady"}

    reader = HistogramLogReader(str(log), HdrHistogram(1, 3_600_000_000, 3))
    got: dict[tuple[str, float], int] = {}
    while (h := reader.get_next_interval_histogram()) is not None:
        # Absolute timestamps: the log's StartTime (the run's wall-clock start) plus offsets.
        offset = round(h.get_start_time_stamp() / 1000 - reader.get_start_time_sec(), 3)
        got[(h.get_tag(), offset)] = h.get_total_count()
    started = datetime.fromisoformat(result.metadata["start_time"]).timestamp()
    assert reader.get_start_time_sec() == pytest.approx(started, abs=0.001)
    assert got == expected
    (run_row,) = result.rows("run", outcome="ok")
    assert sum(got.values()) == run_row["count"]


def test_missing_run_exits_2(tmp_path: Path) -> None:
    proc = loadforge("export", str(tmp_path / "none.parquet"), "--hlog", str(tmp_path / "x"))
    assert proc.returncode == 2 and "none.parquet" in proc.stderr
    assert "Traceback" not in proc.stderr
