"""Scripted flows (issue 13, part 2) against nginx on 127.0.0.1 with a login/cart API: a
token from POST /login, required by GET /cart. Counts match nginx's access log; steps and
flows have rows of their own; checks and failed flows are counted; open and closed models;
feeder rows; bad flow modules exit 2 with one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator

import pytest
from servers import ROOT, LoggingNginx, free_port

from loadforge.engine.tables import row_for
from loadforge.results.store import read_result

LOCATIONS = """
    # proxied, so that nginx reads the body and logs it ($request_body)
    location = /login {{ proxy_pass http://127.0.0.1:{port}/login_sink; }}
    location = /login_sink {{
      access_log off;
      add_header Set-Cookie "sid=s1; Path=/";
      default_type application/json;
      return 200 '{{"token":"abc"}}';
    }}
    location = /cart {{
      default_type application/json;
      if ($http_authorization != "Bearer abc") {{ return 401 '{{"error":"unauthorized"}}'; }}
      return 200 '{{"items":[1,2,3]}}';
    }}
    location = /boom {{ return 503 "down\\n"; }}
"""


@pytest.fixture(scope="module")
def server() -> Iterator[LoggingNginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    s = LoggingNginx("$request|$status|$http_authorization|$http_cookie|$request_body",
                     LOCATIONS, prefix="lf-flows-")
    yield s
    s.stop()


CHECKOUT = '''
from loadforge.flows import flow

@flow(weight=3)
async def checkout(user):
    r = await user.post("/login", json={"name": user.row["name"] if user.row else "x"},
                        name="login")
    token = r.json()["token"]
    await user.think("10ms")
    cart = await user.get("/cart", headers={"Authorization": f"Bearer {token}"}, name="cart")
    user.check(cart.status_code == 200 and b'"items"' in cart.content, "cart has items")
    user.vars["n"] = user.vars.get("n", 0) + 1

@flow
async def anonymous(user):
    cart = await user.get("/cart", name="cart anon")
    user.check(cart.status_code == 200, "anon cart")
    raise ValueError("no cart without a token")
'''


def write(folder: str, name: str, text: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def profile(folder: str, target: str, stages: str, *, module: str = "checkout.py",
            extra: str = "", workers: int = 2) -> str:
    return write(folder, "p.toml", f"""
name = "flows"
target = "{target}"
[load]
connections = 8
workers = {workers}
[flows]
module = "{module}"
{stages}
{extra}
""")


def run(path: str, out: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    summary = os.path.join(out, "summary.json")
    proc = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", path, "--quiet",
                           "--out", out, "--summary-json", summary, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    data = {}
    if os.path.exists(summary):
        with open(summary) as f:
            data = json.load(f)
    return proc, data


OPEN = """
[[stages]]
duration = "1s"
rate = 40
"""


def test_open_model_steps_flows_and_checks_match_nginx(server, tmp_path):
    write(str(tmp_path), "checkout.py", CHECKOUT)
    path = profile(str(tmp_path), server.url, OPEN, extra='[slo]\nchecks = "70%"')
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    lines = Counter((r[0], r[1]) for r in logged)
    # 40 arrivals, weights 3:1 in a smooth cycle: 30 checkouts, 10 anonymous flows
    assert lines == {("POST /login HTTP/1.1", "200"): 30, ("GET /cart HTTP/1.1", "200"): 30,
                     ("GET /cart HTTP/1.1", "401"): 10}
    # the token from /login's body and the cookie it set went out on the next step
    assert all(r[2] == "Bearer abc" and r[3] == "sid=s1" for r in logged if r[1] == "200"
               and r[0].startswith("GET"))
    assert all(r[4] == '{"name":"x"}' for r in logged if r[0].startswith("POST"))
    assert summary["requests"] == len(logged) == 70
    assert summary["scheduled"] == 40
    by_name = summary["requests_by_name"]
    assert by_name["login"]["requests"] == 30 and by_name["cart"]["requests"] == 30
    assert by_name["cart anon"]["requests"] == 10
    assert by_name["flow:checkout"]["requests"] == 30
    assert by_name["flow:checkout"]["latency_us"]["p50"] >= 10_000    # the think time
    assert by_name["flow:anonymous"] == {**by_name["flow:anonymous"], "requests": 0,
                                         "errors": 10}
    flows = summary["flows"]
    assert flows["checks"] == {"anon cart": {"passed": 0, "failed": 10},
                               "cart has items": {"passed": 30, "failed": 0}}
    assert flows["checks_rate"] == 0.75
    assert flows["failed_flows"] == {"anonymous": {"ValueError": 10}}
    assert [v["ok"] for v in summary["slo"] if v["objective"] == "checks"] == [True]
    # the rows in the file, by name (Parquet `name` column)
    result = read_result(summary["result"])
    names = {r["name"] for r in result.rows("run", name=None, outcome=None)}
    assert {"login", "cart", "cart anon", "flow:checkout", "flow:anonymous"} <= names
    assert json.loads(result.metadata["flows"])["checks_passed"] == 30


def test_checks_slo_fails_the_run(server, tmp_path):
    write(str(tmp_path), "checkout.py", CHECKOUT)
    path = profile(str(tmp_path), server.url, OPEN, extra='[slo]\nchecks = "99.9%"')
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    verdict = next(v for v in summary["slo"] if v["objective"] == "checks")
    assert not verdict["ok"] and verdict["observed"] == 0.75
    server.take()


def test_closed_model_users_loop_over_flows(server, tmp_path):
    write(str(tmp_path), "checkout.py", CHECKOUT)
    path = profile(str(tmp_path), server.url, """
[[stages]]
duration = "1s"
concurrency = 3
think = "50ms"
""")
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    flows = summary["requests_by_name"]
    done = flows["flow:checkout"]["requests"] + flows["flow:anonymous"]["errors"]
    # each of the 3 users ran at least one flow
    assert done >= 3
    assert summary["requests"] == len(logged)
    assert summary["scheduled"] == done
    assert flows["login"]["requests"] == flows["flow:checkout"]["requests"]


def test_feeder_rows_by_arrival_index(server, tmp_path):
    folder = str(tmp_path)
    write(folder, "users.csv", "name\nann\nbob\ncyd\n")
    write(folder, "checkout.py", '''
from loadforge.flows import flow

@flow
async def login(user):
    await user.post("/login", json={"name": user.row["name"]}, name="login")
''')
    path = profile(folder, server.url, """
[[feeders]]
name = "users"
file = "users.csv"
order = "random"
seed = 7
[[stages]]
duration = "1s"
rate = 12
""")
    server.take()
    proc, summary = run(path, folder)
    assert proc.returncode == 0, proc.stderr
    bodies = Counter(r[4] for r in server.take())
    names = ["ann", "bob", "cyd"]
    expected = Counter(json.dumps({"name": names[row_for(i, "random", 7, 3)]},
                                  separators=(",", ":")) for i in range(12))
    assert bodies == expected


def test_a_large_feeder_is_read_from_the_memory_mapped_table(server, tmp_path):
    """A feeder of 1 MiB or more: the flows' workers read their rows from the table the
    coordinator compiled and wrote to a file (memory-mapped), decoding only the rows the
    arrivals take; the values are the file's as they are (not the path's percent-encoding),
    the same rows whatever the worker count, and user.rows holds every feeder's."""
    import csv

    from loadforge.config.profile import load_profile
    from loadforge.engine.tables import MMAP_MIN_BYTES
    from loadforge.run.session import compile_feeders
    from loadforge.run.target import parse_target

    folder = str(tmp_path)
    rows = [(str(500_000 + i), f'n{i} caf\u00e9 "q", a/b?c=d&e%20 \u65e5' + "x" * 20)
            for i in range(40_000)]
    with open(os.path.join(folder, "users.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "name"])
        writer.writerows(rows)
    write(folder, "codes.jsonl", '{"code": "A"}\n{"code": 7}\n')
    write(folder, "checkout.py", '''
from loadforge.flows import flow

@flow
async def login(user):
    await user.post("/login", json={**user.row, "code": user.rows["codes"]["code"]},
                    name="login")
''')
    path = profile(folder, server.url, """
[[feeders]]
name = "users"
file = "users.csv"
order = "random"
seed = 5
[[feeders]]
name = "codes"
file = "codes.jsonl"
[[stages]]
duration = "1s"
rate = 30
""")
    compiled = compile_feeders(load_profile(path), parse_target(server.url))
    assert compiled.tables[0].file is not None and os.path.getsize(
        compiled.tables[0].file) >= MMAP_MIN_BYTES
    assert compiled.tables[1].file is None          # a small one travels inline
    compiled.cleanup()
    expected = Counter(
        json.dumps({"id": rows[r][0], "name": rows[r][1], "code": ["A", "7"][k % 2]},
                   sort_keys=True)
        for k, r in ((k, row_for(k, "random", 5, len(rows))) for k in range(30)))
    server.take()
    for workers in ("1", "3"):
        proc, summary = run(path, os.path.join(folder, workers), "--workers", workers)
        assert proc.returncode == 0, proc.stderr
        bodies = Counter(json.dumps(json.loads(r[4]), sort_keys=True) for r in server.take())
        assert bodies == expected
        assert summary["requests"] == 30


@pytest.mark.parametrize("rows,message", [
    ("name\n", "has no rows"),
    ("name\nann,extra\n", "row 1 has 2 fields"),
])
def test_a_bad_feeder_for_flows_exits_2_before_any_worker_starts(tmp_path, rows, message):
    folder = str(tmp_path)
    write(folder, "users.csv", rows)
    write(folder, "checkout.py", CHECKOUT)
    path = profile(folder, "http://127.0.0.1:1", """
[[feeders]]
name = "users"
file = "users.csv"
[[stages]]
duration = "1s"
rate = 5
""")
    proc, _ = run(path, folder, "--no-preflight")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_transport_errors_and_statuses_in_flows(server, tmp_path):
    """A step's 503 is recorded as 5xx under its name; a step to a port nobody listens on
    raises ConnectError in the flow, which is counted as failed with that type."""
    folder = str(tmp_path)
    write(folder, "checkout.py", '''
from loadforge.flows import flow

@flow
async def down(user):
    r = await user.get("/boom", name="boom")
    user.check(r.status_code == 503, "503 seen")
    r.raise_for_status()
''')
    path = profile(folder, server.url, OPEN.replace("40", "5"))
    proc, summary = run(path, folder)
    assert proc.returncode == 0, proc.stderr
    assert summary["status"]["5xx"] == 5
    assert summary["requests_by_name"]["boom"]["errors"] == 5
    assert summary["flows"]["failed_flows"] == {"down": {"HTTPStatusError": 5}}
    assert summary["flows"]["checks"]["503 seen"] == {"passed": 5, "failed": 0}
    server.take()


@pytest.mark.parametrize("source,message", [
    ("async def f(user)\n    pass\n", "syntax error at line 1"),
    ("x = 1\n", "no @flow function"),
    ("from loadforge.flows import flow\n@flow\ndef f(user):\n    user.get('/')\n",
     "flow f is not an async function"),
    ("from loadforge.flows import flow\n@flow\nasync def f(user):\n    user.get('/')\n",
     "flow f never awaits"),
    ("raise RuntimeError('nope')\n", "importing it raised RuntimeError: nope"),
])
def test_bad_flow_modules_exit_2_with_one_line(tmp_path, source, message):
    folder = str(tmp_path)
    write(folder, "checkout.py", source)
    path = profile(folder, f"http://127.0.0.1:{free_port()}", OPEN)
    proc, _ = run(path, folder)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "flows module checkout.py" in lines[0]


def test_flows_and_requests_together_is_bad_input(tmp_path):
    folder = str(tmp_path)
    write(folder, "checkout.py", CHECKOUT)
    path = profile(folder, f"http://127.0.0.1:{free_port()}",
                   OPEN + '[[requests]]\nname = "a"\npath = "/"\n')
    proc, _ = run(path, folder)
    assert proc.returncode == 2
    assert "cannot both be given" in proc.stderr


def test_flows_over_http2_is_bad_input(tmp_path):
    folder = str(tmp_path)
    write(folder, "checkout.py", CHECKOUT)
    path = profile(folder, f"http://127.0.0.1:{free_port()}", OPEN)
    proc, _ = run(path, folder, "--http", "2")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HTTP/1.1 only" in lines[0], proc.stderr


def test_step_names_are_found_before_the_run(tmp_path):
    from loadforge.flows.loader import OTHER_STEP, load

    path = write(str(tmp_path), "m.py", '''
from loadforge.flows import flow

@flow(weight=2, name="buy")
async def f(user):
    await user.get("/a")
    await user.post("/b", name="bee")
    await user.get(f"/c/{user.index}")
''')
    module = load(path)
    assert module.steps == ("GET /a", "bee", OTHER_STEP)
    assert module.names[-1] == "flow:buy" and module.flows[0].weight == 2


def test_flows_under_way_at_the_end_run_on(server, tmp_path):
    """A flow whose think time reaches past the stage's end still sends its last step (k6's
    graceful stop, bounded by load.timeout)."""
    folder = str(tmp_path)
    write(folder, "checkout.py", '''
from loadforge.flows import flow

@flow
async def slow(user):
    await user.get("/cart", name="first")
    await user.think("400ms")
    await user.get("/cart", name="second")
''')
    path = profile(folder, server.url, OPEN.replace("40", "5"))
    server.take()
    proc, summary = run(path, folder)
    assert proc.returncode == 0, proc.stderr
    assert len(server.take()) == 10
    by_name = summary["requests_by_name"]
    assert by_name["first"]["requests"] == by_name["second"]["requests"] == 5
    assert by_name["flow:slow"]["requests"] == 5


def test_a_unique_feeder_running_out_ends_the_flows(server, tmp_path):
    folder = str(tmp_path)
    write(folder, "users.csv", "name\nann\nbob\ncyd\n")
    write(folder, "checkout.py", '''
from loadforge.flows import flow

@flow
async def login(user):
    await user.post("/login", json={"name": user.row["name"]}, name="login")
''')
    path = profile(folder, server.url, """
[[feeders]]
name = "users"
file = "users.csv"
order = "unique"
[[stages]]
duration = "1s"
rate = 10
""")
    server.take()
    proc, summary = run(path, folder)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r[4] for r in server.take()) == [
        '{"name":"ann"}', '{"name":"bob"}', '{"name":"cyd"}']
    assert summary["feeder_exhausted"]["feeder"] == "users"
    assert summary["feeder_exhausted"]["rows"] == 3


def test_flows_over_tls(tmp_path):
    """An https:// target: the steps go through the TLS transport; counts match nginx's log."""
    trustme = pytest.importorskip("trustme")
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    from servers import Nginx

    folder = str(tmp_path)
    ca = trustme.CA()
    ca_pem = os.path.join(folder, "ca.pem")
    ca.cert_pem.write_to_path(ca_pem)
    pem = os.path.join(folder, "server.pem")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    server = Nginx(tls=f"ssl_certificate {pem}; ssl_certificate_key {pem};")
    try:
        write(folder, "checkout.py", '''
from loadforge.flows import flow

@flow
async def twice(user):
    a = await user.get("/", name="first")
    b = await user.get("/", name="second")
    user.check(a.status_code == b.status_code == 200 and a.content == b"ok\\n", "both ok")
''')
        path = profile(folder, server.url, OPEN.replace("40", "20"))
        before = server.served()
        proc, summary = run(path, folder, "--ca-cert", ca_pem)
        assert proc.returncode == 0, proc.stderr
        assert summary["requests"] == 40
        assert server.served() - before == 41          # + the preflight
        assert summary["flows"]["checks"] == {"both ok": {"passed": 20, "failed": 0}}
    finally:
        server.stop()


def test_sharded_flows_run_the_coordinators_text(server, tmp_path):
    """The module's text goes with each shard's spec (a Kubernetes pod has no copy of the
    file): two local shards run the flows, and the counts still match nginx's log."""
    write(str(tmp_path), "checkout.py", CHECKOUT)
    path = profile(str(tmp_path), server.url, OPEN)
    server.take()
    proc, summary = run(path, str(tmp_path), "--shards", "2", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert summary["requests"] == len(logged) == 70 and summary["scheduled"] == 40
    assert summary["flows"]["failed_flows"] == {"anonymous": {"ValueError": 10}}


def test_a_worker_without_the_module_file_loads_the_text_it_was_sent(tmp_path, monkeypatch):
    from loadforge.run.workers import load_flows

    module_path = write(str(tmp_path), "checkout.py", CHECKOUT)
    with open(module_path, "rb") as f:
        source = f.read()
    here = load_flows(module_path, source)
    assert here.path == module_path          # this machine's own, unchanged file
    os.remove(module_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    sent = load_flows(module_path, source)   # as on a pod: no such file here
    assert [f.name for f in sent.flows] == [f.name for f in here.flows]
    assert sent.steps == here.steps
    assert list(scratch.iterdir()) == []      # the copy is gone once imported


def test_checks_and_failed_flows_where_people_look(server, tmp_path):
    """A failing check is named in the terminal summary (✗ name passed / failed) and in the
    HTML report; failed flows by exception type carry one sample message; flows are counted
    apart from their steps; no row for an unused step:other."""
    write(str(tmp_path), "checkout.py", CHECKOUT)
    path = profile(str(tmp_path), server.url, OPEN)
    summary_path = os.path.join(str(tmp_path), "s.json")
    env = dict(os.environ, COLUMNS="120", NO_COLOR="1", TERM="dumb")
    proc = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", path, "--out",
                           str(tmp_path), "--summary-json", summary_path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    server.take()
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert re.search(r"✗ anon cart\s+0 / 10", text), text
    assert re.search(r"✓ cart has items\s+30 / 0", text), text
    assert "flow anonymous failed 10× with ValueError: no cart without a token" in text
    assert "flows: 40 scheduled, 30 completed, 10 failed" in text and "70 step" in text
    assert "step:other" not in text
    # The headline counts flows (40 scheduled, 30 completed at 30/s against 40/s, 25 % failed)
    # and the steps on a table of their own (70 requests, 10 of them errors).
    assert re.search(r"all\s+40\s+30\s+0\s+40\.0\s+30\.0\s+25\s", text), text
    assert re.search(r"steps \(the requests of the flows\)", text), text
    assert re.search(r"all\s+70\s+70\.0\s+10\s+14\.3\s", text), text
    with open(summary_path) as f:
        summary = json.load(f)
    assert summary["flow_totals"] == {"completed": 30, "failed": 10, "achieved_rps": 30.0,
                                      "failure_rate": 0.25}
    assert summary["requests"] == 70 and summary["stages"][0]["flow_totals"]["completed"] == 30
    assert summary["flows"]["failed_flow_samples"] == {
        "anonymous": {"ValueError": "no cart without a token"}}
    html = os.path.join(str(tmp_path), "r.html")
    report = subprocess.run([sys.executable, "-m", "loadforge.cli", "report",
                             summary["result"], "--html", html], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    with open(html) as f:
        page = f.read()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
    assert data["runs"][0]["flows"]["checks"]["anon cart"] == {"passed": 0, "failed": 10}
    compared = subprocess.run([sys.executable, "-m", "loadforge.cli", "compare",
                               summary["result"], summary["result"]], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    assert "✗ check anon cart:" in compared.stdout and "0 / 10" in compared.stdout
    assert "✗ flow anonymous failed with ValueError:" in compared.stdout
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        with tempfile.TemporaryDirectory() as profile_dir:
            dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                  "--no-first-run", f"--user-data-dir={profile_dir}",
                                  "--dump-dom", "file://" + html],
                                 capture_output=True, text=True, timeout=60)
        assert "Flows: checks and failures" in dom.stdout
        assert "anon cart" in dom.stdout and "no cart without a token" in dom.stdout
