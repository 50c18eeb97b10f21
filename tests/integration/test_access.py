"""Who may talk to an orchestrator process: API keys, session tokens, origins, binds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from duplex.ports import free_ports
from tests.processes import address, orchestrator, worker

KEY = "k-" + "x" * 30


METRICS_PORT = free_ports(1)[0]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An orchestrator with an API key and /metrics, /healthz on a port of their own."""
    w = worker("access", max_sessions=4)
    try:
        o = orchestrator(
            tmp_path_factory.mktemp("orch"),
            [address(w)],
            default_model="pico-en",
            api_keys=[KEY],
            allowed_origins=["https://app.example"],
            metrics_port=METRICS_PORT,
        )
        try:
            yield f"http://{address(o)}"
        finally:
            o.stop()
    finally:
        w.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def started(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> bool:
    """Whether a conversation opens: the socket upgrades and the session starts."""
    try:
        async with http.ws_connect(url, headers=headers or {}) as ws:
            await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))
            async with asyncio.timeout(10):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        return bool(json.loads(msg.data)["type"] == "session.started")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status in (401, 403), exc
        return False
    return False


async def test_keys_and_session_tokens_open_conversations_nothing_else_does(
    guarded: str, http: aiohttp.ClientSession
) -> None:
    ws = guarded.replace("http", "ws") + "/ws"
    assert not await started(http, ws)
    assert not await started(http, ws, {"Authorization": "Bearer wrong"})
    assert await started(http, ws, {"Authorization": f"Bearer {KEY}"})
    # A site's backend gets a session token for the page, which sends it as ?token=.
    async with http.post(f"{guarded}/api/session", headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200
        token = (await r.json())["token"]
    assert await started(http, f"{ws}?token={token}")
    assert not await started(http, f"{ws}?token={token[:-3]}abc")  # forged
    # A session token cannot mint more.
    async with http.post(
        f"{guarded}/api/session", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 401
    async with http.get(f"{guarded}/api/models") as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    async with http.get(f"{guarded}/api/models", params={"token": token}) as r:
        assert r.status == 200
    # The page itself is open; it asks for the token in its own URL.
    async with http.get(f"{guarded}/") as r:
        assert r.status == 200


async def test_pages_from_other_origins_are_refused_even_with_a_key(
    guarded: str, http: aiohttp.ClientSession
) -> None:
    ws = guarded.replace("http", "ws") + "/ws"
    key = {"Authorization": f"Bearer {KEY}"}
    assert not await started(http, ws, {**key, "Origin": "https://evil.example"})
    assert await started(http, ws, {**key, "Origin": "https://app.example"})
    assert await started(http, ws, {**key, "Origin": guarded})  # its own page


async def test_health_and_metrics_live_on_their_own_port(
    guarded: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{guarded}/healthz") as r:
        assert r.status == 404  # not on the main port
    async with http.get(f"http://127.0.0.1:{METRICS_PORT}/healthz") as r:
        assert r.status == 200 and (await r.json())["ok"]
    async with http.get(f"http://127.0.0.1:{METRICS_PORT}/metrics") as r:
        assert r.status == 200 and "duplex_sessions" in await r.text()


@pytest.mark.parametrize("command", ["orchestrator", "demo"])
def test_a_non_loopback_bind_without_keys_refuses_to_start(tmp_path: Path, command: str) -> None:
    config = tmp_path / "o.yaml"
    config.write_text("host: 0.0.0.0\nport: 0\nworkers: [127.0.0.1:1]\n")
    args = ["--config", str(config)] if command == "orchestrator" else ["--host", "0.0.0.0"]
    result = subprocess.run(
        [sys.executable, "-m", "duplex.cli", command, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr
    assert "loaded" not in result.stderr  # refused before anything started


def test_page_url_hands_out_a_link_with_a_session_token(guarded: str) -> None:
    run = [sys.executable, "-m", "duplex.cli", "page-url", "--url", guarded]
    link = subprocess.run([*run, "--api-key", KEY], capture_output=True, text=True, timeout=60)
    assert link.returncode == 0 and link.stdout.startswith(f"{guarded}/?token="), link.stderr
    wrong = subprocess.run([*run, "--api-key", "nope"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "gave no session token" in wrong.stderr
