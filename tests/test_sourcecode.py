"""Lint and type checks run with the tests (as uvloop's tests/test_sourcecode.py does)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not shutil.which("ruff"), reason="ruff is not installed")
def test_ruff():
    out = subprocess.run(["ruff", "check", "loadforge", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy():
    pytest.importorskip("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "loadforge"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


MAX_LINES = 700
SOURCE_SUFFIXES = (".py", ".pyx", ".pxd", ".pxi")
# Modules over the limit without a header line saying why: none. (Kept for a module a piece
# of work is splitting, named with its reason until the split lands.)
OVER_LIMIT_ALLOWED: dict[str, str] = {}


def oversized(root: str, allowed: dict[str, str]) -> list[str]:
    """Source files of the package over MAX_LINES lines whose first 40 lines do not say why
    ("Over 700 lines because ..."), and that are not in `allowed`."""
    found = []
    for dirpath, _, files in os.walk(os.path.join(root, "loadforge")):
        for f in sorted(files):
            if not f.endswith(SOURCE_SUFFIXES):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            if len(lines) <= MAX_LINES or rel in allowed:
                continue
            if not any(f"Over {MAX_LINES} lines because " in line for line in lines[:40]):
                found.append(f"{rel}: {len(lines)} lines")
    return found


def test_no_module_over_700_lines_without_a_reason():
    assert oversized(ROOT, OVER_LIMIT_ALLOWED) == []


def test_the_size_check_finds_a_long_module_and_accepts_a_stated_reason(tmp_path):
    (tmp_path / "loadforge").mkdir()
    long = "x = 1\n" * (MAX_LINES + 1)
    (tmp_path / "loadforge" / "long.py").write_text(long)
    (tmp_path / "loadforge" / "said.py").write_text(
        f'"""Over {MAX_LINES} lines because a test says so."""\n' + long)
    (tmp_path / "loadforge" / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert oversized(str(tmp_path), {}) == [f"loadforge/long.py: {MAX_LINES + 1} lines"]
    assert oversized(str(tmp_path), {"loadforge/long.py": "allowed"}) == []


def test_every_package_folder_is_installed():
    # pyproject lists the packages by name: a folder missing there is missing from the wheel
    # (and from the container image), while an editable install still finds it.
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    folders = {os.path.relpath(d, ROOT).replace(os.sep, ".")
               for d, _, files in os.walk(os.path.join(ROOT, "loadforge"))
               if "__init__.py" in files}
    assert folders == listed, (sorted(folders - listed), sorted(listed - folders))
