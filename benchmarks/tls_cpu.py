"""CPU per request of loadforge against wrk over HTTPS, on the same nginx in the same run.

Starts nginx (Debian package) on 127.0.0.1 with a plain listener and a TLS one (certificate
from trustme, ECDSA P-256; TLS 1.3 negotiated by both tools), then for each scenario runs wrk
(Debian package `wrk`, one thread) and loadforge (one worker) alternately ROUNDS times and
prints user+system CPU microseconds per completed request, medians, and their ratio. Lower is
better; 1.0 means as cheap as wrk.

Scenarios (all 50 connections, like wrk's default comparison):
  http         plain HTTP, closed model, keep-alive: the reference, and the check that the
               TLS transport left the TCP path as it was
  closed       HTTPS, closed model, keep-alive                     goal: within 1.3x of wrk
  open         HTTPS, open model at --rate (default 20,000/s); goal within 1.5x of wrk2, the
               open-model peer (constant rate, -R), when --wrk2 PATH or WRK2=PATH names a
               wrk2 binary (not in Debian: build giltene/wrk2 outside this repository);
               without one, against wrk's closed model, which never sleeps
  open-http    the same over plain HTTP, to tell what TLS adds to the open model
  churn        HTTPS, a new connection per request (requests_per_connection = 1, session
               resumption on) vs wrk -H 'Connection: close'. wrk resumes too: it reuses each
               connection's SSL object through SSL_clear, which keeps the TLS 1.3 ticket
               session (nginx's $ssl_session_reused says "r" for all but wrk's first 50)
  churn-full   loadforge with resumption = false, every handshake full; wrk has no such mode,
               its (resumed) figure is printed for scale only

    python3 benchmarks/tls_cpu.py [--rounds 3] [--duration 10s] [--rate 20000]
                                  [--scenarios http,closed,open,churn,churn-full]
                                  [--tree PATH]   # loadforge from another checkout (built)
                                  [--wrk2 PATH]   # wrk2 as the open model's peer (or WRK2=PATH)
                                  [--timer-resolution D]  # loadforge's, in the open scenarios

The open scenarios also print the p50/p99 latency each tool reports at that rate (wrk2's
corrected for coordinated omission, loadforge's from the intended send time), as a sanity
check that both kept the rate without queueing.

Loopback only; nginx on ports 21080 (http) and 21443 (https) unless --port says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

import _nginx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Inside nginx's http block (_nginx.py adds the rest).
NGINX_CONF = """
  access_log off;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    listen 127.0.0.1:{tls_port} ssl reuseport backlog=4096;
    ssl_certificate {dir}/server.pem;
    ssl_certificate_key {dir}/server.pem;
    location / {{ return 200 "ok\\n"; }}
  }}
"""


def start_nginx(workdir: str, port: int, tls_port: int) -> subprocess.Popen[bytes]:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(workdir, "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        os.path.join(workdir, "server.pem"))
    return _nginx.start(workdir, NGINX_CONF.format(dir=workdir, port=port, tls_port=tls_port),
                        port, tls_port)


def cpu_of(cmd: list[str], cwd: str | None = None) -> tuple[float, str]:
    """Run cmd; the CPU seconds of it and its children, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out.stdout


