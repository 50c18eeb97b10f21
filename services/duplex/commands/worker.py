"""`duplex worker`: serve TTS models over gRPC."""

from __future__ import annotations

import argparse
import asyncio

from duplex.commands import Cli, flags


def register(cli: Cli) -> None:
    worker = cli.sub.add_parser(
        "worker",
        help="serve TTS models over gRPC",
        parents=[flags.config_file(), flags.listen("gRPC port (default 50051)")],
    )
    worker.add_argument("--default-model", help="model loaded and warmed at start (piper-joe)")
    worker.add_argument("--preload", action="append", help="more models to load at start")
    worker.add_argument("--redis", help="register in Redis for discovery, e.g. redis://host:6379")
    worker.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    worker.add_argument("--name", help="worker name in discovery (default: hostname)")
    worker.add_argument("--advertise", help="host:port others use to reach this worker")
    worker.add_argument("--test-models", action="store_true", help="add the tone test models")
    worker.add_argument(
        "--kube",
        action="store_true",
        help="Kubernetes mode: load the models named by this Pod's duplex.dev/model-set",
    )
    worker.add_argument("--pod-name", help="this worker's Pod (default $POD_NAME)")
    worker.add_argument("--pod-namespace", help="its namespace (default $POD_NAMESPACE)")
    worker.add_argument("--kubeconfig", help="API server credentials (default: in-cluster)")
    worker.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    worker.add_argument("--tls-key", help="... and this private key (PEM)")
    worker.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    worker.add_argument("--health-port", type=int, help="gRPC health alone, in plain text")
    worker.add_argument(
        "--device", help="where models run: auto (default: a CUDA GPU if any), cpu, cuda, cuda:N"
    )
    worker.set_defaults(func=run)


def run(opts: argparse.Namespace) -> int:
    from duplex.config import load_config
    from duplex.worker.config import WorkerConfig
    from duplex.worker.server import serve

    config = load_config(
        WorkerConfig,
        opts.config,
        overrides={
            "host": opts.host,
            "port": opts.port,
            "default_model": opts.default_model,
            "preload": flags.split(opts.preload),
            "redis": opts.redis,
            "metrics_port": opts.metrics_port,
            "name": opts.name or opts.pod_name,
            "advertise": opts.advertise,
            "test_models": True if opts.test_models else None,
            "kube": True if opts.kube else None,
            "pod_name": opts.pod_name,
            "pod_namespace": opts.pod_namespace,
            "kubeconfig": opts.kubeconfig,
            "tls_cert": opts.tls_cert,
            "tls_key": opts.tls_key,
            "tls_client_ca": opts.tls_client_ca,
            "health_port": opts.health_port,
            "device": opts.device,
        },
    )
    asyncio.run(serve(config))
    return 0
