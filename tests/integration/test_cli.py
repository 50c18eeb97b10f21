"""The commands a new user types, run as subprocesses."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np


def duplex(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duplex.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_say_writes_a_wav_with_speech(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = duplex("say", "Hello from duplex.", "--out", str(out), "--model", "pico-en")
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert 0.5 < len(pcm) / 48000 < 5
    assert np.abs(pcm).max() > 3000


def test_say_with_unknown_model_explains(tmp_path: Path) -> None:
    result = duplex("say", "hi", "--out", str(tmp_path / "x.wav"), "--model", "nope")
    assert result.returncode == 2
    assert "unknown model id 'nope'" in result.stderr and "piper-joe" in result.stderr


def test_models_lists_the_catalog() -> None:
    result = duplex("models")
    assert result.returncode == 0, result.stderr
    for model in ("piper-joe", "kokoro-ja", "pico-en"):
        assert model in result.stdout


def test_operator_with_a_bad_pool_config_explains(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("pools:\n  - name: cpu\n    min_pods: 3\n    max_pods: 1\n")
    result = duplex("operator", "--config", str(config), "--kubeconfig", str(tmp_path / "none"))
    assert result.returncode == 2
    assert "min_pods > max_pods" in result.stderr


def test_operator_without_credentials_explains(tmp_path: Path) -> None:
    result = duplex("operator", "--kubeconfig", str(tmp_path / "missing-kubeconfig"))
    assert result.returncode == 2
    assert "no Kubernetes credentials" in result.stderr and "missing-kubeconfig" in result.stderr


def test_worker_in_kubernetes_mode_needs_its_pod_name(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "current-context: c\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: k}}]\n"
    )
    result = duplex("worker", "--kube", "--port", "0", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 2
    assert "needs the Pod name" in result.stderr
