"""`loadforge ls`: a directory of real runs listed with labels, rates, p99 and the verdict
re-judged from the archived profile; bad files named with exit 2; labels as dataset columns."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from servers import STEADY_PROFILE, http_server, loadforge


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("archive")
    with http_server(0.002) as url:
        for name, p99, lb in (("loose", "5s", "round_robin"), ("tight", "1us", "leastconn")):
            profile = out / f"{name}.toml"
            profile.write_text(STEADY_PROFILE.format(name=name, target=url, duration="1s",
                                                       slo=f'p99 = "{p99}"'))
            proc = loadforge("run", str(profile), "--out", str(out / "results"), "--quiet",
                             "--label", f"lb={lb}", "--label", "build=abc123")
            assert proc.returncode == (0 if name == "loose" else 1), proc.stderr
    return out / "results"


def test_ls_lists_runs_with_verdicts(archive: Path) -> None:
    proc = loadforge("ls", str(archive), "--json")
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["profile"] for e in entries] == ["loose", "tight"]
    loose, tight = entries
    assert loose["verdict"] == "pass" and tight["verdict"] == "FAIL 1/1"
    assert tight["failed"] == ["p99"]
    assert loose["labels"] == {"build": "abc123", "lb": "round_robin"}
    assert loose["achieved_rps"] == pytest.approx(200, rel=0.1)
    assert loose["p99_us"] > 2000

    table = loadforge("ls", str(archive))
    assert table.returncode == 0
    for text in ("loose", "tight", "lb=leastconn", "pass", "FAIL 1/1", "p99"):
        assert text in table.stdout


def test_labels_make_the_directory_one_dataset(archive: Path) -> None:
    dataset = ds.dataset(str(archive), format="parquet")
    table = dataset.to_table(columns=["label_lb", "scope", "p99_us"],
                             filter=pc.field("scope") == "run")
    assert sorted(set(table["label_lb"].to_pylist())) == ["leastconn", "round_robin"]


def test_bad_files_are_named_and_exit_2(archive: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 nothing here")
    proc = loadforge("ls", str(archive), str(corrupt))
    assert proc.returncode == 2
    assert "corrupt.parquet" in proc.stderr and "Traceback" not in proc.stderr
    assert "loose" in proc.stdout and "tight" in proc.stdout   # the good ones still listed

    proc = loadforge("ls", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "missing" in proc.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = loadforge("ls", str(empty))
    assert proc.returncode == 2 and "no .parquet files" in proc.stderr
