"""`duplex demo`: a TTS worker and an orchestrator in one process, and the web page.

No Kubernetes, no Redis: the orchestrator finds its worker by static address.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from duplex.config import load_config
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.server import Orchestrator
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker


def demo_configs(opts: argparse.Namespace) -> tuple[WorkerConfig, OrchestratorConfig]:
    model = opts.model or "piper-joe"
    preload = [m for v in (opts.preload or []) for m in v.split(",") if m]
    worker = WorkerConfig(
        name="demo-worker", host="127.0.0.1", port=0, default_model=model, preload=preload
    )
    responder = {"kind": "openai", "url": opts.llm, "model": opts.llm_model} if opts.llm else {}
    orchestrator = load_config(
        OrchestratorConfig,
        opts.config,
        overrides={
            "host": opts.host,
            "port": opts.port,
            "default_model": model,
            "responder": responder or None,
        },
    )
    return worker, orchestrator


async def run_demo(opts: argparse.Namespace) -> int:
    worker_config, orch_config = demo_configs(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("loading models (TTS, Whisper, VAD)…", flush=True)
    async with Worker(worker_config) as worker:
        orch_config = orch_config.model_copy(update={"workers": [worker.address]})
        async with Orchestrator(orch_config) as orch:
            host = orch_config.host if orch_config.host not in ("0.0.0.0", "::") else "127.0.0.1"
            print(f"duplex demo ready: open http://{host}:{orch.port}/ and press Start", flush=True)
            print(f"  terminal client: duplex talk --url ws://{host}:{orch.port}/ws", flush=True)
            await stop.wait()
    return 0
