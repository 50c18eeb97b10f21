"""`duplex orchestrator`: serve conversations (the page, /ws, LiveKit rooms)."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from duplex.commands import Cli, flags

if TYPE_CHECKING:
    from duplex.orchestrator.config import OrchestratorConfig


def register(cli: Cli) -> None:
    orch = cli.sub.add_parser(
        "orchestrator",
        help="serve conversations (WebSocket + web page)",
        parents=[
            flags.config_file(),
            flags.listen("HTTP port (default 8080)"),
            flags.access(),
            flags.livekit_credentials(),
        ],
    )
    orch.add_argument("--worker", action="append", help="TTS worker host:port (repeatable)")
    orch.add_argument("--redis", help="discover workers in Redis instead")
    orch.add_argument("--model", help="default TTS model")
    orch.add_argument("--livekit-url", help="LiveKit server URL browsers join (WebRTC)")
    orch.add_argument(
        "--livekit-agent-url", help="where the agent reaches that server (default: the same)"
    )
    orch.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz only here")
    orch.add_argument("--device", help="where speech recognition runs: auto, cpu, cuda, cuda:N")
    orch.set_defaults(func=run)


def config_from(opts: argparse.Namespace) -> OrchestratorConfig:
    """The orchestrator's settings: flags over the environment over the config file."""
    from duplex.config import load_config
    from duplex.devices import check_spec
    from duplex.orchestrator.config import OrchestratorConfig
    from duplex.orchestrator.livekit_tokens import merge_settings

    config = load_config(
        OrchestratorConfig,
        opts.config,
        overrides={
            "host": opts.host,
            "port": opts.port,
            "workers": flags.split(opts.worker),
            "redis": opts.redis,
            "default_model": opts.model,
            "api_keys": opts.api_key,
            "insecure": True if opts.insecure else None,
            "allowed_origins": opts.allow_origin,
            "metrics_port": opts.metrics_port,
        },
    )
    if opts.device:
        asr = config.asr.model_copy(update={"device": check_spec(opts.device)})
        config = config.model_copy(update={"asr": asr})
    livekit = merge_settings(
        config.livekit,
        {
            "url": opts.livekit_url,
            "agent_url": opts.livekit_agent_url,
            "api_key": opts.livekit_key,
            "api_secret": opts.livekit_secret,
        },
    )
    return config.model_copy(update={"livekit": livekit})


def run(opts: argparse.Namespace) -> int:
    from duplex.orchestrator.server import serve

    asyncio.run(serve(config_from(opts)))
    return 0
