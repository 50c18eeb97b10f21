"""The explicit registry of TTS families. An unknown family is an error listing valid ones."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from duplex.devices import CPU, Device
from duplex.errors import ModelLoadFailed, UnknownFamily
from duplex.worker.adapters.base import ModelSpec, NativeAudio, TtsAdapter
from duplex.worker.adapters.kokoro import KokoroAdapter
from duplex.worker.adapters.pico import PicoAdapter
from duplex.worker.adapters.piper import PiperAdapter
from duplex.worker.adapters.tone import ToneAdapter

FAMILIES: Mapping[str, type[TtsAdapter]] = MappingProxyType(
    {cls.family: cls for cls in (PiperAdapter, KokoroAdapter, PicoAdapter, ToneAdapter)}
)


def family_of(spec: ModelSpec) -> type[TtsAdapter]:
    try:
        return FAMILIES[spec.family]
    except KeyError:
        raise UnknownFamily(
            f"unknown model family {spec.family!r}; valid families: {', '.join(sorted(FAMILIES))}"
        ) from None


def adapter_for(spec: ModelSpec, device: Device = CPU) -> TtsAdapter:
    return family_of(spec)(spec, device)


def device_for(spec: ModelSpec, default: str) -> Device:
    """Where a model runs: its own device setting, else the worker's; CPU-only families run
    on the CPU under `auto`, and refuse an explicit GPU."""
    from duplex.devices import onnx_has_cuda, resolve

    family = family_of(spec)
    wanted = spec.device or default
    if family.gpu_engine is None:
        if wanted.startswith("cuda"):
            raise ModelLoadFailed(
                f"model {spec.model_id!r} is of the {spec.family} family, which runs on the CPU "
                f"only; give it device cpu or auto"
            )
        return CPU
    return resolve(
        wanted, engine=family.gpu_engine, engine_has_cuda=onnx_has_cuda(), what=spec.model_id
    )


__all__ = ["FAMILIES", "ModelSpec", "NativeAudio", "TtsAdapter", "adapter_for", "device_for"]
