"""The conversation bench's judgements on scripted timelines: each failure is seen as one."""

from __future__ import annotations

from typing import Any

import pytest

from duplex.bench.conversation import (
    Failed,
    judge_barge_in,
    judge_false_alarm,
    judge_voice_to_voice,
)
from duplex.bench.stats import Series, series_table


def frames(start: float, end: float) -> list[float]:
    """Arrival times of reply frames every 20 ms in [start, end)."""
    n = round((end - start) / 0.02)
    return [start + i * 0.02 for i in range(n)]


def final(at: float) -> tuple[float, dict[str, Any]]:
    return at, {"type": "transcript", "text": "wait", "final": True}


def test_barge_in_is_the_last_frame_before_the_reply_fell_silent() -> None:
    audible = frames(0.0, 10.08)  # the reply plays until 80 ms after the onset at 10.0
    audible += frames(13.0, 14.0)  # the answer to the interruption, after its transcript
    value = judge_barge_in(10.0, audible, [final(12.5)], until=14.0)
    assert value == pytest.approx(0.06)


def test_a_reply_that_never_stops_is_a_failure() -> None:
    with pytest.raises(Failed, match="still going"):
        judge_barge_in(10.0, frames(0.0, 20.0), [], until=20.0)


def test_a_late_stop_is_a_number_not_a_cap() -> None:
    # Stopped 2.5 s after the onset: reported as such (the old bench could not exceed 0.5 s).
    value = judge_barge_in(10.0, frames(0.0, 12.52), [], until=16.0)
    assert value == pytest.approx(2.5)


def test_a_reply_that_comes_back_after_a_real_interruption_is_a_failure() -> None:
    audible = frames(0.0, 10.1) + frames(11.5, 12.0)  # resumed before the next turn
    with pytest.raises(Failed, match="came back"):
        judge_barge_in(10.0, audible, [final(12.5)], until=13.0)
    resumed = [(11.0, {"type": "playback", "action": "resume"})]
    with pytest.raises(Failed, match="resumed"):
        judge_barge_in(10.0, frames(0.0, 10.1), resumed, until=13.0)


def test_no_reply_playing_at_the_onset_is_a_failure_not_zero() -> None:
    with pytest.raises(Failed, match="no reply audio was playing"):
        judge_barge_in(10.0, frames(0.0, 8.0), [], until=13.0)
    with pytest.raises(Failed, match="no reply audio was playing"):
        judge_barge_in(10.0, [], [], until=13.0)


def test_voice_to_voice_without_a_reply_is_a_failure() -> None:
    assert judge_voice_to_voice(1.0, frames(1.7, 2.0), until=5.0) == pytest.approx(0.7)
    with pytest.raises(Failed, match="no reply audio"):
        judge_voice_to_voice(1.0, frames(0.0, 0.5), until=16.0)


def test_false_alarm_gap_and_failures() -> None:
    audible = frames(0.0, 5.1) + frames(5.9, 9.0)  # paused 0.8 s around the noise at 5.0
    assert judge_false_alarm(5.0, audible, [], until=8.0) == pytest.approx(0.82)
    flushed = [(5.2, {"type": "playback", "action": "flush"})]
    with pytest.raises(Failed, match="stopped the reply"):
        judge_false_alarm(5.0, audible, flushed, until=8.0)
    with pytest.raises(Failed, match="did not come back"):
        judge_false_alarm(5.0, frames(0.0, 5.1), [], until=8.0)


def test_the_table_prints_n_and_failures() -> None:
    series = Series("barge-in")
    for v in (0.05, 0.07, 0.09):
        series.add(v)
    series.fail("reply audio still going 10.0 s after the onset")
    text = series_table([series])
    assert "n" in text.splitlines()[0] and "failed" in text.splitlines()[0]
    row = text.splitlines()[2].split()
    assert row[:4] == ["barge-in", "ms", "4", "1"] and row[-1] == "90.0"
    assert series.summary()["why_failed"] == {"reply audio still going 10.0 s after the onset": 1}


def test_the_load_table_names_the_largest_level_that_held() -> None:
    from duplex.bench.conversation import Load, render_load

    def level(n: int, values: list[float], failures: int = 0) -> Load:
        result = Load(n, Series(f"{n} at once: voice-to-voice", values=values))
        for _ in range(failures):
            result.v2v.fail("no reply")
        return result

    held = level(4, [0.5, 0.6, 0.7])
    slow = level(10, [0.6, 0.9, 1.4])  # p95 over a second
    failing = level(20, [0.5, 0.5], failures=1)
    assert held.ok and not slow.ok and not failing.ok
    out = render_load([level(1, [0.4]), held, slow, failing])
    assert "largest N with no failures and v2v p95 < 1 s: 4" in out
    assert "no reply" in out  # the failed question is listed with its reason
