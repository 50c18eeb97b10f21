#!/usr/bin/env bash
# The GPU figures, on a machine with an NVIDIA GPU: installs duplex with the `gpu` extra into a
# venv of its own and prints one report:
#   - per model (piper-joe, kokoro-ja) on cuda: first audio p50/p95, RTF, and frame lateness at
#     1/8/32/64 concurrent real-time sessions (duplex bench worker);
#   - Whisper on cuda per 4 s utterance (the packaged tiny.en, float16).
# Usage: bash tools/gpu-check.sh [VENV_DIR]     (default: ~/.cache/duplex/venv-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-${DUPLEX_CACHE:-$HOME/.cache/duplex}/venv-gpu}"
export HF_HUB_OFFLINE=1 KOKORO_JA_CACHE="${DUPLEX_CACHE:-$HOME/.cache/duplex}/kokoro"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[all,gpu]'
# The CPU onnxruntime comes with the model families and shadows the GPU build: swap it out.
python -m pip uninstall -q -y onnxruntime
python -m pip install -q --force-reinstall --no-deps "$(python - <<'PY'
import importlib.metadata as m
print(f"onnxruntime-gpu=={m.version('onnxruntime-gpu')}")
PY
)"
python -c "import onnxruntime as ort; ort.preload_dlls(); print('onnxruntime', ort.__version__, ort.get_available_providers())"

echo
echo "== TTS on cuda (duplex bench worker)"
DUPLEX_DEVICE=cuda DUPLEX_MAX_SESSIONS=96 DUPLEX_MAX_SESSIONS_PER_CLIENT=96 \
    duplex bench worker --models piper-joe,kokoro-ja --runs 20 --sessions 1,8,32,64

echo
echo "== Whisper on cuda, per 4 s utterance"
python - <<'PY'
import asyncio, statistics, time

import numpy as np

from duplex.bench.client import synthesise_utterances
from duplex.orchestrator.asr import AsrConfig, WhisperTranscriber


async def main() -> None:
    text = "I would like to book a table for four people tomorrow evening, please."
    frames = (await synthesise_utterances([text], "piper-joe"))[text]
    audio = np.concatenate([np.frombuffer(f, "<i2") for f in frames]).astype(np.float32) / 32768
    audio = np.resize(audio, 4 * 16000)
    asr = WhisperTranscriber(AsrConfig(device="cuda"))
    await asr.load()
    times = []
    for _ in range(20):
        started = time.perf_counter()
        heard = await asr.transcribe(audio)
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"whisper tiny.en on {asr.device}: n=20 p50 {statistics.median(times) * 1000:.1f} ms "
          f"p95 {times[18] * 1000:.1f} ms max {times[-1] * 1000:.1f} ms; heard: {heard.text!r}")
    asr.close()


asyncio.run(main())
PY
