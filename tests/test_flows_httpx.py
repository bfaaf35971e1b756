"""httpx inside a flow (issue 13: "a flow may use httpx itself ... as a slower path; its
requests are timed and recorded the same way"), against nginx on 127.0.0.1 with the login/cart
API of test_flows.py: counts match nginx's log, httpx requests have step rows of their own
names, engine steps and httpx mix in one flow, HTTP/2 through httpx over TLS, transport
errors by kind, open and closed models."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator

import pytest
from servers import LoggingNginx, free_port
from test_flows import LOCATIONS, OPEN, profile, run, write

pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def server() -> Iterator[LoggingNginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    s = LoggingNginx("$request|$status|$http_authorization|$http_cookie|$request_body",
                     LOCATIONS + "    location = /moved {{ return 302 /cart; }}\n",
                     prefix="lf-flows-httpx-")
    yield s
    s.stop()


MIXED = '''
import httpx
from loadforge.flows import flow

CLIENT = httpx.AsyncClient()          # module level: made before the worker's loop runs

@flow
async def mixed(user):
    login = await user.post("/login", json={"name": "x"}, name="login")      # the engine
    token = login.json()["token"]
    async with httpx.AsyncClient(base_url=user.base_url) as client:           # httpx
        r = await client.get("/cart", headers={"Authorization": f"Bearer {token}"},
                             extensions={"name": "cart via httpx"})
        user.check(r.status_code == 200 and r.json()["items"] == [1, 2, 3], "httpx cart")
        await client.get("/cart")                    # no name: "GET /cart", a 401
    await user.think("5ms")
    r = await CLIENT.get(user.base_url + "/boom")    # a client of the module's
    user.check(r.status_code == 503, "boom")
    await user.get("/cart", headers={"Authorization": f"Bearer {token}"}, name="cart")
'''


def test_httpx_and_engine_steps_in_one_flow_match_nginx(server, tmp_path):
    write(str(tmp_path), "checkout.py", MIXED)
    path = profile(str(tmp_path), server.url, OPEN.replace("40", "10"))
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert Counter((r[0], r[1]) for r in logged) == {
        ("POST /login HTTP/1.1", "200"): 10, ("GET /cart HTTP/1.1", "200"): 20,
        ("GET /cart HTTP/1.1", "401"): 10, ("GET /boom HTTP/1.1", "503"): 10}
    assert summary["requests"] == len(logged) == 50
    by_name = summary["requests_by_name"]
    assert by_name["login"]["requests"] == by_name["cart"]["requests"] == 10
    assert by_name["cart via httpx"]["requests"] == 10
    assert by_name["cart via httpx"]["latency_us"]["p50"] > 0
    assert by_name["GET /cart"]["requests"] == 10          # a 401: not an error
    # a URL built at run time has no name known before the run: step:other, as for user.*
    assert by_name["step:other"]["errors"] == 10 and "GET /boom" not in by_name
    assert by_name["flow:mixed"]["requests"] == 10
    assert summary["status"]["4xx"] == 10 and summary["status"]["5xx"] == 10
    assert summary["flows"]["checks"] == {"httpx cart": {"passed": 10, "failed": 0},
                                          "boom": {"passed": 10, "failed": 0}}


def test_httpx_closed_model_and_a_failing_flow(server, tmp_path):
    """Closed-model users loop over an httpx flow; one that raises inside httpx's response
    handling is a failed flow with its exception type."""
    write(str(tmp_path), "checkout.py", '''
import httpx
from loadforge.flows import flow

@flow
async def cart(user):
    async with httpx.AsyncClient(base_url=user.base_url) as client:
        r = await client.get("/cart", extensions={"name": "cart"})
        r.raise_for_status()
''')
    path = profile(str(tmp_path), server.url, """
