"""`duplex bench worker`: first audio, PAUSE → last frame, frame lateness, RTF and load time.

All times are taken at the client over real gRPC on loopback, against a worker in its own
process (started here unless `--worker` names one), as a user of the ABI would see them. A run
that does not see what it measures (no audio, audio that goes on after PAUSE, a failed call)
is counted as failed with its reason, never as a number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from duplex.audio.pacing import FramePacer
from duplex.bench.stats import Series, failure_lines, fmt, series_table, table
from duplex.children import drain
from duplex.ports import free_ports
from duplex.rpc.client import Command, TtsClient

DEFAULT_MODELS = ("piper-joe", "kokoro-ja", "pico-en")
FIRST_TEXT = "Hello there, how are you doing today?"
LONG_TEXT = (
    "The weather today is mild, with a light breeze from the west. "
    "Later this afternoon the clouds will gather over the hills, and by evening a little rain "
    "may fall on the city. Tomorrow should be brighter, with sunshine for most of the day. "
    "Remember to take a coat if you go out tonight, because it will feel colder than it looks."
)
LEAD_MS = 60  # the paced sessions' lead: the listener's buffer the lateness is judged against
QUIET_SECONDS = 0.6  # a stream with no frame for this long has stopped
PAUSE_TIMEOUT = 5.0  # audio still coming this long after PAUSE: the PAUSE failed
CALL_TIMEOUT = 60.0


@contextlib.contextmanager
def _worker_process(models: list[str]) -> Iterator[str]:
    (port,) = free_ports(1)
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
        drain(proc.stdout)  # it logs every stream: a pipe left unread would stop it
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def _session(client: TtsClient, model: str, **options: str) -> str:
    sid = f"bench-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid, model, options)
    return sid


async def _end(client: TtsClient, sid: str) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await client.end_session(sid)


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


async def first_audio(client: TtsClient, model: str, runs: int) -> Series:
    """First text chunk in → first data frame out; each run reads its utterance to the end."""
    series = Series(f"{model}: first audio")
    for _ in range(runs):
        sid: str | None = None
        first: float | None = None
        try:
            sid = await _session(client, model, pacing="none")
            sent = time.perf_counter()
            async with asyncio.timeout(CALL_TIMEOUT):
                async for frame in client.say(sid, FIRST_TEXT):
                    if frame.frame is not None and first is None:
                        first = time.perf_counter() - sent
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            series.fail(_why(exc))
            continue
        finally:
            if sid is not None:
                await _end(client, sid)
        if first is None:
            series.fail("the utterance had no audio")
        else:
            series.add(first)
    return series


@dataclass
class _Stream:
    """Arrival times of one Synthesize stream's data frames, read by a task of its own."""

    arrivals: list[float] = field(default_factory=list)
    grew: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False

    async def read(self, frames: AsyncIterator[Any]) -> None:
        try:
            async for frame in frames:
                if frame.frame is not None:
                    self.arrivals.append(time.perf_counter())
                    self.grew.set()
        finally:
            self.ended = True
            self.grew.set()

    async def wait(self, frames: int, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.arrivals) < frames and not self.ended:
                    self.grew.clear()
                    await self.grew.wait()
        return len(self.arrivals) >= frames

    async def quiet(self, seconds: float, timeout: float) -> bool:
        """Wait until no frame has arrived for `seconds`; False if frames kept coming."""
        deadline = time.perf_counter() + timeout
        while True:
            last = self.arrivals[-1] if self.arrivals else 0.0
            now = time.perf_counter()
            if now - last >= seconds or self.ended:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(seconds - (now - last), deadline - now) + 0.001)


async def pause_latency(client: TtsClient, model: str, runs: int) -> Series:
    """PAUSE sent → last data frame received after it (0 when none came)."""
    series = Series(f"{model}: PAUSE → last frame")
    rng = random.Random(7)
    for _ in range(runs):
        try:
            series.add(await _pause_once(client, model, rng.randint(8, 25)))
        except _Failed as exc:
            series.fail(str(exc))
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            series.fail(_why(exc))
    return series


class _Failed(Exception):
    pass


async def _pause_once(client: TtsClient, model: str, after: int) -> float:
    sid = await _session(client, model, pacing="realtime", lead_ms=str(LEAD_MS))
    stream = _Stream()
    try:
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(stream.read(client.say(sid, LONG_TEXT)))
            try:
                if not await stream.wait(after, CALL_TIMEOUT):
                    raise _Failed(f"fewer than {after} frames before the PAUSE")
                paused_at = time.perf_counter()
                await client.control(sid, Command.PAUSE)
                if not await stream.quiet(QUIET_SECONDS, PAUSE_TIMEOUT):
                    raise _Failed(f"audio still coming {PAUSE_TIMEOUT:.0f} s after PAUSE")
                if stream.ended:
                    raise _Failed("the stream ended instead of pausing")
                after_pause = [t for t in stream.arrivals if t > paused_at]
                return after_pause[-1] - paused_at if after_pause else 0.0
            finally:
                reader.cancel()
    finally:
        await _end(client, sid)


@dataclass
class Pacing:
    """Frame lateness at the client for one concurrency level."""

    sessions: int
    lateness: Series
    underruns: int = 0

    def summary(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "underruns": self.underruns, **self.lateness.summary()}


