from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from duplex.errors import InvalidInput
from duplex.orchestrator.responder import (
    DEFAULT_SYSTEM_PROMPT,
    Message,
    OfflineResponder,
    OpenAIResponder,
    ResponderConfig,
    ResponderError,
    make_responder,
    number_word,
    sse_data,
)
from duplex.ports import free_ports


async def collect(pieces: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in pieces]


async def offline(text: str) -> str:
    responder = OfflineResponder(clock=lambda: datetime(2024, 5, 1, 9, 7))
    pieces = await collect(responder.respond([], text))
    assert all(p.endswith(" ") and " " not in p.strip() for p in pieces)
    return "".join(pieces).strip()


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"[.!?]+", text) if s.strip()]


async def test_greets_back() -> None:
    assert (await offline("Hello there!")).startswith("Hello!")
    assert (await offline("hey")).startswith("Hello!")
    # "hi" inside another word is not a greeting.
    assert (await offline("this is it")).startswith("You said:")


async def test_time_name_help_thanks_bye() -> None:
    assert await offline("What time is it?") == "It's 09:07."
    assert "duplex" in await offline("What’s your name?")
    assert "interrupt" in await offline("What can you do?")
    assert "welcome" in await offline("Thank you.")
    assert "Goodbye" in await offline("OK, bye.")


@pytest.mark.parametrize("text", ["Tell me a story.", "Please explain how this works"])
async def test_long_answers_have_many_sentences(text: str) -> None:
    reply = await offline(text)
    assert len(sentences(reply)) >= 8
    assert len(reply.split()) >= 70  # about 30 s of speech


async def test_counts_in_words() -> None:
    reply = await offline("Count to 20.")
    numbers = ", ".join(number_word(i) for i in range(1, 21))
    assert reply.endswith(numbers[0].upper() + numbers[1:] + ".")
    assert "twenty-one" not in reply
    assert (await offline("can you count to twenty-five please")).endswith("twenty-five.")
    assert (await offline("count to 500")).endswith("ninety-nine, one hundred.")


async def test_echoes_other_text_deterministically() -> None:
    reply = await offline("I planted tomatoes in the garden today.")
    assert reply.startswith('You said: "I planted tomatoes in the garden today". ')
    assert 1 <= len(sentences(reply.split('". ', 1)[1])) <= 2
    assert reply == await offline("I planted tomatoes in the garden today.")
    long_reply = await offline(" ".join(["word"] * 40))
    assert len(long_reply.split()) < 25


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_empty_text(text: str) -> None:
    assert await offline(text) == "Sorry, I didn't catch that."


async def test_sse_parser_reassembles_any_split() -> None:
    stream = b': keep-alive\r\n\r\ndata: {"a": "\xc3\xa9"}\r\n\r\nevent: x\ndata:[DONE]'

    async def one_byte_at_a_time() -> AsyncIterator[bytes]:
        for i in range(len(stream)):
            yield stream[i : i + 1]

    assert await collect(sse_data(one_byte_at_a_time())) == ['{"a": "é"}', "[DONE]"]


def event(delta: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\r\n\r\n"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Stub:
    """An OpenAI-compatible chat endpoint on a loopback port, with a swappable handler."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.requests: list[dict[str, Any]] = []
        self.disconnected = asyncio.Event()
        self.url = ""

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    stub = Stub()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stub.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    stub.url = f"http://{host}:{port}/v1"
    yield stub
    await runner.cleanup()


async def sse(request: web.Request, chunks: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
        await asyncio.sleep(0.005)  # separate writes, so the client sees separate chunks
    await response.write_eof()
    return response


async def test_openai_streams_pieces(stub: Stub) -> None:
    hello = event({"content": "Hello"})
    chunks = [
        b": keep-alive\r\n\r\n",
        event({"role": "assistant", "content": ""}),
        hello[:17],
        hello[17:] + event({"content": " **there**"})[:9],
        event({"content": " **there**"})[9:],
        event({"content": ", `friend`."}) + b"data: [DONE]\r\n\r\n",
        event({"content": " never sent"}),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse(request, chunks)

    stub.handler = handler
    responder = OpenAIResponder(stub.url, "test-model", api_key="k", max_tokens=50)
    history = [Message("user", "Hi"), Message("assistant", "Hello! How")]
    try:
        pieces = await collect(responder.respond(history, "Greet me"))
    finally:
        await responder.aclose()
    assert pieces == ["Hello", " there", ", friend."]
    body = stub.requests[0]
    assert body["stream"] is True
    assert body["model"] == "test-model"
    assert body["max_tokens"] == 50
    assert body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How"},
        {"role": "user", "content": "Greet me"},
    ]


async def test_http_error_is_responder_error(stub: Stub) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="model exploded")

    stub.handler = handler
    responder = OpenAIResponder(stub.url, "m")
    try:
        with pytest.raises(ResponderError, match=r"500.*model exploded") as info:
            await collect(responder.respond([], "hi"))
    finally:
        await responder.aclose()
    assert stub.url in str(info.value)
    assert info.value.code == "responder_failed"
    assert info.value.retryable


async def test_malformed_json_is_responder_error(stub: Stub) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse(request, [event({"content": "ok"}), b"data: {not json\n\n"])

    stub.handler = handler
    responder = OpenAIResponder(stub.url, "m")
    try:
        with pytest.raises(ResponderError, match="malformed"):
            await collect(responder.respond([], "hi"))
    finally:
        await responder.aclose()


async def test_connection_refused_is_responder_error() -> None:
    (port,) = free_ports(1)  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    responder = OpenAIResponder(url, "m", timeout_s=5)
    try:
        with pytest.raises(ResponderError, match=re.escape(url)):
            await collect(responder.respond([], "hi"))
    finally:
        await responder.aclose()


async def test_cancelling_the_consumer_releases_the_response(stub: Stub) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(event({"content": "more "}))
                await asyncio.sleep(0.01)
        except ConnectionError:
            stub.disconnected.set()
        return response

    stub.handler = handler
    responder = OpenAIResponder(stub.url, "m")
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in responder.respond([], "go on"):
            first.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server notices the closed connection, so the response was not left open.
        await asyncio.wait_for(stub.disconnected.wait(), 5)
    finally:
        await responder.aclose()


def test_make_responder() -> None:
    assert isinstance(make_responder(ResponderConfig()), OfflineResponder)
    responder = make_responder(
        ResponderConfig(kind="openai", url="http://127.0.0.1:9/v1/", system_prompt="Be brief.")
    )
    assert isinstance(responder, OpenAIResponder)
    assert responder.url == "http://127.0.0.1:9/v1/chat/completions"
    assert responder.system_prompt == "Be brief."
    with pytest.raises(InvalidInput, match="url"):
        make_responder(ResponderConfig(kind="openai"))
    with pytest.raises(ValueError):
        ResponderConfig.model_validate({"kind": "offline", "surprise": 1})
