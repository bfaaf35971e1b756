#!/usr/bin/env python3
"""CPU per request of a templated request fed by a 1,000,000-row feeder, against a fixed
request of the same size, in one run of the engine alone (this process, no coordinator).

Compiles a profile with a 1,000,000-row CSV feeder the way `loadforge run` does
(engine/tables.py: the table memory-mapped from a file), then alternates ROUNDS closed-model
runs of the engine (50 connections) with the fixed request and with the template, against
nginx on 127.0.0.1 (started here on --port, access log off; or --url), and prints the
median user+system CPU microseconds per request of each and their ratio (goal: <= 1.2).
With --json-body, both requests are POSTs with a JSON body (Content-Type application/json),
the template's body holding the feeder's values inside JSON strings (their JSON-escaped views).
With --http 2, both go over h2c (nginx `listen ... http2`): the 50 closed-model users are
streams, --streams per connection (10: 5 connections), the template's values expanded per
stream (engine/http2.pxi h2_expand).

  python3 benchmarks/feeders_cpu.py [--rows 1000000] [--duration 5] [--rounds 5]
      [--connections 50] [--order sequential|random] [--json-body]
      [--http 1.1|2] [--streams 10] [--port 24080 | --url URL]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import _nginx

from loadforge import _core
from loadforge.config.profile import plan_from_dict
from loadforge.engine.requests import encode_h2_request, encode_request
from loadforge.engine.tables import open_table
from loadforge.run.session import compile_feeders
from loadforge.run.target import parse_target

# Inside nginx's http block (_nginx.py adds the rest).
NGINX = """
  access_log off;
  server {{ listen 127.0.0.1:{port}{http2}; location / {{ return 200 "ok\\n"; }} }}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--order", default="sequential", choices=("sequential", "random"))
    ap.add_argument("--json-body", action="store_true",
                    help="POST a JSON body holding the values (escaped views)")
    ap.add_argument("--http", default="1.1", choices=("1.1", "2"),
                    help="HTTP/2: h2c by prior knowledge (nginx started with http2)")
    ap.add_argument("--streams", type=int, default=10, help="streams per connection (--http 2)")
    ap.add_argument("--url", default=None, help="a running target (else nginx is started)")
    ap.add_argument("--port", type=int, default=24080, help="the port of the nginx started")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="lf-feeders-bench-")
    nginx = None
    try:
        url = args.url
        if url is None:
            nginx = _nginx.start(folder, NGINX.format(
                port=args.port, http2=" http2" if args.http == "2" else ""), args.port)
            url = f"http://127.0.0.1:{args.port}"
        csv_path = os.path.join(folder, "users.csv")
        with open(csv_path, "w") as f:
            f.write("id,term\n")
            f.writelines(f"{100000 + i},term{i % 977}\n" for i in range(args.rows))
        request = {"name": "templated", "path": "/items/{users.id}?q={users.term}",
                   "headers": {"X-Term": "{users.term}"}}
        fixed_headers: tuple[tuple[str, str], ...] = (("X-Term", "term0"),)
        fixed_body = b""
        if args.json_body:
            request["method"] = "POST"
            request["headers"] = {"X-Term": "{users.term}", "Content-Type": "application/json"}
            request["body"] = '{"id": "{users.id}", "term": "{users.term}", "n": 1}'
            fixed_headers += (("Content-Type", "application/json"),)
            fixed_body = b'{"id": "100000", "term": "term0", "n": 1}'
        plan = plan_from_dict({
            "target": url,
            "feeders": [{"name": "users", "file": csv_path, "order": args.order}],
            "stages": [{"duration": f"{args.duration}s", "concurrency": args.connections}],
            "requests": [request],
            "load": {"http": args.http, "connections": args.connections},
        }, path=os.path.join(folder, "bench.toml"))
        target = parse_target(url)
        t = time.perf_counter()
        compiled = compile_feeders(plan, target)
        table = compiled.tables[0]
        print(f"{args.rows:,} rows compiled in {time.perf_counter() - t:.1f} s; table "
              f"{'memory-mapped from ' + str(table.file) if table.file else 'inline'}")
        fixed_req = plan.requests[0].__class__(
            name="fixed", method=plan.requests[0].method, path="/items/100000?q=term0",
            headers=fixed_headers, body=fixed_body)
        fixed = [(encode_request(fixed_req, target.host, target.path), False)]
        stage = (False, 0.0, 0.0, args.duration, args.connections, 0.0)
        conns = args.connections
        h2: dict[str, list[Any] | None] = {"fixed": None, "templated": None}
        if args.http == "2":
            conns = -(-args.connections // args.streams)
            h2 = {"fixed": [encode_h2_request(fixed_req, target.host, target.path)],
                  "templated": list(compiled.h2)}
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        results: dict[str, list[float]] = {"fixed": [], "templated": []}
        for r in range(args.rounds):
            for kind in ("fixed", "templated"):
                if kind == "fixed":
                    engine = _core.Engine(host, port, fixed, [0], [stage], conns,
                                          http2=h2[kind], streams=args.streams)
                else:
                    engine = _core.Engine(host, port, fixed, [0], [stage], conns,
                                          feeders=[open_table(t.spec())
                                                   for t in compiled.tables],
                                          templates=list(compiled.templates),
                                          http2=h2[kind], streams=args.streams)
                counts: list[bytes] = []
                before = resource.getrusage(resource.RUSAGE_SELF)
                engine.run(_core.now_ns() + 50_000_000,
                           lambda p, o, i, counts=counts: counts.append(p))
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                n = _responses(counts)
                results[kind].append(cpu / n * 1e6)
                print(f"round {r + 1} {kind:9s} {cpu / n * 1e6:6.2f} us CPU/request "
                      f"({n:,} requests)", flush=True)
        f, t_ = statistics.median(results["fixed"]), statistics.median(results["templated"])
        print(f"median: fixed {f:.2f} us, templated ({args.rows:,}-row feeder, "
              f"{args.order}{', JSON body' if args.json_body else ''}, HTTP/{args.http}) "
              f"{t_:.2f} us, "
              f"ratio {t_ / f:.3f}")
        compiled.cleanup()
    finally:
        if nginx is not None:
            _nginx.stop(nginx)
        shutil.rmtree(folder, ignore_errors=True)


def _responses(payloads: list[bytes]) -> int:
    from loadforge.run.workers import decode_interval, interval_message

    n = 0
    for p in payloads:
        report = decode_interval(interval_message(p, 0, 0))
        n += sum(c.n for c in report.cells if c.outcome == "2xx")
    return max(n, 1)


if __name__ == "__main__":
    main()