[[stages]]
duration = "1s"
concurrency = 2
think = "50ms"
""")
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    logged = server.take()
    assert logged and all(r[1] == "401" for r in logged)
    by_name = summary["requests_by_name"]
    assert summary["requests"] == by_name["cart"]["requests"] == len(logged)
    assert by_name["flow:cart"]["errors"] == summary["scheduled"] == len(logged)
    assert summary["flows"]["failed_flows"] == {"cart": {"HTTPStatusError": len(logged)}}


def test_httpx_connect_error_is_counted_by_kind(server, tmp_path):
    port = free_port()          # nothing listens there
    write(str(tmp_path), "checkout.py", f'''
import httpx
from loadforge.flows import flow

@flow
async def down(user):
    await user.get("/cart", name="cart")
    async with httpx.AsyncClient() as client:
        await client.get("http://127.0.0.1:{port}/x", extensions={{"name": "nowhere"}})
''')
    path = profile(str(tmp_path), server.url, OPEN.replace("40", "5"))
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert len(server.take()) == 5
    assert summary["errors_by_kind"]["connect"] == 5
    assert summary["requests_by_name"]["nowhere"]["errors"] == 5
    assert summary["flows"]["failed_flows"] == {"down": {"ConnectError": 5}}


def test_httpx_http2_over_tls(tmp_path):
    """httpx.AsyncClient(http2=True) against nginx's h2 (ALPN) on 127.0.0.1, the engine's
    steps over HTTP/1.1 to the same server."""
    trustme = pytest.importorskip("trustme")
    pytest.importorskip("h2")
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    from servers import Nginx

    folder = str(tmp_path)
    ca = trustme.CA()
    ca_pem = os.path.join(folder, "ca.pem")
    ca.cert_pem.write_to_path(ca_pem)
    pem = os.path.join(folder, "server.pem")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    server = Nginx(tls=f"ssl_certificate {pem}; ssl_certificate_key {pem};", http2=True)
    try:
        write(folder, "checkout.py", f'''
import httpx
from loadforge.flows import flow

@flow
async def h2(user):
    a = await user.get("/", name="engine")
    async with httpx.AsyncClient(http2=True, verify={ca_pem!r}) as client:
        for _ in range(2):
            b = await client.get(user.base_url + "/", extensions={{"name": "h2"}})
            user.check(b.http_version == "HTTP/2" and b.content == a.content == b"ok\\n",
                       "h2 ok")
''')
        path = profile(folder, server.url, OPEN.replace("40", "10"))
        before = server.served()
        proc, summary = run(path, folder, "--ca-cert", ca_pem)
        assert proc.returncode == 0, proc.stderr
        assert summary["requests"] == 30
        assert server.served() - before == 31          # + the preflight
        with open(os.path.join(server.dir, "access.log")) as f:
            protocols = Counter(line.split('"')[1].rsplit(" ", 1)[1] for line in f)
        assert protocols == {"HTTP/1.1": 11, "HTTP/2.0": 20}
        by_name = summary["requests_by_name"]
        assert by_name["h2"]["requests"] == 20 and by_name["engine"]["requests"] == 10
        assert summary["flows"]["checks"] == {"h2 ok": {"passed": 20, "failed": 0}}
    finally:
        server.stop()


def test_asyncio_mode_is_chosen_per_module(tmp_path):
    from loadforge.flows.loader import load

    plain = write(str(tmp_path), "plain.py", '''
from loadforge.flows import flow

@flow
async def f(user):
    await user.get("/a")
''')
    marked = write(str(tmp_path), "marked.py", '''
from loadforge.flows import flow

@flow(asyncio=True)
async def f(user):
    await user.get("/a?x=1")
    await some_client.get("http://127.0.0.1:1/b", extensions={"name": "bee"})
''')
    uses = write(str(tmp_path), "uses.py", '''
from httpx import AsyncClient
from loadforge.flows import flow

@flow
async def f(user):
    await AsyncClient().post("/c")
''')
    assert not load(plain).asyncio
    assert load(marked).asyncio and load(marked).steps == ("GET /a", "bee", "step:other")
    assert load(uses).asyncio and load(uses).steps == ("POST /c", "step:other")


def test_a_foreign_await_without_asyncio_mode_fails_the_flow(server, tmp_path):
    """A module that does not ask for asyncio mode stays on the plain driver: an asyncio
    awaitable there fails the flow (FlowUsageError), the run goes on."""
    write(str(tmp_path), "checkout.py", '''
from loadforge.flows import flow

class Later:
    def __await__(self):
        yield object()

@flow
async def f(user):
    await user.get("/cart", name="cart")
    await Later()
''')
    path = profile(str(tmp_path), server.url, OPEN.replace("40", "3"))
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert len(server.take()) == 3
    assert summary["flows"]["failed_flows"] == {"f": {"FlowUsageError": 3}}


def test_bad_asyncio_mark_exits_2(tmp_path):
    write(str(tmp_path), "checkout.py", '''
from loadforge.flows import flow

@flow(asyncio="yes")
async def f(user):
    await user.get("/")
''')
    path = profile(str(tmp_path), f"http://127.0.0.1:{free_port()}", OPEN)
    proc, _ = run(path, str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "@flow asyncio must be True or False" in lines[0], proc.stderr


def test_flows_stuck_in_asyncio_are_ended_after_the_grace(server, tmp_path):
    """A flow awaiting something that never ends (here a long asyncio.sleep) is cancelled
    two load.timeouts after the stages end, unrecorded, as a flow still thinking is; the
    engine steps it sent before are recorded and the run ends."""
    folder = str(tmp_path)
    write(folder, "checkout.py", '''
import asyncio
from loadforge.flows import flow

@flow
async def stuck(user):
    await user.get("/cart", name="cart")
    await asyncio.sleep(3600)
''')
    path = write(folder, "p.toml", f"""
