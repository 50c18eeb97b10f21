"""Where inference runs: `auto`, `cpu`, `cuda` or `cuda:N`.

`auto` means the first CUDA GPU when this machine has one and the engine can use it, else the
CPU (said once in the log). Asking for CUDA where it cannot work is an error that names what is
missing, never a silent fallback to the CPU.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from duplex.errors import InvalidInput, MissingDependency

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")
GPU_EXTRA = "pip install 'duplex-voice[gpu]' (onnxruntime-gpu, CUDA and cuDNN runtime wheels)"


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "cuda"]
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"


CPU = Device("cpu")


def check_spec(spec: str) -> str:
    """A device setting, checked: auto, cpu, cuda or cuda:N."""
    if not _SPEC.match(spec):
        raise InvalidInput(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return spec


@functools.cache
def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 without a driver): asks libcuda itself, needing no package."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def gpu_memory_mib() -> dict[str, int]:
    """The total memory of each GPU this process sees (cuda:0, ...), in MiB, from NVML
    (`nvidia-ml-py`, in the gpu extra); empty without a GPU, or without NVML (said once)."""
    count = cuda_device_count()
    if not count:
        return {}
    try:
        import pynvml
    except ImportError:
        log.warning("GPU memory unknown: NVML is missing (%s)", GPU_EXTRA)
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.warning("GPU memory unknown: NVML did not start: %s", exc)
        return {}
    try:
        sizes = {}
        for index in range(count):
            handle = _nvml_handle(pynvml, index)
            if handle is not None:
                sizes[f"cuda:{index}"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) >> 20
        return sizes
    except pynvml.NVMLError as exc:
        log.warning("GPU memory unknown: NVML failed: %s", exc)
        return {}
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML's handle of CUDA device `index`. NVML counts every GPU of the machine; CUDA only
    those in CUDA_VISIBLE_DEVICES (indices or UUIDs), in that order. None for a device NVML
    cannot name (a MIG slice)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    if not visible:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    if index >= len(visible):
        return None
    item = visible[index]
    if item.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(item))
    if item.startswith("GPU-"):
        return pynvml.nvmlDeviceGetHandleByUUID(item)
    return None


def resolve(
    spec: str,
    *,
    engine: str,
    engine_has_cuda: bool,
    gpus: int | None = None,
    what: str = "inference",
) -> Device:
    """The device `spec` means on this machine, for an engine that can (or cannot) use CUDA."""
    check_spec(spec)
    gpus = cuda_device_count() if gpus is None else gpus
    if spec == "cpu":
        return CPU
    if spec == "auto":
        if gpus and engine_has_cuda:
            return Device("cuda", 0)
        _say_cpu_once(what, "no CUDA GPU" if not gpus else f"{engine} has no CUDA support")
        return CPU
    index = int(spec.partition(":")[2] or 0)
    missing = []
    if not gpus:
        missing.append("an NVIDIA GPU with its driver (libcuda found no device)")
    elif index >= gpus:
        missing.append(f"GPU {index} (this machine has {gpus})")
    if not engine_has_cuda:
        missing.append(f"{engine} built with CUDA: {GPU_EXTRA}")
    if missing:
        raise MissingDependency(f"{what} on {spec} needs " + " and ".join(missing))
    _preload_cuda_libraries()
    return Device("cuda", index)


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA, cuDNN and cuBLAS libraries of the pip wheels (the `gpu` extra) into this
    process, so that onnxruntime and CTranslate2 find them without LD_LIBRARY_PATH."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except (OSError, RuntimeError) as exc:
            log.warning("could not preload the CUDA libraries of the gpu extra: %s", exc)


@functools.cache
def _say_cpu_once(what: str, why: str) -> None:
    log.info("%s runs on the CPU (device auto: %s)", what, why)


def onnx_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def onnx_providers(device: Device) -> list[str | tuple[str, dict[str, str]]]:
    if device.is_gpu:
        return [("CUDAExecutionProvider", {"device_id": str(device.index)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_onnx_session(session: object, device: Device, what: str) -> None:
    """onnxruntime falls back to the CPU when CUDA fails to start: refuse that, loudly."""
    providers = session.get_providers()  # type: ignore[attr-defined]
    if device.is_gpu and (not providers or providers[0] != "CUDAExecutionProvider"):
        raise MissingDependency(
            f"{what} was asked to run on {device} but onnxruntime placed it on "
            f"{', '.join(providers) or 'nothing'}: the CUDA or cuDNN runtime did not load "
            f"({GPU_EXTRA})"
        )


def ctranslate2_has_cuda() -> bool:
    """CTranslate2's Linux wheels carry CUDA support; whether a GPU is there is asked apart."""
    import importlib.util

    return importlib.util.find_spec("ctranslate2") is not None
