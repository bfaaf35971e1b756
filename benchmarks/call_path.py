"""The modules a plan's path crosses, and how often it turns back up the layers.

Traces one short run in the coordinator (`sys.setprofile` from `runner.execute` on, against
a local HTTP server on 127.0.0.1) and counts, over every call from one loadforge module into
another: the distinct modules entered, and the calls that go up the layers (a module calling
one of a later folder in tests/test_layers.py's order: a callback, or a lower module reaching
up). Issue 20 asks for fewer of both; this measures them, before and after, on one tree:

    PYTHONPATH=TREE python3 benchmarks/call_path.py [--show] [--plan]

--plan adds the second measure, the plan's own path: the modules whose functions receive a
`Plan` (config/plan.Plan) as an argument (its own methods included), and the upward calls
that leave or enter the path (of the first measure's, those whose caller or callee is on it).
"""

from __future__ import annotations

import argparse
import http.server
import os
import sys
import tempfile
import threading

LAYERS = ("foundation", "config", "schedule", "engine", "flows", "run", "observe", "results",
          "analysis", "present", "live", "sandbox", "runner", "cli")


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("errors", "units", "limits", "__init__"):
        return 0
    name = {"_core": "engine", "capacity": "runner", "simulate": "runner"}.get(parts[1], parts[1])
    return LAYERS.index(name) if name in LAYERS else 0


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", action="store_true", help="list the upward calls")
    ap.add_argument("--plan", action="store_true",
                    help="also measure the plan's path: the modules whose functions receive "
                         "the Plan as an argument, and their upward calls")
    args = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    port = server.server_address[1]

    from loadforge import runner
    from loadforge.cli import main as cli_main
    from loadforge.config.plan import Plan

    entered: set[str] = set()
    upward: dict[tuple[str, str], int] = {}
    plan_entered: set[str] = set()
    active = [False]

    def takes_plan(frame) -> bool:  # type: ignore[no-untyped-def]
        code = frame.f_code
        nargs = code.co_argcount + code.co_kwonlyargcount
        local = frame.f_locals
        return any(isinstance(local.get(name), Plan) for name in code.co_varnames[:nargs])

    def module_of(frame) -> str | None:  # type: ignore[no-untyped-def]
        name = frame.f_globals.get("__name__", "")
        return name if name.startswith("loadforge") else None

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event != "call" or not active[0] or os.getpid() != me:
            return
        callee = module_of(frame)
        caller = module_of(frame.f_back) if frame.f_back is not None else None
        if callee is None:
            return
        if args.plan and takes_plan(frame):
            plan_entered.add(callee)
        if caller is None or callee == caller:
            return
        entered.add(callee)
        if layer(callee) > layer(caller):
            upward[(caller, callee)] = upward.get((caller, callee), 0) + 1

    real = runner.execute

    def traced(*a, **kw):  # type: ignore[no-untyped-def]
        active[0] = True
        entered.add("loadforge.runner")
        try:
            return real(*a, **kw)
        finally:
            active[0] = False

    runner.execute = traced

    me = os.getpid()
    with tempfile.TemporaryDirectory() as out:
        sys.setprofile(profile)
        # The server's thread starts after the command forked its fork server (no thread yet).
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            cli_main(["run", "--target", f"http://127.0.0.1:{port}/", "--rate", "100",
                      "--duration", "1s", "--quiet", "--workers", "1", "--out", out])
        except SystemExit:
            pass
        finally:
            sys.setprofile(None)
    server.shutdown()
    report("call path", entered, upward, args.show)
    if args.plan:
        report("plan path", plan_entered,
               {k: n for k, n in upward.items() if k[0] in plan_entered or k[1] in plan_entered},
               args.show)


def report(what: str, entered: set[str], upward: dict[tuple[str, str], int],
           show: bool) -> None:
    print(f"{what}: modules crossed: {len(entered)} in {len({layer(m) for m in entered})} "
          "folders")
    print(f"{what}: upward calls: {len(upward)} distinct (caller, callee) pairs, "
          f"{sum(upward.values())} calls")
    if show:
        for (a, b), n in sorted(upward.items()):
            print(f"  {a} -> {b}  ×{n}")
        for m in sorted(entered):
            print(f"  entered {m}")


if __name__ == "__main__":
    main()
