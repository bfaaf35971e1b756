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
