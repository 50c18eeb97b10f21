"""`duplex demo`: a worker, an orchestrator and the page on this machine."""

from __future__ import annotations

import argparse
import asyncio

from duplex.commands import Cli, flags


def register(cli: Cli) -> None:
    demo = cli.sub.add_parser(
        "demo",
        help="worker + orchestrator + web page on this machine",
        parents=[
            flags.config_file("orchestrator YAML config file"),
            flags.listen("HTTP port (default 8080)", host="127.0.0.1", port=8080),
            flags.access(),
            flags.livekit_credentials(),
        ],
    )
    demo.add_argument("--model", help="TTS model to start with (default piper-joe)")
    demo.add_argument("--preload", action="append", help="more TTS models to load at start")
    demo.add_argument(
        "--llm",
        help="who answers: local (llama.cpp with a small packaged model; the default when the "
        "llm extra is installed), offline (built-in rules; the default otherwise), or an "
        "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1",
    )
    demo.add_argument("--llm-model", default="gpt-4o-mini", help="model name for --llm")
    demo.add_argument(
        "--livekit",
        nargs="?",
        const="local",
        metavar="URL",
        help="also serve WebRTC through LiveKit: the server at URL, or a local one",
    )
    demo.add_argument(
        "--device", help="where speech recognition and TTS run: auto, cpu, cuda, cuda:N"
    )
    demo.set_defaults(func=run)


def run(opts: argparse.Namespace) -> int:
    from duplex.demo import run_demo

    return asyncio.run(run_demo(opts))
