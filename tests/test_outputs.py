"""Output files as a user names them: written through symlinks, into FIFOs, `-` for stdout,
modes from the umask (loadforge/present/outputs.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import pytest
from servers import ROOT, loadforge


def run_cli(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, preexec_fn=set_umask)


def short_run(nginx, tmp_path, *extra: str, umask: int | None = None, quiet: bool = True
              ) -> subprocess.CompletedProcess[str]:
    return run_cli("run", "--target", nginx.url + "/", "--rate", "50", "--duration", "1s",
                   "--out", str(tmp_path / "results"), *(["--quiet"] if quiet else []), *extra,
                   umask=umask)


@pytest.fixture(scope="module")
def result_file(nginx, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("outputs")
    out = short_run(nginx, tmp, "--summary-json", str(tmp / "s.json"))
    assert out.returncode == 0, out.stderr
    return json.loads((tmp / "s.json").read_text())["result"]


def test_summary_json_is_written_through_a_symlink(nginx, tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "summary.json"
    link.symlink_to(tmp_path / "real" / "target.json")      # dangling until written
    out = short_run(nginx, tmp_path, "--summary-json", str(link))
    assert out.returncode == 0, out.stderr
    assert link.is_symlink()
    assert json.loads((tmp_path / "real" / "target.json").read_text())["requests"] == 50
    # A second run rewrites the target, still through the link.
    out = short_run(nginx, tmp_path, "--summary-json", str(link))
    assert out.returncode == 0, out.stderr
    assert link.is_symlink() and json.loads(link.read_text())["requests"] == 50
    assert sorted(os.listdir(tmp_path / "real")) == ["target.json"]


def read_fifo(path: str, into: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as fifo:
            into.append(fifo.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_summary_json_and_junit_are_written_into_fifos(nginx, tmp_path):
    summary_fifo, junit_fifo = str(tmp_path / "summary"), str(tmp_path / "junit")
    os.mkfifo(summary_fifo)
    os.mkfifo(junit_fifo)
    got_summary: list[bytes] = []
    got_junit: list[bytes] = []
    threads = [read_fifo(summary_fifo, got_summary), read_fifo(junit_fifo, got_junit)]
    out = short_run(nginx, tmp_path, "--summary-json", summary_fifo, "--junit", junit_fifo)
    for thread in threads:
        thread.join(timeout=10)
    assert out.returncode == 0, out.stderr
    assert json.loads(got_summary[0])["requests"] == 50
    assert got_junit[0].startswith(b"<?xml")
    assert stat.S_ISFIFO(os.stat(summary_fifo).st_mode)
    assert stat.S_ISFIFO(os.stat(junit_fifo).st_mode)


def test_dash_puts_the_json_on_stdout_and_the_tables_on_stderr(nginx, tmp_path):
    out = short_run(nginx, tmp_path, "--summary-json", "-", quiet=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["requests"] == 50
    assert "latency of successful responses, from intended send time" in out.stderr


def test_a_device_is_written_into_not_replaced(nginx, tmp_path):
    # /proc/self/fd/1 as /dev/stdout links to it; a rename over either would replace it (on
    # /dev, for the whole machine); the JSON must come out of the pipe instead.
    out = short_run(nginx, tmp_path, "--summary-json", "/proc/self/fd/1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["requests"] == 50


def test_two_outputs_on_stdout_exit_2(nginx, tmp_path):
    out = short_run(nginx, tmp_path, "--summary-json", "-", "--junit", "-")
    assert out.returncode == 2
    assert "only one output can be '-'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_new_files_follow_the_umask(nginx, tmp_path, umask, mode):
    out = short_run(nginx, tmp_path, "--summary-json", str(tmp_path / "s.json"), "--junit",
                    str(tmp_path / "j.xml"), umask=umask)
    assert out.returncode == 0, out.stderr
    for name in ("s.json", "j.xml"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


def test_a_rewritten_file_keeps_its_mode(nginx, tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{}")
    path.chmod(0o600)
    out = short_run(nginx, tmp_path, "--summary-json", str(path))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["requests"] == 50


def test_hlog_and_html_through_a_symlink_and_to_stdout(result_file, tmp_path):
    (tmp_path / "real").mkdir()
    for option, command, name in (("--hlog", "export", "run.hlog"),
                                  ("--html", "report", "run.html")):
        link = tmp_path / name
        link.symlink_to(tmp_path / "real" / name)
        out = loadforge(command, result_file, option, str(link))
        assert out.returncode == 0, out.stderr
        assert link.is_symlink() and (tmp_path / "real" / name).stat().st_size > 0
        out = loadforge(command, result_file, option, "-")
        assert out.returncode == 0, out.stderr
        assert out.stdout == (tmp_path / "real" / name).read_text()
        assert str(out.stderr).strip()          # the one-line note went to stderr


def test_compare_junit_on_stdout_moves_the_table_to_stderr(result_file):
    out = loadforge("compare", result_file, result_file, "--junit", "-")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<?xml")
    assert "p99" in out.stderr


def test_a_directory_is_refused_with_exit_2(result_file, tmp_path):
    out = loadforge("export", result_file, "--hlog", str(tmp_path))
    assert out.returncode == 2
    assert "is a directory" in out.stderr and "Traceback" not in out.stderr
