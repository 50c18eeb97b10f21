"""The benches count a run that could not be measured as a failure, never drop it or crash.

A real `duplex worker` with two session slots: a session it refuses (an unknown model, or no
slot left) is a failed run of the figure that wanted it, with the worker's reason; and a
conversation bench pointed at a port where nothing listens fails each question it would have
asked instead of aborting the others.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from duplex.bench.conversation import QUESTIONS, load, render_load
from duplex.bench.worker import first_audio, pacing, rtf
from duplex.ports import free_ports
from duplex.rpc.client import TtsClient
from tests import processes


@pytest.fixture(scope="module")
def worker() -> Iterator[str]:
    process = processes.worker("bench-failures", max_sessions=2, max_sessions_per_client=2)
    yield processes.address(process)
    process.stop()


async def test_a_refused_session_is_a_failed_run(worker: str) -> None:
    async with TtsClient(worker) as client:
        for series in (
            await first_audio(client, "no-such-model", 2),
            await rtf(client, "no-such-model", 2),
        ):
            assert not series.values
            assert len(series.failures) == 2
            assert all("NOT_FOUND" in why for why in series.failures), series.failures


async def test_sessions_beyond_the_workers_slots_fail_the_lateness_run(worker: str) -> None:
    async with TtsClient(worker) as client:
        result = await pacing(client, "pico-en", 3, seconds=0.5)
    # Two sessions were served and measured; the third was refused, and says why.
    assert len(result.lateness.values) >= 2 * 25
    [why] = result.lateness.failures
    assert "RESOURCE_EXHAUSTED" in why


async def test_a_conversation_that_cannot_connect_fails_its_questions() -> None:
    (port,) = free_ports(1)  # nothing listens there
    utterances = {q: [b"\0" * 640] for q in QUESTIONS}
    result = await load(f"ws://127.0.0.1:{port}/ws", "pico-en", utterances, 2, 3)
    assert not result.v2v.values
    assert len(result.v2v.failures) == 2 * 3
    assert all(why.startswith("connection failed: ") for why in result.v2v.failures)
    assert not result.ok
    assert "largest N with no failures and v2v p95 < 1 s: none" in render_load([result])
