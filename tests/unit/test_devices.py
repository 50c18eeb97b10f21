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
