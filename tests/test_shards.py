"""Sharded runs with the local launcher: shard processes on 127.0.0.1 speaking the shard
protocol to the coordinator (barrier, clock offsets, streamed reports, exact merge).

Each run is short (2 s) and bounded; the load goes to nginx on 127.0.0.1.
"""

from __future__ import annotations

import array
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from servers import ROOT, wait_for

from loadforge import __version__
from loadforge.config.plan import Plan, Request, Stage
from loadforge.engine import histogram
from loadforge.errors import InputError, WorkerCrashed
from loadforge.present import summary
from loadforge.results.store import read_result
from loadforge.run import shards
from loadforge.run.merge import Aggregator
from loadforge.run.session import worker_specs
from loadforge.run.target import parse_target
from loadforge.run.workers import CellDelta, HistSlice, IntervalReport


def run_json(tmp_path, *args: str, expect: int = 0, env: dict[str, str] | None = None,
             name: str = "summary.json") -> tuple[dict[str, Any], subprocess.CompletedProcess]:
    summary = tmp_path / name
    cmd = [sys.executable, "-m", "loadforge.cli", "run", *args, "--quiet", "--out",
           str(tmp_path / "results"), "--summary-json", str(summary)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90,
                         env={**os.environ, **(env or {})})
    assert out.returncode == expect, out.stderr
    return (json.loads(summary.read_text()) if summary.exists() else {}), out


def profile(tmp_path, url: str) -> str:
    """Two open-model stages (a ramp, a steady one) and a weighted mix of two requests."""
    path = tmp_path / "sharded.toml"
    path.write_text(f"""
name = "sharded"
target = "{url}"
[load]
connections = 8
[[stages]]
name = "up"
ramp = {{ from = 100, to = 700 }}
duration = "1s"
[[stages]]
name = "flat"
rate = 600
duration = "1s"
[[requests]]
name = "home"
path = "/"
weight = 3
[[requests]]
name = "other"
path = "/other"
weight = 1
""")
    return str(path)


def test_two_shards_send_what_one_run_sends_and_nginx_logs_it(nginx, tmp_path):
    prof = profile(tmp_path, nginx.url)
    before = nginx.served()
    sharded, _ = run_json(tmp_path, prof, "--shards", "2", "--workers", "2",
                          name="sharded.json")
    served = nginx.served() - before - 1          # minus the preflight request
    single, _ = run_json(tmp_path, prof, "--workers", "1", name="single.json")
    assert sharded["requests"] == served == sharded["scheduled"] == 1000
    assert sharded["unsent"] == 0 and sharded["errors"] == 0
    assert sharded["complete"] is True
    # Exactly what a single run sends: per stage, and per request name (the mix is a function
    # of the global arrival index, whichever shard sends an arrival).
    for a, b in zip(sharded["stages"], single["stages"], strict=True):
        assert (a["name"], a["scheduled"], a["requests"]) == (b["name"], b["scheduled"],
                                                               b["requests"])
    assert ({k: v["requests"] for k, v in sharded["requests_by_name"].items()}
            == {k: v["requests"] for k, v in single["requests_by_name"].items()}
            == {"home": 750, "other": 250})
    # Per shard: the stripes i = s (mod 2) of the global schedule, each with its workers.
    assert sharded["workers"] == 4
    per_shard = sharded["shards"]
    assert [s["index"] for s in per_shard] == [0, 1]
    assert [s["scheduled"] for s in per_shard] == [500, 500]
    assert sum(s["requests"] for s in per_shard) == 1000
    assert all(s["unsent"] == 0 and s["achieved_rps"] > 0 for s in per_shard)
    assert all(abs(s["offset_ms"]) < 50 for s in per_shard)
    shown = io.StringIO()
    summary.render_summary(sharded, Console(file=shown, width=100))
    table = shown.getvalue().split("shards (clock offset")[1]
    assert table.split("\n")[4].split()[:4] == ["0", "500", str(per_shard[0]["requests"]), "0"]
    # One Parquet file; its merged rows add up, and it records the shards' clocks.
    files = os.listdir(tmp_path / "results")
    result = read_result(sharded["result"])
    assert len([f for f in files if f.endswith(".parquet")]) == 2   # sharded and single
    assert set(json.loads(result.metadata["shards"])) == {"0", "1"}
    rows = result.table.to_pylist()
    for stage in ("up", "flat"):
        intervals = [r for r in rows if r["scope"] == "interval" and r["stage"] == stage
                     and r["name"] == "*" and r["outcome"] == "*"]
        whole = next(r for r in rows if r["scope"] == "stage" and r["stage"] == stage
                     and r["name"] == "*" and r["outcome"] == "*")
        assert sum(r["count"] for r in intervals) == whole["count"]
        union = histogram.new_histogram()
        for r in intervals:
            histogram.merge(union, histogram.decode(r["latency_hdr"]))
        assert histogram.encode(union) == histogram.encode(histogram.decode(whole["latency_hdr"]))
        # The per-shard rows (scope "shard", kept for diagnosis) add up to the merged ones.
        per = [r for r in rows if r["scope"] == "shard" and r["stage"] == stage]
        assert {r["shard"] for r in per} == {"0", "1"}
        assert sum(r["count"] for r in per) == whole["count"]
        assert sum(r["scheduled"] for r in per) == whole["scheduled"]
    assert all(r["shard"] == "*" for r in rows if r["scope"] != "shard")
    for s in per_shard:
        assert sum(r["scheduled"] for r in rows
                   if r["scope"] == "shard" and r["shard"] == str(s["index"])) == s["scheduled"]
    single_rows = read_result(single["result"]).table.to_pylist()
    assert {r["shard"] for r in single_rows} == {"*"}
    assert all(r["scope"] != "shard" for r in single_rows)


