"""The adapter interface every TTS family implements, and the catalog entry it loads from."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from duplex.devices import CPU, Device
from duplex.errors import InvalidInput, MissingDependency

NativeAudio = npt.NDArray[np.float32] | npt.NDArray[np.int16]

WARMUP_TEXT = "Hello! This is a short sentence to warm up the voice."
# As long as the orchestrator's longest chunk (300 characters): an onnxruntime arena grows to
# the largest input it has seen and keeps that memory, so a worker warmed up only on a short
# sentence keeps growing for minutes of real replies; warmed up on this, it is at its working
# size once loaded (and its first long sentence pays no allocation).
LONG_WARMUP_TEXT = (
    "When the weather turns later this afternoon, expect a light breeze from the west, clouds"
    " building over the hills, and perhaps a little rain in the city before evening; tomorrow"
    " should start cool and bright, with the wind easing and temperatures climbing slowly to"
    " around twenty degrees by noon."
)


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model catalog: which family loads it and from where.

    `source` is `package` for weights shipped inside an installed Python package, or a local
    file path; families that know a hub accept a hub id there for users who can reach one.
    """

    model_id: str
    family: str
    source: str = "package"
    languages: tuple[str, ...] = ("en",)
    voices: tuple[str, ...] = ()
    default_voice: str | None = None
    memory_mib: int = 100
    threads: int = 1
    description: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    # auto, cpu, cuda or cuda:N; None: the worker's own setting.
    device: str | None = None

    def voice_or_default(self, voice: str | None) -> str | None:
        if not voice:
            return self.default_voice
        if self.voices and voice not in self.voices:
            raise InvalidInput(
                f"model {self.model_id!r} has no voice {voice!r}; "
                f"valid voices: {', '.join(self.voices)}"
            )
        return voice


# espeak-ng keeps one global state per process, whichever family calls it: phonemisation
# takes this lock, and only phonemisation, so that inference itself runs in parallel.
PHONEMIZER_LOCK = threading.Lock()

T = TypeVar("T")


def phonemizing(phonemize: Callable[..., T]) -> Callable[..., T]:
    """`phonemize`, taking PHONEMIZER_LOCK for each call: put in place of an engine's own
    phonemiser at load, so that its synthesis holds the lock for that step alone."""

    def locked(*args: Any, **kwargs: Any) -> T:
        with PHONEMIZER_LOCK:
            return phonemize(*args, **kwargs)

    return locked


class TtsAdapter(ABC):
    """A loaded TTS model. Implement `load` and `synthesize`; the worker owns the rest.

    Both methods block (they run model inference) and are called from worker threads, never
    on the event loop. The worker serialises calls into one adapter with `lock` unless the
    family sets `thread_safe`: a family whose engine is not safe to call from several threads
    at once leaves it unset; one that takes `PHONEMIZER_LOCK` around its phonemiser and runs an
    onnxruntime session (whose `run` is thread-safe) sets it, so sessions overlap on a GPU.
    """

    family: ClassVar[str]
    thread_safe: ClassVar[bool] = False
    # Whether the family can run on a CUDA GPU, and with which engine (for messages).
    gpu_engine: ClassVar[str | None] = None
    # Synthesised once each at load, after the first (which calibrates loudness): a family
    # whose runtime keeps memory sized by its largest input warms up on a long sentence too.
    warmup_texts: ClassVar[tuple[str, ...]] = (WARMUP_TEXT,)
    # A family for tests only (no weights): served only with `test_models`, not in the CRD.
    test_only: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, device: Device = CPU) -> None:
        self.spec = spec
        self.device = device  # where `load` puts the model; chosen by the worker
        self.lock = threading.Lock()

    @property
    @abstractmethod
    def native_rate(self) -> int:
        """Sample rate of the audio `synthesize` yields."""

    @abstractmethod
    def load(self) -> None:
        """Read the weights and build the inference session."""

    @abstractmethod
    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[NativeAudio]:
        """Yield mono audio chunks (float32 in [-1, 1] or int16) at `native_rate`."""

    def voices(self) -> tuple[str, ...] | None:
        """The voices the loaded model has: () for a single-voice model, None for no limit
        beyond the catalog entry's own list."""
        return None

    def check_voice(self, voice: str | None) -> str | None:
        """`voice` (already checked against the catalog) if the loaded model has it."""
        known = self.voices()
        if voice and known is not None and voice not in known:
            if not known:
                raise InvalidInput(
                    f"model {self.spec.model_id!r} has a single voice; leave the voice unset"
                )
            raise InvalidInput(
                f"model {self.spec.model_id!r} has no voice {voice!r}; "
                f"valid voices: {', '.join(known)}"
            )
        return voice

    def close(self) -> None:  # noqa: B027 - most families have nothing to release
        """Release what `load` acquired."""


def require(module: str, extra: str) -> None:
    """Fail with an install hint when a family's optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependency(
            f"the {extra!r} model family needs extra packages: pip install 'duplex-voice[{extra}]'"
        )
