"""Room tokens from the orchestrator's endpoint, checked by a real LiveKit server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit import rtc

from duplex.livekit_server import LiveKitServer
from duplex.orchestrator.livekit_tokens import LiveKitConfig, issue_token, token_routes


@pytest.fixture
def livekit_config(livekit_server: LiveKitServer) -> LiveKitConfig:
    return LiveKitConfig(
        url=livekit_server.url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
    )


async def serve(config: LiveKitConfig | None) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_routes(token_routes(config))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/api/livekit/token"


@pytest.fixture
async def endpoint(livekit_config: LiveKitConfig) -> AsyncIterator[str]:
    runner, url = await serve(livekit_config)
    yield url
    await runner.cleanup()


async def post(url: str, body: Any = None, *, raw: str | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with http.post(url, **kwargs) as resp:
            return resp.status, await resp.json()


async def join(url: str, token: str) -> rtc.Room:
    room = rtc.Room()
    async with asyncio.timeout(20):
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
    return room


async def test_a_token_from_the_endpoint_joins_the_room_the_server_chose(endpoint: str) -> None:
    status, body = await post(endpoint, {"model": "pico-en"})
    assert status == 200, body
    room = await join(body["url"], body["token"])
    try:
        assert room.name == body["room"] and room.name.startswith("duplex-")
        assert room.local_participant.identity == body["identity"]
    finally:
        await room.disconnect()


async def test_every_token_gets_a_fresh_unguessable_room(endpoint: str) -> None:
    _, first = await post(endpoint)
    _, second = await post(endpoint, {})
    assert first["room"].startswith("duplex-") and first["identity"].startswith("user-")
    assert first["room"] != second["room"] and len(first["room"]) >= 20


async def test_a_token_signed_with_another_secret_is_refused(
    livekit_server: LiveKitServer, livekit_config: LiveKitConfig
) -> None:
    forged = issue_token(
        livekit_config.model_copy(update={"api_secret": "x" * 48}), "kitchen", "mallory"
    )
    with pytest.raises(rtc.ConnectError):
        await join(livekit_server.url, forged)


async def test_an_expired_token_is_refused(
    livekit_server: LiveKitServer, livekit_config: LiveKitConfig
) -> None:
    expired = issue_token(livekit_config, "kitchen", "late", ttl=timedelta(seconds=-120))
    with pytest.raises(rtc.ConnectError):
        await join(livekit_server.url, expired)


@pytest.mark.parametrize(
    ("body", "raw", "status", "words"),
    [
        # Nobody picks a room: naming another's would let them listen in.
        ({"room": "kitchen"}, None, 400, "the server chooses the room"),
        ({"identity": "alice"}, None, 400, "the server chooses the identity"),
        ({"model": 7}, None, 400, "model must be"),
        (None, "{not json", 400, "JSON object"),
        (["a", "list"], None, 400, "JSON object"),
    ],
)
async def test_bad_requests_get_a_clear_error(
    endpoint: str, body: Any, raw: str | None, status: int, words: str
) -> None:
    got, answer = await post(endpoint, body, raw=raw)
    assert got == status
    assert words in answer["error"]["message"]


async def test_without_livekit_the_endpoint_says_so() -> None:
    runner, url = await serve(None)
    try:
        status, body = await post(url, {"room": "kitchen"})
    finally:
        await runner.cleanup()
    assert status == 404
    assert body["error"]["code"] == "not_configured"
