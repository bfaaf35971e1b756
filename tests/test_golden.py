"""A stored result read through every command: the output must stay what it was.

tests/data/golden.parquet is a real run (two stages, a ramp, two request names, objectives,
a label) kept in the repository; tests/golden/ holds what each command printed for it. A change
to how the tree is laid out or how figures are folded must leave these alone; a deliberate
change of output rewrites them with `LOADFORGE_GOLDEN=write python -m pytest tests/test_golden.py`
and shows up in the diff for review.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
GOLDEN = os.path.join(HERE, "golden")
WRITE = os.environ.get("LOADFORGE_GOLDEN") == "write"

COMMANDS = {
    "compare.json": ["compare", "golden.parquet", "--format", "json"],
    "compare.md": ["compare", "golden.parquet", "--format", "markdown"],
    "compare.txt": ["compare", "golden.parquet"],
    "ls.json": ["ls", "golden.parquet", "--json"],
    "ls.txt": ["ls", "golden.parquet"],
    "export.hlog": ["export", "golden.parquet", "--hlog", "-"],
    "trend.csv": ["trend", "golden.parquet", "--format", "csv"],
    "trend.txt": ["trend", "golden.parquet", "--metric", "p50", "--metric", "achieved_rps"],
}


def run(args: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "loadforge.cli", *args], cwd=DATA, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def check(name: str, text: str) -> None:
    path = os.path.join(GOLDEN, name)
    if WRITE:
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return
    with open(path) as f:
        assert text == f.read(), f"{name}: output differs from tests/golden/{name}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_output_is_unchanged(name):
    check(name, run(COMMANDS[name]))


def test_report_data_is_unchanged(tmp_path):
    # The figures the page draws (its embedded JSON), not its script and style: those may
    # change without a number moving.
    html = tmp_path / "report.html"
    run(["report", "golden.parquet", "--html", str(html)])
    payload = re.search(r'id="report-data">(.*?)</script>', html.read_text(), re.S)
    assert payload
    data = json.loads(payload[1])
    check("report.json", json.dumps(data, indent=1, sort_keys=True) + "\n")
