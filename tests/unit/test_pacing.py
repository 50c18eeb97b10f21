"""Frame pacing and lateness, and the worker's lateness metrics, on frames sent late on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from duplex.audio.pacing import FramePacer
from duplex.worker.adapters import ModelSpec
from duplex.worker.catalog import Catalog
from duplex.worker.config import ManagerConfig
from duplex.worker.metrics import WorkerMetrics
from duplex.worker.model_manager import ModelManager
from duplex.worker.session import OutFrame, SessionOptions, SynthesisSession, TextPiece


def test_pacer_sends_the_lead_at_once_then_one_frame_per_20_ms() -> None:
    pacer = FramePacer(0.06)
    dues = []
    t = 100.0
    for _ in range(6):
        due = pacer.due(t)
        t = max(t, due)
        dues.append(round(due - 100.0, 3))
        assert pacer.sent(t).lateness == 0
    # Frames 0–3 are due at the start (0, 20, 40, 60 ms of audio fit in the 60 ms lead).
    assert dues == [0, 0, 0, 0, 0.02, 0.04]


def test_pacer_reports_late_frames_and_underruns() -> None:
    pacer = FramePacer(0.06)
    pacer.sent(pacer.due(0.0))  # frame 0 plays at 0.00
    late = pacer.sent(0.05)  # frame 1: due at once, plays at 0.02; sent 50 ms in
    assert late.lateness == pytest.approx(0.05) and late.underrun
    # The clock restarted at the underrun: frame 2 plays at 0.07 and is due at once.
    assert pacer.due(0.05) == pytest.approx(0.05)
    ok = pacer.sent(0.06)
    assert ok.lateness == pytest.approx(0.01) and not ok.underrun
    pacer.restart()  # a new utterance (or a resume) starts a new clock
    assert pacer.due(5.0) == 5.0 and pacer.sent(5.0).lateness == 0


def _count(metrics: WorkerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


async def _speak(model: ModelSpec, delay_frame: int | None) -> tuple[WorkerMetrics, int]:
    """One paced utterance through a real SynthesisSession; optionally stall one send."""
    metrics = WorkerMetrics()
    manager = ModelManager(Catalog([model]), ManagerConfig(default_model=model.model_id), metrics)
    await manager.start()
    try:
        lease = await manager.acquire(model.model_id)
        session = SynthesisSession("s", lease, manager, SessionOptions(lead_seconds=0.06), metrics)
        sent = 0

        async def pieces() -> AsyncIterator[TextPiece]:
            yield TextPiece("one two three four", is_final=True)

        async def send(out: OutFrame) -> None:
            nonlocal sent
            if out.frame is None:
                return
            sent += 1
            if sent == delay_frame:
                # The worker's loop starved: later frames go out late.
                time.sleep(0.15)  # noqa: ASYNC251

        async with asyncio.timeout(30):
            await session.run(pieces(), send)
        manager.release(lease)
        return metrics, sent
    finally:
        await manager.aclose()


async def test_a_stalled_send_shows_as_lateness_and_an_underrun() -> None:
    metrics, sent = await _speak(ModelSpec("tone", "tone"), delay_frame=10)
    frames = _count(metrics, "duplex_worker_frame_lateness_seconds_count")
    assert frames == sent
    # The frame after the stall left ~150 ms after it was due: a gap the listener hears.
    assert _count(metrics, "duplex_worker_frame_lateness_seconds_sum") > 0.1
    assert _count(metrics, "duplex_worker_underruns_total", {"cause": "send"}) >= 1
    assert _count(metrics, "duplex_worker_underruns_total", {"cause": "starved"}) == 0


async def test_a_model_slower_than_real_time_starves_the_stream() -> None:
    slow = ModelSpec("slow", "tone", options={"delay_seconds": "0.4"})  # 0.25 s audio per word
    metrics, _ = await _speak(slow, delay_frame=None)
    assert _count(metrics, "duplex_worker_underruns_total", {"cause": "starved"}) >= 2
    assert _count(metrics, "duplex_worker_frame_lateness_seconds_sum") > 0.2