name = "flows"
target = "{server.url}"
[load]
connections = 4
workers = 1
timeout = "300ms"
[flows]
module = "checkout.py"
{OPEN.replace("40", "4")}
""")
    server.take()
    proc, summary = run(path, folder)
    assert proc.returncode == 0, proc.stderr
    assert len(server.take()) == 4
    assert summary["requests_by_name"]["cart"]["requests"] == 4
    stuck = summary["requests_by_name"]["flow:stuck"]
    assert stuck["requests"] == stuck["errors"] == 0


def test_steps_run_concurrently_with_asyncio_gather(server, tmp_path):
    """In asyncio mode a flow's user.* steps are asyncio awaitables: gathered, they go out
    together (two connections), beside an httpx request."""
    write(str(tmp_path), "checkout.py", '''
import asyncio
import httpx
from loadforge.flows import flow

@flow
async def fan_out(user):
    async with httpx.AsyncClient(base_url=user.base_url) as client:
        a, b, c = await asyncio.gather(user.get("/cart", name="one"),
                                       user.post("/login", name="two"),
                                       client.get("/cart", extensions={"name": "three"}))
    user.check((a.status_code, b.status_code, c.status_code) == (401, 200, 401), "all three")
''')
    path = profile(str(tmp_path), server.url, OPEN.replace("40", "6"))
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert len(server.take()) == summary["requests"] == 18
    by_name = summary["requests_by_name"]
    assert by_name["one"]["requests"] == by_name["two"]["requests"] == 6
    assert by_name["three"]["requests"] == by_name["flow:fan_out"]["requests"] == 6
    assert summary["flows"]["checks"] == {"all three": {"passed": 6, "failed": 0}}


def test_redirect_hops_and_streamed_responses_are_recorded(server, tmp_path):
    """Each hop of a followed redirect is a request of its own (nginx logs both); a streamed
    response is recorded when it is closed."""
    write(str(tmp_path), "checkout.py", '''
import httpx
from loadforge.flows import flow

@flow
async def hops(user):
    async with httpx.AsyncClient(base_url=user.base_url, follow_redirects=True) as client:
        r = await client.get("/moved")
        user.check(r.status_code == 401 and len(r.history) == 1, "followed")
        async with client.stream("GET", "/cart", extensions={"name": "streamed"}) as s:
            body = await s.aread()
        user.check(b"unauthorized" in body, "streamed body")
''')
    path = profile(str(tmp_path), server.url, OPEN.replace("40", "4"))
    server.take()
    proc, summary = run(path, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    logged = Counter((r[0], r[1]) for r in server.take())
    assert logged == {("GET /moved HTTP/1.1", "302"): 4, ("GET /cart HTTP/1.1", "401"): 8}
    assert summary["requests"] == 12 and summary["status"]["3xx"] == 4
    by_name = summary["requests_by_name"]
    assert by_name["GET /moved"]["requests"] == 4
    assert by_name["streamed"]["requests"] == 4
    assert by_name["step:other"]["requests"] == 4        # the hop to /cart: no literal there
    assert summary["flows"]["checks"] == {"followed": {"passed": 4, "failed": 0},
                                          "streamed body": {"passed": 4, "failed": 0}}
