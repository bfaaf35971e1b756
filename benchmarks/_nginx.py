"""nginx for the benchmarks: Debian's nginx on 127.0.0.1, one worker, in the foreground, from a
configuration written to a folder of its own.

    proc = start(folder, SERVER_BLOCK, port)    # waits until every port listens

`conf(folder, body)` wraps an `http { ... }` body in the settings every benchmark shares (one
worker, its pid, logs and temp paths in the folder), so each benchmark writes only its
server block and logging.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

_MAIN = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; use epoll; multi_accept on; }}
http {{
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
{body}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(folder: str, body: str, *ports: int) -> subprocess.Popen[bytes]:
    """nginx with `body` inside its http block, once each of `ports` accepts connections;
    exits the benchmark with one line when nginx is missing, a port is taken or it does not
    come up."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        sys.exit("nginx is not installed: apt-get install -y nginx")
    taken = [p for p in ports if listening(p)]
    if taken:
        sys.exit(f"127.0.0.1:{taken[0]} is taken: pass a free port")
    conf = os.path.join(folder, "nginx.conf")
    with open(conf, "w") as f:
        f.write(_MAIN.format(dir=folder, body=body))
    proc = subprocess.Popen([nginx, "-c", conf, "-e", os.path.join(folder, "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if all(listening(p) for p in ports):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"nginx did not start (see {folder}/error.log)")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
