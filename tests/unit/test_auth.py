"""API keys, session tokens and allowed origins, on the guard's own terms (no server)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from duplex.errors import InvalidInput
from duplex.orchestrator.auth import Guard


def test_session_tokens_expire_and_cannot_be_forged() -> None:
    guard = Guard(["k1"], [], token_seconds=60, secret="s" * 32)
    token = guard.issue(now=1000.0)
    assert guard.is_token(token, now=1059.0)
    assert not guard.is_token(token, now=1061.0)  # expired
    other = Guard(["k1"], [], secret="t" * 32)
    assert not other.is_token(token, now=1000.0)  # signed with another secret
    body, signature = token.split(".")
    assert not guard.is_token(body[:-2] + "xx." + signature, now=1000.0)  # tampered claims
    assert not guard.is_token("garbage", now=1000.0) and not guard.is_token("", now=1000.0)


def test_keys_and_tokens_authorise_by_header_or_query() -> None:
    guard = Guard(["key-a", "key-b"], [])
    token = guard.issue()
    allowed = [
        {"headers": {"Authorization": "Bearer key-b"}},
        {"headers": {"Authorization": f"Bearer {token}"}},
        {"query": f"?token={token}"},
    ]
    refused = [{}, {"headers": {"Authorization": "Bearer key-c"}}, {"query": "?token=key-x"}]
    for case in allowed:
        request = make_mocked_request("GET", "/ws" + case.get("query", ""), case.get("headers"))
        assert guard.authorised(request), case
    for case in refused:
        request = make_mocked_request("GET", "/ws" + case.get("query", ""), case.get("headers"))
        assert not guard.authorised(request), case


def test_browser_origins_are_the_servers_own_unless_allowed() -> None:
    guard = Guard([], ["https://app.example"])

    def origin(value: str | None) -> bool:
        headers = {"Host": "voice.example:8080"} | ({"Origin": value} if value else {})
        return guard.origin_allowed(make_mocked_request("GET", "/ws", headers))

    assert origin(None)  # not a browser page
    assert origin("http://voice.example:8080") and origin("https://app.example/")
    assert not origin("https://evil.example") and not origin("http://voice.example:9090")
    assert Guard([], ["*"]).origin_allowed(
        make_mocked_request("GET", "/ws", {"Host": "a", "Origin": "https://b"})
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "voice.example"])
def test_another_machine_is_not_served_without_keys(host: str) -> None:
    with pytest.raises(InvalidInput, match="--api-key"):
        Guard.check_bind(host, [], insecure=False)
    Guard.check_bind(host, ["k"], insecure=False)
    Guard.check_bind(host, [], insecure=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    Guard.check_bind(host, [], insecure=False)
