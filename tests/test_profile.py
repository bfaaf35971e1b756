"""Profile parsing and validation: shipped profiles, bad input table, property tests."""

from __future__ import annotations

import copy
import datetime
import math
import pathlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadforge.config.observe import Action, Observe
from loadforge.config.plan import SLO, Plan, Request, Stage, StageObjectives, WindowObjectives
from loadforge.config.profile import load_profile, plan_from_dict
from loadforge.errors import InputError, ProfileError
from loadforge.units import parse_duration, parse_percent

PROFILES = pathlib.Path(__file__).resolve().parent.parent / "profiles"
SHIPPED = sorted(PROFILES.glob("*.toml"))

# A small valid profile; each bad-input case below changes one thing in a deep copy of it.
BASE: dict[str, Any] = {
    "name": "t",
    "target": "http://127.0.0.1:8080",
    "load": {"connections": 32, "workers": 2, "timeout": "2s", "fail_status": ["5xx"]},
    "stages": [
        {"name": "warmup", "ramp": {"from": 0, "to": 100}, "duration": "5s"},
        {"name": "steady", "rate": 100, "duration": "10s"},
        {"name": "closed", "concurrency": 8, "think": "10ms", "duration": "5s"},
    ],
    "requests": [
        {"name": "home", "method": "get", "path": "/", "weight": 3},
        {"name": "order", "method": "POST", "path": "/api/orders",
         "headers": {"Content-Type": "application/json"}, "body": '{"sku": 1}'},
    ],
    "slo": {
        "p99": "250ms", "error_rate": "0.1%",
        "stages": [{"stage": "steady", "grace": "2s", "p99": "500ms"}],
        "windows": [{"window": "5s", "stage": "steady", "abort_after": "10s",
                     "error_rate": 0.05}],
    },
    "observe": {"prometheus": {"url": "http://127.0.0.1:9090", "query": "up"}},
    "actions": [{"at": "5s", "sandbox": "kill", "backend": "backend-1"}],
}


def _plan(data: dict[str, Any], path: str = "profiles/t.toml") -> Plan:
    return plan_from_dict(data, source="", path=path)


def _with(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path ("stages.1.rate") replaced; `...` deletes it."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def test_base_profile() -> None:
    plan = _plan(BASE)
    assert plan.name == "t" and plan.target == "http://127.0.0.1:8080"
    assert (plan.connections, plan.workers, plan.timeout_s) == (32, 2, 2.0)
    assert plan.stages == (
        Stage("warmup", 5.0, rate_from=0.0, rate_to=100.0),
        Stage("steady", 10.0, rate_from=100.0, rate_to=100.0),
        Stage("closed", 5.0, concurrency=8, think_s=0.01),
    )
    assert plan.requests[0] == Request("home", "GET", "/", (), b"", 3)
    assert plan.requests[1].headers == (("Content-Type", "application/json"),)
    assert plan.requests[1].body == b'{"sku": 1}'
    assert plan.slo == SLO(
        run={"p99": 0.25, "error_rate": pytest.approx(0.001)},
        stages=(StageObjectives("steady", {"p99": 0.5}, grace_s=2.0),),
        windows=(WindowObjectives(5.0, {"error_rate": 0.05}, "steady", abort_after_s=10.0),),
    )
    (source,) = plan.observe.sources
    assert (source.kind, source.url, source.query) == ("prometheus", "http://127.0.0.1:9090", "up")
    assert plan.actions == (Action(0, 5.0, "sandbox", "sandbox kill backend-1",
                                   backend="backend-1", verb="kill"),)
    assert plan.path == "profiles/t.toml"


def test_defaults() -> None:
    plan = _plan({"stages": [{"rate": 10, "duration": "1s"}]}, path="dir/my-test.toml")
    assert plan.name == "my-test"
    assert plan.target == "sandbox"
    assert (plan.connections, plan.workers, plan.timeout_s) == (64, None, 5.0)
    assert plan.fail_status == ("4xx", "5xx")          # as k6 and Locust count them
    assert plan.retry == "idempotent"
    assert plan.stages[0].name == "stage0"
    assert plan.requests == (Request(name="default", method="GET", path="/"),)
    assert plan.slo == SLO() and not plan.slo
    assert (plan.observe, plan.actions, plan.sandbox) == (Observe(), (), None)


def test_defaults_for_request_names() -> None:
    plan = _plan(_with("requests", [{"path": "/a"}, {"path": "/b"}]))
    assert [r.name for r in plan.requests] == ["request0", "request1"]


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.name)
def test_shipped_profiles_parse(profile: pathlib.Path) -> None:
    plan = load_profile(str(profile))
    assert plan.name == profile.stem
    assert plan.source == profile.read_text()
    assert plan.stages and plan.requests and plan.slo.run
    assert all(s.open_model for s in plan.stages)


