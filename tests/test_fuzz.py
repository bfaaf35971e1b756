"""A seeded fuzz of what users hand the command line (issue 21): mutated profiles, feeder
files, flows modules and result files. Whatever the input, the command ends within its time
limit with a documented exit code (0, 1, 2, 3) and no traceback.

In-process through click's CliRunner, to stay fast on two cores (a few hundred cases in well
under a minute). Runs never reach a worker: the target is a port of 127.0.0.1 that nothing
listens on, so a profile that validates ends at the preflight (exit 3), after its feeders and
flows module were read and compiled. Set LOADFORGE_FUZZ_SEED to replay another seed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from servers import ROOT

from loadforge import cli
from loadforge.flows import loader

SEED = int(os.environ.get("LOADFORGE_FUZZ_SEED", "2121"))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden.parquet")
CASE_LIMIT_S = 20       # per case: a hang shows as a failure, not as a stuck suite
EXIT_CODES = {0, 1, 2, 3}

BASE_PROFILE = """name = "fuzz"
target = "http://127.0.0.1:9"
[load]
workers = 1
connections = 4
timeout = "2s"
[[stages]]
name = "warm"
ramp = { from = 1, to = 10 }
duration = "1s"
[[stages]]
name = "steady"
rate = 10
duration = "1s"
[[feeders]]
name = "users"
file = "users.csv"
order = "sequential"
[[feeders]]
name = "items"
file = "items.jsonl"
[[requests]]
name = "home"
path = "/u/{users.id}"
headers = { X-Api-Key = "k-1234", Accept = "text/plain" }
weight = 3
[[requests]]
name = "order"
method = "POST"
path = "/orders/{items.sku}"
body = '{"sku": "{items.sku}"}'
[slo]
p99 = "250ms"
error_rate = "1%"
"""
CSV = "id,term\n1,alpha\n2,beta\n3,gamma\n"
JSONL = '{"sku": 1, "extra": "a"}\n{"sku": 2, "extra": [1, 2]}\n'
FLOWS = '''from loadforge.flows import flow


@flow(weight=2)
async def browse(user):
    r = await user.get("/", name="home")
    user.check(r.status_code == 200, "home is up")
'''

VALUES = ['""', "0", "-1", "1e309", "nan", "true", "[]", "{}", '"x"', "9" * 30, '"1s"',
          '"-5ms"', '"%"', "[[]]", '"\\u0000"', "'''\n'''", '"${LF_FUZZ_UNSET}"',
          '"{users.nope}"', '"/{items.sku}{items.sku}"', "1.5", '"1h"', '"2"', '"inf"']
JUNK = ["\x00", "\xff", "[[", "]]", "=", '"', "\n[stages]\n", "\n[[requests]]\n", "{", "}",
        "\\", "\r\n", "\ufeff", "#", "é", "[" * 300, "x = " + "[" * 600 + "]" * 600]


class Timeout(Exception):
    pass


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    # Bound, never listening: every connection to it is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture(autouse=True)
def keep_signals() -> Iterator[None]:
    # `run` installs SIGTERM and SIGHUP handlers of its own; this process is pytest's.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP,
                                                     signal.SIGINT, signal.SIGALRM)}
    yield
    signal.alarm(0)
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def invoke(args: list[str], cwd: Path) -> tuple[int, str]:
    """One command in-process, within CASE_LIMIT_S: its exit code and output."""
    def expired(signum: int, frame: Any) -> None:
        raise Timeout(f"{' '.join(args)} ran past {CASE_LIMIT_S} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(CASE_LIMIT_S)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli.main, args, catch_exceptions=True)
    finally:
        signal.alarm(0)
        os.chdir(old)
    output = result.output          # stdout and stderr, interleaved (click 8.2)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        if isinstance(result.exception, Timeout):
            raise result.exception
        raise AssertionError(f"{args}: {type(result.exception).__name__}: "
                             f"{result.exception}\n{output}") from result.exception
    return result.exit_code, output


def check(args: list[str], cwd: Path, what: str) -> int:
    code, output = invoke(args, cwd)
    assert code in EXIT_CODES, f"{what}: exit {code}\n{output}"
    assert "Traceback" not in output, f"{what}\n{output}"
    if code in (2, 3):
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, f"{what}: expected one error line\n{output}"
    return code


def mutate_text(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        i = rng.randrange(len(lines))
        if kind == 0 and len(lines) > 1:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif kind == 2 and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {rng.choice(VALUES)}"
        elif kind == 3:
            at = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:at] + rng.choice(JUNK) + lines[i][at:]
        elif kind == 4:
            return "\n".join(lines)[:rng.randrange(len(text))]
        else:
            lines[i] = "".join(rng.sample(lines[i], len(lines[i])))
    return "\n".join(lines)


def write_inputs(folder: Path, profile: str, csv: str = CSV, jsonl: str = JSONL) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.toml").write_bytes(profile.encode("utf-8", "surrogatepass"))
    (folder / "users.csv").write_bytes(csv.encode("utf-8", "surrogatepass"))
    (folder / "items.jsonl").write_bytes(jsonl.encode("utf-8", "surrogatepass"))


def run_args(port: int) -> list[str]:
    return ["run", "p.toml", "--target", f"http://127.0.0.1:{port}/", "--quiet",
            "--out", "results"]


def test_the_base_inputs_are_good(tmp_path, closed_port):
    write_inputs(tmp_path, BASE_PROFILE)
    code, output = invoke(run_args(closed_port), tmp_path)
    assert code == 3 and "nothing listens on" in output, output


def test_mutated_profiles(tmp_path, closed_port):
    rng = random.Random(SEED)
    codes = []
    for case in range(300):
        text = mutate_text(rng, BASE_PROFILE)
        folder = tmp_path / str(case)
        write_inputs(folder, text)
        codes.append(check(run_args(closed_port), folder, f"seed {SEED} profile {case}:\n{text}"))
    assert codes.count(2) > 100 and codes.count(3) > 10      # mostly refused; some ran to the preflight


def test_mutated_feeders(tmp_path, closed_port):
    rng = random.Random(SEED + 1)
    deep = ["[" * 5000 + "]" * 5000, '{"sku": ' + "[" * 5000 + "]" * 5000 + "}"]
    for case in range(100):
        csv, jsonl = CSV, JSONL
        if case % 2:
            csv = mutate_text(rng, CSV) if rng.random() < 0.8 else rng.choice(JUNK) * 3
        else:
            jsonl = (mutate_text(rng, JSONL) if rng.random() < 0.8 else rng.choice(deep))
        folder = tmp_path / str(case)
        write_inputs(folder, BASE_PROFILE, csv, jsonl)
        check(run_args(closed_port), folder, f"seed {SEED + 1} feeder {case}: {csv!r} {jsonl!r}")


FLOW_BODIES = [
    "", "x = (", "import loadforge_no_such_module\n", "raise ValueError('at import')\n",
    "import sys\nsys.exit(3)\n", "import os\nos._exit(9)\n", "while True:\n    pass\n",
    "from loadforge.flows import flow\n@flow\ndef sync(user):\n    pass\n",
    "from loadforge.flows import flow\n@flow\nasync def idle(user):\n    return 1\n",
    "from loadforge.flows import flow\n@flow\nasync def a(user):\n    await user.get('/')\n"
    "@flow(name='a')\nasync def b(user):\n    await user.get('/')\n",
    "x = " + "(" * 1000 + ")" * 1000 + "\n", "x = [" + "1," * 200000 + "]\n",
    "\xff\xfe garbage", "def f(:\n", "import time\ntime.sleep(60)\n",
]


def test_mutated_flows_modules(tmp_path, closed_port, monkeypatch):
    # A module that loops at import is given 2 s here (15 s in a real run).
    monkeypatch.setattr(loader, "IMPORT_TIMEOUT_S", 2.0)
    rng = random.Random(SEED + 2)
    profile = BASE_PROFILE.split("[[feeders]]")[0] + '[flows]\nmodule = "flows.py"\n'
    bodies = FLOW_BODIES + [mutate_text(rng, FLOWS) for _ in range(15)]
    for case, body in enumerate(bodies):
        folder = tmp_path / str(case)
        write_inputs(folder, profile)
        (folder / "flows.py").write_bytes(body.encode("utf-8", "surrogateescape"))
        check(run_args(closed_port), folder, f"seed {SEED + 2} flows {case}:\n{body[:300]}")


def mutated_result(rng: random.Random, path: Path) -> str:
    """golden.parquet with one thing wrong: bytes, length, metadata, or a column's type."""
    raw = Path(GOLDEN).read_bytes()
    kind = rng.randrange(5)
    if kind == 0:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
    elif kind == 1:
        path.write_bytes(raw[:rng.randrange(len(raw))])
    else:
        table = pq.read_table(GOLDEN)
        meta = dict(table.schema.metadata or {})
        if kind == 2:
            key = rng.choice([k for k in meta if k.startswith(b"loadforge.")])
            meta[key] = rng.choice([b"", b"{", b"[]", b"{}", b"null", b"[1, 2]", b"\xff",
                                    b'[{"name": 1}]', b"[" * 3000 + b"]" * 3000, b"1e999",
                                    b'{"a": "b"}', b'"text"', b"-1"])
        elif kind == 3:
            name = rng.choice(table.column_names)
            i = table.column_names.index(name)
            column = table.column(name).to_pylist()
            replacement = rng.choice([
                pa.array([str(v) for v in column]),
                pa.array([None] * len(column), pa.int64()),
                pa.array([-1] * len(column), pa.int64()),
                pa.array([b"\x00" * 3] * len(column), pa.binary()),
                pa.array([1.5] * len(column), pa.float64())])
            table = table.set_column(i, name, replacement)
        else:
            table = rng.choice([table.drop_columns([rng.choice(table.column_names)]),
                                table.slice(0, rng.randrange(table.num_rows)),
                                table.take(sorted(rng.sample(range(table.num_rows),
                                                             table.num_rows // 2)))])
        pq.write_table(table.replace_schema_metadata(meta), path)
    return str(path)


def test_mutated_result_files(tmp_path):
    rng = random.Random(SEED + 3)
    for case in range(200):
        bad = mutated_result(rng, tmp_path / f"{case}.parquet")
        command = rng.choice([["ls", bad], ["ls", "--json", bad], ["compare", GOLDEN, bad],
                              ["compare", bad, GOLDEN, "--format", "json"], ["trend", bad],
                              ["export", bad, "--hlog", str(tmp_path / "x.hlog")],
                              ["report", bad, "--html", str(tmp_path / "r.html")]])
        check(command, tmp_path, f"seed {SEED + 3} result {case}: {command}")
