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