def test_expected_profiles_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= {"quickstart", "steady", "ramp", "spike"}


def test_quickstart_shape() -> None:
    plan = load_profile(str(PROFILES / "quickstart.toml"))
    assert plan.target == "sandbox" and plan.connections == 16
    assert plan.duration_s == pytest.approx(10.0)
    assert [(s.rate_from, s.rate_to) for s in plan.stages] == [(0, 500), (500, 500), (1000, 1000)]
    assert [r.path for r in plan.requests] == ["/", "/api/items"]
    assert plan.requests[0].weight != plan.requests[1].weight
    assert plan.slo.run == {"p99": 0.25, "error_rate": 0.01}


def test_spike_has_jump_and_graced_stage_slo() -> None:
    plan = load_profile(str(PROFILES / "spike.toml"))
    names = [s.name for s in plan.stages]
    assert names == ["warmup", "steady", "spike", "recovery"]
    rates = [(s.rate_from, s.rate_to) for s in plan.stages]
    assert rates[2] == (2000, 2000) and rates[1] == rates[3] == (400, 400)
    assert any(e.stage == "spike" and e.grace_s > 0 for e in plan.slo.stages)


# (case id, profile, text the message must contain)
BAD: list[tuple[str, dict[str, Any], str]] = [
    # unknown keys, at every level
    ("unknown-top", _with("stage", []), "unknown top-level key 'stage' (did you mean 'stages'?)"),
    ("unknown-load", _with("load.conections", 1), "load has unknown key 'conections'"),
    ("unknown-stage", _with("stages.1.rte", 5), "stages[1] has unknown key 'rte'"),
    ("unknown-ramp", _with("stages.0.ramp.too", 5), "stages[0].ramp has unknown key 'too'"),
    ("unknown-request", _with("requests.0.verb", "GET"), "requests[0] has unknown key 'verb'"),
    ("unknown-slo", _with("slo.p95", "1s"), "slo has unknown key 'p95'"),
    ("unknown-slo-stage", _with("slo.stages.0.p95", "1s"), "slo.stages[0] has unknown key 'p95'"),
    ("unknown-slo-window", _with("slo.windows.0.size", "1s"),
     "slo.windows[0] has unknown key 'size'"),
    # wrong types
    ("name-type", _with("name", 5), "name must be a string, got 5"),
    ("target-type", _with("target", 8080), "target must be a string"),
    ("load-type", _with("load", "fast"), "load must be a table"),
    ("stages-type", _with("stages", {"rate": 1}), "stages must be an array of tables"),
    ("stage-type", _with("stages.0", "warmup"), "stages[0] must be a table"),
    ("connections-float", _with("load.connections", 1.5), "load.connections must be an integer"),
    ("workers-string", _with("load.workers", "all"), 'load.workers must be "auto" or an integer'),
    ("workers-zero", _with("load.workers", 0), "load.workers must be"),
    ("fail-status", _with("load.fail_status", ["500"]), "load.fail_status[0] must be"),
    ("fail-status-type", _with("load.fail_status", "5xx"), "load.fail_status must be an array"),
    ("expect-status-type", _with("requests.0.expect_status", 404),
     "requests[0].expect_status must be a non-empty array of HTTP statuses"),
    ("expect-status-empty", _with("requests.0.expect_status", []),
     "requests[0].expect_status must be a non-empty array"),
    ("expect-status-range", _with("requests.0.expect_status", [200, 600]),
     "requests[0].expect_status[1] must be an HTTP status (an integer 100-599), got 600"),
    ("expect-status-class", _with("requests.0.expect_status", ["4xx"]),
     "requests[0].expect_status[0] must be"),
    ("expect-status-bool", _with("requests.0.expect_status", [True]),
     "requests[0].expect_status[0] must be"),
    ("expect-status-repeat", _with("requests.1.expect_status", [201, 201]),
     "requests[1].expect_status[1] repeats 201"),
    ("retry-value", _with("load.retry", "always"),
     'load.retry must be "idempotent" or "never" (a string), got \'always\''),
    ("retry-type", _with("load.retry", False), 'load.retry must be "idempotent" or "never"'),
    ("rate-string", _with("stages.1.rate", "100"), "stages[1].rate must be a number > 0"),
    ("headers-type", _with("requests.1.headers", ["a: b"]), "requests[1].headers must be a table"),
    ("header-value-type", _with("requests.1.headers", {"X-N": 5}),
     'requests[1].headers."X-N" must be a string'),
    ("body-type", _with("requests.1.body", {"sku": 1}), "requests[1].body must be a string"),
    ("method-type", _with("requests.0.method", 1), "requests[0].method must be a string"),
    # booleans are not numbers
    ("bool-rate", _with("stages.1.rate", True), "stages[1].rate must be a number > 0, got true"),
    ("bool-connections", _with("load.connections", True), "load.connections must be an integer"),
    ("bool-concurrency", _with("stages.2.concurrency", True), "stages[2].concurrency"),
    ("bool-weight", _with("requests.0.weight", False), "requests[0].weight"),
    ("bool-ramp", _with("stages.0.ramp.to", True), "stages[0].ramp.to"),
    ("bool-workers", _with("load.workers", True), "load.workers"),
    ("bool-duration", _with("stages.1.duration", True), "stages[1].duration"),
    ("bool-percent", _with("slo.error_rate", True), "slo.error_rate"),
    # ranges
    ("negative-rate", _with("stages.1.rate", -5), "stages[1].rate must be > 0, got -5"),
    ("zero-rate", _with("stages.1.rate", 0), "stages[1].rate must be > 0, got 0"),
    ("nan-rate", _with("stages.1.rate", math.nan), "stages[1].rate must be a number"),
    ("inf-rate", _with("stages.1.rate", math.inf), "stages[1].rate must be a number"),
    ("ramp-negative", _with("stages.0.ramp.from", -1), "stages[0].ramp.from must be >= 0"),
    ("ramp-zero", _with("stages.0.ramp", {"from": 0, "to": 0}), "stages[0].ramp goes from 0 to 0"),
    ("ramp-missing-to", _with("stages.0.ramp", {"from": 1}), "stages[0].ramp is missing 'to'"),
    ("zero-duration", _with("stages.1.duration", "0s"), "stages[1].duration must be > 0"),
    ("zero-concurrency", _with("stages.2.concurrency", 0), "stages[2].concurrency must be"),
    ("zero-weight", _with("requests.0.weight", 0), "requests[0].weight must be an integer >= 1"),
    ("zero-connections", _with("load.connections", 0), "load.connections must be an integer >= 1"),
    ("zero-timeout", _with("load.timeout", "0ms"), "load.timeout must be > 0"),
    ("concurrency-over-connections", _with("stages.2.concurrency", 33),
     "stages[2].concurrency (33) must be <= load.connections (32)"),
    ("percent-over", _with("slo.error_rate", "150%"), "slo.error_rate must be at most 100%"),
    ("fraction-over", _with("slo.success_rate", 2), "slo.success_rate must be a percentage"),
    # durations
    ("duration-bare", _with("stages.1.duration", "5"), "stages[1].duration must be a duration"),
    ("duration-number", _with("stages.1.duration", 5), "a bare number has no unit"),
    ("duration-unit", _with("stages.1.duration", "5x"), 'stages[1].duration must be a duration'),
    ("duration-negative", _with("stages.1.duration", "-1s"),
     'stages[1].duration must not be negative, got "-1s"'),
    ("duration-empty", _with("stages.1.duration", ""), "stages[1].duration must be a duration"),
    ("duration-missing", _with("stages.1.duration", ...), "stages[1] is missing 'duration'"),
    ("think-negative", _with("stages.2.think", "-5ms"), "stages[2].think must not be negative"),
    ("slo-latency-bare", _with("slo.p99", 250), "slo.p99 must be a duration"),
    ("grace-bad", _with("slo.stages.0.grace", "soon"), "slo.stages[0].grace must be a duration"),
    ("window-bad", _with("slo.windows.0.window", "0s"), "slo.windows[0].window must be > 0"),
    # stage models
    ("rate-and-concurrency", _with("stages.1.concurrency", 4),
     "stages[1] needs exactly one of rate"),
    ("rate-and-ramp", _with("stages.1.ramp", {"from": 1, "to": 2}), "has rate and ramp"),
    ("no-model", _with("stages.1.rate", ...), "stages[1] needs exactly one of rate"),
    ("think-open", _with("stages.1.think", "1s"),
     "stages[1].think only applies to closed-model stages"),
    # lists and names
    ("no-stages", _with("stages", ...), "has no [[stages]]"),
    ("empty-stages", _with("stages", []), "stages must have at least one [[stages]] entry"),
    ("empty-requests", _with("requests", []),
     "requests must have at least one [[requests]] entry"),
    ("duplicate-stage", _with("stages.1.name", "warmup"),
     'stages[1].name "warmup" is already the name of stages[0]'),
    ("duplicate-request", _with("requests.1.name", "home"),
     'requests[1].name "home" is already the name of requests[0]'),
    ("empty-name", _with("stages.1.name", ""), "stages[1].name must be a non-empty"),
    ("star-name", _with("requests.0.name", "*"), "requests[0].name must be a non-empty"),
    # target
    ("tls-unknown-key", _with("tls", {"verify": False}), "tls has unknown key 'verify'"),
    ("tls-versions", _with("tls", {"versions": ["1.1"]}), 'tls.versions must be a non-empty array'),
    ("tls-ca-missing", _with("tls", {"ca": "no-such-ca.pem"}), "tls.ca must be a readable PEM"),
    ("tls-insecure", _with("tls", {"insecure": "yes"}), "tls.insecure must be true or false"),
    ("tls-server-name", _with("tls", {"server_name": "a b"}), "tls.server_name must be a host"),
    ("bad-scheme", _with("target", "ftp://example.com"), 'target must be "sandbox" or an http:// or https:// URL'),
    ("no-host", _with("target", "http://"), 'target must be "sandbox" or an http:// or https:// URL'),
    ("bare-host", _with("target", "localhost:8080"), 'target must be "sandbox" or an http:// or https:// URL'),
    ("bad-port", _with("target", "http://h:99999"), 'target must be "sandbox" or an http:// or https:// URL'),
    ("space-url", _with("target", "http://h /x"), 'target must be "sandbox" or an http:// or https:// URL'),
    # requests
    ("bad-method", _with("requests.0.method", "FETCH"), "requests[0].method must be one of GET"),
    ("relative-path", _with("requests.0.path", "api"), 'requests[0].path must start with "/"'),
    ("space-path", _with("requests.0.path", "/a b"), "requests[0].path must start with"),
    ("crlf-path", _with("requests.0.path", "/a\r\nX: y"), "requests[0].path"),
    ("crlf-header", _with("requests.1.headers", {"X-A": "b\r\nEvil: 1"}),
     'requests[1].headers."X-A" must be printable ASCII'),
    ("bad-header-name", _with("requests.1.headers", {"X A": "b"}),
     'requests[1].headers has "X A", which is not a valid header name'),
    ("host-header-path", _with("requests.1.headers", {"host": "api.example.com/x"}),
     'requests[1].headers."host" must be a host name'),
    ("connection-header", _with("requests.1.headers", {"connection": "close"}),
     'requests[1].headers."connection" cannot be set'),
    ("content-length", _with("requests.1.headers", {"Content-Length": "5"}),
     "loadforge writes Content-Length itself"),
    ("transfer-encoding", _with("requests.1.headers", {"Transfer-Encoding": "chunked"}),
     "Transfer-Encoding"),
    ("connection-header", _with("requests.1.headers", {"Connection": "close"}), "Connection"),
    ("dup-header", _with("requests.1.headers", {"X-A": "1", "x-a": "2"}),
     'requests[1].headers."x-a" repeats "X-A"'),
    # slo
    ("unknown-slo-stage-name", _with("slo.stages.0.stage", "stedy"),
     'slo.stages[0].stage names no stage: got "stedy" (did you mean "steady"?)'),
    ("slo-stage-missing", _with("slo.stages.0.stage", ...), "slo.stages[0] is missing 'stage'"),
    ("unknown-window-stage", _with("slo.windows.0.stage", "nope"),
     "slo.windows[0].stage names no stage"),
    ("grace-too-long", _with("slo.stages.0.grace", "10s"),
     'slo.stages[0].grace (10s) must be shorter than stage "steady"'),
    ("slo-stage-no-objective", _with("slo.stages.0", {"stage": "steady"}),
     "slo.stages[0] needs an objective"),
    ("window-fraction", _with("slo.windows.0.window", "1500ms"),
     "slo.windows[0].window must be a whole number of 1s intervals"),
    ("window-too-long", _with("slo.windows.0.window", "11s"),
     'slo.windows[0].window (11s) is longer than stage "steady"'),
    ("abort-after-bad", _with("slo.windows.0.abort_after", 3), "slo.windows[0].abort_after"),
    ("slo-stages-type", _with("slo.stages", {"stage": "steady"}), "slo.stages must be an array"),
    # raw tables
    ("observe-type", _with("observe", ["x"]), "observe must be a table"),
    ("actions-type", _with("actions", {"kill": 1}), "actions must be an array of tables"),
    ("sandbox-type", _with("sandbox", 3), "sandbox must be a table"),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ProfileError) as info:
        _plan(data)
    message = str(info.value)
    assert message.startswith("profile t.toml: "), message
    assert expected in message, message


