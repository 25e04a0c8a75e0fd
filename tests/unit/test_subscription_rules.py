"""The outbound webhook rules of services/app/subscriptions.py: reach, URL syntax and targets."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpcore
import pytest

from services.app import subscriptions
from services.app.outbound import CheckedBackend, OutboundConfig, Throttle, short_error
from services.app.principals import Principal
from services.app.subscriptions import (
    RefusedTarget,
    ScopedToNothing,
    Scopes,
    check_url_target,
    checked_address,
    creation_filter,
    display_url,
    literal_address,
    reach,
)
from statemachine.validation import (
    MAX_INSTANCE_IDS,
    parse_page_token,
    validate_instance_filter,
    validate_subscription_url,
)


def test_reach_is_the_filter_within_the_scope() -> None:
    assert reach([], None) is None  # unscoped, no filter: every instance
    assert reach(["B", "A"], None) == ["A", "B"]
    assert reach([], frozenset({"A"})) == ["A"]
    assert reach(["A", "B"], frozenset({"A"})) == ["A"]
    assert reach([], frozenset()) == []  # scoped to nothing: nothing, never "every instance"
    assert reach(["A"], frozenset()) == []


def test_creation_filter_of_a_token_scoped_to_nothing_is_refused() -> None:
    with pytest.raises(ScopedToNothing):
        creation_filter([], Principal("nothing", frozenset()))
    assert creation_filter([], Principal("crm", frozenset({"A", "B"}))) == ["A", "B"]
    assert creation_filter([], Principal("admin")) == []


def test_scopes_of_owners_as_configured_now() -> None:
    scopes = Scopes([Principal("admin"), Principal("crm", frozenset({"A"})), Principal("none", frozenset())])
    assert scopes.of("admin") is None
    assert scopes.allows("crm", "A")
    assert not scopes.allows("crm", "B")
    assert not scopes.allows("none", "A")
    assert not scopes.allows("removed", "A")  # a token no longer configured reaches nothing
    assert Scopes(None).allows("anyone", "A")  # open API


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:5432/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://localhost/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://metadata.google.internal/",
    ],
)
def test_private_loopback_and_metadata_targets_are_refused(url: str) -> None:
    assert validate_subscription_url("url", url) == []
    assert check_url_target("url", url), url


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/x", "http://93.184.216.34:8080/hook", "https://[2606:4700::1]/"]
)
def test_public_targets_pass(url: str) -> None:
    assert validate_subscription_url("url", url) == []
    assert check_url_target("url", url) == []


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://token@hooks.example.com/", "credentials"),
        ("https://hooks.example.com/\x00", "control"),
        ("https://hooks.example.com/a b", "control"),
        ("ftp://hooks.example.com/", "http(s)"),
        ("https:///x", "http(s)"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://hooks.example.com/" + "a" * 2000, "longer"),
    ],
)
def test_url_syntax(url: str, words: str) -> None:
    (violation,) = validate_subscription_url("url", url)
    assert violation.field == "url"
    assert words in violation.description
    assert "pw" not in violation.description


def test_literal_address_forms() -> None:
    assert literal_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert literal_address("hooks.example.com") is None


class Recorder(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.connected: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        raise httpcore.ConnectError("recorded")


async def test_delivery_checks_the_resolved_address_and_connects_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"rebind.example.com": ["203.0.113.9"]}

    async def fake_resolve(host: str, port: int, timeout: float = 5.0) -> list[subscriptions.IPAddress]:
        return [ipaddress.ip_address(a) for a in answers[host]]

    monkeypatch.setattr(subscriptions, "resolve", fake_resolve)
    recorder = Recorder()
    backend = CheckedBackend(recorder)
    # 203.0.113.0/24 is documentation space (not global): refused like any non-public address.
    with pytest.raises(RefusedTarget, match=r"rebind\.example\.com"):
        await backend.connect_tcp("rebind.example.com", 443)
    answers["rebind.example.com"] = ["93.184.216.34"]
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("rebind.example.com", 8443)
    assert recorder.connected == [("93.184.216.34", 8443)]  # the checked address, not a new lookup
    # The name now resolves to loopback too (DNS rebinding): refused at this connection.
    answers["rebind.example.com"] = ["93.184.216.34", "127.0.0.1"]
    with pytest.raises(RefusedTarget, match="loopback"):
        await backend.connect_tcp("rebind.example.com", 443)
    for host in ("localhost", "127.0.0.1", "2130706433", "::1", "169.254.169.254"):
        with pytest.raises(RefusedTarget):
            await checked_address(host, 80)
    assert len(recorder.connected) == 1


def test_limits_and_page_tokens() -> None:
    assert validate_instance_filter("instance_ids", ["A"] * MAX_INSTANCE_IDS) == []
    (too_many,) = validate_instance_filter("instance_ids", ["A"] * (MAX_INSTANCE_IDS + 1))
    assert too_many.field == "instance_ids"
    assert parse_page_token("page_token", "") is None
    assert parse_page_token("page_token", "42") == 42
    for bad in ("99999999999999999999999", "²", "-1", "1e3", " 1"):
        with pytest.raises(ValueError, match="page_token"):
            parse_page_token("page_token", bad)


def test_display_url_never_shows_credentials() -> None:
    assert display_url("https://u:p@hooks.example.com/x") == "https://hooks.example.com/x"
    assert display_url("https://hooks.example.com/x") == "https://hooks.example.com/x"


def test_the_lease_outlives_the_attempt_and_settings_are_checked() -> None:
    for timeout in (0.3, 2.0, 10.0, 120.0):
        assert OutboundConfig(timeout=timeout).lease >= 2 * timeout + 30
    for bad in ({"timeout": 0.0}, {"timeout": float("nan")}, {"concurrency": 0}):
        with pytest.raises(ValueError, match="webhook"):
            OutboundConfig(**bad)


def test_a_repeated_failure_is_logged_once_per_interval() -> None:
    now = [0.0]
    throttle = Throttle(60.0, clock=lambda: now[0])
    assert throttle.allow("timeout", "whsub_a") == 0
    assert throttle.allow("timeout", "whsub_a") is None
    assert throttle.allow("timeout", "whsub_b") == 0  # per subscription
    now[0] = 61.0
    assert throttle.allow("timeout", "whsub_a") == 1  # with how many were held back


def test_short_error_is_one_bounded_line() -> None:
    text = short_error(RuntimeError("the number of query arguments cannot exceed 32767\n" + "$1, " * 40_000))
    assert len(text) <= 330
    assert "\n" not in text
