"""Summary blocks, the end-of-run table, the JSON file, and live progress output."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram
from rich.console import Console

from loadforge.engine import histogram as hist
from loadforge.errors import InputError
from loadforge.present.summary import format_us, render_summary, stats_block, write_summary_json
from loadforge.run.progress import LiveProgress

SCOPE_KEYS = {
    "scheduled", "requests", "errors", "target_rps", "achieved_rps", "latency_us",
    "service_time_us", "errors_by_kind", "status", "unsent", "sent", "error_rate", "duration_s",
    "error_latency_us", "unsent_cause", "delayed_sends", "worker_cpu",
}


def recorded(values: list[int]) -> HdrHistogram:
    h = hist.new_histogram()
    for v in values:
        h.record_value(v)
    return h


def block(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        latency=recorded(list(range(1000, 2000))),
        service=recorded(list(range(100, 1100))),
        outcome_counts={"2xx": 950, "4xx": 10, "5xx": 30, "timeout": 7, "connect": 3},
        scheduled=1005, unsent=5, duration_s=10.0, target_rps=100.5,
        fail_status=("5xx",),
    )
    args.update(overrides)
    return stats_block(**args)


def test_stats_block_counts() -> None:
    b = block()
    assert set(b) == SCOPE_KEYS
    assert b["requests"] == 990  # responses of any status
    assert b["errors"] == 40  # 10 transport failures + 30 5xx
    assert b["sent"] == 1000
    assert b["error_rate"] == pytest.approx(0.04)
    assert b["achieved_rps"] == pytest.approx(99.0)
    assert b["target_rps"] == 100.5 and b["scheduled"] == 1005 and b["unsent"] == 5
    assert b["errors_by_kind"] == {"connect": 3, "timeout": 7, "reset": 0, "protocol": 0}
    assert b["status"] == {"2xx": 950, "3xx": 0, "4xx": 10, "5xx": 30}
    assert set(b["latency_us"]) == {"p50", "p90", "p99", "p999", "max", "mean"}
    assert 1495 <= b["latency_us"]["p50"] <= 1505
    assert 595 <= b["service_time_us"]["p50"] <= 605
    json.dumps(b)  # plain JSON types only


def test_stats_block_fail_status_and_empty() -> None:
    assert block(fail_status=("4xx", "5xx"))["errors"] == 50
    empty = stats_block(hist.new_histogram(), hist.new_histogram(), {}, 0, 0, 0.0, 0.0, ("5xx",))
    assert empty["achieved_rps"] == 0.0 and empty["error_rate"] == 0.0
    assert empty["latency_us"] == {"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "mean": 0.0}
    with pytest.raises(ValueError, match="unknown outcomes"):
        block(outcome_counts={"200": 1})


@pytest.mark.parametrize(
    ("us", "text"),
    [(0, "0µs"), (812, "812µs"), (999.6, "1.00ms"), (12_345, "12.3ms"), (123_456, "123ms"),
     (999_600, "1.00s"), (1_200_000, "1.20s"), (45_000_000, "45.0s")],
)
def test_format_us(us: float, text: str) -> None:
    assert format_us(us) == text


def summary() -> dict[str, Any]:
    steady = dict(block(), name="steady")
    saturate = dict(block(unsent=0, scheduled=0, target_rps=0.0), name="saturate")
    top = dict(block(unsent=5), run_id="run-42", result="results/run-42.parquet", ok=False,
               stages=[steady, saturate])
    top["slo"] = [
        {"name": "p99", "ok": True, "observed": 1990, "limit": 250_000},
        {"name": "error_rate", "ok": False, "observed": 0.04, "limit": 0.001},
    ]
    return top


def plain_console(width: int = 80) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=False, color_system=None), out


def test_render_summary_plain_text() -> None:
    console, out = plain_console()
    render_summary(summary(), console, {"saturate"})
    text = out.getvalue()
    assert "\x1b[" not in text and "…" not in text  # fits 80 columns, nothing cut
    for expected in ("run-42", "steady", "saturate *", "all", "1.50ms", "100.5",
                     "UNSENT: 5 arrivals", "closed model (saturate): latency there is service time",
                     "✓ p99: observed 1.99ms, limit 250ms",
                     "✗ error_rate: observed 4%, limit 0.1%", "results/run-42.parquet"):
        assert expected in text, expected


def test_render_summary_without_unsent_or_slo() -> None:
    console, out = plain_console()
    s = summary()
    s["unsent"] = 0
    for stage in s["stages"]:
        stage["unsent"] = 0
    del s["slo"]
    render_summary(s, console, set())
    text = out.getvalue()
    assert "UNSENT" not in text and "SLO" not in text and "closed model" not in text


def test_write_summary_json(tmp_path: Path) -> None:
    path = tmp_path / "out" / "summary.json"
    write_summary_json(summary(), str(path))
    assert json.loads(path.read_text())["stages"][0]["name"] == "steady"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--summary-json"):
        write_summary_json(summary(), str(tmp_path / "file" / "summary.json"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_plain_lines_at_most_one_a_second() -> None:
    console, out = plain_console()
    clock = FakeClock()
    with LiveProgress(60, console, quiet=False, clock=clock) as progress:
        for i in range(3):
            clock.now = float(i)
            progress.update("steady", i + 1.0, 500, 498.0, 812, 12_300, 0, 498)
            progress.update("steady", i + 1.0, 500, 498.0, 812, 12_300, 0, 498)  # same second
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "steady" in lines[0] and "498/500" in lines[0] and "812µs" in lines[0]
    assert "12.3ms" in lines[0] and "00:59 left" in lines[0]


def test_progress_quiet_prints_nothing() -> None:
    console, out = plain_console()
    with LiveProgress(10, console, quiet=True) as progress:
        progress.update("steady", 1.0, 10, 10, 1, 1, 0, 10)
    assert out.getvalue() == ""


def test_progress_terminal_and_broken_console_never_raise() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with LiveProgress(10, console, quiet=False) as progress:
        progress.update("spike", 3.0, 5000, 4100.0, 900, 250_000, 12, 4100)
    assert "spike" in out.getvalue()

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    broken = Console(file=Broken(), force_terminal=False)
    with LiveProgress(10, broken, quiet=False) as progress:
        progress.update("steady", 1.0, 10, 10, 1, 1, 0, 10)
        progress.update("steady", 2.0, 10, 10, 1, 1, 0, 10)