def test_errors_are_input_errors() -> None:
    with pytest.raises(InputError) as info:
        _plan(_with("stages.1.rate", -5))
    assert info.value.exit_code == 2
    assert str(info.value) == "profile t.toml: stages[1].rate must be > 0, got -5"


def test_message_without_path() -> None:
    with pytest.raises(ProfileError, match=r"^profile: stages\[0\]\.rate"):
        plan_from_dict({"stages": [{"rate": 0, "duration": "1s"}]})


def test_not_a_table() -> None:
    with pytest.raises(ProfileError, match="must be a table"):
        plan_from_dict([1, 2])  # type: ignore[arg-type]


def test_missing_file(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ProfileError, match=f"profile: not found: {missing}"):
        load_profile(str(missing))


def test_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ProfileError, match="is a directory"):
        load_profile(str(tmp_path))


def test_toml_syntax_error(tmp_path: pathlib.Path) -> None:
    profile = tmp_path / "broken.toml"
    profile.write_text('name = "x"\n[[stages]]\nrate = = 5\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(profile))
    message = str(info.value)
    assert str(profile) in message and "not valid TOML" in message and "line 3" in message


def test_not_utf8(tmp_path: pathlib.Path) -> None:
    profile = tmp_path / "latin.toml"
    profile.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(str(profile))


def test_load_profile_keeps_source_and_name(tmp_path: pathlib.Path) -> None:
    profile = tmp_path / "mine.toml"
    text = '[[stages]]\nrate = 5\nduration = "1s"\n'
    profile.write_text(text)
    plan = load_profile(str(profile))
    assert (plan.name, plan.source, plan.path) == ("mine", text, str(profile))


def test_toml_date_is_not_a_duration(tmp_path: pathlib.Path) -> None:
    profile = tmp_path / "d.toml"
    profile.write_text('[[stages]]\nrate = 5\nduration = 00:00:05\n')
    with pytest.raises(ProfileError, match=r"stages\[0\]\.duration must be a duration"):
        load_profile(str(profile))


def test_method_is_stored_upper_case() -> None:
    assert _plan(BASE).requests[0].method == "GET"


def test_sandbox_table_is_validated_once() -> None:
    from loadforge.config.sandbox import SandboxConfig, validate_sandbox_config

    raw = {"backends": 3, "algorithm": "least_connections"}
    sandbox = _plan(_with("sandbox", raw)).sandbox
    assert isinstance(sandbox, SandboxConfig) and sandbox == validate_sandbox_config(raw)


def test_sandbox_table_is_checked_by_the_sandbox() -> None:
    try:
        from loadforge.config.sandbox import validate_sandbox_config  # noqa: F401
    except ImportError:
        pytest.skip("the sandbox has no validator yet")
    with pytest.raises(ProfileError, match=r"^profile t\.toml: sandbox\.backends"):
        _plan(_with("sandbox", {"backends": 0}))


# Durations ----------------------------------------------------------------------------------

SECONDS_PER_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5),
    ("100us", 1e-4), ("100µs", 1e-4), ("1m30s", 90.0), (" 10s ", 10.0), (".5s", 0.5),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "d") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["5", "5x", "-1s", "", "s", "5 ", "1e999h", "inf s", "nans",
                                   "5S", "1.2.3s", "٣s", 5, 5.0, True, None, [], {}])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ProfileError, match="^--duration "):
        parse_duration(value, "--duration")


