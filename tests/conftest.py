from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, __import__("os").path.dirname(__file__))

from servers import Nginx  # noqa: E402

# The files whose tests drive real load for seconds (runs against nginx, HAProxy, the sandbox,
# scripted servers, chromium): marked `slow` here by name, so that `pytest -m "not slow"` is a
# quick subset for local work and no test file needs a decorator. The whole suite takes about
# ten minutes on two cores; the rest, parsers, profiles, schedules, histograms, the fold and
# the checks of the source, a small fraction of that.
SLOW_FILES = frozenset({
    "test_actions.py", "test_compare_noise.py", "test_docs.py", "test_engine.py",
    "test_exactness.py", "test_feeders.py", "test_flows.py", "test_flows_httpx.py",
    "test_haproxy.py", "test_headline.py", "test_http2.py", "test_input.py", "test_kube.py",
    "test_lifecycle.py", "test_loop.py", "test_observe.py", "test_outputs.py",
    "test_report.py", "test_sandbox.py", "test_sandbox_h2.py", "test_scaling.py",
    "test_shards.py", "test_startup.py", "test_tls.py", "test_torture.py",
    # added with live outputs, gRPC, capacity/simulate, faults and the external launcher
    "test_capacity.py", "test_external.py", "test_faults.py", "test_fuzz.py", "test_grpc.py",
    "test_hostile.py", "test_live.py", "test_parser_differential.py", "test_rehearse.py",
    "test_simulate.py",
    # added with expected statuses, the preflight through the engine, the protocol table
    "test_allocations.py", "test_expect_status.py", "test_preflight.py", "test_protocol_table.py",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(slow)


@pytest.fixture(scope="session")
def nginx() -> Iterator[Nginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    server = Nginx()
    yield server
    server.stop()