def wrk(url: str, duration: str, close: bool) -> float:
    cmd = ["wrk", "-t1", "-c50", f"-d{duration}", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    cpu, out = cpu_of(cmd)
    n = int(re.search(r"(\d+) requests in", out).group(1))     # type: ignore[union-attr]
    return cpu / n * 1e6


def wrk2(binary: str, url: str, duration: str, rate: int) -> tuple[float, str]:
    """CPU µs per request of wrk2 at a constant rate, and the p50/p99 latency it reports."""
    cpu, out = cpu_of([binary, "-t1", "-c50", f"-d{duration}", f"-R{rate}", "--latency", url])
    n = int(re.search(r"(\d+) requests in", out).group(1))     # type: ignore[union-attr]
    lat = {m.group(1): m.group(2) for m in re.finditer(r"^\s*(50|99)\.000%\s+(\S+)", out, re.M)}
    return cpu / n * 1e6, f"p50 {lat.get('50', '?')} p99 {lat.get('99', '?')}"


def loadforge(tree: str, args: list[str], workdir: str) -> tuple[float, dict]:
    summary = os.path.join(workdir, "summary.json")
    cpu, _ = cpu_of([sys.executable, "-m", "loadforge.cli", "run", *args, "--workers", "1",
                     "--quiet", "--no-preflight", "--out", os.path.join(workdir, "results"),
                     "--summary-json", summary], cwd=tree)
    with open(summary) as f:
        s = json.load(f)
    shutil.rmtree(os.path.join(workdir, "results"), ignore_errors=True)
    return cpu / max(1, s["requests"]) * 1e6, s


def profile(workdir: str, url: str, duration: str, resumption: bool) -> str:
    path = os.path.join(workdir, f"churn-{resumption}.toml")
    with open(path, "w") as f:
        f.write(f'target = "{url}"\n[load]\nconnections = 50\nrequests_per_connection = 1\n'
                f'[tls]\nca = "{workdir}/ca.pem"\nresumption = {str(resumption).lower()}\n'
                f'[[stages]]\nconcurrency = 50\nduration = "{duration}"\n')
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--scenarios", default="http,closed,open,churn,churn-full")
    ap.add_argument("--tree", default=ROOT, help="loadforge checkout to run (built in place)")
    ap.add_argument("--port", type=int, default=21080)
    ap.add_argument("--tls-port", type=int, default=21443)
    ap.add_argument("--wrk2", default=os.environ.get("WRK2"),
                    help="wrk2 binary: the open model's peer (default: $WRK2; else wrk)")
    ap.add_argument("--timer-resolution", default=None,
                    help="loadforge's --timer-resolution in the open scenarios (default: its own)")
    opts = ap.parse_args()
    if opts.wrk2 and not os.access(opts.wrk2, os.X_OK):
        sys.exit(f"--wrk2 {opts.wrk2}: not an executable")
    if not (shutil.which("nginx") and shutil.which("wrk")):
        sys.exit("needs nginx and wrk: apt-get install -y nginx wrk")
    workdir = tempfile.mkdtemp(prefix="lf-tls-bench-")
    nginx = start_nginx(workdir, opts.port, opts.tls_port)
    http = f"http://127.0.0.1:{opts.port}/"
    https = f"https://127.0.0.1:{opts.tls_port}/"
    ca = ["--ca-cert", os.path.join(workdir, "ca.pem")]
    d = opts.duration
    resolution = ["--timer-resolution", opts.timer_resolution] if opts.timer_resolution else []
    scenarios = {
        "http": (http, False, ["--target", http, "--concurrency", "50", "--duration", d]),
        "closed": (https, False, ["--target", https, *ca, "--concurrency", "50",
                                  "--duration", d]),
        "open": (https, False, ["--target", https, *ca, "--rate", str(opts.rate),
                                "--connections", "50", "--duration", d, *resolution]),
        "open-http": (http, False, ["--target", http, "--rate", str(opts.rate),
                                    "--connections", "50", "--duration", d, *resolution]),
        "churn": (https, True, [profile(workdir, https, d, True)]),
        "churn-full": (https, True, [profile(workdir, https, d, False)]),
    }
    try:
        for name in opts.scenarios.split(","):
            url, close, args = scenarios[name]
            w_us, l_us = [], []
            extra = ""
            peer = "wrk2" if opts.wrk2 and name.startswith("open") else "wrk"
            for _ in range(opts.rounds):
                peer_lat = ""
                if peer == "wrk2":
                    us, peer_lat = wrk2(opts.wrk2, url, d, opts.rate)
                    w_us.append(us)
                else:
                    w_us.append(wrk(url, d, close))
                us, s = loadforge(opts.tree, args, workdir)
                l_us.append(us)
                if name.startswith("open"):
                    lat = s["latency_us"]
                    extra = (f"  achieved {s['achieved_rps']:,.0f}/s of {opts.rate:,}/s, "
                             f"unsent {s.get('unsent', 0)}; loadforge p50 {lat['p50']}us "
                             f"p99 {lat['p99']}us" + (f", wrk2 {peer_lat}" if peer_lat else ""))
                hs = s.get("connections", {}).get("tls_handshakes")
                if hs and name.startswith("churn"):
                    extra = f"  handshakes {hs}"
            w, lf = statistics.median(w_us), statistics.median(l_us)
            print(f"{name:10s} {peer:4s} {w:7.2f} us/req  loadforge {lf:7.2f} us/req  "
                  f"ratio {lf / w:.2f}  ({peer} runs {', '.join(f'{x:.2f}' for x in w_us)}; "
                  f"loadforge runs {', '.join(f'{x:.2f}' for x in l_us)}){extra}", flush=True)
    finally:
        _nginx.stop(nginx)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