def test_closed_model_concurrency_is_split_over_shards(nginx, tmp_path):
    before = nginx.served()
    s, _ = run_json(tmp_path, "--target", nginx.url + "/", "--concurrency", "4", "--duration",
                    "1s", "--shards", "2", "--workers", "1")
    assert s["requests"] == nginx.served() - before - 1
    assert s["requests"] > 100 and s["errors"] == 0
    assert s["stages"][0]["model"] == "closed"
    assert all(shard["requests"] > 0 for shard in s["shards"])


def test_an_injected_clock_skew_is_measured_and_reported(nginx, tmp_path):
    env = {shards.SKEW_ENV: "0,30"}
    s, _ = run_json(tmp_path, "--target", nginx.url + "/", "--rate", "200", "--duration", "1s",
                    "--shards", "2", "--workers", "1", env=env)
    offsets = [shard["offset_ms"] for shard in s["shards"]]
    assert abs(offsets[0]) < 10 and abs(offsets[1] - 30) < 10
    assert s["requests"] == 200 and s["unsent"] == 0
    meta = json.loads(read_result(s["result"]).metadata["shards"])
    assert meta["1"]["offset_ms"] == s["shards"][1]["offset_ms"]


def test_a_skew_beyond_the_tolerance_fails_the_start(nginx, tmp_path):
    s, out = run_json(tmp_path, "--target", nginx.url + "/", "--rate", "200", "--duration",
                      "1s", "--shards", "2", "--workers", "1", "--max-clock-offset", "50ms",
                      env={shards.SKEW_ENV: "0,200"}, expect=3)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "shard 1" in lines[0] and "--max-clock-offset 50 ms" in lines[0]
    assert "Traceback" not in out.stderr
    assert not s


def shard_processes(proc: subprocess.Popen[str], count: int) -> list[int]:
    """The shard processes of a running CLI (its children running `loadforge shard`), once
    each has started its worker."""
    limit = time.monotonic() + 30
    found: list[int] = []
    while time.monotonic() < limit and proc.poll() is None:
        time.sleep(0.2)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(p) for p in f.read().split()]
        found = []
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    is_shard = b"shard\0--coordinator" in f.read()
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    has_worker = bool(f.read().split())
            except FileNotFoundError:
                continue
            if is_shard and has_worker:
                found.append(pid)
        if len(found) >= count:
            return found
    raise AssertionError("the shards did not start")


