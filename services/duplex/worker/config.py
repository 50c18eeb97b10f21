"""Settings of one TTS worker."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from duplex.modelset import ModelEntry
from duplex.worker.adapters import ModelSpec


class ManagerConfig(BaseModel):
    """How the ModelManager keeps models resident."""

    model_config = ConfigDict(extra="forbid")

    default_model: str = "piper-joe"
    preload: list[str] = []
    # Most models resident at once; loading one more evicts the least recently used idle one.
    max_resident: int = Field(3, ge=1)
    # An idle model is unloaded after this long (0 keeps models until evicted by the cap).
    ttl_seconds: float = Field(600.0, ge=0)
    # A model is never evicted sooner than this after it was loaded (avoids load/unload thrash).
    min_residency_seconds: float = Field(30.0, ge=0)
    max_parallel_loads: int = Field(1, ge=1)
    loudness_target_dbfs: float = Field(-18.0, le=0)
    # Where models run unless their catalog entry says: auto (a CUDA GPU when there is one),
    # cpu, cuda or cuda:N.
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")
    # Threads that run synthesis, per device (a pool each, so that a busy GPU never waits
    # behind CPU models, nor they behind it). Unset: the CPU's cores + 4, and 32 per GPU, where
    # many sessions' inference calls overlap.
    synthesis_threads: int | None = Field(None, ge=1, le=256)


class WorkerConfig(ManagerConfig):
    name: str = Field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    # Address other processes use to reach this worker (defaults to host:port).
    advertise: str | None = None
    models: list[ModelEntry] = []
    test_models: bool = False
    max_sessions: int = Field(16, ge=1)
    # Most sessions one client may hold, so that one client cannot take every slot; unset:
    # three quarters of max_sessions (all of them below 4).
    max_sessions_per_client: int | None = Field(None, ge=1)
    # A session with no stream and no call for this long is ended: its client went away
    # without EndSession. Clients holding a session between utterances send KEEPALIVE.
    session_idle_seconds: float = Field(10.0, gt=0)
    # Audio a session may synthesise ahead of what it has sent.
    buffer_seconds: float = Field(5.0, gt=0)
    default_pacing: Literal["realtime", "none"] = "realtime"
    default_lead_ms: int = Field(60, ge=0, le=2000)
    max_text_chars: int = Field(65536, ge=1)
    # TLS (see rpc/security.py): certificate and key files; a client CA makes it mutual.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Who may LoadModel, UnloadModel and RELOAD: bearer tokens (DUPLEX_ADMIN_TOKENS) and client
    # certificate common names; with neither, callers on this machine only.
    admin_tokens: list[str] = []
    admin_names: list[str] = []
    # The gRPC health service alone, in plain text, for probes that do not speak TLS.
    health_port: int | None = Field(None, ge=0, le=65535)
    redis: str | None = None
    heartbeat_seconds: float = Field(1.0, gt=0)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    labels: dict[str, str] = {}
    # Kubernetes mode: load exactly what this Pod's duplex.dev/model-set annotation names.
    kube: bool = False
    pod_name: str | None = None
    pod_namespace: str | None = None
    # Credentials for the API server: in-cluster when unset inside a Pod.
    kubeconfig: str | None = None

    def address(self) -> str:
        return self.advertise or f"{self.host}:{self.port}"

    @property
    def client_limit(self) -> int:
        if self.max_sessions_per_client is not None:
            return min(self.max_sessions_per_client, self.max_sessions)
        return self.max_sessions - self.max_sessions // 4

    def model_specs(self) -> list[ModelSpec]:
        return [entry.to_spec() for entry in self.models]
