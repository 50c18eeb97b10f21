"""The `duplex` command: one entry point, one subcommand per role."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc

from duplex.errors import DuplexError
from duplex.logs import FORMATS
from duplex.logs import configure as configure_logging

DEFAULT_BENCH_MODELS = "pico-en,piper-joe,pico-de"
PLOT_HELP = "also draw the distributions into this picture, e.g. bench.png (pip install matplotlib)"
LOG_FORMAT_HELP = (
    "log lines as text (default) or json, with session and trace ids (or DUPLEX_LOG_FORMAT)"
)


def _split(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _worker_config(opts: argparse.Namespace) -> object:
    from duplex.config import load_config
    from duplex.worker.config import WorkerConfig

    return load_config(
        WorkerConfig,
        opts.config,
        overrides={
            "host": opts.host,
            "port": opts.port,
            "default_model": opts.default_model,
            "preload": _split(opts.preload),
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


def cmd_worker(opts: argparse.Namespace) -> int:
    from duplex.worker.config import WorkerConfig
    from duplex.worker.server import serve

    config = _worker_config(opts)
    assert isinstance(config, WorkerConfig)
    asyncio.run(serve(config))
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


def cmd_say(opts: argparse.Namespace) -> int:
    seconds = asyncio.run(_say(opts))
    print(f"wrote {opts.out} ({seconds:.2f} s of 48 kHz mono audio)")
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


def cmd_models(opts: argparse.Namespace) -> int:
    rows = asyncio.run(_models(opts))
    header = ("MODEL", "FAMILY", "LANGUAGES", "STATE", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4])
    return 0


def _orchestrator_config(opts: argparse.Namespace, **extra: object) -> object:
    from duplex.config import load_config
    from duplex.devices import check_spec
    from duplex.errors import InvalidInput
    from duplex.orchestrator.config import OrchestratorConfig
    from duplex.orchestrator.livekit_tokens import LiveKitConfig, credentials

    config = load_config(
        OrchestratorConfig,
        opts.config,
        overrides={
            "host": opts.host,
            "port": opts.port,
            "workers": _split(getattr(opts, "worker", None)),
            "redis": getattr(opts, "redis", None),
            "default_model": opts.model,
            "api_keys": getattr(opts, "api_key", None),
            "insecure": True if getattr(opts, "insecure", False) else None,
            "allowed_origins": getattr(opts, "allow_origin", None),
            "metrics_port": getattr(opts, "metrics_port", None),
            **extra,
        },
    )
    flags = {
        "url": getattr(opts, "livekit_url", None),
        "agent_url": getattr(opts, "livekit_agent_url", None),
        "api_key": getattr(opts, "livekit_key", None),
        "api_secret": getattr(opts, "livekit_secret", None),
    }
    if getattr(opts, "device", None):
        config = config.model_copy(
            update={"asr": config.asr.model_copy(update={"device": check_spec(opts.device)})}
        )
    if config.livekit is None and flags["url"] is None:
        return config  # LiveKit keys in the environment alone do not switch it on
    # Flags first, then the config file, then LiveKit's usual environment variables: a
    # LIVEKIT_API_SECRET exported for another server must not override the file's.
    merged = {
        **(config.livekit.model_dump() if config.livekit else {}),
        **{k: v for k, v in flags.items() if v},
    }
    key, secret = credentials(merged.get("api_key"), merged.get("api_secret"))
    merged.update({k: v for k, v in (("api_key", key), ("api_secret", secret)) if v})
    try:
        livekit = LiveKitConfig.model_validate(merged)
    except ValueError as exc:
        raise InvalidInput(f"invalid LiveKit settings: {exc}") from exc
    return config.model_copy(update={"livekit": livekit})


def cmd_orchestrator(opts: argparse.Namespace) -> int:
    from duplex.orchestrator.config import OrchestratorConfig
    from duplex.orchestrator.server import serve

    config = _orchestrator_config(opts)
    assert isinstance(config, OrchestratorConfig)
    asyncio.run(serve(config))
    return 0


def cmd_demo(opts: argparse.Namespace) -> int:
    from duplex.demo import run_demo

    return asyncio.run(run_demo(opts))


def cmd_talk(opts: argparse.Namespace) -> int:
    import os

    from duplex.clients.talk import run

    api_key = opts.api_key or os.environ.get("DUPLEX_API_KEY")
    return run(opts.url, opts.input, opts.output, opts.model, opts.voice, opts.timeout, api_key)


async def _page_url(url: str, api_key: str) -> str:
    import aiohttp

    base = url.rstrip("/")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/api/session", headers={"Authorization": f"Bearer {api_key}"}) as resp,
    ):
        body = await resp.json(content_type=None)
        if resp.status != 200:
            message = (body or {}).get("error", {}).get("message", f"HTTP {resp.status}")
            raise DuplexError(f"{base} gave no session token: {message}")
        return f"{base}/?token={body['token']}"


def cmd_check(opts: argparse.Namespace) -> int:
    import os

    from duplex.clients.check import QUESTION, run

    # The Secret's api-keys may list several keys, comma-separated: any one of them will do.
    key = opts.api_key or os.environ.get("DUPLEX_API_KEY") or ""
    api_key = key.split(",")[0].strip() or None
    return run(opts.url, api_key, opts.model, opts.text or QUESTION, opts.timeout)


def cmd_page_url(opts: argparse.Namespace) -> int:
    import os

    api_key = opts.api_key or os.environ.get("DUPLEX_API_KEY")
    if not api_key:
        raise DuplexError("give the orchestrator's API key: --api-key KEY (or DUPLEX_API_KEY)")
    print(asyncio.run(_page_url(opts.url, api_key)))
    return 0


def cmd_operator(opts: argparse.Namespace) -> int:
    try:
        from duplex_operator.config import OperatorConfig
        from duplex_operator.main import run
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
    asyncio.run(run(config, opts.kubeconfig))
    return 0


def _plot_possible(opts: argparse.Namespace) -> None:
    if opts.plot is not None:
        from duplex.bench.plot import require_matplotlib

        require_matplotlib()


def cmd_bench_operator(opts: argparse.Namespace) -> int:
    _plot_possible(opts)
    from duplex.bench.operator import run_operator_bench

    return asyncio.run(run_operator_bench(opts))


def cmd_bench_conversation(opts: argparse.Namespace) -> int:
    _plot_possible(opts)
    from duplex.bench.conversation import run_conversation_bench

    return asyncio.run(run_conversation_bench(opts))


def cmd_bench_soak(opts: argparse.Namespace) -> int:
    _plot_possible(opts)
    from duplex.bench.soak import run_soak_bench

    return asyncio.run(run_soak_bench(opts))


def cmd_bench_worker(opts: argparse.Namespace) -> int:
    _plot_possible(opts)
    from duplex.bench.worker import run_worker_bench

    return asyncio.run(run_worker_bench(opts))


def _add_access_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        action="append",
        help="require this key (Bearer) or a session token for /ws and /api/* (repeatable; "
        "or DUPLEX_API_KEYS)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="serve a non-loopback address without keys"
    )
    parser.add_argument(
        "--allow-origin", action="append", help="a browser origin allowed besides our own"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duplex", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=FORMATS, help=LOG_FORMAT_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="serve TTS models over gRPC")
    worker.add_argument("--config", type=Path, help="YAML config file")
    worker.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    worker.add_argument("--port", type=int, help="gRPC port (default 50051)")
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
    worker.set_defaults(func=cmd_worker)

    say = sub.add_parser("say", help="synthesise TEXT into a WAV file")
    say.add_argument("text")
    say.add_argument("--out", type=Path, required=True, help="WAV file to write (48 kHz mono)")
    say.add_argument("--model", help="model id (see `duplex models`)")
    say.add_argument("--voice", help="voice of the model, if it has several")
    say.add_argument("--worker", help="worker address host:port (default: run one in-process)")
    say.add_argument("--config", type=Path, help="worker config for the in-process worker")
    say.set_defaults(func=cmd_say)

    models = sub.add_parser("models", help="list model ids")
    models.add_argument("--worker", help="ask a running worker (shows what is resident)")
    models.set_defaults(func=cmd_models)

    orch = sub.add_parser("orchestrator", help="serve conversations (WebSocket + web page)")
    orch.add_argument("--config", type=Path, help="YAML config file")
    orch.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    orch.add_argument("--port", type=int, help="HTTP port (default 8080)")
    orch.add_argument("--worker", action="append", help="TTS worker host:port (repeatable)")
    orch.add_argument("--redis", help="discover workers in Redis instead")
    orch.add_argument("--model", help="default TTS model")
    orch.add_argument("--livekit-url", help="LiveKit server URL browsers join (WebRTC)")
    orch.add_argument(
        "--livekit-agent-url", help="where the agent reaches that server (default: the same)"
    )
    orch.add_argument("--livekit-key", help="LiveKit API key (or LIVEKIT_API_KEY)")
    orch.add_argument("--livekit-secret", help="LiveKit API secret (or LIVEKIT_API_SECRET)")
    _add_access_flags(orch)
    orch.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz only here")
    orch.add_argument("--device", help="where speech recognition runs: auto, cpu, cuda, cuda:N")
    orch.set_defaults(func=cmd_orchestrator)

    demo = sub.add_parser("demo", help="worker + orchestrator + web page on this machine")
    demo.add_argument("--config", type=Path, help="orchestrator YAML config file")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
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
    demo.add_argument("--livekit-key", help="API key for --livekit URL (or LIVEKIT_API_KEY)")
    demo.add_argument(
        "--livekit-secret", help="API secret for --livekit URL (or LIVEKIT_API_SECRET)"
    )
    _add_access_flags(demo)
    demo.add_argument(
        "--device", help="where speech recognition and TTS run: auto, cpu, cuda, cuda:N"
    )
    demo.set_defaults(func=cmd_demo)

    talk = sub.add_parser("talk", help="talk to an orchestrator from the terminal")
    talk.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    talk.add_argument("--input", type=Path, help="speak this WAV instead of the microphone")
    talk.add_argument("--output", type=Path, help="write the reply audio to this WAV")
    talk.add_argument("--model", help="TTS model")
    talk.add_argument("--voice", help="TTS voice")
    talk.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a reply")
    talk.add_argument(
        "--api-key", help="the orchestrator's API key or a session token (or DUPLEX_API_KEY)"
    )
    talk.set_defaults(func=cmd_talk)

    check = sub.add_parser(
        "check", help="check an orchestrator: its models, and one typed turn spoken back"
    )
    check.add_argument("--url", default="http://127.0.0.1:8080", help="the orchestrator")
    check.add_argument("--api-key", help="its API key (or DUPLEX_API_KEY)")
    check.add_argument("--model", help="speak with this model (default: a resident one)")
    check.add_argument("--text", help="what to type (default: a short greeting)")
    check.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole check")
    check.set_defaults(func=cmd_check)

    page = sub.add_parser(
        "page-url", help="a link to the page with a fresh session token (servers with API keys)"
    )
    page.add_argument("--url", default="http://127.0.0.1:8080", help="the orchestrator")
    page.add_argument("--api-key", help="its API key (or DUPLEX_API_KEY)")
    page.set_defaults(func=cmd_page_url)

    op = sub.add_parser("operator", help="the Kubernetes operator (TTSModel, VoiceSession)")
    op.add_argument("--config", type=Path, help="YAML config file (namespace, redis, pools)")
    op.add_argument("--namespace", help="namespace to manage (default: default)")
    op.add_argument("--redis", help="Redis URL the workers register in")
    op.add_argument("--kubeconfig", type=Path, help="API server credentials (default: in-cluster)")
    op.set_defaults(func=cmd_operator)

    bench = sub.add_parser("bench", help="measure latency and timing").add_subparsers(
        dest="bench", required=True
    )
    bw = bench.add_parser("worker", help="first audio, PAUSE, jitter, RTF and load time")
    bw.add_argument("--worker", help="bench a running worker instead of starting one")
    bw.add_argument(
        "--models", action="append", help="model ids (default piper-joe,kokoro-ja,pico-en)"
    )
    bw.add_argument("--runs", type=int, default=20, help="utterances per measurement")
    bw.add_argument("--sessions", default="1,3,10", help="concurrency levels for jitter")
    bw.add_argument("--json", type=Path, help="also write the results as JSON")
    bw.add_argument("--plot", type=Path, help=PLOT_HELP)
    bw.set_defaults(func=cmd_bench_worker)
    bo = bench.add_parser("operator", help="time from applying a TTSModel to resident")
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
    bo.add_argument("--json", type=Path, help="also write the results as JSON")
    bo.add_argument("--plot", type=Path, help=PLOT_HELP)
    bo.set_defaults(func=cmd_bench_operator)
    bc = bench.add_parser("conversation", help="voice-to-voice, barge-in and false barge-in")
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
    bc.add_argument("--json", type=Path, help="also write the results as JSON")
    bc.add_argument("--plot", type=Path, help=PLOT_HELP)
    bc.set_defaults(func=cmd_bench_conversation)
    bs = bench.add_parser("soak", help="conversations with interruptions for minutes")
    bs.add_argument("--sessions", type=int, default=10, help="conversations at once")
    bs.add_argument("--minutes", type=float, default=10.0, help="how long")
    bs.add_argument("--url", help="soak a running orchestrator (ws://host:port/ws)")
    bs.add_argument("--pid", type=int, help="its process, to watch its memory")
    bs.add_argument("--model", default="piper-joe", help="TTS model for the replies")
    bs.add_argument("--json", type=Path, help="also write the results as JSON")
    bs.add_argument("--plot", type=Path, help=PLOT_HELP)
    bs.set_defaults(func=cmd_bench_soak)
    _everywhere(parser)
    return parser


def _everywhere(parser: argparse.ArgumentParser) -> None:
    """`--log-format` after any subcommand too (`duplex worker --log-format json`); there, it
    only overrides the top-level flag when given."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.add_argument(
                    "--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=LOG_FORMAT_HELP
                )
                _everywhere(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    opts = build_parser().parse_args(argv)
    log_format = opts.log_format or os.environ.get("DUPLEX_LOG_FORMAT") or "text"
    if log_format not in FORMATS:
        print(
            f"duplex: error: DUPLEX_LOG_FORMAT must be one of {', '.join(FORMATS)}", file=sys.stderr
        )
        return 2
    configure_logging(log_format, verbose=opts.verbose)
    # faster-whisper logs every utterance at INFO: too chatty for a live conversation.
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    # The LiveKit SDK logs every signalling connection at INFO.
    logging.getLogger("livekit").setLevel(logging.WARNING)
    try:
        code: int = opts.func(opts)
    except DuplexError as exc:
        print(f"duplex: error: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"duplex: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
