"""The Redis discovery contract shared by workers (writers) and orchestrators (readers).

Each worker keeps `duplex:worker:<name>` alive with a TTL of about three heartbeats and
publishes on `duplex:events` whenever its resident set changes; a record whose key expired is a
worker that is gone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

from duplex.errors import InvalidInput

KEY_PREFIX = "duplex:worker:"
EVENTS_CHANNEL = "duplex:events"
# A TTS session that serves a VoiceSession (Kubernetes) is named <VoiceSession>/<suffix>:
# the worker lists its sessions' ids, and the operator sees which VoiceSessions are Active.
_VOICE_SESSION_SEPARATOR = "/"


def redis_client(url: str) -> aioredis.Redis:
    """A client for the discovery Redis, with bounded waits (a Redis that accepts and then
    stalls must not hold a start or an exit). Options the URL gives that its scheme does not
    take (TLS ones on `redis://`) are a clear error here, not a TypeError at first use."""
    client = aioredis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=5
    )
    pool = client.connection_pool
    try:
        pool.connection_class(**pool.connection_kwargs)  # opens nothing: connections are lazy
    except TypeError as exc:
        raise InvalidInput(
            f"the Redis URL has an option its scheme does not take ({exc}); TLS options such"
            " as ssl_ca_certs need rediss://"
        ) from None
    return client


def worker_key(name: str) -> str:
    return f"{KEY_PREFIX}{name}"


def voice_session_of(session_id: str) -> str | None:
    """The VoiceSession a TTS session serves, from its id; None for other sessions."""
    name, separator, _ = session_id.partition(_VOICE_SESSION_SEPARATOR)
    return name if separator and name else None


def session_id_for(voice_session: str, suffix: str) -> str:
    return f"{voice_session}{_VOICE_SESSION_SEPARATOR}{suffix}"


@dataclass
class WorkerRecord:
    name: str
    addr: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    resident_models: list[str] = field(default_factory=list)
    loading_models: list[str] = field(default_factory=list)
    model_last_used: dict[str, float] = field(default_factory=dict)
    # Where each resident model runs: cpu, cuda:0, ...
    model_devices: dict[str, str] = field(default_factory=dict)
    # Total memory of each GPU the worker sees (cuda:0, ...), in MiB, read from the device:
    # what the operator packs GPU models into.
    gpu_memory_mib: dict[str, int] = field(default_factory=dict)
    model_errors: dict[str, str] = field(default_factory=dict)
    # Kubernetes mode: the model set the worker last applied (None when it follows none).
    model_set: list[str] | None = None
    active_sessions: int = 0
    # Kubernetes mode: the ids of the sessions held (see voice_session_of).
    session_ids: list[str] = field(default_factory=list)
    max_sessions: int = 0
    queue_depth: int = 0
    rtf_p50: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    version: str = ""
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerRecord:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a worker record is a JSON object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class WorkerEvent:
    """Published on EVENTS_CHANNEL: `type` is `worker.up`, `worker.updated` or `worker.down`."""

    type: str
    name: str
    resident_models: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {"type": self.type, "name": self.name, "resident_models": list(self.resident_models)}
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerEvent:
        data = json.loads(raw)
        return cls(str(data["type"]), str(data["name"]), tuple(data.get("resident_models", ())))
