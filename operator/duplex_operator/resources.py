"""Typed views of the objects the operator reads: TTSModels, VoiceSessions and worker Pods.

The planner works on these plain values, never on raw API dicts, so it can be tested without an
API server; `parse_*` are the only places that know the wire shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from duplex.modelset import (
    MODEL_ADDED,
    MODEL_SET,
    MODEL_SPECS,
    entry_bytes,
    entry_from_spec,
    needs_gpu,
    parse_model_added,
    parse_model_set,
)

T = TypeVar("T")

GROUP = "duplex.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
TTSMODELS = "ttsmodels"
VOICESESSIONS = "voicesessions"

POOL_LABEL = "duplex.dev/pool"

FINAL_PHASES = frozenset({"Ended", "Failed"})
# The annotations of one Pod may total 256 KiB (keys and values). The model-set annotations
# stay within this, the rest being left to the pool's own annotations; one model's catalog
# entry may take at most a quarter of it (the CRD's bounds keep a plain spec well below).
ANNOTATION_BUDGET = 224 * 1024
ENTRY_LIMIT = ANNOTATION_BUDGET // 4


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TtsModel:
    name: str
    uid: str
    generation: int
    model_id: str
    family: str
    gpu: bool
    memory_mib: int
    min_resident: int
    ttl_seconds: int
    min_residency_seconds: int
    created: float
    # The worker catalog entry (ModelEntry fields) sent in the Pod's model-specs annotation.
    entry: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def entry_bytes(self) -> int:
        """What the entry adds to a Pod's model-specs annotation."""
        return entry_bytes(self.entry)

    def condition(self, kind: str) -> dict[str, Any] | None:
        for cond in self.status.get("conditions") or []:
            if cond.get("type") == kind:
                return dict(cond)
        return None

    def load_failed(self) -> str | None:
        """The worker's error when loading this generation failed (persisted in status)."""
        ready = self.condition("Ready")
        if (
            ready is not None
            and ready.get("reason") == "LoadFailed"
            and ready.get("observedGeneration") == self.generation
        ):
            return str(ready.get("message", ""))
        return None


@dataclass
class VoiceSession:
    name: str
    uid: str
    generation: int
    model_id: str
    language: str
    room: str
    max_duration_seconds: int
    created: float
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def worker(self) -> str | None:
        worker = self.status.get("worker")
        return str(worker) if worker else None

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES


@dataclass
class WorkerPod:
    name: str
    pool: str
    model_set: list[str]
    added: dict[str, float]
    created: float
    deleting: bool = False
    ip: str | None = None
    port: int = 50051
    owners: list[str] = field(default_factory=list)  # uids of owning TTSModels
    # The raw annotations, compared with what the planner wants before patching.
    specs: str = ""
    added_raw: str = ""


@dataclass(frozen=True)
class InvalidObject:
    """A TTSModel or VoiceSession the operator cannot read (a spec the CRD should not allow)."""

    kind: str
    name: str
    uid: str
    generation: int
    status: dict[str, Any]
    error: str


def parse_or_invalid(
    kind: str, obj: dict[str, Any], parse: Callable[[dict[str, Any]], T]
) -> T | InvalidObject:
    """`parse(obj)`, or what is wrong with `obj`: one bad object must not stop the pass."""
    try:
        return parse(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        meta: dict[str, Any] = obj.get("metadata") or {}
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        return InvalidObject(
            kind,
            str(meta.get("name", "")),
            str(meta.get("uid", "")),
            int(meta.get("generation") or 1),
            dict(obj.get("status") or {}),
            f"the spec cannot be read: {detail}",
        )


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


_NO_DEFAULT: Any = object()


def _typed(spec: dict[str, Any], key: str, kind: type[T], default: T = _NO_DEFAULT) -> T:
    """`spec[key]`, which must be a `kind` (an integer is not a bool, nor a bool an integer)."""
    value = spec[key] if default is _NO_DEFAULT else spec.get(key, default)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise ValueError(
        f"{key} must be {'an' if kind is int else 'a'} {kind.__name__}, not {value!r:.40}"
    )


def _count(spec: dict[str, Any], key: str, default: int) -> int:
    value = _typed(spec, key, int, default)
    if value < 0:
        raise ValueError(f"{key} must not be negative, not {value}")
    return value


def parse_model(obj: dict[str, Any]) -> TtsModel:
    meta, spec = _meta(obj), obj.get("spec") or {}
    resources = spec.get("resources") or {}
    entry = entry_from_spec(spec)
    return TtsModel(
        name=meta["name"],
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 1)),
        model_id=entry["id"],
        family=entry["family"],
        gpu=_typed(resources, "gpu", bool, False) or needs_gpu(spec),
        memory_mib=entry["memory_mib"],
        min_resident=_count(spec, "minResident", 0),
        ttl_seconds=_count(spec, "ttlSeconds", 600),
        min_residency_seconds=_count(spec, "minResidencySeconds", 30),
        created=parse_time(meta.get("creationTimestamp")) or 0.0,
        entry=entry,
        status=dict(obj.get("status") or {}),
    )


def parse_session(obj: dict[str, Any]) -> VoiceSession:
    meta, spec = _meta(obj), obj.get("spec") or {}
    return VoiceSession(
        name=meta["name"],
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 1)),
        model_id=_typed(spec, "modelId", str),
        language=_typed(spec, "language", str, "en"),
        room=_typed(spec, "room", str, ""),
        max_duration_seconds=_count(spec, "maxDurationSeconds", 3600),
        created=parse_time(meta.get("creationTimestamp")) or 0.0,
        status=dict(obj.get("status") or {}),
    )


def parse_pod(obj: dict[str, Any]) -> WorkerPod:
    meta = _meta(obj)
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    port = 50051
    for container in (obj.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == "grpc":
                port = int(p["containerPort"])
    return WorkerPod(
        name=meta["name"],
        pool=labels.get(POOL_LABEL, ""),
        model_set=parse_model_set(annotations.get(MODEL_SET)),
        added=parse_model_added(annotations.get(MODEL_ADDED)),
        created=parse_time(meta.get("creationTimestamp")) or 0.0,
        deleting=bool(meta.get("deletionTimestamp")),
        ip=(obj.get("status") or {}).get("podIP"),
        port=port,
        owners=[o["uid"] for o in meta.get("ownerReferences") or [] if o.get("kind") == "TTSModel"],
        specs=annotations.get(MODEL_SPECS, ""),
        added_raw=annotations.get(MODEL_ADDED, ""),
    )
