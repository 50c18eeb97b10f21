"""Discovery records in a real redis-server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from duplex.discovery import EVENTS_CHANNEL, WorkerEvent, WorkerRecord, worker_key
from duplex.errors import WorkerUnavailable
from duplex.rpc.client import TtsClient
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker
from tests.conftest import RedisServer


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


def config(redis_server: RedisServer, name: str) -> WorkerConfig:
    return WorkerConfig(
        name=name,
        port=0,
        default_model="tone",
        test_models=True,
        redis=redis_server.url,
        heartbeat_seconds=0.2,
        labels={"pool": "cpu", "node": "n1"},
    )


async def next_event(pubsub: aioredis.client.PubSub, timeout: float = 5) -> WorkerEvent:
    # A deadline loop rather than cancelling get_message, which would disturb the connection.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            return WorkerEvent.from_json(msg["data"])
    raise TimeoutError("no discovery event")


async def test_record_events_and_deregistration(
    redis_server: RedisServer, redis: aioredis.Redis
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(EVENTS_CHANNEL)
    async with Worker(config(redis_server, "w-redis")) as worker:
        up = await next_event(pubsub)
        assert (up.type, up.name, up.resident_models) == ("worker.up", "w-redis", ("tone",))
        raw = await redis.get(worker_key("w-redis"))
        record = WorkerRecord.from_json(raw)
        assert record.addr == f"127.0.0.1:{worker.port}"
        assert record.resident_models == ["tone"]
        assert record.labels == {"pool": "cpu", "node": "n1"}
        assert "tone" in record.model_last_used and record.max_sessions == 16
        assert "piper-joe" in record.models and record.version
        ttl = await redis.pttl(worker_key("w-redis"))
        assert 0 < ttl <= 600

        async with TtsClient(worker.address) as client:
            await client.load_model("pico-en")
            event = await next_event(pubsub)
            assert event.type == "worker.updated" and "pico-en" in event.resident_models
            await client.start_session("r1", "tone")
            async with asyncio.timeout(5):
                while json.loads(await redis.get(worker_key("w-redis")))["active_sessions"] != 1:
                    await asyncio.sleep(0.05)
            await client.end_session("r1")
    down = await next_event(pubsub)
    assert down.type == "worker.down"
    assert await redis.get(worker_key("w-redis")) is None
    await pubsub.aclose()


async def test_record_expires_when_the_worker_is_killed(
    redis_server: RedisServer, redis: aioredis.Redis
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "duplex.cli",
        "worker",
        "--port",
        "0",
        "--name",
        "w-dies",
        "--default-model",
        "tone",
        "--test-models",
        "--redis",
        redis_server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while b"listening on" not in await proc.stdout.readline():
                pass
        assert await redis.exists(worker_key("w-dies"))
        proc.kill()  # no deregistration: only the TTL removes the record
        await proc.wait()
        started = time.monotonic()
        while await redis.exists(worker_key("w-dies")):
            assert time.monotonic() - started < 5, "record outlived its TTL"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started <= 3.2
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_no_redis_configured_means_no_registration(redis: aioredis.Redis) -> None:
    async with Worker(WorkerConfig(name="w-none", port=0, default_model="tone", test_models=True)):
        assert not await redis.exists(worker_key("w-none"))


async def test_a_redis_that_accepts_and_never_answers_fails_the_start_in_seconds() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # holds the connection open, answers nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = WorkerConfig(name="w-stalled", port=0, default_model="tone", test_models=True)
    cfg.redis = f"redis://127.0.0.1:{port}/0"
    worker = Worker(cfg)
    started = time.monotonic()
    try:
        with pytest.raises(WorkerUnavailable, match=f"Redis at 127.0.0.1:{port} .*Timeout"):
            async with asyncio.timeout(15):
                await worker.start()
        # Its own socket timeout (2 s) ended the wait.
        elapsed = time.monotonic() - started
        assert elapsed < 4, elapsed
    finally:
        await worker.aclose()
        server.close()
        await server.wait_closed()
