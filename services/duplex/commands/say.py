"""`duplex say` and `duplex models`: one utterance into a WAV file, and the model ids."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from duplex.commands import Cli, flags


def register(cli: Cli) -> None:
    say = cli.sub.add_parser(
        "say",
        help="synthesise TEXT into a WAV file",
        parents=[flags.config_file("worker config for the in-process worker")],
    )
    say.add_argument("text")
    say.add_argument("--out", type=Path, required=True, help="WAV file to write (48 kHz mono)")
    say.add_argument("--model", help="model id (see `duplex models`)")
    say.add_argument("--voice", help="voice of the model, if it has several")
    say.add_argument("--worker", help="worker address host:port (default: run one in-process)")
    say.set_defaults(func=run_say)

    models = cli.sub.add_parser("models", help="list model ids")
    models.add_argument("--worker", help="ask a running worker (shows what is resident)")
    models.set_defaults(func=run_models)


def run_say(opts: argparse.Namespace) -> int:
    seconds = asyncio.run(_say(opts))
    print(f"wrote {opts.out} ({seconds:.2f} s of 48 kHz mono audio)")
    return 0


async def _say(opts: argparse.Namespace) -> float:
    from duplex.audio.wav import write_wav
    from duplex.rpc.client import TtsClient

    options = {"pacing": "none"}
    if opts.voice:
        options["voice"] = opts.voice

    async def speak(address: str) -> float:
        async with TtsClient(address) as client:
            session = f"say-{uuid.uuid4().hex[:8]}"
            await client.start_session(session, opts.model or "", options)
            try:
                frames = [f.frame async for f in client.say(session, opts.text) if f.frame]
            finally:
                await client.end_session(session)
        return write_wav(opts.out, frames)

    if opts.worker:
        return await speak(opts.worker)
    # No worker given: run one in this process for just this utterance.
    from duplex.config import load_config
    from duplex.worker.config import WorkerConfig
    from duplex.worker.server import Worker

    config = load_config(
        WorkerConfig,
        opts.config,
        overrides={"port": 0, "default_model": opts.model, "redis": None, "metrics_port": None},
    )
    async with Worker(config) as worker:
        return await speak(f"127.0.0.1:{worker.port}")


def run_models(opts: argparse.Namespace) -> int:
    rows = asyncio.run(_models(opts))
    header = ("MODEL", "FAMILY", "LANGUAGES", "STATE", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4])
    return 0


async def _models(opts: argparse.Namespace) -> list[tuple[str, str, str, str, str]]:
    if opts.worker:
        from duplex.rpc.client import TtsClient

        async with TtsClient(opts.worker) as client:
            return [
                (
                    m.model_id,
                    m.family,
                    ",".join(m.languages),
                    "resident" if m.is_loaded else m.metadata.get("loading", "") and "loading",
                    m.metadata.get("description", ""),
                )
                for m in await client.list_models()
            ]
    from duplex.worker.catalog import Catalog

    return [
        (s.model_id, s.family, ",".join(s.languages), "", s.description) for s in Catalog.default()
    ]
