"""The encoder window fitted to an utterance, and the repetition that shows it was too short."""

from __future__ import annotations

from duplex.orchestrator.asr import repeats, window_frames


def test_the_window_keeps_seven_seconds_of_padding_and_at_least_ten_in_all() -> None:
    assert window_frames(150) == 1000  # a 1.5 s "what is your name"
    assert window_frames(301) == 1100  # 3 s of speech: 10.01 s, rounded up to whole seconds
    assert window_frames(1200) == 1900
    assert window_frames(2300) == 3000  # never past Whisper's own 30 s
    assert window_frames(3000) == 3000


def test_a_phrase_said_over_and_over_is_a_repetition_a_sentence_is_not() -> None:
    assert repeats([7, 8, 9, 7, 8, 9, 7, 8])  # cut short by the token budget
    assert repeats([5, 5])
    assert not repeats([7, 8, 9, 7])  # one word again is not the phrase again
    assert not repeats([1, 2, 3, 4])
    assert not repeats([1])
    assert not repeats([])
