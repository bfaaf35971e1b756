"""Start-up stays cheap: the command line, profile loading and the coordinator up to its
first request import neither pyarrow nor httpx (together over 0.1 s of CPU). The CPU figures
themselves are measured, not asserted (docs/performance.md)."""

from __future__ import annotations

import os
import subprocess
import sys

from servers import ROOT

PROBE = """
import sys
from loadforge.cli import main
from loadforge.config.profile import load_profile
from loadforge.run import session
load_profile({profile!r})
print(" ".join(sorted(m for m in ("pyarrow", "httpx") if m in sys.modules)))
"""

BEFORE_FIRST_REQUEST = """
import sys
from loadforge.run import session
seen = []
start = session.start
def recording_start(pool):
    seen.extend(m for m in ("pyarrow", "httpx") if m in sys.modules)
    return start(pool)
session.start = recording_start
from loadforge.cli import main
try:
    main(["run", "--target", {url!r}, "--rate", "20", "--duration", "1s", "--quiet",
          "--out", {out!r}])
except SystemExit as exc:
    print("exit", exc.code, "imported", " ".join(seen))
"""


def python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_help_and_profiles_do_not_import_pyarrow_or_httpx():
    profile = os.path.join(ROOT, "profiles", "failover.toml")     # observers and actions
    assert python(PROBE.format(profile=profile)) == ""


def test_the_coordinator_reaches_its_first_request_without_pyarrow_or_httpx(nginx, tmp_path):
    out = python(BEFORE_FIRST_REQUEST.format(url=nginx.url + "/", out=str(tmp_path)))
    assert out == "exit 0 imported"


def test_a_worker_imports_its_module_and_the_engine_only():
    # Each worker is a fresh interpreter: the plan (feeders, TLS, observe, sandbox) costs it
    # about 60 ms of CPU at start, for one tuple of names (config/outcomes.py).
    code = ("import sys; import loadforge.run.workers, loadforge._core; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('loadforge'))))")
    assert python(code).split() == ["loadforge", "loadforge._core", "loadforge.config",
                                    "loadforge.config.outcomes", "loadforge.errors",
                                    "loadforge.run", "loadforge.run.wire",
                                    "loadforge.run.workers"]
