"""Targets, flags and numbers as a user gives them (issue 8, part 6), from the command line.

Bad input: exit 2 and one line naming the input, never a traceback, never a hang. Good input:
what reaches a real server on 127.0.0.1 is what the user asked for.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers import RecordingServer, loadforge

from loadforge import limits
from loadforge.config.profile import check_target, parse_slo_flags, plan_from_dict
from loadforge.engine.requests import request_path
from loadforge.errors import ProfileError

PROFILE = """
name = "input"
target = "{target}"
[load]
workers = 1
connections = 4
{load}
[[stages]]
name = "steady"
rate = 20
duration = "1s"
[[requests]]
name = "users"
path = "/users"
{headers}
"""


def write_profile(tmp_path, target: str, load: str = "", headers: str = "") -> str:
    path = tmp_path / "input.toml"
    path.write_text(PROFILE.format(target=target, load=load, headers=headers))
    return str(path)


def run(tmp_path, *args: str, timeout: float = 60) -> tuple[Any, dict[str, Any] | None]:
    summary = tmp_path / "summary.json"
    out = loadforge("run", *args, "--quiet", "--out", str(tmp_path / "results"),
                    "--summary-json", str(summary), timeout=timeout)
    return out, json.loads(summary.read_text()) if summary.exists() else None


def one_line_error(out: Any, *words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- Host and the target's path ----------------------------------------------------------------

def test_host_header_and_path_prefix_reach_the_server(tmp_path):
    with RecordingServer() as server:
        profile = write_profile(tmp_path, server.url + "/api/",
                                headers='headers = { HOST = "api.example.com" }')
        out, summary = run(tmp_path, profile)
        assert out.returncode == 0, out.stderr
        seen = list(server.seen)
    assert summary is not None and summary["requests"] == 20
    assert len(seen) == 21                                   # and the preflight
    for method, path, headers in seen:
        assert (method, path) == ("GET", "/api/users")
        hosts = [v for k, v in headers.items() if k.lower() == "host"]
        assert hosts == ["api.example.com"]                  # one Host: the request's own


def test_target_path_from_the_flag_overrides_the_profiles(tmp_path):
    with RecordingServer() as server:
        profile = write_profile(tmp_path, "http://127.0.0.1:1")
        out, _ = run(tmp_path, profile, "--target", server.url + "/v2")
        assert out.returncode == 0, out.stderr
        paths = {path for _, path, _ in server.seen}
        hosts = {h.get("Host") for _, _, h in server.seen}
    assert paths == {"/v2/users"}
    assert hosts == {server.url.removeprefix("http://")}


def test_flags_only_run_sends_the_targets_path_and_query(tmp_path):
    with RecordingServer() as server:
        out, _ = run(tmp_path, "--target", server.url + "/health?full=1", "--rate", "10",
                     "--duration", "1s", "--workers", "1")
        assert out.returncode == 0, out.stderr
        paths = {path for _, path, _ in server.seen}
    assert paths == {"/health?full=1"}


@pytest.mark.parametrize(("prefix", "path", "sent"), [
    ("", "/users", "/users"),
    ("/", "/users", "/users"),
    ("/api", "/users", "/api/users"),
    ("/api/", "/users", "/api/users"),
    ("/api", "/", "/api/"),
    ("/api", "", "/api"),
    ("/api/", "", "/api/"),
    ("", "", "/"),
    ("/api", "?q=1", "/api?q=1"),
    ("", "?q=1", "/?q=1"),
])
def test_request_path_joins_prefix_and_path(prefix, path, sent):
    assert request_path(prefix, path) == sent


# -- flags -------------------------------------------------------------------------------------

def test_timeout_flag_overrides_the_profiles(tmp_path):
    # A server that never answers: the run's one request times out after --timeout, not after
    # the profile's 1 h; --no-preflight, since the preflight would find it unreachable.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        path = tmp_path / "slow.toml"
        path.write_text(PROFILE.format(target=url, load='timeout = "1h"', headers="")
                        .replace("rate = 20", "rate = 2"))
        out, summary = run(tmp_path, str(path), "--timeout", "200ms", "--no-preflight",
                           timeout=30)
    assert summary is not None, out.stderr
    assert summary["errors_by_kind"]["timeout"] == 2


def test_slo_flags_gate_a_flags_only_run(tmp_path):
    with RecordingServer() as server:
        base = ("--target", server.url, "--rate", "20", "--duration", "1s", "--workers", "1")
        held, summary = run(tmp_path, *base, "--slo", "p99=10s", "--slo", "error_rate=1%")
        assert held.returncode == 0, held.stderr
        assert summary is not None
        assert {v["name"]: v["ok"] for v in summary["slo"]} == {"p99": True,
                                                                "error_rate": True}
        missed, summary = run(tmp_path, *base, "--slo", "p50=1us")
    assert missed.returncode == 1, missed.stderr
    assert summary is not None and [v["ok"] for v in summary["slo"]] == [False]
    # `ls` judges the archived run again, with the flags' objectives.
    ls = loadforge("ls", "--json", str(tmp_path / "results"))
    verdicts = sorted(json.loads(line)["verdict"] for line in ls.stdout.splitlines())
    assert verdicts == ["FAIL 1/1", "pass"]


def test_slo_flag_adds_to_and_replaces_the_profiles(tmp_path):
    with RecordingServer() as server:
        profile = tmp_path / "slo.toml"
        profile.write_text(PROFILE.format(target=server.url, load="", headers="")
                           + '[slo]\np99 = "1us"\nerror_rate = "0%"\n')
        out, summary = run(tmp_path, str(profile), "--slo", "p99=10s", "--slo", "max=10s")
    assert out.returncode == 0, out.stderr
    assert summary is not None
    assert {v["name"]: v["limit"] for v in summary["slo"]} == {
        "p99": 10_000_000, "max": 10_000_000, "error_rate": 0.0}


@pytest.mark.parametrize(("args", "words"), [
    (("--target", "http://127.0.0.1:1", "--duration", "1s"), ("--rate", "--concurrency")),
    (("--target", "http://127.0.0.1:1", "--rate", "inf", "--duration", "1s"), ("--rate",)),
    (("--target", "http://127.0.0.1:1", "--rate", "nan", "--duration", "1s"), ("--rate",)),
    (("--target", "http://127.0.0.1:1", "--rate", "0", "--duration", "1s"), ("--rate",)),
    (("--target", "http://127.0.0.1:1", "--rate", "1e8", "--duration", "1s"),
     ("--rate", "at most")),
    (("--target", "http://127.0.0.1:1", "--concurrency", "10000000", "--duration", "1s"),
     ("--concurrency",)),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "100000h"),
     ("--duration", "at most")),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "1s",
      "--timeout", "2562047h"), ("--timeout", "at most 1h")),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "1s",
      "--timer-resolution", "1h"), ("--timer-resolution",)),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "1s", "--workers",
      "100000"), ("--workers",)),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "1s", "--connections",
      "99999999"), ("--connections",)),
    (("--target", "ftp://127.0.0.1:1", "--rate", "5", "--duration", "1s"), ("--target",)),
    (("--target", "http://127.0.0.1:99999", "--rate", "5", "--duration", "1s"),
     ("--target", "port")),
    (("--target", "http://u:hunter2@127.0.0.1:1", "--rate", "5", "--duration", "1s"),
     ("--target", "user:password")),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "1s", "--slo",
      "p98=1s"), ("--slo", "p98")),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "1s", "--slo",
      "error_rate=5"), ("--slo", "error_rate")),
    (("--target", "http://127.0.0.1:1", "--rate", "5", "--duration", "1s", "--slo", "p99"),
     ("--slo", "OBJECTIVE=LIMIT")),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, args, words):
    out = loadforge("run", *args, "--out", str(tmp_path))
    one_line_error(out, *words)
    assert "hunter2" not in out.stderr


def test_timeout_and_target_flags_are_checked_with_a_profile(tmp_path):
    profile = write_profile(tmp_path, "http://127.0.0.1:1")
    one_line_error(loadforge("run", profile, "--timeout", "2h", "--out", str(tmp_path)),
                   "--timeout")
    one_line_error(loadforge("run", profile, "--target", "http://127.0.0.1:1/?q=1", "--out",
                             str(tmp_path)), "--target", "query")


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_sandbox_port_is_range_checked(port):
    one_line_error(loadforge("sandbox", "--port", port, timeout=20), "--port", "65535")


# -- numbers in a profile ----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "target": "http://127.0.0.1:8080",
    "load": {"connections": 8},
    "stages": [{"name": "s", "rate": 10, "duration": "10s"}],
    "requests": [{"name": "r", "path": "/"}],
}


def _profile(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(("data", "field"), [
    (_profile(load__timeout="2562047h"), "load.timeout"),
    (_profile(load__timeout="61m"), "load.timeout"),
    (_profile(load__timer_resolution="2s"), "load.timer_resolution"),
    (_profile(load__connections=2**31), "load.connections"),
    (_profile(load__workers=100_000), "load.workers"),
    (_profile(stages__0__rate=1e12), "stages[0].rate"),
    (_profile(stages__0__duration="721h"), "stages[0].duration"),
    (_profile(stages=[{"rate": 1, "duration": "720h"}, {"rate": 1, "duration": "1h"}]),
     "stages"),
    (_profile(stages=[{"rate": 1, "duration": "1s"}] * 100_000), "stages"),
    (_profile(stages__0={"concurrency": 2**31, "duration": "1s"}), "stages[0].concurrency"),
    (_profile(stages__0={"concurrency": 1, "think": "2h", "duration": "1s"}),
     "stages[0].think"),
    (_profile(requests__0__weight=2**31), "requests[0].weight"),
    (_profile(requests=[{"name": "a", "weight": 9_000}, {"name": "b", "weight": 9_000}]),
     "weights add up"),
    (_profile(requests=[{"name": f"r{i}"} for i in range(101)]), "requests"),
    (_profile(slo={"p99": "2h"}), "slo.p99"),
])
def test_numbers_past_what_the_engine_represents_are_refused(data, field):
    with pytest.raises(ProfileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        plan_from_dict(data)


def test_a_huge_weight_is_refused_from_the_command_line(tmp_path):
    path = tmp_path / "weights.toml"
    path.write_text(PROFILE.format(target="http://127.0.0.1:1", load="", headers="")
                    + "weight = 2147483648\n")
    one_line_error(loadforge("run", str(path), "--out", str(tmp_path), timeout=20),
                   "requests[0].weight", "at most")


@given(st.integers(min_value=-2**70, max_value=2**70))
def test_any_integer_weight_is_either_accepted_within_the_cap_or_refused(weight):
    try:
        plan = plan_from_dict(_profile(requests__0__weight=weight))
    except ProfileError as exc:
        assert "requests[0].weight" in str(exc)
        assert not 1 <= weight <= limits.MAX_TOTAL_WEIGHT
        return
    assert plan.requests[0].weight == weight <= limits.MAX_TOTAL_WEIGHT


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**80, 2**80))
def test_any_rate_is_either_accepted_within_the_cap_or_refused(rate):
    try:
        plan = plan_from_dict(_profile(stages__0__rate=rate))
    except ProfileError as exc:
        assert "stages[0].rate" in str(exc)
        assert not (math.isfinite(rate) and 0 < rate <= limits.MAX_RATE)
        return
    assert 0 < (plan.stages[0].rate_from or 0) <= limits.MAX_RATE


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["us", "ms", "s", "m", "h"]))
def test_any_timeout_is_either_accepted_within_an_hour_or_refused(n, unit):
    try:
        plan = plan_from_dict(_profile(load__timeout=f"{n}{unit}"))
    except ProfileError as exc:
        assert "load.timeout" in str(exc)
        return
    assert 0 < plan.timeout_s <= limits.MAX_TIMEOUT_S


@given(st.lists(st.sampled_from(["p50", "p99", "max", "error_rate", "success_rate", "p98",
                                 "=", "1s", "10%", "x"]), max_size=4).map("=".join))
def test_slo_flags_parse_or_name_the_flag(text):
    try:
        parse_slo_flags([text])
    except ProfileError as exc:
        assert str(exc).startswith("--slo")


@given(st.text(max_size=40))
def test_any_target_text_is_accepted_as_a_url_or_refused_naming_the_flag(text):
    try:
        url = check_target(text)
    except ProfileError as exc:
        assert str(exc).startswith("--target")
        return
    assert url == "sandbox" or url.startswith("http://")


numbers = (st.integers(-2**64, 2**64) | st.floats(allow_nan=True, allow_infinity=True)
           | st.integers(0, 10**7).map(lambda n: f"{n}s")
           | st.integers(0, 10**12).map(lambda n: f"{n}ms"))


@given(numbers, numbers, numbers, numbers, numbers, numbers)
def test_every_number_of_a_profile_is_within_its_cap_or_refused(connections, workers,
                                                                concurrency, think, duration,
                                                                resolution):
    data = _profile(load__connections=connections, load__workers=workers,
                    load__timer_resolution=resolution)
    data["stages"].append({"name": "closed", "concurrency": concurrency, "think": think,
                           "duration": duration})
    try:
        plan = plan_from_dict(data)
    except ProfileError:
        return
    assert 1 <= plan.connections <= limits.MAX_CONNECTIONS
    assert plan.workers is None or 1 <= plan.workers <= limits.MAX_WORKERS
    assert 0 <= plan.timer_resolution_s <= limits.MAX_TIMER_RESOLUTION_S
    closed = plan.stages[1]
    assert closed.concurrency is not None and 1 <= closed.concurrency <= plan.connections
    assert 0 <= closed.think_s <= limits.MAX_THINK_S
    assert 0 < plan.duration_s <= limits.MAX_RUN_S