def test_parse_duration_zero() -> None:
    assert parse_duration("0s", "d", allow_zero=True) == 0.0
    with pytest.raises(ProfileError, match="must be > 0"):
        parse_duration("0ms", "d")


@given(st.one_of(st.integers(min_value=0, max_value=10**9),
                 st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)),
       st.sampled_from(sorted(SECONDS_PER_UNIT)))
def test_parse_duration_round_trip(n: float, unit: str) -> None:
    seconds = parse_duration(f"{n}{unit}", "d", allow_zero=True, maximum=math.inf)
    assert math.isclose(seconds, n * SECONDS_PER_UNIT[unit], rel_tol=1e-12, abs_tol=1e-300)


@given(st.text(max_size=12))
def test_parse_duration_text_never_crashes(text: str) -> None:
    try:
        seconds = parse_duration(text, "d", allow_zero=True)
    except ProfileError:
        return
    assert math.isfinite(seconds) and seconds >= 0


@pytest.mark.parametrize(("value", "fraction"), [
    ("0.1%", 0.001), ("1%", 0.01), ("100%", 1.0), ("0%", 0.0), (0.05, 0.05), (0, 0.0),
])
def test_parse_percent(value: Any, fraction: float) -> None:
    assert parse_percent(value, "p") == pytest.approx(fraction)


