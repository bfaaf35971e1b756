"""Secrets stay out of results (issue 8, part 4): result files travel as CI artifacts, so the
profile archived in them has its credentials redacted, while the requests still carry them."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import tomllib

import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st
from servers import ROOT, RecordingServer, loadforge

from loadforge.config.redact import REDACTED, dump_toml, redact_profile, redact_url

TOKEN = "Bearer tok-9f8e7d6c"
PROXY = "Basic cHJveHk6c2VjcmV0"
COOKIE = "session=c00k1e-42"
URL_PASSWORD = "pw-0xdeadbeef"

PROFILE = f"""
name = "secrets"
target = "{{target}}"
[load]
workers = 1
connections = 2
[[stages]]
name = "steady"
rate = 20
duration = "1s"
[[requests]]
name = "api"
path = "/me"
headers = {{ authorization = "{TOKEN}", "X-Trace" = "visible-value" }}
[[requests]]
name = "other"
path = "/other"
[requests.headers]
PROXY-AUTHORIZATION = "{PROXY}"
Cookie = "{COOKIE}"
[observe]
[[observe.metrics]]
url = "http://metrics:{URL_PASSWORD}@127.0.0.1:9/metrics"  # {COOKIE} in a comment too
metric = "up"
[slo]
error_rate = "1%"
"""


def test_archived_profile_has_no_secrets_and_the_server_saw_them(tmp_path):
    with RecordingServer() as server:
        profile = tmp_path / "secrets.toml"
        profile.write_text(PROFILE.replace("{target}", server.url))
        summary_path = tmp_path / "summary.json"
        out = loadforge("run", str(profile), "--quiet", "--out", str(tmp_path / "results"),
                        "--summary-json", str(summary_path))
        assert out.returncode == 0, out.stderr
        seen = list(server.seen)
    summary = json.loads(summary_path.read_text())
    by_path: dict[str, dict[str, str]] = {}
    for _, path, headers in seen:
        by_path[path] = {k.lower(): v for k, v in headers.items()}
    assert by_path["/me"]["authorization"] == TOKEN
    assert by_path["/other"]["proxy-authorization"] == PROXY
    assert by_path["/other"]["cookie"] == COOKIE

    file = pq.ParquetFile(summary["result"])
    metadata = {k.decode(): v.decode() for k, v in file.schema_arrow.metadata.items()}
    everything = json.dumps(metadata) + summary_path.read_text() + out.stdout + out.stderr
    for secret in (TOKEN, "tok-9f8e7d6c", PROXY, COOKIE, "c00k1e-42", URL_PASSWORD):
        assert secret not in everything
    archived = metadata["loadforge.profile"]
    assert "visible-value" in archived and "# " in archived      # the rest, comments kept
    parsed = tomllib.loads(archived)
    assert parsed["requests"][0]["headers"]["authorization"] == REDACTED
    assert parsed["requests"][1]["headers"] == {"PROXY-AUTHORIZATION": REDACTED,
                                                "Cookie": REDACTED}
    assert parsed["observe"]["metrics"][0]["url"] == f"http://{REDACTED}@127.0.0.1:9/metrics"
    # The archived profile still reads as the profile: `ls` judges its objectives again.
    ls = loadforge("ls", "--json", str(tmp_path / "results"))
    assert [json.loads(line)["verdict"] for line in ls.stdout.splitlines()] == ["pass"]


def test_a_secret_written_with_escapes_is_redacted_by_writing_the_profile_again():
    text = ('name = "p"  # a comment\n[[requests]]\npath = "/"\n'
            'headers = { Authorization = "Bearer \\u0073ecret" }\n')
    archived = redact_profile(text)
    assert "secret" not in archived.replace("secrets redacted", "")
    assert tomllib.loads(archived) == {"name": "p", "requests": [
        {"path": "/", "headers": {"Authorization": REDACTED}}]}


def test_values_from_the_environment_are_redacted_wherever_they_occur():
    text = 'name = "p"\n[[requests]]\npath = "/"\nheaders = { "X-Api-Key" = "k-123" }\n'
    archived = redact_profile(text, secrets={"k-123"})
    assert "k-123" not in archived
    assert tomllib.loads(archived)["requests"][0]["headers"]["X-Api-Key"] == REDACTED


def test_a_profile_without_secrets_is_archived_byte_for_byte():
    text = '# steady\nname = "p"\ntarget = "http://127.0.0.1:1/api"\n'
    assert redact_profile(text) == text


def test_url_user_info_is_redacted_in_any_text():
    assert redact_url("http://u:p@h:1/x") == f"http://{REDACTED}@h:1/x"
    assert redact_url("curl https://user@h/?a=b@c") == f"curl https://{REDACTED}@h/?a=b@c"
    assert redact_url("http://h/a@b") == "http://h/a@b"          # "@" in the path: no user-info
    assert redact_url(redact_url("http://u:p@h")) == f"http://{REDACTED}@h"


toml_scalars = (st.text(max_size=12) | st.integers(-2**63, 2**63 - 1) | st.booleans()
                | st.floats(allow_nan=False) | st.dates()
                | st.datetimes(timezones=st.just(datetime.UTC)).map(
                    lambda d: d.replace(microsecond=0)))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=10)


@given(st.dictionaries(st.text(max_size=8), toml_values, max_size=5))
def test_dump_toml_reads_back_as_what_it_wrote(data):
    assert tomllib.loads(dump_toml(data)) == data


NAMED_SECRETS = {"X-Api-Key": "ak-5150aa", "X-Auth-Token": "at-6160bb",
                 "X-Session-Id": "si-7170cc", "X-Custom-Cred": "cc-8180dd"}


def test_headers_named_like_credentials_and_those_listed_are_redacted(tmp_path):
    headers = ", ".join(f'"{k}" = "{v}"' for k, v in NAMED_SECRETS.items())
    with RecordingServer() as server:
        profile = tmp_path / "named.toml"
        profile.write_text(f'name = "named"\ntarget = "{server.url}"\n[load]\nworkers = 1\n'
                           'connections = 2\n[[stages]]\nname = "s"\nrate = 10\n'
                           'duration = "1s"\n[[requests]]\nname = "api"\npath = "/me"\n'
                           f'headers = {{ {headers}, "X-Keep" = "shown-1" }}\n'
                           '[redact]\nheaders = ["x-custom-cred"]\n')
        summary = tmp_path / "s.json"
        out = loadforge("run", str(profile), "--quiet", "--out", str(tmp_path / "results"),
                        "--summary-json", str(summary))
        assert out.returncode == 0, out.stderr
        sent = [h for _, p, h in server.seen if p == "/me"]
    assert sent and all(sent[0][k] == v for k, v in NAMED_SECRETS.items())
    archived = pq.read_metadata(json.loads(summary.read_text())["result"]).metadata[
        b"loadforge.profile"].decode()
    for value in NAMED_SECRETS.values():
        assert value not in archived
    parsed = tomllib.loads(archived)["requests"][0]["headers"]
    assert parsed == {**dict.fromkeys(NAMED_SECRETS, REDACTED), "X-Keep": "shown-1"}


def test_a_redact_list_must_be_header_names(tmp_path):
    profile = tmp_path / "bad.toml"
    profile.write_text('name = "bad"\n[[stages]]\nrate = 1\nduration = "1s"\n'
                       '[redact]\nheaders = "X-One"\n')
    out = loadforge("run", str(profile), "--quiet")
    assert out.returncode == 2 and "redact.headers must be an array" in out.stderr


def test_a_secret_from_the_environment_never_reaches_an_error_line(tmp_path):
    # The target is down: the preflight's error names the URL, whose path holds the secret.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # bound, never listening: connection refused
        profile = tmp_path / "env.toml"
        profile.write_text(f'name = "env"\ntarget = "http://127.0.0.1:{port}"\n'
                           '[[stages]]\nrate = 1\nduration = "1s"\n[[requests]]\nname = "r"\n'
                           'path = "/x?key=${LF_T21_SECRET}"\n')
        out = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", str(profile),
                              "--quiet", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60,
                             env={**os.environ, "LF_T21_SECRET": "s3cr3t/v@lue"})
    assert out.returncode == 3, out.stderr
    assert "s3cr3t" not in out.stderr + out.stdout
    (line,) = out.stderr.strip().splitlines()
    assert f"nothing listens on 127.0.0.1:{port} (connection refused)" in line
    assert f"key={REDACTED}" in line and "Error" not in line       # no exception class names
