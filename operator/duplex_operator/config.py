"""Settings of the operator: which namespace it manages and the worker pools it may create.

Loaded like every duplex config (YAML file < `DUPLEX_OPERATOR_<FIELD>` env < flags). The Helm
chart renders the pools from its values into the file the operator reads.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

GPU_RESOURCE = "nvidia.com/gpu"
# A Pod above its pool's minimum is removed after this long without a session (or a model).
DEFAULT_SCALE_DOWN_SECONDS = 60.0


class WorkerPool(BaseModel):
    """A kind of worker Pod the operator may create, e.g. CPU workers or one-GPU workers."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$")
    # GPU pools request one nvidia.com/gpu per Pod and only host models with resources.gpu.
    gpu: bool = False
    min_pods: int = Field(0, ge=0)
    max_pods: int = Field(1, ge=0)
    # Model memory one Pod may hold, for bin-packing model sets (sum of TTSModel memoryMiB).
    # In a GPU pool, once a Pod's worker has read its GPU's memory from the device, that
    # (less gpu_reserve_mib) is the Pod's size instead: this is the size assumed until then.
    memory_mib: int = Field(2048, ge=1)
    # GPU memory that CUDA, cuDNN and the engines take before any model: kept free.
    gpu_reserve_mib: int = Field(1024, ge=0)
    max_sessions: int = Field(16, ge=1)
    # Scale out on demand: when every Pod holding a model serves this many VoiceSessions, the
    # model is placed on one more Pod (a new one up to max_pods). None: max_sessions.
    max_sessions_per_pod: int | None = Field(None, ge=1)
    # A Pod above min_pods that has served no session (or held no model) this long is removed.
    scale_down_seconds: float = Field(DEFAULT_SCALE_DOWN_SECONDS, ge=0)
    image: str = "duplex:latest"
    image_pull_policy: str = "IfNotPresent"
    port: int = Field(50051, ge=1, le=65535)
    metrics_port: int = Field(9100, ge=1, le=65535)
    # The gRPC health service alone, in plain text, for the kubelet's probes (which cannot
    # speak TLS); served only when workers serve TLS (OperatorConfig.worker_tls).
    health_port: int = Field(50052, ge=1, le=65535)
    # Passed through to the Pod spec as Kubernetes objects (ResourceRequirements etc.).
    resources: dict[str, Any] = {}
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    # None: each worker Pod gets an account of its own (a ServiceAccount, Role and RoleBinding
    # named after the Pod and deleted with it) that may read that one Pod and nothing else.
    # A name: every Pod of the pool runs as that account, whose rights are its owner's to give.
    service_account_name: str | None = None
    # Secrets for pulling the pool's image, named in each worker Pod.
    image_pull_secrets: list[str] = []
    env: list[dict[str, Any]] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    # Extra arguments for `duplex worker` (e.g. ["--test-models"]).
    args: list[str] = []

    @model_validator(mode="after")
    def _sizes(self) -> WorkerPool:
        if self.min_pods > self.max_pods:
            raise ValueError(f"pool {self.name}: min_pods > max_pods")
        if self.max_sessions_per_pod is not None and self.max_sessions_per_pod > self.max_sessions:
            raise ValueError(f"pool {self.name}: max_sessions_per_pod > max_sessions")
        return self

    @property
    def target_sessions(self) -> int:
        """Sessions per Pod the pool scales out at (its hard limit is max_sessions)."""
        return self.max_sessions_per_pod or self.max_sessions

    @property
    def name_slots(self) -> int:
        """How many Pod names the pool may use: `<prefix>-<pool>-0` up to `-<name_slots - 1>`.

        A Pod that replaces one still terminating takes another name, so twice max_pods. The
        names are known before any Pod exists: the chart's worker Role grants these alone.
        """
        return 2 * self.max_pods


