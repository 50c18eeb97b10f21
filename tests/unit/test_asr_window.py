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
    assert repeats("Okay. Okay. Okay.")
    assert repeats("Yeah yeah yeah yeah")  # the first one capitalised
    assert repeats("What is it? What is it? What i")  # cut short by the token budget
    assert repeats("Right, right.")
    assert not repeats("What is it? What")  # one word again is not the phrase again
    assert not repeats("Close the window.")
    assert not repeats("No, no, I said yes.")
    assert not repeats("Okay.")
    assert not repeats("")