@pytest.mark.parametrize("value", ["0.1", "-1%", "101%", "%", "x%", 1.5, -0.1, True, None,
                                   math.nan, 1, 1.0])   # a bare 1: 100 %? 1 %? refused
def test_parse_percent_rejects(value: Any) -> None:
    with pytest.raises(ProfileError, match="^slo.error_rate "):
        parse_percent(value, "slo.error_rate")


# Any input either validates or raises ProfileError ----------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["5s", "250ms", "0s", "-1s", "5", "5x", "auto", "", "*", "GET", "/", "/x",
                     "1%", "sandbox", "http://127.0.0.1:8080", "https://x"]),
    st.text(max_size=8),
    st.datetimes(min_value=datetime.datetime(2000, 1, 1)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["from", "to", "x"]), inner,
                                            max_size=3)),
    max_leaves=6,
)
stage_dicts = st.dictionaries(
    st.sampled_from(["name", "duration", "rate", "ramp", "concurrency", "think", "bogus"]),
    values, max_size=6)
request_dicts = st.dictionaries(
    st.sampled_from(["name", "method", "path", "headers", "body", "weight", "bogus"]),
    values, max_size=6)


@settings(max_examples=300)
@given(stage_dicts)
def test_any_stage_validates_or_raises_profile_error(stage: dict[str, Any]) -> None:
    try:
        plan = _plan({"stages": [stage]})
    except ProfileError:
        return
    (validated,) = plan.stages
    assert validated.duration_s > 0
    if validated.open_model:
        assert validated.rate_from is not None and validated.rate_to is not None
        assert max(validated.rate_from, validated.rate_to) > 0
    else:
        assert validated.concurrency is not None and validated.concurrency >= 1


@settings(max_examples=200)
@given(st.lists(request_dicts, max_size=3))
def test_any_requests_validate_or_raise_profile_error(requests: list[dict[str, Any]]) -> None:
    try:
        _plan({"stages": [{"rate": 1, "duration": "1s"}], "requests": requests})
    except ProfileError:
        return


@settings(max_examples=200)
@given(st.dictionaries(
    st.sampled_from(["name", "target", "load", "stages", "requests", "slo", "observe",
                     "actions", "sandbox", "bogus"]),
    values, max_size=5))
def test_any_profile_validates_or_raises_profile_error(data: dict[str, Any]) -> None:
    try:
        _plan(data)
    except ProfileError:
        return
