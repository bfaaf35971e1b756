"""Hostile input through the command line (issue 21): FIFOs where files belong, flows modules
that never finish importing, input nested beyond Python's recursion limit, result files of the
wrong types. Each is exit 2 in one line naming the file, within a bounded time, never a
traceback or a hang."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import OK, ROOT, CannedServer, OneConnectionServer, loadforge

GOLDEN = os.path.join(ROOT, "tests", "data", "golden.parquet")


def one_line(out, *words: str, code: int = 2) -> str:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def profile(tmp_path: Path, extra: str = "", requests: str = '[[requests]]\nname = "home"\n'
            'path = "/"\n') -> str:
    path = tmp_path / "p.toml"
    path.write_text('name = "hostile"\ntarget = "http://127.0.0.1:9"\n[load]\nworkers = 1\n'
                    'connections = 2\n[[stages]]\nname = "s"\nrate = 5\nduration = "1s"\n'
                    f"{requests}{extra}")
    return str(path)


@pytest.mark.parametrize("command", [
    ["ls"], ["compare", GOLDEN], ["trend"], ["report", "--html", "{tmp}/r.html"],
    ["export", "--hlog", "{tmp}/x.hlog"]])
def test_a_fifo_named_parquet_is_refused_not_read(tmp_path, command):
    fifo = tmp_path / "run.parquet"
    os.mkfifo(fifo)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    out = loadforge(*args[:1], str(fifo), *args[1:], timeout=30)
    one_line(out, str(fifo), "not a regular file")
    assert out.stdout == ""                      # ls: no empty table before the error


def test_ls_of_a_symbolic_link_loop_says_so(tmp_path):
    loop = tmp_path / "loop.parquet"
    os.symlink(loop, loop)
    one_line(loadforge("ls", str(loop), timeout=30), "loop of symbolic links")


def test_a_fifo_as_a_feeder_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "users.csv")
    path = profile(tmp_path, '[[feeders]]\nname = "users"\nfile = "users.csv"\n',
                   '[[requests]]\nname = "home"\npath = "/u/{users.id}"\n')
    one_line(loadforge("run", path, "--quiet", "--out", str(tmp_path), timeout=30),
             "users.csv", "not a regular file")


def test_a_fifo_as_the_profile_is_refused(tmp_path):
    os.mkfifo(tmp_path / "p.toml")
    one_line(loadforge("run", str(tmp_path / "p.toml"), "--quiet", timeout=30),
             "p.toml", "not a regular file")


def test_a_missing_feeder_says_where_it_was_looked_for(tmp_path):
    path = profile(tmp_path, '[[feeders]]\nname = "users"\nfile = "user.csv"\n',
                   '[[requests]]\nname = "home"\npath = "/u/{users.id}"\n')
    one_line(loadforge("run", path, "--quiet", "--out", str(tmp_path), timeout=30),
             f"not found: {tmp_path / 'user.csv'} (paths are relative to the profile's folder)")


@pytest.mark.parametrize("body, words", [
    ("while True:\n    pass\n", ["did not finish within"]),
    ("import os\nos._exit(7)\n", ["ended the process (exit code 7)"]),
    ("import sys\nsys.exit(4)\n", ["ended the process (exit code 4)"]),
    ("input()\n", ["EOFError"]),
])
def test_a_flows_module_that_never_imports_is_exit_2_in_bounded_time(tmp_path, body, words):
    (tmp_path / "flows.py").write_text(body)
    path = profile(tmp_path, '[flows]\nmodule = "flows.py"\n', requests="")
    out = loadforge("run", path, "--quiet", "--out", str(tmp_path), timeout=60)
    one_line(out, "flows.py", *words)


def test_a_flows_module_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "flows.py")
    path = profile(tmp_path, '[flows]\nmodule = "flows.py"\n', requests="")
    one_line(loadforge("run", path, "--quiet", "--out", str(tmp_path), timeout=30),
             "flows.py", "not a regular file")


def test_a_profile_nested_500_deep_is_exit_2(tmp_path):
    path = profile(tmp_path, "[sandbox]\nx = " + "[" * 500 + "]" * 500 + "\n")
    one_line(loadforge("run", path, "--quiet", timeout=30), "nested too deeply")


@pytest.mark.parametrize("name, text", [
    ("users.json", "[" * 100_000 + "]" * 100_000),
    ("users.jsonl", '{"id": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
])
def test_a_feeder_nested_100000_deep_is_exit_2(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    path = profile(tmp_path, f'[[feeders]]\nname = "users"\nfile = "{name}"\n',
                   '[[requests]]\nname = "home"\npath = "/u/{users.id}"\n')
    one_line(loadforge("run", path, "--quiet", "--out", str(tmp_path), timeout=30),
             name, "nested too deeply")


def rewritten(tmp_path: Path, table=None, **metadata: str) -> str:
    """golden.parquet with its table or some loadforge.* metadata replaced."""
    source = pq.read_table(GOLDEN)
    table = table if table is not None else source
    meta = dict(source.schema.metadata or {})
    meta.update({f"loadforge.{k}".encode(): v.encode() for k, v in metadata.items()})
    path = tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    return str(path)


@pytest.mark.parametrize("command", [["ls"], ["compare", GOLDEN], ["trend"],
                                     ["export", "--hlog", "-"]])
def test_a_result_with_deeply_nested_stages_metadata_is_exit_2(tmp_path, command):
    bad = rewritten(tmp_path, stages="[" * 100_000 + "]" * 100_000)
    out = loadforge(*command[:1], bad, *command[1:], timeout=60)
    one_line(out, bad, "loadforge.stages", "nested too deeply")


def test_a_result_whose_count_holds_strings_is_exit_2(tmp_path):
    table = pq.read_table(GOLDEN)
    i = table.column_names.index("count")
    table = table.set_column(i, "count", pa.array([str(v) for v in
                                                   table.column("count").to_pylist()]))
    bad = rewritten(tmp_path, table)
    for command in (["ls"], ["compare", GOLDEN], ["report", "--html", str(tmp_path / "r.html")]):
        out = loadforge(*command[:1], bad, *command[1:], timeout=60)
        one_line(out, bad, "column count holds string, expected int64")


def test_a_good_result_still_lists(tmp_path):
    shutil.copy(GOLDEN, tmp_path / "g.parquet")
    out = loadforge("ls", "--json", str(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["run_id"]


def test_http2_to_an_http1_port_is_said_in_words(tmp_path):
    # The server answers HTTP/1.1 to the HTTP/2 preface: h2's own message quotes its bytes.
    server = CannedServer(OK)
    try:
        out = loadforge("run", "--target", server.url + "/", "--http", "2", "--rate", "5",
                        "--duration", "1s", "--quiet", "--out", str(tmp_path), timeout=60)
    finally:
        server.shutdown()
    line = one_line(out, "an HTTP/1.x answer to an HTTP/2 request", "does not speak HTTP/2",
                    code=3)
    assert "\\x" not in line and "Error" not in line          # no frame bytes, no class names


class Trickler(OneConnectionServer):
    """Accepts, reads what comes, then answers one byte every 0.2 s for at most 60 s: every
    read gets its byte well inside any read timeout, so only a deadline on the whole exchange
    ends it. Loopback only; the thread ends when stopped or after its 60 s."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(1)
        conn.recv(65536)
        for i in range(300):
            if self.stopped.wait(0.2):
                return
            conn.sendall(self.answer[i % len(self.answer):][:1])


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_a_trickling_server_fails_the_preflight_within_the_timeout(http: str) -> None:
    # HTTP/1.1: a status line that never ends; HTTP/2: a SETTINGS frame that never ends.
    answer = (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 4096 if http == "1.1"
              else b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" * 1000)
    server = Trickler(answer)
    try:
        out = loadforge("run", "--target", f"http://127.0.0.1:{server.port}/", "--http", http,
                        "--rate", "5", "--duration", "1s", "--timeout", "1s", "--workers", "1",
                        timeout=30)
    finally:
        server.stop()
    one_line(out, "no complete answer", f"127.0.0.1:{server.port}", code=3)
