"""A TTS worker process: model manager + gRPC service + health + metrics + discovery."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from duplex import __version__
from duplex.devices import gpu_memory_mib
from duplex.discovery import WorkerRecord
from duplex.errors import InvalidInput
from duplex.kube import KubeClient
from duplex.rpc.client import SERVER_OPTIONS
from duplex.rpc.security import server_credentials
from duplex.worker.catalog import Catalog
from duplex.worker.config import WorkerConfig
from duplex.worker.metrics import MetricsServer, WorkerMetrics
from duplex.worker.model_manager import ModelManager
from duplex.worker.podwatch import PodModelSet
from duplex.worker.registration import RedisRegistration
from duplex.worker.service import TtsServicer, add_to_server

log = logging.getLogger(__name__)

SERVICE_NAME = "tts.TTSService"


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.metrics = WorkerMetrics()
        catalog = Catalog.default(config.model_specs(), test_models=config.test_models)
        self.manager = ModelManager(catalog, config, self.metrics)
        self.servicer = TtsServicer(config, self.manager, self.metrics)
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self._health = HealthServicer()
        self._registration: RedisRegistration | None = None
        self._metrics_server: MetricsServer | None = None
        self._kube: KubeClient | None = None
        self.model_set: PodModelSet | None = None
        self.port = config.port
        self.started_at = time.time()
        # Read once: the operator packs GPU models into it (empty without a GPU).
        self.gpu_memory_mib = gpu_memory_mib()

    @property
    def address(self) -> str:
        return self.config.advertise or f"{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Serve; a start that fails (a port taken, Redis refusing) leaves nothing running."""
        try:
            await self._start()
        except BaseException:
            await self.aclose(grace=0)
            raise

    async def _start(self) -> None:
        await self.manager.start(follow_model_set=self.config.kube)
        if self.config.kube:
            await self._follow_pod()
        self.servicer.start()
        server = grpc.aio.server(options=list(SERVER_OPTIONS))
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        where = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert and self.config.tls_key:
            creds = server_credentials(
                self.config.tls_cert, self.config.tls_key, self.config.tls_client_ca
            )
            self.port = server.add_secure_port(where, creds)
        elif self.config.tls_cert or self.config.tls_key or self.config.tls_client_ca:
            raise InvalidInput("TLS needs both tls_cert and tls_key (tls_client_ca is optional)")
        else:
            self.port = server.add_insecure_port(where)
        if self.port == 0:
            raise OSError(f"cannot listen on {where}")
        await server.start()
        self._server = server
        if self.config.health_port is not None:
            health = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, health)
            self.health_port = health.add_insecure_port(
                f"{self.config.host}:{self.config.health_port}"
            )
            await health.start()
            self._health_server = health
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.metrics_port is not None:
            self._metrics_server = MetricsServer(
                self.metrics, self.config.host, self.config.metrics_port
            )
        if self.config.redis:
            self._registration = RedisRegistration(
                self.config.redis, self.record, self.config.heartbeat_seconds
            )
            await self._registration.start()
            self.manager.add_listener(self._registration.changed)
            self.servicer.on_sessions_changed = self._registration.changed
        log.info("worker %s serving on %s", self.config.name, self.address)

    async def _follow_pod(self) -> None:
        pod = self.config.pod_name or os.environ.get("POD_NAME")
        if not pod:
            raise InvalidInput("Kubernetes mode needs the Pod name (--pod-name or POD_NAME)")
        kubeconfig = Path(self.config.kubeconfig) if self.config.kubeconfig else None
        self._kube = KubeClient.load(kubeconfig, user_agent=f"duplex-worker/{__version__}")
        namespace = (
            self.config.pod_namespace or os.environ.get("POD_NAMESPACE") or self._kube.namespace
        )
        self.model_set = PodModelSet(self._kube, namespace, pod, self.manager)
        await self.model_set.start()

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server else None

    def record(self) -> WorkerRecord:
        catalog = self.manager.catalog
        languages = sorted({lang for spec in catalog for lang in spec.languages})
        return WorkerRecord(
            name=self.config.name,
            addr=self.address,
            capabilities={
                "streaming": True,
                "zero_shot": False,
                "lora": False,
                "cpu_ok": True,
                "languages": languages,
                "max_concurrent_sessions": self.config.max_sessions,
            },
            models=catalog.ids(),
            resident_models=self.manager.resident_ids(),
            loading_models=self.manager.loading_ids(),
            model_last_used=self.manager.last_used(),
            model_devices=self.manager.devices(),
            gpu_memory_mib=dict(self.gpu_memory_mib),
            model_errors=dict(self.manager.last_error),
            model_set=self.model_set.applied_ids if self.model_set is not None else None,
            active_sessions=len(self.servicer.sessions),
            session_ids=sorted(self.servicer.sessions) if self.config.kube else [],
            max_sessions=self.config.max_sessions,
            queue_depth=self.servicer.queue_depth(),
            rtf_p50=self.metrics.rtf_p50(),
            labels=dict(self.config.labels),
            version=__version__,
            started_at=self.started_at,
        )

    async def aclose(self, grace: float = 1.0) -> None:
        await self._health.enter_graceful_shutdown()
        if self._registration is not None:
            await self._registration.aclose()
        if self._server is not None:
            await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.servicer.aclose()
        if self.model_set is not None:
            await self.model_set.aclose()
        if self._kube is not None:
            await self._kube.aclose()
        await self.manager.aclose()
        if self._metrics_server is not None:
            self._metrics_server.close()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def serve(config: WorkerConfig) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(config) as worker:
        print(f"duplex worker {config.name} listening on {worker.address}", flush=True)
        await stop.wait()
