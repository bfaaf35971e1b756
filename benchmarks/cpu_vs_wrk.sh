#!/usr/bin/env bash
# CPU per request of loadforge against wrk on the same nginx, in one run (lower is better).
# Uses ../shared/bench/cpu_per_request.py, which starts nginx on 127.0.0.1:18080 if needed.
# ROUNDS=5 DURATION=10s benchmarks/cpu_vs_wrk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench/cpu_per_request.py}
DURATION=${DURATION:-10s}
# Bytecode compiled once, as `pip install .` leaves it: with PYTHONDONTWRITEBYTECODE set, every
# command would otherwise compile loadforge's modules again, and that start-up CPU is counted.
python3 -m compileall -q loadforge >/dev/null
LF="python3 -m loadforge.cli run --target http://127.0.0.1:18080/ --workers 1 --quiet --out /tmp/lf-bench"

echo "== closed model, 50 connections, 1 worker (wrk -t1 -c50)"
python3 "$BENCH" -- $LF --concurrency 50 --duration "$DURATION" --summary-json {summary}

echo "== open model, 40,000 requests/s, 50 connections, 1 worker"
python3 "$BENCH" -- $LF --rate 40000 --connections 50 --duration "$DURATION" --summary-json {summary}
