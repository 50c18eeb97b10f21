"""Piper and Kokoro synthesise for several sessions at once: only their phonemiser (espeak-ng,
global state) is serialised, and what each session gets is its own text, spoken as it is alone.

Real packaged models, loaded on the CPU; the threads are the worker's own synthesis pool.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from duplex.devices import CPU, Device
from duplex.worker.adapters import TtsAdapter, adapter_for
from duplex.worker.adapters.base import PHONEMIZER_LOCK
from duplex.worker.catalog import Catalog
from duplex.worker.config import ManagerConfig
from duplex.worker.model_manager import ModelManager

TEXTS = [
    "The first session asks about the weather. It will rain later.",
    "A second one wants a table for four. Tomorrow at eight, please.",
    "The third is short.",
    "And the fourth reads a longer passage, with a comma, and a second sentence after it.",
]


@pytest.fixture(scope="module", params=["piper-joe", "kokoro-ja"])
def adapter(request: pytest.FixtureRequest) -> Iterator[TtsAdapter]:
    spec = Catalog.default().get(request.param)
    loaded = adapter_for(spec, CPU)
    loaded.load()
    yield loaded
    loaded.close()


def speak(adapter: TtsAdapter, text: str) -> np.ndarray:
    voice = adapter.spec.voice_or_default(None)
    return np.concatenate([np.asarray(c, np.float32) for c in adapter.synthesize(text, voice, 1)])


def test_sessions_at_once_get_what_they_get_alone(adapter: TtsAdapter) -> None:
    assert adapter.thread_safe  # the worker runs it without the adapter's own lock
    alone = [speak(adapter, text) for text in TEXTS]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = speak(adapter, TEXTS[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(TEXTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # VITS samples noise, so no two runs are equal: each session's audio is its own text's (as
    # long as that text alone, within 15 %, and the texts differ in length) and not silence.
    for i, audio in enumerate(alone):
        assert abs(len(results[i]) - len(audio)) < 0.15 * len(audio), TEXTS[i]
        assert np.sqrt(np.mean(results[i] ** 2)) > 0.02, TEXTS[i]


def test_inference_goes_on_while_another_session_phonemises() -> None:
    # Piper speaks a text sentence by sentence after phonemising it whole (Kokoro phonemises
    # and infers a text in one step, so it has no such moment to show).
    adapter = adapter_for(Catalog.default().get("piper-joe"), CPU)
    adapter.load()
    voice = adapter.spec.voice_or_default(None)
    chunks = adapter.synthesize("One sentence first. Then a second one to speak.", voice, 1)
    assert next(chunks).size  # phonemised the whole text, spoke its first sentence
    second: list[np.ndarray] = []
    with PHONEMIZER_LOCK:  # as if another session were phonemising now
        worker = threading.Thread(target=lambda: second.append(next(chunks)))
        worker.start()
        worker.join(60)
        # The second sentence was spoken without waiting for the phonemiser.
        assert not worker.is_alive() and second and second[0].size


async def test_each_device_has_its_own_pool_of_synthesis_threads() -> None:
    manager = ModelManager(Catalog.default(), ManagerConfig(synthesis_threads=3))
    try:
        cpu = manager.executor(CPU)
        assert manager.executor(CPU) is cpu
        names = await asyncio.gather(
            *(
                asyncio.get_running_loop().run_in_executor(cpu, threading.current_thread)
                for _ in range(6)
            )
        )
        assert {t.name.rsplit("_", 1)[0] for t in names} == {"synth-cpu"}
        assert cpu._max_workers == 3
    finally:
        await manager.aclose()
    # Unset: a GPU's pool is its own, and larger than the CPU's (its inference calls overlap).
    manager = ModelManager(Catalog.default(), ManagerConfig())
    try:
        gpu, cpu = manager.executor(Device("cuda", 1)), manager.executor(CPU)
        assert gpu is not cpu and gpu is not manager.executor(Device("cuda", 0))
        assert gpu._max_workers == 32
        assert cpu._max_workers == (os.cpu_count() or 1) + 4
    finally:
        await manager.aclose()
