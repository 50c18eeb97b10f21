"""Device settings on a machine without a GPU: a clear refusal for cuda, the CPU under auto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from duplex.devices import cuda_device_count
from duplex.rpc.client import TtsClient
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker

pytestmark = pytest.mark.skipif(
    cuda_device_count() > 0, reason="this machine has a CUDA GPU: nothing is missing here"
)


def duplex(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duplex.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_a_worker_asked_for_cuda_says_what_is_missing() -> None:
    result = duplex("worker", "--port", "0", "--device", "cuda", "--default-model", "piper-joe")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "piper-joe on cuda needs an NVIDIA GPU with its driver" in result.stderr
    assert "duplex-voice[gpu]" in result.stderr  # and how to get the rest


def test_an_orchestrator_asked_for_cuda_says_what_is_missing(tmp_path: Path) -> None:
    result = duplex("orchestrator", "--port", "0", "--worker", "127.0.0.1:1", "--device", "cuda")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "speech recognition on cuda needs an NVIDIA GPU" in result.stderr


def test_a_bad_device_setting_is_refused() -> None:
    result = duplex("worker", "--port", "0", "--device", "gpu")
    assert result.returncode == 2 and "device" in result.stderr


async def test_auto_runs_on_the_cpu_and_says_so() -> None:
    config = WorkerConfig(name="auto-worker", port=0, default_model="piper-joe", device="auto")
    async with Worker(config) as w, TtsClient(w.address) as client:
        models = {m.model_id: m for m in await client.list_models()}
        assert models["piper-joe"].is_loaded and models["piper-joe"].metadata["device"] == "cpu"
        assert w.record().model_devices == {"piper-joe": "cpu"}
