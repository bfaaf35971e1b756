"""Feeders and request templates (issue 13, part 1) against nginx on 127.0.0.1: the request
lines, headers and bodies nginx logged match the feeder rows for every order, whatever the
worker count; environment values stay out of the results; bad input exits 2 with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from servers import ROOT, LoggingNginx

from loadforge.analysis.readback import plan_of_result
from loadforge.engine.tables import row_for
from loadforge.results.store import read_result

TOKEN = "tok-5e3cr3t-value"

LOCATIONS = """
    # proxied, so that nginx reads the body and logs it ($request_body)
    location /post {{ proxy_pass http://127.0.0.1:{port}/sink; }}
    location /sink {{ access_log off; return 200 "ok\\n"; }}
    # the body read and discarded, in memory
    location /big {{ client_max_body_size 4m; return 200 "ok\\n"; }}
"""


@pytest.fixture(scope="module")
def server() -> Iterator[LoggingNginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    s = LoggingNginx("$request|$http_authorization|$http_x_term|$request_body", LOCATIONS,
                     prefix="lf-feeders-")
    yield s
    s.stop()


ROWS = [("1", "apple"), ("2", "a b&c"), ("3", "x/y?z"), ("4", "q=1;r%"), ("5", "plain")]


def write_rows(folder: str, rows: list[tuple[str, str]] = ROWS) -> None:
    with open(os.path.join(folder, "users.csv"), "w", encoding="utf-8") as f:
        f.write("id,term\n")
        for i, t in rows:
            f.write(f'{i},"{t}"\n')


def profile(folder: str, target: str, order: str, rate: int, *, seed: int = 0,
            extra: str = "", requests: str | None = None) -> str:
    text = f"""
name = "feeders"
target = "{target}"
[load]
connections = 4
[[feeders]]
name = "users"
file = "users.csv"
order = "{order}"
seed = {seed}
[[stages]]
duration = "1s"
rate = {rate}
{extra}
""" + (requests if requests is not None else """
[[requests]]
name = "item"
path = "/items/{users.id}?q={users.term}"
headers = { Authorization = "Bearer ${TOKEN}", X-Term = "{users.term}" }
""")
    path = os.path.join(folder, "p.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def run(path: str, out: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    summary = os.path.join(out, "summary.json")
    proc = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", path, "--quiet",
                           "--out", out, "--summary-json", summary, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TOKEN": TOKEN, "LF_QUOTED": LF_QUOTED})
    data = {}
    if os.path.exists(summary):
        with open(summary) as f:
            data = json.load(f)
    return proc, data


def expected_line(row: int) -> str:
    i, term = ROWS[row]
    return f"GET /items/{i}?q={quote(term.encode(), safe='')} HTTP/1.1"


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_rows_follow_the_arrival_sequence_whatever_the_worker_count(server, tmp_path, order):
    write_rows(str(tmp_path))
    path = profile(str(tmp_path), server.url, order, 40, seed=7)
    logs = []
    for workers in ("1", "3"):
        proc, summary = run(path, str(tmp_path / f"out{workers}"), "--workers", workers)
        assert proc.returncode == 0, proc.stderr
        logged = server.take()
        assert len(logged) == summary["requests"] == 40
        expected = Counter(expected_line(row_for(k, order, 7, len(ROWS))) for k in range(40))
        assert Counter(r[0] for r in logged) == expected
        for line, auth, term, _ in logged:
            row = next(i for i in range(len(ROWS)) if expected_line(i) == line)
            assert auth == f"Bearer {TOKEN}"
            assert term == ROWS[row][1]
        logs.append(Counter(r[0] for r in logged))
    assert logs[0] == logs[1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unique_sends_each_row_once_and_ends_the_run(server, tmp_path, workers):
    rows = [(str(i), f"t{i}") for i in range(30)]
    write_rows(str(tmp_path), rows)
    path = profile(str(tmp_path), server.url, "unique", 100)
    proc, summary = run(path, str(tmp_path / "out"), "--workers", workers)
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert sorted(r[0] for r in logged) == sorted(
        f"GET /items/{i}?q={t} HTTP/1.1" for i, t in rows)
    assert summary["requests"] == 30
    assert summary["feeder_exhausted"]["feeder"] == "users"
    assert summary["feeder_exhausted"]["rows"] == 30
    assert "ran out of its 30 rows" in proc.stdout + proc.stderr


def test_unique_across_shards_sends_each_row_once(server, tmp_path):
    """A sharded run carries the tables inline in each shard's plan; the shards' workers
    share the run-wide arrival sequence, and the end is reported through the shards."""
    rows = [(str(i), f"t{i}") for i in range(40)]
    write_rows(str(tmp_path), rows)
    path = profile(str(tmp_path), server.url, "unique", 100)
    proc, summary = run(path, str(tmp_path / "out"), "--shards", "2", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert sorted(r[0] for r in logged) == sorted(
        f"GET /items/{i}?q={t} HTTP/1.1" for i, t in rows)
    assert summary["feeder_exhausted"]["rows"] == 40


def test_unique_running_out_stops_workers_that_take_none_of_its_rows(server, tmp_path):
    """Two workers, two requests in turn: worker 0 sends every templated one, worker 1 every
    fixed one; when worker 0 runs out of rows, worker 1 stops too."""
    write_rows(str(tmp_path), [(str(i), f"t{i}") for i in range(10)])
    path = profile(str(tmp_path), server.url, "unique", 100, requests="""
[[requests]]
name = "item"
path = "/items/{users.id}?q={users.term}"
[[requests]]
name = "fixed"
path = "/fixed"
""")
    text = open(path).read().replace('duration = "1s"', 'duration = "20s"')
    with open(path, "w") as f:
        f.write(text)
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "2", "--no-preflight")
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert sum(1 for r in logged if r[0].startswith("GET /items/")) == 10
    assert sum(1 for r in logged if r[0] == "GET /fixed HTTP/1.1") < 100
    assert summary["feeder_exhausted"]["rows"] == 10 and summary["ran_s"] < 5


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_templated_body_with_computed_length_and_a_fixed_request_beside(request, tmp_path, http):
    # over HTTP/2 nginx checks the body against content-length (400 when they differ)
    server = request.getfixturevalue("server" if http == "1.1" else "h2_server")
    version = "HTTP/1.1" if http == "1.1" else "HTTP/2.0"
    write_rows(str(tmp_path))
    with open(tmp_path / "order.json", "w") as f:
        f.write('{"user": "{users.id}", "term": "{users.term}"}')
    path = profile(str(tmp_path), server.url, "sequential", 20, requests="""
[[requests]]
name = "order"
method = "POST"
path = "/post/{users.id}"
body_file = "order.json"
headers = { Content-Type = "application/json" }
[[requests]]
name = "fixed"
path = "/fixed"
""")
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "2", "--no-preflight",
                        "--http", http)
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    posts = [r for r in logged if r[0].startswith("POST")]
    assert len(posts) == 10 and len(logged) == 20
    assert sum(1 for r in logged if r[0] == f"GET /fixed {version}") == 10
    # The feeder index counts the arrivals of the requests that use it: 0..9 for the posts.
    expected = Counter()
    for k in range(10):
        i, term = ROWS[k % len(ROWS)]
        expected[(f"POST /post/{i} {version}", json.dumps({"user": i, "term": term},
                                                          ensure_ascii=False))] += 1
    got = Counter((r[0], json.dumps(json.loads(r[3]), ensure_ascii=False)) for r in posts)
    assert got == expected
    assert summary["status"]["2xx"] == 20 and summary["errors"] == 0


# Values a JSON string must escape (quotes, backslashes, control characters) and values it
# carries as they are (non-ASCII, U+2028, \x7f, what looks like an escape or a slot).
JSON_VALUES = ['say "hi"', "back\\slash \\n \\u0041", "two\nlines\r\tand a tab", "\x01\x1f\x7f",
               "caf\u00e9 \u65e5\u672c \U0001f600 \u2028", "{users.id} {\"a\": [1]}", "plain"]


def test_feeder_values_in_json_bodies_are_escaped(server, tmp_path):
    """A JSON body (Content-Type application/json or +json; a body_file ending in .json
    without a Content-Type): a slot inside a JSON string takes the value JSON-escaped, a slot
    outside one (a number) takes it as it is; every body nginx logged parses and carries each
    value exactly."""
    with open(tmp_path / "users.jsonl", "w", encoding="utf-8") as f:
        for i, name in enumerate(JSON_VALUES):
            f.write(json.dumps({"id": i, "name": name}) + "\n")
    with open(tmp_path / "order.json", "w") as f:
        f.write('{"user": {users.id}, "name": "{users.name}", "note": "a \\"{users.name}\\""}')
    path = profile(str(tmp_path), server.url, "sequential", 28, requests="""
[[requests]]
name = "inline"
method = "POST"
path = "/post/inline/{users.id}"
body = '[{"name": "{users.name}"}, "\\\\", {users.id}]'
headers = { Content-Type = "application/vnd.api+json; charset=utf-8" }
[[requests]]
name = "file"
method = "POST"
path = "/post/file/{users.id}"
body_file = "order.json"
""")
    text = open(path).read().replace('file = "users.csv"', 'file = "users.jsonl"')
    with open(path, "w") as f:
        f.write(text)
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "2", "--no-preflight")
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert len(logged) == summary["requests"] == 28
    seen = Counter()
    for line, _, _, body in logged:
        kind, i = line.split()[1].split("/")[2:4]
        name = JSON_VALUES[int(i)]
        expected = ([{"name": name}, "\\", int(i)] if kind == "inline" else
                    {"user": int(i), "name": name, "note": f'a "{name}"'})
        assert json.loads(body) == expected, body
        seen[kind] += 1
    assert seen == {"inline": 14, "file": 14}
    assert summary["status"]["2xx"] == 28


LF_QUOTED = 'pa"ss\\word\nline two'


def test_environment_values_in_json_strings_are_escaped(server, tmp_path):
    """${VAR} inside a JSON body's string goes in JSON-escaped, in a templated body and in a
    fixed one; outside a string (or in a body that is not JSON) as it is."""
    write_rows(str(tmp_path))
    path = profile(str(tmp_path), server.url, "sequential", 8, requests="""
[[requests]]
name = "templated"
method = "POST"
path = "/post/t/{users.id}"
body = '{"user": "{users.id}", "secret": "${LF_QUOTED}"}'
headers = { Content-Type = "application/json" }
[[requests]]
name = "fixed"
method = "POST"
path = "/post/f/0"
body = '{"secret": "x ${LF_QUOTED}"}'
headers = { Content-Type = "application/json" }
""")
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "1", "--no-preflight")
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert len(logged) == summary["requests"] == 8
    for line, _, _, body in logged:
        data = json.loads(body)
        if "/post/t/" in line:
            assert data == {"user": line.split()[1].split("/")[3], "secret": LF_QUOTED}
        else:
            assert data == {"secret": f"x {LF_QUOTED}"}


@pytest.mark.parametrize("content_type,body_file,expected", [
    ("application/json", None, True),
    ("Application/JSON; charset=utf-8", "a.txt", True),
    ("application/merge-patch+json", None, True),
    ("text/plain", "order.json", False),        # the header decides when there is one
    (None, "order.json", True),
    (None, "order.JSON", True),
    (None, "order.txt", False),
    (None, None, False),
])
def test_which_bodies_are_json(content_type, body_file, expected):
    from loadforge.config.feeders import is_json_body

    assert is_json_body(content_type, body_file) is expected


def test_slots_inside_json_strings_are_escaped_and_the_others_are_not():
    from loadforge.config.feeders import JSON, RAW, Slot, body_encodings

    s = Slot("u", "v")
    cases = [
        ((b'{"a": "', s, b'"}'), [RAW, JSON, RAW]),
        ((b'{"a": ', s, b"}"), [RAW, RAW, RAW]),
        ((b'{"', s, b'": 1}'), [RAW, JSON, RAW]),                   # a key
        ((b'{"a": "x\\"', s, b'"}'), [RAW, JSON, RAW]),            # after an escaped quote
        ((b'{"a": "\\\\"', s, b"}"), [RAW, RAW, RAW]),           # after a closed string
        ((b'["', s, b'", ', s, b', "', s, s, b'"]'), [RAW, JSON, RAW, RAW, RAW, JSON, JSON, RAW]),
        ((s,), [RAW]),
    ]
    for body, expected in cases:
        assert body_encodings(body, True) == expected, body
        assert body_encodings(body, False) == [RAW] * len(body)


def test_a_large_templated_body_goes_out_whole_over_partial_writes(server, tmp_path):
    """A 900 KB body with a slot at its end: more than a socket buffer takes at once, so the
    engine finishes it on EPOLLOUT; a wrong Content-Length would leave nginx waiting (a
    timeout) or reading the rest as a request (400)."""
    write_rows(str(tmp_path))
    with open(tmp_path / "big.txt", "w") as f:
        f.write("x" * 900_000 + "{users.term}")
    path = profile(str(tmp_path), server.url, "sequential", 10, requests="""
[[requests]]
name = "big"
method = "POST"
path = "/big"
body_file = "big.txt"
""")
    proc, summary = run(path, str(tmp_path / "out"), "--no-preflight")
    assert proc.returncode == 0, proc.stderr
    assert summary["requests"] == 10
    assert len(server.take()) == 10
    assert summary["status"]["2xx"] == 10 and summary["errors"] == 0


def test_environment_values_stay_out_of_the_results(server, tmp_path):
    write_rows(str(tmp_path))
    path = profile(str(tmp_path), server.url, "sequential", 10, requests="""
[[requests]]
name = "item"
path = "/items/{users.id}"
headers = { Authorization = "Bearer ${TOKEN}", X-Api = "${TOKEN}" }
""")
    proc, summary = run(path, str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert all(r[1] == f"Bearer {TOKEN}" for r in server.take())
    with open(summary["result"], "rb") as f:
        assert TOKEN.encode() not in f.read()
    assert TOKEN not in json.dumps(summary) and TOKEN not in proc.stdout + proc.stderr
    result = read_result(summary["result"])
    assert TOKEN not in json.dumps(result.metadata, default=str)
    # Read back later, without the environment or the files: its objectives still judged.
    assert "TOKEN" not in os.environ
    assert plan_of_result(result) is not None


def test_unique_in_the_closed_model_ends_the_run(server, tmp_path):
    rows = [(str(i), f"t{i}") for i in range(200)]
    write_rows(str(tmp_path), rows)
    path = profile(str(tmp_path), server.url, "unique", 1, requests="""
[[requests]]
name = "item"
path = "/items/{users.id}?q={users.term}"
""")
    text = open(path).read().replace('rate = 1', 'concurrency = 3')
    with open(path, "w") as f:
        f.write(text.replace('duration = "1s"', 'duration = "20s"'))
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "2", "--no-preflight")
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert sorted(r[0] for r in logged) == sorted(
        f"GET /items/{i}?q={t} HTTP/1.1" for i, t in rows)
    assert summary["requests"] == 200 and summary["feeder_exhausted"]["rows"] == 200
    assert summary["ran_s"] < 20


def test_a_large_feeder_is_memory_mapped_and_read_the_same(server, tmp_path):
    rows = [(str(1_000_000 + i), "x" * 20 + str(i)) for i in range(60_000)]
    write_rows(str(tmp_path), rows)
    path = profile(str(tmp_path), server.url, "random", 300, seed=3)
    from loadforge.config.profile import load_profile
    from loadforge.engine.tables import MMAP_MIN_BYTES
    from loadforge.run.session import compile_feeders
    from loadforge.run.target import parse_target

    os.environ["TOKEN"] = "x"
    try:
        compiled = compile_feeders(load_profile(path), parse_target(server.url))
    finally:
        del os.environ["TOKEN"]
    assert compiled.tables[0].file is not None and os.path.getsize(
        compiled.tables[0].file) >= MMAP_MIN_BYTES
    compiled.cleanup()
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    expected = Counter(f"GET /items/{rows[r][0]}?q={rows[r][1]} HTTP/1.1"
                       for r in (row_for(k, "random", 3, len(rows)) for k in range(300)))
    assert Counter(r[0] for r in logged) == expected
    assert not [d for d in os.listdir(tempfile.gettempdir())
                if d.startswith("loadforge-feeders-") and
                os.path.getmtime(os.path.join(tempfile.gettempdir(), d)) > time.time() - 5]


BAD = [
    ("missing column", {"path": "/items/{users.nope}"}, "has no column 'nope'"),
    ("unknown feeder", {"path": "/items/{people.id}"}, "names no feeder 'people'"),
    ("missing env", {"headers": '{ Authorization = "Bearer ${LF_NOT_SET_H4}" }'},
     "environment variable LF_NOT_SET_H4 is not set"),
    ("unreadable file", {"file": "missing.csv"},
     "/missing.csv (paths are relative to the profile's folder)"),
    ("malformed csv", {"rows": "id,term\n1,a,extra\n"}, "row 1 has 3 fields"),
    ("malformed jsonl", {"file": "users.jsonl", "rows": '{"id": 1}\n{nope\n'},
     "line 2 is not JSON"),
    ("CR in a header value", {"headers": '{ X-Term = "{users.term}" }',
                              "rows": 'id,term\n1,"a\rb"\n'}, "CR, LF"),
    ("non-ASCII in a header value", {"headers": '{ X-Term = "{users.term}" }',
                                     "rows": 'id,term\n1,caf\u00e9\n'}, "non-ASCII"),
    ("unused feeder's file missing", {"file": "missing.csv", "path": "/x"},
     "not found: "),
    ("bad order", {"order": "shuffled"}, "order must be one of"),
    ("body_file missing", {"body_file": "nope.json"}, "not found: "),
]


@pytest.mark.parametrize("case,change,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, case, change, message):
    file = change.get("file", "users.csv")
    with open(tmp_path / file if file != "missing.csv" else tmp_path / "users.csv", "w") as f:
        f.write(change.get("rows", "id,term\n1,a\n"))
    req = f'path = "{change.get("path", "/items/{users.id}")}"\n'
    if "headers" in change:
        req += f"headers = {change['headers']}\n"
    if "body_file" in change:
        req += f'method = "POST"\nbody_file = "{change["body_file"]}"\n'
    text = f"""
target = "http://127.0.0.1:1"
[[feeders]]
name = "users"
file = "{file}"
order = "{change.get('order', 'sequential')}"
[[stages]]
duration = "1s"
rate = 5
[[requests]]
{req}"""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", str(path), "--quiet",
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0], lines[0]


def test_connection_buffers_past_the_cap_exit_2(tmp_path):
    write_rows(str(tmp_path))
    with open(tmp_path / "big.txt", "w") as f:
        f.write("x" * 900_000 + "{users.term}")
    path = profile(str(tmp_path), "http://127.0.0.1:1", "sequential", 10, requests="""
[[requests]]
method = "POST"
path = "/big"
body_file = "big.txt"
""")
    text = open(path).read().replace("connections = 4", "connections = 1000")
    with open(path, "w") as f:
        f.write(text)
    proc, _ = run(path, str(tmp_path / "out"), "--workers", "1")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MiB per worker" in lines[0], proc.stderr


def test_stream_buffers_past_the_cap_exit_2_over_http2(tmp_path):
    """Over HTTP/2 each stream slot holds a buffer: one connection of 1,000 streams counts as
    1,000 buffers."""
    write_rows(str(tmp_path))
    with open(tmp_path / "big.txt", "w") as f:
        f.write("x" * 900_000 + "{users.term}")
    path = profile(str(tmp_path), "http://127.0.0.1:1", "sequential", 10, requests="""
[[requests]]
method = "POST"
path = "/big"
body_file = "big.txt"
""")
    proc, _ = run(path, str(tmp_path / "out"), "--workers", "1", "--http", "2",
                  "--connections", "1", "--streams", "1000")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MiB per worker" in lines[0] and "streams" in lines[0], \
        proc.stderr


def test_a_header_value_with_cr_exits_2_over_http2(tmp_path):
    write_rows(str(tmp_path), [("1", "a\rb")])
    path = profile(str(tmp_path), "http://127.0.0.1:1", "sequential", 10)
    proc, _ = run(path, str(tmp_path / "out"), "--http", "2")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CR, LF" in lines[0], proc.stderr


def test_json_lines_and_json_arrays_read_the_same(tmp_path):
    from loadforge.config.feeders import Feeder, load_rows

    (tmp_path / "a.jsonl").write_text('{"id": 1, "name": "x"}\n\n{"id": 2, "name": "y"}\n')
    (tmp_path / "b.json").write_text('[{"id": 1, "name": "x"},\n {"id": 2, "name": "y"}]')
    out = []
    for name in ("a.jsonl", "b.json"):
        columns, rows = load_rows(Feeder("f", name, str(tmp_path / name)), "here")
        out.append((columns, [row for chunk in rows for row in chunk]))
    assert out[0] == out[1] == (["id", "name"], [["1", "x"], ["2", "y"]])


def test_row_for_matches_the_documented_orders():
    assert [row_for(k, "sequential", 0, 3) for k in range(5)] == [0, 1, 2, 0, 1]
    assert [row_for(k, "unique", 0, 3) for k in range(4)] == [0, 1, 2, None]
    draws = [row_for(k, "random", 42, 1000) for k in range(2000)]
    assert draws == [row_for(k, "random", 42, 1000) for k in range(2000)]
    assert draws != [row_for(k, "random", 43, 1000) for k in range(2000)]
    assert len(set(draws)) > 800


# -- over HTTP/2 (h2c by prior knowledge, h2 by ALPN over TLS) ---------------------------------

@pytest.fixture(scope="module")
def h2_server() -> Iterator[LoggingNginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    s = LoggingNginx("$request|$http_authorization|$http_x_term|$request_body", LOCATIONS,
                     prefix="lf-feeders-h2-", http2=True)
    yield s
    s.stop()


def as_http1(logged: list[list[str]]) -> Counter:
    """nginx's log lines of HTTP/2 requests, their protocol written as HTTP/1.1's."""
    for r in logged:
        assert r[0].endswith(" HTTP/2.0"), r[0]
    return Counter((r[0][:-len("HTTP/2.0")] + "HTTP/1.1", *r[1:]) for r in logged)


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_templates_over_http2_send_the_rows_http1_sends(h2_server, tmp_path, order):
    """Path, header and environment slots over h2c, many streams on few connections: nginx
    logged the rows the HTTP/1.1 test expects (the same function of the arrival index), with
    two workers."""
    write_rows(str(tmp_path))
    path = profile(str(tmp_path), h2_server.url, order, 60, seed=7)
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "2", "--http", "2",
                        "--connections", "2", "--streams", "16")
    assert proc.returncode == 0, proc.stderr
    logged = h2_server.take()
    assert len(logged) == summary["requests"] == 60 and summary["errors"] == 0
    expected = Counter()
    for k in range(60):
        row = row_for(k, order, 7, len(ROWS))
        expected[(expected_line(row), f"Bearer {TOKEN}", ROWS[row][1], "")] += 1
    assert as_http1(logged) == expected


@pytest.mark.parametrize("model", ["rate", "concurrency"])
def test_unique_over_http2_sends_each_row_once_and_ends_the_run(h2_server, tmp_path, model):
    rows = [(str(i), f"t{i}") for i in range(40)]
    write_rows(str(tmp_path), rows)
    path = profile(str(tmp_path), h2_server.url, "unique", 100)
    if model == "concurrency":
        # 8 users per worker, all streams of one connection: submitted together, each with
        # its own values
        text = open(path).read().replace("rate = 100", "concurrency = 16")
        text = text.replace("connections = 4", "connections = 16")
        with open(path, "w") as f:
            f.write(text.replace('duration = "1s"', 'duration = "20s"'))
    proc, summary = run(path, str(tmp_path / "out"), "--workers", "2", "--http", "2",
                        "--no-preflight")
    assert proc.returncode == 0, proc.stderr
    logged = h2_server.take()
    assert sorted(r[0] for r in logged) == sorted(
        f"GET /items/{i}?q={t} HTTP/2.0" for i, t in rows)
    assert summary["requests"] == 40 and summary["errors"] == 0
    assert summary["feeder_exhausted"]["feeder"] == "users"
    assert summary["feeder_exhausted"]["rows"] == 40
    assert summary["ran_s"] < 10


def test_unique_over_http2_across_shards_sends_each_row_once(h2_server, tmp_path):
    rows = [(str(i), f"t{i}") for i in range(40)]
    write_rows(str(tmp_path), rows)
    path = profile(str(tmp_path), h2_server.url, "unique", 100)
    proc, summary = run(path, str(tmp_path / "out"), "--shards", "2", "--workers", "2",
                        "--http", "2")
    assert proc.returncode == 0, proc.stderr
    logged = h2_server.take()
    assert sorted(r[0] for r in logged) == sorted(
        f"GET /items/{i}?q={t} HTTP/2.0" for i, t in rows)
    assert summary["feeder_exhausted"]["rows"] == 40


def test_templates_over_h2_by_alpn(tmp_path):
    """Over TLS: h2 negotiated by ALPN, the same rows."""
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    pem = str(tmp_path / "server.pem")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    server = LoggingNginx("$request|$http_authorization|$http_x_term|$request_body", LOCATIONS,
                          prefix="lf-feeders-h2tls-", http2=True,
                          tls=f"ssl_certificate {pem}; ssl_certificate_key {pem};")
    try:
        write_rows(str(tmp_path))
        path = profile(str(tmp_path), server.url, "sequential", 30)
        proc, summary = run(path, str(tmp_path / "out"), "--http", "2", "--ca-cert",
                            str(tmp_path / "ca.pem"))
        assert proc.returncode == 0, proc.stderr
        assert summary["tls"]["alpn"] == "h2"
        logged = server.take()
        expected = Counter((expected_line(k % len(ROWS)), f"Bearer {TOKEN}",
                            ROWS[k % len(ROWS)][1], "") for k in range(30))
        assert as_http1(logged) == expected
    finally:
        server.stop()
