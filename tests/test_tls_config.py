"""The [tls] table and the TLS flags: what config/tls.py makes of them, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadforge.config.profile import plan_from_dict
from loadforge.config.tls import TLS, check_tls, with_tls_flags
from loadforge.errors import ProfileError

STAGES = [{"name": "s", "rate": 10, "duration": "1s"}]


def test_table_paths_are_read_from_the_profile_directory(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "client.pem").write_text("x")
    plan = plan_from_dict({"target": "https://127.0.0.1/", "stages": STAGES,
                           "tls": {"ca": "ca.pem", "cert": "client.pem", "server_name": "a.b",
                                   "versions": ["1.3"], "resumption": False}},
                          path=str(tmp_path / "p.toml"))
    assert plan.tls == TLS(ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "client.pem"),
                           server_name="a.b", versions=("1.3",), resumption=False)


@pytest.mark.parametrize("table, message", [
    ({"key": "k.pem"}, "tls.key must be a readable PEM"),
    ({"versions": []}, "tls.versions must be a non-empty array"),
    ({"versions": [1.2]}, "tls.versions must be a non-empty array"),
    ({"alpn": ["h 2"]}, "tls.alpn must be a non-empty array"),
    ({"resumption": 1}, "tls.resumption must be true or false"),
    ({"server_name": "-bad-.example"}, "tls.server_name must be a host name"),
    ([], "tls must be a table"),
])
def test_bad_tables(table: object, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        check_tls(table, "profile p.toml")


def test_flags_override_the_table(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert with_tls_flags(None) is None
    tls = with_tls_flags(TLS(server_name="a.example"), ca_cert=str(ca), insecure=True,
                         server_name="b.example")
    assert tls == TLS(ca=str(ca), server_name="b.example", insecure=True)
    with pytest.raises(ProfileError, match="--client-key needs --client-cert"):
        with_tls_flags(None, client_key=str(ca))
    with pytest.raises(ProfileError, match="--ca-cert must be a readable PEM"):
        with_tls_flags(None, ca_cert=str(tmp_path / "none.pem"))


def test_engine_settings_name_and_sni() -> None:
    by_ip = TLS().engine_settings("127.0.0.1")
    assert (by_ip["verify_name"], by_ip["verify_ip"], by_ip["sni"]) == ("127.0.0.1", True, "")
    named = TLS(server_name="api.example.com", versions=("1.2",)).engine_settings("10.0.0.5")
    assert (named["verify_name"], named["verify_ip"], named["sni"]) == (
        "api.example.com", False, "api.example.com")
    assert named["min_version"] == named["max_version"] == 0x0303
    assert TLS().engine_settings("[::1]")["verify_name"] == "::1"
