"""`duplex bench worker`: first audio, PAUSE → last frame, jitter, RTF and load time per model.

All times are taken at the client over real gRPC on loopback, against a worker in its own
process (started here unless `--worker` names one), as a user of the ABI would see them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from duplex.bench.stats import ms, p50_p95, table
from duplex.rpc.client import Command, TtsClient

DEFAULT_MODELS = ("piper-joe", "kokoro-ja", "pico-en")
FIRST_TEXT = "Hello there, how are you doing today?"
LONG_TEXT = (
    "The weather today is mild, with a light breeze from the west. "
    "Later this afternoon the clouds will gather over the hills, and by evening a little rain "
    "may fall on the city. Tomorrow should be brighter, with sunshine for most of the day. "
    "Remember to take a coat if you go out tonight, because it will feel colder than it looks."
)


@contextlib.contextmanager
def _worker_process(models: list[str]) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "duplex.cli",
        "worker",
        "--port",
        str(port),
        "--default-model",
        models[0],
        "--preload",
        ",".join(models[1:]) or models[0],
        "--name",
        "bench-worker",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the worker prints its address once it serves
            if "listening on" in line:
                break
        else:
            raise RuntimeError(f"worker exited with {proc.wait()}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def _session(client: TtsClient, model: str, **options: str) -> str:
    sid = f"bench-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid, model, options)
    return sid


async def first_audio(client: TtsClient, model: str, runs: int) -> list[float]:
    """First text chunk in → first data frame out.

    Each run reads its utterance to the end, so no earlier synthesis still occupies the model.
    """
    out = []
    sid = await _session(client, model, pacing="none")
    for _ in range(runs):
        sent = 0.0

        async def texts() -> AsyncIterator[tuple[str, bool]]:
            nonlocal sent
            sent = time.perf_counter()
            yield FIRST_TEXT, True

        first: float | None = None
        async for frame in client.synthesize(sid, texts()):
            if frame.frame is not None and first is None:
                first = time.perf_counter() - sent
            if frame.is_final:
                break
        if first is not None:
            out.append(first)
    await client.end_session(sid)
    return out


async def pause_latency(client: TtsClient, model: str, runs: int) -> list[float]:
    """PAUSE sent → last data frame received (0 when none arrived after it)."""
    rng = random.Random(7)
    return [await _pause_once(client, model, rng.randint(8, 25)) for _ in range(runs)]


async def _pause_once(client: TtsClient, model: str, after: int) -> float:
    sid = await _session(client, model, pacing="realtime")
    last_frame = 0.0
    paused_at = 0.0
    paused = asyncio.Event()

    async def read() -> None:
        nonlocal last_frame, paused_at
        n = 0
        async for frame in client.say(sid, LONG_TEXT):
            if frame.frame is None:
                continue
            last_frame = time.perf_counter()
            n += 1
            if n == after:
                paused_at = time.perf_counter()
                await client.control(sid, Command.PAUSE)
                paused.set()

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(30):
            await paused.wait()
        await asyncio.sleep(0.3)  # anything still in flight arrives by now
        latency = max(0.0, last_frame - paused_at)
        await client.control(sid, Command.STOP)
        await asyncio.wait_for(reader, 10)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader
    await client.end_session(sid)
    return latency


async def jitter(client: TtsClient, model: str, sessions: int, seconds: float) -> list[float]:
    """|inter-arrival − 20 ms| of paced frames, all sessions at once, after the initial lead."""

    async def one() -> list[float]:
        sid = await _session(client, model, pacing="realtime", lead_ms="60")
        arrivals: list[float] = []
        try:
            async for frame in client.say(sid, LONG_TEXT):
                if frame.frame is not None:
                    arrivals.append(time.perf_counter())
                    if len(arrivals) * 0.02 >= seconds:
                        break
        finally:
            await client.end_session(sid)
        gaps = [b - a for a, b in itertools.pairwise(arrivals[10:])]
        return [abs(g - 0.02) for g in gaps]

    results = await asyncio.gather(*(one() for _ in range(sessions)))
    return [x for r in results for x in r]


async def rtf(client: TtsClient, model: str) -> float:
    sid = await _session(client, model, pacing="none")
    started = time.perf_counter()
    frames = [f async for f in client.say(sid, LONG_TEXT) if f.frame is not None]
    elapsed = time.perf_counter() - started
    await client.end_session(sid)
    return elapsed / (len(frames) * 0.02)


async def load_times(client: TtsClient, model: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        try:
            await client.unload_model(model)
        except grpc.aio.AioRpcError as exc:
            print(f"  ({model}: cannot unload to time a load: {exc.details()})", file=sys.stderr)
            break
        out.append(await client.load_model(model) / 1000)
    return out


async def bench_model(
    client: TtsClient, model: str, runs: int, levels: list[int]
) -> dict[str, Any]:
    print(f"· {model}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"model": model}
    result["load_s"] = p50_p95(await load_times(client, model, 3))
    await client.load_model(model)
    await first_audio(client, model, 2)  # settle caches before measuring
    result["first_audio_s"] = p50_p95(await first_audio(client, model, runs))
    result["pause_to_last_frame_s"] = p50_p95(await pause_latency(client, model, max(5, runs // 2)))
    result["rtf"] = await rtf(client, model)
    result["jitter_s"] = {
        str(n): p50_p95(await jitter(client, model, n, seconds=4.0)) for n in levels
    }
    return result


def render(results: list[dict[str, Any]], levels: list[int]) -> str:
    headers = ["model", "load s", "first p50", "first p95", "pause p50", "pause p95", "RTF"]
    headers += [f"jit{n} p50/p95" for n in levels]
    rows = []
    for r in results:
        row = [
            r["model"],
            f"{r['load_s']['p50']:.2f}",
            ms(r["first_audio_s"]["p50"]),
            ms(r["first_audio_s"]["p95"]),
            ms(r["pause_to_last_frame_s"]["p50"]),
            ms(r["pause_to_last_frame_s"]["p95"]),
            f"{r['rtf']:.3f}",
        ]
        row += [
            f"{ms(r['jitter_s'][str(n)]['p50'])}/{ms(r['jitter_s'][str(n)]['p95'])}" for n in levels
        ]
        rows.append(row)
    return table(headers, rows) + "\n(times in ms unless marked; jitter = |inter-arrival − 20 ms|)"


async def run_worker_bench(opts: argparse.Namespace) -> int:
    models = [m for v in (opts.models or [",".join(DEFAULT_MODELS)]) for m in v.split(",") if m]
    levels = [int(n) for n in opts.sessions.split(",")]
    with contextlib.ExitStack() as stack:
        address = opts.worker or stack.enter_context(_worker_process(models))
        async with TtsClient(address) as client:
            await client.wait_ready(60)
            results = [await bench_model(client, m, opts.runs, levels) for m in models]
    print(render(results, levels))
    if opts.json:
        opts.json.write_text(json.dumps({"worker": results}, indent=2))
    return 0
