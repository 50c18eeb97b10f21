"""Where inference runs: device settings resolved on this machine and on pretend ones."""

from __future__ import annotations

import logging

import pytest

from duplex.devices import CPU, GPU_EXTRA, Device, check_spec, cuda_device_count, resolve
from duplex.errors import InvalidInput, MissingDependency, ModelLoadFailed
from duplex.worker.adapters import ModelSpec, device_for


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:7"])
def test_valid_device_settings(spec: str) -> None:
    assert check_spec(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "", "cuda:0,1"])
def test_invalid_device_settings_are_refused(spec: str) -> None:
    with pytest.raises(InvalidInput, match="auto, cpu, cuda or cuda:N"):
        check_spec(spec)


def test_auto_takes_the_first_gpu_when_the_engine_can_use_it() -> None:
    assert resolve("auto", engine="e", engine_has_cuda=True, gpus=2) == Device("cuda", 0)
    assert resolve("cuda:1", engine="e", engine_has_cuda=True, gpus=2) == Device("cuda", 1)
    assert resolve("cpu", engine="e", engine_has_cuda=True, gpus=2) == CPU


def test_auto_without_a_gpu_is_the_cpu_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "duplex.devices")
    for _ in range(3):
        assert resolve("auto", engine="e", engine_has_cuda=True, gpus=0, what="x-once") == CPU
    assert [r.getMessage() for r in caplog.records] == [
        "x-once runs on the CPU (device auto: no CUDA GPU)"
    ]


def test_asking_for_cuda_where_it_cannot_work_names_what_is_missing() -> None:
    with pytest.raises(MissingDependency, match="an NVIDIA GPU with its driver"):
        resolve("cuda", engine="e", engine_has_cuda=True, gpus=0)
    with pytest.raises(MissingDependency, match=r"GPU 3 \(this machine has 2\)"):
        resolve("cuda:3", engine="e", engine_has_cuda=True, gpus=2)
    with pytest.raises(MissingDependency) as info:
        resolve("cuda", engine="onnxruntime", engine_has_cuda=False, gpus=1)
    assert "onnxruntime built with CUDA" in str(info.value) and GPU_EXTRA in str(info.value)


def test_cpu_only_families_refuse_a_gpu_but_run_under_auto() -> None:
    pico = ModelSpec("pico-en", "pico")
    assert device_for(pico, "auto") == CPU
    with pytest.raises(ModelLoadFailed, match="runs on the CPU only"):
        device_for(pico, "cuda")
    # Its own entry wins over the worker's setting.
    assert device_for(ModelSpec("p", "pico", device="cpu"), "cuda") == CPU


def test_this_machine_has_no_gpu_so_auto_is_the_cpu() -> None:
    if cuda_device_count():
        pytest.skip("this machine has a CUDA GPU: the CPU fallback cannot be seen here")
    assert device_for(ModelSpec("piper-joe", "piper"), "auto") == CPU
    with pytest.raises(MissingDependency, match="needs an NVIDIA GPU"):
        device_for(ModelSpec("piper-joe", "piper"), "cuda")


class _FakeNvml:
    """NVML of a pretend machine: physical GPUs by index and UUID, memory totals in bytes."""

    class NVMLError(Exception):
        pass

    def __init__(self, totals_mib: dict[str, int], *, fail_init: bool = False) -> None:
        self.uuids = list(totals_mib)
        self.totals = totals_mib
        self.fail_init = fail_init
        self.open = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")
        self.open += 1

    def nvmlShutdown(self) -> None:
        self.open -= 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return self.uuids[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid not in self.totals:
            raise self.NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> object:
        return type("Memory", (), {"total": self.totals[handle] << 20})()


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, {"cuda:0": 81559, "cuda:1": 24576, "cuda:2": 40960}),
        # CUDA numbers only the visible GPUs, in the order given; NVML counts them all.
        ("2,0", {"cuda:0": 40960, "cuda:1": 81559}),
        ("GPU-b", {"cuda:0": 24576}),
        ("MIG-a/1/0", {}),  # a MIG slice: NVML's whole-GPU figure would be wrong
    ],
)
def test_gpu_memory_is_read_from_the_device_cuda_sees(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, expected: dict[str, int]
) -> None:
    import sys

    import duplex.devices as devices

    nvml = _FakeNvml({"GPU-a": 81559, "GPU-b": 24576, "GPU-c": 40960})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: len(expected) or 1)
    assert devices.gpu_memory_mib() == expected
    assert nvml.open == 0  # shut down again


def test_gpu_memory_is_unknown_without_a_gpu_or_nvml(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    import duplex.devices as devices

    nvml = _FakeNvml({"GPU-a": 81559})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    assert devices.gpu_memory_mib() == {}  # no GPU for CUDA: NVML is not even asked
    assert nvml.open == 0
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml({"GPU-a": 1}, fail_init=True))
    caplog.set_level(logging.WARNING, "duplex.devices")
    assert devices.gpu_memory_mib() == {}
    assert "NVML did not start: Driver Not Loaded" in caplog.text
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: the import fails
    assert devices.gpu_memory_mib() == {}
    assert "NVML is missing" in caplog.text