def test_a_killed_shard_fails_the_run_and_keeps_what_was_merged(nginx, tmp_path):
    summary = tmp_path / "s.json"
    before = nginx.served()
    proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "run", "--target",
                             nginx.url + "/", "--rate", "200", "--duration", "30s", "--shards",
                             "2", "--workers", "1", "--quiet", "--out", str(tmp_path),
                             "--summary-json", str(summary)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = shard_processes(proc, 2)
        # 2.5 s of the run answered: two intervals merged.
        wait_for(lambda: nginx.logged() >= before + 500 or proc.poll() is not None, 60,
                 "2.5 s of load")
        os.kill(pids[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert "shard 1 disconnected" in err and "marked incomplete" in err
    s = json.loads(summary.read_text())
    assert s["complete"] is False and "shard 1" in s["error"]
    assert 0 < s["requests"] < 6000
    result = read_result(s["result"])
    assert result.metadata["complete"] == "false"
    assert "shard 1" in result.metadata["incomplete_reason"]


def test_a_stalled_shard_fails_the_run(nginx, tmp_path):
    summary = tmp_path / "s.json"
    before = nginx.served()
    proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "run", "--target",
                             nginx.url + "/", "--rate", "100", "--duration", "30s", "--shards",
                             "2", "--workers", "1", "--quiet", "--out", str(tmp_path),
                             "--summary-json", str(summary)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = shard_processes(proc, 2)
        wait_for(lambda: nginx.logged() >= before + 150 or proc.poll() is not None, 60,
                 "1.5 s of load")
        os.kill(pids[0], signal.SIGSTOP)        # alive, connected, silent
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert proc.returncode == 3, err
    assert "shard 0 sent nothing" in err and "stalled" in err
    s = json.loads(summary.read_text())
    assert s["complete"] is False and s["requests"] > 0
    assert read_result(s["result"]).metadata["complete"] == "false"


# -- the protocol, without the CLI ------------------------------------------------------------

def test_the_coordinator_refuses_a_shard_of_another_version():
    plan = Plan("p", "http://127.0.0.1:9/", (Stage("s", 1.0, 10.0, 10.0),), (Request("r"),),
                connections=2)
    specs = worker_specs(plan, parse_target(plan.target), 2, 1.0, None)
    pool = shards.ShardPool(specs, 2, 1, 0.05, launcher="none")
    said: list[bytes] = []

    def old_shard() -> None:
        host, port = pool.address.rsplit(":", 1)
        conn = Connection(socket.create_connection((host, int(port))).detach())
        conn.send_bytes(shards.HELLO + json.dumps({"protocol": shards.PROTOCOL,
                                                   "version": "0.0.1", "index": 0,
                                                   "token": pool.token}).encode())
        said.append(conn.recv_bytes())
        conn.close()

    thread = threading.Thread(target=old_shard)
    thread.start()
    try:
        with pytest.raises(WorkerCrashed, match="loadforge 0.0.1.*coordinator " + __version__):
            pool.start()
    finally:
        thread.join(10)
        pool.terminate()
    assert said and said[0][:1] == shards.REFUSE and b"same version" in said[0]


def test_clients_that_say_too_much_or_too_slowly_are_refused_and_take_no_slot(monkeypatch):
    """A HELLO must come whole, within HELLO_TIMEOUT_S and HELLO_MAX bytes: a client that
    announces a huge message, or dribbles one, is refused in bounded time; the coordinator
    keeps waiting for its shards (here none come: the start times out, saying which)."""
    monkeypatch.setattr(shards, "HELLO_TIMEOUT_S", 0.5)
    plan = Plan("p", "http://127.0.0.1:9/", (Stage("s", 1.0, 10.0, 10.0),), (Request("r"),),
                connections=2)
    specs = worker_specs(plan, parse_target(plan.target), 2, 1.0, None)
    pool = shards.ShardPool(specs, 2, 1, 0.05, launcher="none", start_timeout_s=3.0)
    host, port = pool.address.rsplit(":", 1)
    said: list[bytes] = []

    def huge() -> None:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(struct.pack("!i", 2**31 - 1) + b"H")
            said.append(sock.recv(4096))

    def dribbling() -> None:
        with socket.create_connection((host, int(port))) as sock:
            hello = shards.HELLO + json.dumps({"protocol": shards.PROTOCOL}).encode()
            try:
                for byte in struct.pack("!i", len(hello)) + hello:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
            except OSError:
                pass
            said.append(sock.recv(4096))

    threads = [threading.Thread(target=f) for f in (huge, dribbling)]
    for t in threads:
        t.start()
    try:
        with pytest.raises(WorkerCrashed, match=r"shards \[0, 1\] were not ready within 3 s"):
            pool.start()
    finally:
        for t in threads:
            t.join(10)
        pool.terminate()
    assert pool.refused == 2
    assert len(said) == 2 and all(m[4:5] == shards.REFUSE for m in said), said


def test_the_stripes_of_shards_and_workers_partition_the_schedule():
    # Engine stripe k takes arrival i when i = k (mod K): shard s takes i = s (mod N), and its
    # worker w takes (i div N) = w (mod W).
    n, w = 3, 2
    owner = {}
    for s in range(n):
        for j, k in enumerate(shards.stripes(s, n, w)):
            for i in range(60):
                if i % (n * w) == k:
                    assert i not in owner
                    owner[i] = (s, j)
    assert sorted(owner) == list(range(60))
    assert all(owner[i] == (i % n, (i // n) % w) for i in range(60))


def test_offsets_follow_ntp():
    # The shard's clock 5 ms ahead, 1 ms each way, 0.5 ms in the coordinator.
    t0 = 1_000_000_000
    t1 = t0 + 1_000_000 - 5_000_000
    t2 = t1 + 500_000
    t3 = t2 + 1_000_000 + 5_000_000
    assert shards.offset_from(t0, t1, t2, t3) == (5_000_000, 2_000_000)


def test_more_shards_than_connections_is_invalid_input():
    with pytest.raises(InputError, match="--shards 4"):
        shards.shard_workers(None, 4, 2)
    assert shards.shard_workers(8, 2, 6) == 3


def test_the_test_skew_variable_takes_one_value_or_one_per_shard():
    assert shards.test_skew_ns("20", 3) == 20_000_000
    assert shards.test_skew_ns("0,200", 1) == 200_000_000
    assert shards.test_skew_ns("0,200", 2) == 0
    assert shards.test_skew_ns("", 0) == 0


# -- merging: many shards' stripes merge to the histogram of the union --------------------------

def _slice(values: list[int]) -> HistSlice:
    h = histogram.new_histogram()
    for v in values:
        h.record_value(v)
    nonzero = [i for i in range(h.counts_len) if h.counts[i]]
    lo, hi = nonzero[0], nonzero[-1]
    counts = array.array("I", [h.counts[i] for i in range(lo, hi + 1)])
    if sys.byteorder != "little":
        counts.byteswap()
    return HistSlice(lo, counts.tobytes(), len(values), min(values), max(values))


def _report(worker: int, index: int, values: list[int], final: bool) -> IntervalReport:
    cells = []
    if values:
        sl = _slice(values)
        cells.append(CellDelta(0, 0, "2xx", "*", len(values), sl, sl))
    n = len(values)
    return IntervalReport(worker, index, final, [n], [n], [0], cells, 1, 0, 1, 0, [0], [0])


def _aggregate(parts: list[list[list[int]]]) -> list[dict[str, Any]]:
    """parts[worker][interval] -> the rows an Aggregator writes for them, workers interleaved."""
    plan = Plan("p", "http://127.0.0.1:9/", (Stage("s", 3.0, 10.0, 10.0),), (Request("r"),))
    agg = Aggregator(plan, len(parts), 1.0)
    rows: list[dict[str, Any]] = []
    for index in range(3):
        for worker, intervals in enumerate(parts):
            agg.add(_report(worker, index, intervals[index], index == 2))
            rows += [row for merged in agg.take() for row in merged.rows]
    return rows + [row for merged in agg.drain() for row in merged.rows]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5_000_000), st.integers(0, 5), st.integers(0, 2)),
                min_size=1, max_size=200))
def test_merged_histograms_equal_the_histogram_of_the_union(samples):
    # samples: (latency µs, engine stripe of 2 shards x 3 workers, interval)
    parts: list[list[list[int]]] = [[[], [], []] for _ in range(6)]
    union: list[list[list[int]]] = [[[], [], []]]
    for value, stripe, interval in samples:
        parts[stripe][interval].append(value)
        union[0][interval].append(value)
    sharded, single = _aggregate(parts), _aggregate(union)

    def view(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["scope"], r["stage"], r["name"], r["outcome"], r["start_ms"], r["count"],
                 histogram.encode(r["latency"])) for r in rows]

    assert view(sharded) == view(single)