async def pacing(client: TtsClient, model: str, sessions: int, seconds: float) -> Pacing:
    """How late each paced frame arrives against the schedule a listener plays it on.

    Every frame counts, the first ones too: the listener starts playing at the first frame
    with a buffer of the session's lead, so frame k is due `lead` before `first + k × 20 ms`
    (and never before the first). A frame later than its playout time is an underrun, a gap
    the listener hears (the schedule restarts there, as the worker's does).
    """
    result = Pacing(sessions, Series(f"{model}: lateness × {sessions}"))

    async def one() -> None:
        sid: str | None = None
        pacer = FramePacer(LEAD_MS / 1000)
        got = 0
        try:
            sid = await _session(client, model, pacing="realtime", lead_ms=str(LEAD_MS))
            async with asyncio.timeout(CALL_TIMEOUT):
                async for frame in client.say(sid, LONG_TEXT):
                    if frame.frame is None:
                        continue
                    late = pacer.sent(time.perf_counter())
                    result.lateness.add(late.lateness)
                    result.underruns += late.underrun
                    got += 1
                    if got * 0.02 >= seconds:
                        break
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            result.lateness.fail(_why(exc))
            return
        finally:
            if sid is not None:
                await _end(client, sid)
        if got * 0.02 < seconds:
            result.lateness.fail(f"the stream ended after {got} frames")

    await asyncio.gather(*(one() for _ in range(sessions)))
    return result


async def rtf(client: TtsClient, model: str, runs: int) -> Series:
    series = Series(f"{model}: RTF", unit="x")
    for _ in range(runs):
        sid: str | None = None
        try:
            sid = await _session(client, model, pacing="none")
            started = time.perf_counter()
            async with asyncio.timeout(CALL_TIMEOUT):
                frames = [f async for f in client.say(sid, LONG_TEXT) if f.frame is not None]
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            series.fail(_why(exc))
            continue
        finally:
            if sid is not None:
                await _end(client, sid)
        if frames:
            series.add((time.perf_counter() - started) / (len(frames) * 0.02))
        else:
            series.fail("no audio")
    return series


async def load_times(client: TtsClient, model: str, runs: int) -> tuple[Series, Series]:
    """UnloadModel, then LoadModel timed at the client; the worker's own figure beside it."""
    at_client = Series(f"{model}: load (client)")
    at_worker = Series(f"{model}: load (worker's figure)")
    for _ in range(runs):
        try:
            await client.unload_model(model)
            started = time.perf_counter()
            worker_ms = await client.load_model(model)
        except grpc.aio.AioRpcError as exc:
            at_client.fail(_why(exc))
            at_worker.fail(_why(exc))
            continue
        at_client.add(time.perf_counter() - started)
        at_worker.add(worker_ms / 1000)
    return at_client, at_worker


async def bench_model(
    client: TtsClient, model: str, runs: int, levels: list[int]
) -> tuple[list[Series], list[Pacing]]:
    print(f"· {model}", file=sys.stderr, flush=True)
    loads = await load_times(client, model, 3)
    await client.load_model(model)
    await first_audio(client, model, 2)  # settle caches before measuring
    series = [
        *loads,
        await first_audio(client, model, runs),
        await pause_latency(client, model, max(5, runs // 2)),
        await rtf(client, model, 3),
    ]
    levels_out = [await pacing(client, model, n, seconds=4.0) for n in levels]
    return series, levels_out


def render(series: list[Series], levels: list[Pacing]) -> str:
    for s in series:
        if s.name.endswith("load (client)") or s.name.endswith("load (worker's figure)"):
            s.unit = "s"
    rows = [
        [
            p.lateness.name,
            str(len(p.lateness.values)),
            str(len(p.lateness.failures)),
            str(p.underruns),
            *(fmt(p.lateness.summary()[k], "ms") for k in ("p50", "p95", "max")),
        ]
        for p in levels
    ]
    lines = [
        series_table(series),
        "",
        table(["", "frames", "failed", "underruns", "p50", "p95", "max"], rows),
        f"(frame lateness at the client in ms: arrival − due, every frame; a {LEAD_MS} ms lead;"
        " underrun = a frame after its playout time; failed = sessions that broke)",
    ]
    failed = failure_lines([*series, *(p.lateness for p in levels)])
    if failed:
        lines += ["", "failed runs:", *failed]
    return "\n".join(lines)


async def run_worker_bench(opts: argparse.Namespace) -> int:
    models = [m for v in (opts.models or [",".join(DEFAULT_MODELS)]) for m in v.split(",") if m]
    levels = [int(n) for n in opts.sessions.split(",")]
    series: list[Series] = []
    pacings: list[Pacing] = []
    with contextlib.ExitStack() as stack:
        address = opts.worker or stack.enter_context(_worker_process(models))
        async with TtsClient(address) as client:
            await client.wait_ready(60)
            for model in models:
                s, p = await bench_model(client, model, opts.runs, levels)
                series += s
                pacings += p
    print(render(series, pacings))
    if opts.plot:
        from duplex.bench.plot import plot_series

        lateness = [p.lateness for p in pacings]
        plot_series(opts.plot, "duplex bench worker", [*series, *lateness])
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "worker": [s.summary() for s in series],
                    "lateness": [p.summary() for p in pacings],
                },
                indent=2,
            )
        )
    failed = any(s.failures for s in [*series, *(p.lateness for p in pacings)])
    return 1 if failed else 0
