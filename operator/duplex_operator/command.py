"""`duplex operator` and `duplex bench operator`, added to the `duplex` command through the
`duplex.commands` entry point (the operator's dependencies stay out of the rest)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from duplex.commands import Cli, flags
from duplex.errors import DuplexError

DEFAULT_BENCH_MODELS = "pico-en,piper-joe,pico-de"


def register(cli: Cli) -> None:
    op = cli.sub.add_parser(
        "operator",
        help="the Kubernetes operator (TTSModel, VoiceSession)",
        parents=[flags.config_file("YAML config file (namespace, redis, pools)")],
    )
    op.add_argument("--namespace", help="namespace to manage (default: default)")
    op.add_argument("--redis", help="Redis URL the workers register in")
    op.add_argument("--kubeconfig", type=Path, help="API server credentials (default: in-cluster)")
    op.set_defaults(func=run)

    bo = cli.bench.add_parser(
        "operator", help="time from applying a TTSModel to resident", parents=[flags.results()]
    )
    bo.add_argument("--kubeconfig", type=Path, help="bench this cluster (default: a local one)")
    bo.add_argument(
        "--cluster",
        action="store_true",
        help="real Pods on tools/cluster's Kubernetes (run inside it: tools/cluster exec ...)",
    )
    bo.add_argument("--namespace", help="namespace the operator manages there")
    bo.add_argument("--redis", help="Redis URL the cluster's workers register in")
    bo.add_argument("--models", default=DEFAULT_BENCH_MODELS, help="CPU model ids to apply in turn")
    bo.add_argument("--runs", type=int, default=10, help="applies on an existing worker Pod")
    bo.add_argument(
        "--cold-runs", type=int, default=3, help="applies that need a new worker Pod first"
    )
    bo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per step")
    bo.add_argument(
        "--scale",
        action="store_true",
        help="time one reconcile pass over many objects and count its API writes (--runs each)",
    )
    bo.add_argument("--scale-models", type=int, default=200, help="TTSModels for --scale")
    bo.add_argument("--scale-pods", type=int, default=100, help="worker Pods for --scale")
    bo.add_argument("--scale-sessions", type=int, default=2000, help="VoiceSessions for --scale")
    bo.set_defaults(func=run_bench)


def run(opts: argparse.Namespace) -> int:
    try:
        from duplex_operator.config import OperatorConfig
        from duplex_operator.main import run as run_operator
    except ImportError as exc:
        raise DuplexError(
            f"the operator needs kopf: pip install 'duplex-voice[operator]' ({exc})"
        ) from exc

    from duplex.config import load_config

    config = load_config(
        OperatorConfig,
        opts.config,
        overrides={"namespace": opts.namespace, "redis": opts.redis},
        prefix="DUPLEX_OPERATOR_",
    )
    asyncio.run(run_operator(config, opts.kubeconfig))
    return 0


def run_bench(opts: argparse.Namespace) -> int:
    from duplex.commands import bench
    from duplex_operator.bench.operator import run_operator_bench

    return bench.run_bench(opts, run_operator_bench)
