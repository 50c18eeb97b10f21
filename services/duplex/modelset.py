"""The model-set contract between the operator and the workers it places models on.

The operator writes three annotations on each worker Pod; the worker reads the first two:

- `duplex.dev/model-set`: the model ids the worker must hold, comma-separated, in order;
- `duplex.dev/model-specs`: a JSON list of catalog entries (`ModelEntry`), so that a worker
  can load a model it was not built with (a Piper voice on a volume);
- `duplex.dev/model-added`: when each model joined the set (the operator's own bookkeeping,
  for minimum residency).

A TTSModel's spec becomes a catalog entry through `entry_from_spec`; both sides agree on the
defaults here, in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from duplex.worker.adapters.base import ModelSpec

# Worker Pods carry these labels; the operator lists them with this selector.
COMPONENT_LABEL = "app.kubernetes.io/component"
WORKER_SELECTOR = f"app.kubernetes.io/name=duplex,{COMPONENT_LABEL}=worker"

MODEL_SET = "duplex.dev/model-set"
MODEL_SPECS = "duplex.dev/model-specs"
MODEL_ADDED = "duplex.dev/model-added"

# Memory one loaded copy takes when nothing says otherwise (the TTSModel CRD's default too).
DEFAULT_MEMORY_MIB = 200


class ModelEntry(BaseModel):
    """A catalog entry: from a worker's config file, or from a TTSModel via its Pod."""

    model_config = ConfigDict(extra="forbid")

    id: str
    family: str
    source: str = "package"
    languages: list[str] = ["en"]
    voices: list[str] = []
    default_voice: str | None = None
    memory_mib: int = Field(DEFAULT_MEMORY_MIB, ge=1)
    threads: int = Field(1, ge=1)
    description: str = ""
    options: dict[str, str] = {}
    device: str | None = Field(None, pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")

    def to_spec(self) -> ModelSpec:
        return ModelSpec(
            model_id=self.id,
            family=self.family,
            source=self.source,
            languages=tuple(self.languages),
            voices=tuple(self.voices),
            default_voice=self.default_voice,
            memory_mib=self.memory_mib,
            threads=self.threads,
            description=self.description,
            options=dict(self.options),
            device=self.device,
        )


_ENTRIES = TypeAdapter(list[ModelEntry])


def entry_from_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A TTSModel's `spec` as the catalog entry its workers receive (JSON-ready).

    A model on CUDA needs a GPU Pod (`needs_gpu`). Raises ValueError when a worker would
    refuse the entry (a field of the wrong type): the
    operator then marks that one TTSModel invalid instead of placing it.
    """
    resources = spec.get("resources") or {}
    entry = {
        "id": spec["modelId"],
        "family": spec["family"],
        "source": spec.get("source", "package"),
        "languages": spec.get("languages") or ["en"],
        "voices": spec.get("voices") or [],
        "default_voice": spec.get("defaultVoice"),
        "memory_mib": resources.get("memoryMiB", DEFAULT_MEMORY_MIB),
        "threads": spec.get("threads", 1),
        "description": spec.get("description", ""),
        "options": spec.get("options") or {},
    }
    if "device" in spec:  # absent otherwise: the worker's own --device decides
        entry["device"] = spec["device"]
    # Strict: "2" is not a thread count, 1.5 not a size; the schema says integer.
    ModelEntry.model_validate(entry, strict=True)
    return entry


def needs_gpu(spec: Mapping[str, Any]) -> bool:
    """Whether a TTSModel may only be placed on GPU pools: `resources.gpu`, or a CUDA device."""
    gpu = (spec.get("resources") or {}).get("gpu", False)
    device = spec.get("device")
    return gpu is True or (isinstance(device, str) and device.startswith("cuda"))


def entry_bytes(entry: Mapping[str, Any]) -> int:
    """What one entry adds to the model-specs annotation."""
    return len(json.dumps(entry, sort_keys=True).encode())


def format_model_set(ids: Iterable[str]) -> str:
    return ",".join(ids)


def parse_model_set(value: str | None) -> list[str]:
    """`"a, b,,a"` → `["a", "b"]`: ids in order, blanks and repeats dropped."""
    seen: dict[str, None] = {}
    for item in (value or "").split(","):
        if item.strip():
            seen[item.strip()] = None
    return list(seen)


def format_model_specs(entries: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps(list(entries), sort_keys=True)


def parse_model_specs(value: str | None) -> list[ModelEntry]:
    if not value:
        return []
    try:
        return _ENTRIES.validate_json(value)
    except ValidationError as exc:
        raise ValueError(f"bad {MODEL_SPECS} annotation: {exc}") from exc


def format_model_added(added: Mapping[str, float], ids: Iterable[str]) -> str:
    return json.dumps({k: round(added[k], 3) for k in ids if k in added}, sort_keys=True)


def parse_model_added(value: str | None) -> dict[str, float]:
    """When each model joined the set; anything unreadable reads as nothing known."""
    try:
        data = json.loads(value or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}
