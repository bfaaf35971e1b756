"""Change points over an archive: the E-divisive core on series, `loadforge trend` on files."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from servers import loadforge

from loadforge.analysis.changepoint import change_points
from loadforge.engine import histogram
from loadforge.results.store import ResultWriter


def noisy(rng: random.Random, level: float, n: int, spread: float = 0.03) -> list[float]:
    return [level * rng.lognormvariate(0, spread) for _ in range(n)]


def test_a_planted_shift_is_found_at_its_first_run():
    rng = random.Random(7)
    values = noisy(rng, 1000, 40) + noisy(rng, 1100, 20)
    assert [c.index for c in change_points(values)] == [40]


def test_a_shift_and_its_return_are_two_change_points():
    rng = random.Random(8)
    values = noisy(rng, 1000, 20) + noisy(rng, 1300, 15) + noisy(rng, 1000, 25)
    assert [c.index for c in change_points(values)] == [20, 35]


def test_noise_alone_rarely_has_a_change_point():
    # The permutation test holds the false-alarm rate near alpha = 5 %: of 40 seeded series of
    # pure noise (deterministic, so never flaky), at most 4 may report a shift.
    alarms = sum(bool(change_points(noisy(random.Random(seed), 1000, 60, spread=0.2)))
                 for seed in range(40))
    assert alarms <= 4


def test_constant_short_and_min_size():
    assert change_points([5.0] * 30) == []
    assert change_points([1.0, 9.0]) == []
    # A shift two runs from the end is shorter than min_size 3: not reported.
    assert change_points([1.0] * 20 + [9.0, 9.0]) == []
    assert [c.index for c in change_points([1.0] * 20 + [9.0, 9.0], min_size=2)] == [20]


def write_run(directory, i: int, start: datetime, p99_us: int, labels: dict[str, str]) -> None:
    """A result file as `run` writes it for one 10 s stage of 1,000 successful requests:
    980 at 1 ms and 20 at p99_us."""
    lat = histogram.new_histogram()
    lat.record_value(1000, 980)
    lat.record_value(p99_us, 20)
    stages = [{"name": "steady", "duration_s": 10.0, "rate_from": 100.0, "rate_to": 100.0,
               "concurrency": None}]
    path = directory / f"run{i:02d}.parquet"
    with ResultWriter(str(path), f"run{i:02d}", labels=labels,
                      metadata={"start_time": start.isoformat(), "stages": stages}) as w:
        for scope, stage in (("stage", "steady"), ("run", "*")):
            base = {"scope": scope, "stage": stage, "start_ms": 0, "end_ms": 10_000,
                    "latency": lat, "service": lat}
            w.write([{**base, "name": "*", "outcome": "*", "count": 1000, "scheduled": 1000,
                      "unsent": 0},
                     {**base, "name": "*", "outcome": "ok", "count": 1000},
                     {**base, "name": "home", "outcome": "2xx", "count": 1000}])


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """60 runs a day apart, alternating lb=a and lb=b; lb=a's p99 rises by 20 % from its
    21st run on (run 41 of the archive), lb=b's never moves."""
    directory = tmp_path_factory.mktemp("archive")
    rng = random.Random(3)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(60):
        lb = "ab"[i % 2]
        level = 10_000 if lb == "b" or i < 40 else 12_000
        write_run(directory, i, t0 + timedelta(days=i), int(level * rng.lognormvariate(0, 0.03)),
                  {"lb": lb, "build": f"b{i}"})
    return directory


def test_trend_finds_the_planted_shift_per_label_group(archive):
    out = loadforge("trend", str(archive), "--metric", "p99", "--by", "lb", "--format", "json")
    assert out.returncode == 0, out.stderr
    series = {s["group"]["lb"]: s for s in json.loads(out.stdout)}
    assert series["b"]["shifts"] == []
    (shift,) = series["a"]["shifts"]
    assert shift["index"] == 20 and shift["path"].endswith("run40.parquet")
    assert shift["run"] == "build=b40,lb=a"
    assert 0.15 < shift["change"] < 0.25

    text = loadforge("trend", str(archive), "--by", "lb")
    assert text.returncode == 0, text.stderr
    assert "lb=a  p99: 30 runs, 1 shift" in text.stdout
    assert "lb=b  p99: 30 runs, 0 shifts" in text.stdout


def test_trend_csv_is_one_row_per_run_for_otava(archive):
    out = loadforge("trend", str(archive), "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 60
    assert rows[0]["time"].startswith("2026-01-01") and rows[-1]["file"] == "run59.parquet"
    assert {"run_id", "label_lb", "label_build", "p99", "achieved_rps"} <= set(rows[0])
    assert float(rows[0]["achieved_rps"]) == 100.0


def test_trend_bad_input(archive, tmp_path):
    bad = loadforge("trend", str(archive), "--metric", "p98")
    assert bad.returncode == 2 and "p98" in bad.stderr and "Traceback" not in bad.stderr
    missing = loadforge("trend", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