class SecretKey(BaseModel):
    """A key of a Secret in the operator's namespace, as a worker Pod's secretKeyRef names it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]{1,253}$")


class WorkerTls(BaseModel):
    """Workers serve gRPC over mutual TLS with the certificate in `secret`.

    The Secret has the keys of a kubernetes.io/tls Secret made by cert-manager: tls.crt, tls.key
    and ca.crt, the CA whose certificates clients must present. It is mounted at `mount_path`.
    """

    model_config = ConfigDict(extra="forbid")

    secret: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
    mount_path: str = Field("/etc/duplex-tls", pattern=r"^/[^:]*$")


class LeaderElection(BaseModel):
    """One active operator among replicas: the holder of a coordination.k8s.io Lease acts.

    A standby takes over at most lease_seconds + retry_seconds after the leader's last renewal;
    a leader that cannot renew for renew_seconds stops acting first (renew < lease).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    lease_name: str = Field("duplex-operator", pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
    lease_seconds: float = Field(10.0, gt=1)
    renew_seconds: float = Field(7.0, gt=0)
    retry_seconds: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> LeaderElection:
        if not self.retry_seconds < self.renew_seconds < self.lease_seconds:
            raise ValueError("leader election needs retry_seconds < renew_seconds < lease_seconds")
        return self


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The namespace whose TTSModels, VoiceSessions and worker Pods are managed.
    namespace: str = "default"
    # Where workers register (ARCHITECTURE §4); residency and last use come from there.
    redis: str = "redis://127.0.0.1:6379/0"
    # Worker Pods are named <worker_prefix>-<pool>-<n>.
    worker_prefix: str = Field("duplex-worker", pattern=r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
    pools: list[WorkerPool] = [WorkerPool(name="cpu", min_pods=0, max_pods=2)]
    # A full reconcile pass runs at least this often, besides on every watch event.
    resync_seconds: float = Field(2.0, gt=0)
    # Replaces every pool's image (e.g. the image a dev loop just built); None keeps them.
    worker_image: str | None = None
    # How workers reach Redis, in their Pods' environment (DUPLEX_REDIS), never in their
    # arguments. A URL (default: `redis`) that carries no password in clear: it may name
    # $(REDIS_PASSWORD), which the kubelet fills in from `worker_redis_password`. Or the whole
    # URL from a Secret, `worker_redis_url`, which wins.
    worker_redis: str | None = None
    worker_redis_password: SecretKey | None = None
    worker_redis_url: SecretKey | None = None
    # A Secret with the CA (ca.crt) of an external Redis's TLS certificate, mounted in worker
    # Pods at REDIS_CA_DIR for the URL to name (rediss://...?ssl_ca_certs=/etc/redis-ca/ca.crt).
    worker_redis_ca_secret: str | None = Field(
        None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
    )
    # Workers serve mutual TLS (None: plain text), and their admin RPCs need the token in this
    # Secret (DUPLEX_ADMIN_TOKENS; None: only callers on the worker's own machine).
    worker_tls: WorkerTls | None = None
    worker_admin_token: SecretKey | None = None
    # Serve kopf's liveness probe here (e.g. http://0.0.0.0:8081/healthz); None disables it.
    liveness_endpoint: str | None = None
    # Serve Prometheus /metrics on this port (None: not at all), on metrics_host.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    leader_election: LeaderElection = LeaderElection()

    @model_validator(mode="after")
    def _unique_pools(self) -> OperatorConfig:
        names = [p.name for p in self.pools]
        if len(names) != len(set(names)):
            raise ValueError(f"pool names must be unique: {names}")
        return self

    @model_validator(mode="after")
    def _no_password_in_pod_specs(self) -> OperatorConfig:
        # Whatever worker_redis says is written into every worker Pod's spec, which anyone who
        # may read Pods can read.
        if self.worker_redis_url is None and _clear_password(self.worker_redis or self.redis):
            raise ValueError(
                "the Redis URL for workers carries a password, which would be written into "
                "every worker Pod's spec: give worker_redis_url (a Secret), or worker_redis "
                "with $(REDIS_PASSWORD) and worker_redis_password"
            )
        return self

    def worker_pod_names(self, pool: WorkerPool) -> list[str]:
        """Every name a Pod of `pool` may get (see WorkerPool.name_slots)."""
        return [f"{self.worker_prefix}-{pool.name}-{n}" for n in range(pool.name_slots)]


def _clear_password(url: str) -> bool:
    password = urlsplit(url).password
    return bool(password) and not re.fullmatch(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", password or "")


def redacted(url: str) -> str:
    """`url` with its password (if any) replaced by `***`: for logs and status messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()
