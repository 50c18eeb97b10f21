"""`duplex bench worker|conversation|soak`: latency and timing, printed with n and failures."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from duplex.commands import Cli, flags


def register(cli: Cli) -> None:
    bw = cli.bench.add_parser(
        "worker",
        help="first audio, PAUSE, jitter, RTF and load time",
        parents=[flags.results()],
    )
    bw.add_argument("--worker", help="bench a running worker instead of starting one")
    bw.add_argument(
        "--models", action="append", help="model ids (default piper-joe,kokoro-ja,pico-en)"
    )
    bw.add_argument("--runs", type=int, default=20, help="utterances per measurement")
    bw.add_argument("--sessions", default="1,3,10", help="concurrency levels for jitter")
    bw.set_defaults(func=_worker)

    bc = cli.bench.add_parser(
        "conversation",
        help="voice-to-voice, barge-in and false barge-in",
        parents=[flags.results()],
    )
    bc.add_argument("--url", help="bench a running orchestrator (ws://host:port/ws)")
    bc.add_argument("--model", default="piper-joe", help="TTS model for the bot's replies")
    bc.add_argument("--runs", type=int, default=10, help="turns per measurement")
    bc.add_argument(
        "--transports",
        default="websocket,livekit",
        help="websocket, livekit or both (LiveKit: a local livekit-server, or --url's)",
    )
    bc.add_argument(
        "--sessions",
        help="instead: this many spoken conversations at once (comma-separated levels, e.g. "
        "1,4,10,20), over the WebSocket",
    )
    bc.add_argument("--questions", type=int, default=3, help="questions per conversation there")
    bc.add_argument("--api-key", help="for a --url orchestrator that asks for one")
    bc.add_argument(
        "--llm",
        default="offline",
        help="who answers in the demo it starts (see duplex demo --llm; default: the built-in "
        "rules, so that the figures time the pipeline, not a model)",
    )
    bc.set_defaults(func=_conversation)

    bs = cli.bench.add_parser(
        "soak", help="conversations with interruptions for minutes", parents=[flags.results()]
    )
    bs.add_argument("--sessions", type=int, default=10, help="conversations at once")
    bs.add_argument("--minutes", type=float, default=10.0, help="how long")
    bs.add_argument("--url", help="soak a running orchestrator (ws://host:port/ws)")
    bs.add_argument("--pid", type=int, help="its process, to watch its memory")
    bs.add_argument("--model", default="piper-joe", help="TTS model for the replies")
    bs.set_defaults(func=_soak)


def run_bench(
    opts: argparse.Namespace, bench: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
) -> int:
    """Run one bench; a picture asked for must be possible before any minute is spent."""
    plot: Path | None = opts.plot
    if plot is not None:
        from duplex.bench.plot import require_matplotlib

        require_matplotlib()
    return asyncio.run(bench(opts))


def _worker(opts: argparse.Namespace) -> int:
    from duplex.bench.worker import run_worker_bench

    return run_bench(opts, run_worker_bench)


def _conversation(opts: argparse.Namespace) -> int:
    from duplex.bench.conversation import run_conversation_bench

    return run_bench(opts, run_conversation_bench)


def _soak(opts: argparse.Namespace) -> int:
    from duplex.bench.soak import run_soak_bench

    return run_bench(opts, run_soak_bench)
