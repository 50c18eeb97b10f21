from __future__ import annotations

import pytest

from duplex.orchestrator.state import InvalidTransition, State, StateMachine
from duplex.orchestrator.turn import TurnPolicy, completeness, is_backchannel, required_silence


def test_transitions_are_events_and_invalid_ones_raise() -> None:
    seen: list[tuple[State, State]] = []
    m = StateMachine(lambda old, new: seen.append((old, new)))
    m.to(State.THINKING)
    m.to(State.SPEAKING)
    m.to(State.BARGED_IN)
    m.to(State.SPEAKING)  # false alarm: resume
    m.to(State.BARGED_IN)
    m.to(State.LISTENING)  # real interruption
    assert [n for _, n in seen] == [
        State.THINKING,
        State.SPEAKING,
        State.BARGED_IN,
        State.SPEAKING,
        State.BARGED_IN,
        State.LISTENING,
    ]
    with pytest.raises(InvalidTransition, match="listening → speaking"):
        m.to(State.SPEAKING)
    m.to(State.LISTENING)  # staying put is not a transition
    assert len(seen) == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What time is it?", 0.3),
        ("What can you do?", 0.3),
        ("Tell me a story.", 0.3),
        ("I'd like to book a table for", 2.2),
        ("I was thinking about, um", 2.2),
        ("and then we went to the", 2.2),
        ("So anyway...", 2.2),
        ("hello", 0.7),
    ],
)
def test_required_silence_follows_the_words(text: str, expected: float) -> None:
    assert required_silence(text, TurnPolicy()) == expected


def test_completeness_orders_finished_above_unfinished() -> None:
    assert completeness("How are you") > completeness("How are you and")
    assert completeness("") == 0.0


@pytest.mark.parametrize("text", ["Uh-huh.", "yeah", "Mm-hmm", "okay, right", "I see."])
def test_backchannels(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize("text", ["Stop talking", "Yeah but what about the price?", ""])
def test_not_backchannels(text: str) -> None:
    assert not is_backchannel(text)


def test_a_doubtful_last_word_does_not_finish_the_clause() -> None:
    from duplex.orchestrator.asr import Transcript, Word
    from duplex.orchestrator.turn import transcript_silence

    def heard(*words: tuple[str, float]) -> Transcript:
        return Transcript(tuple(Word(" " + w, p) for w, p in words))

    said = [(w, 0.98) for w in "I would like to book a table for".split()]
    made_up = heard(*said, ("it.", 0.68))
    assert made_up.text.endswith("for it.")
    assert made_up.settled(0.8).endswith("table for")
    assert transcript_silence(made_up) == TurnPolicy().incomplete_silence
    # The same word, sure: the sentence is finished.
    assert transcript_silence(heard(*said, ("it.", 0.97))) == TurnPolicy().min_silence
    # A doubtful word that closes nothing open changes nothing.
    polite = heard(("four", 0.9), ("people", 0.95), ("please.", 0.55))
    assert transcript_silence(polite) == required_silence("four people please.")
    question = heard(("What", 0.8), ("is", 0.99), ("your", 0.99), ("name?", 1))
    assert transcript_silence(question) == TurnPolicy().min_silence
    # A short answer is never cut down to nothing.
    assert Transcript((Word("Yes.", 0.3),)).settled(0.8) == "Yes."


def test_unclear_words_over_the_bot_are_not_an_interruption() -> None:
    from duplex.orchestrator.asr import Transcript, Word

    assert Transcript((Word("I'll...", 0.3),)).clear(0.4) == ""
    assert Transcript((Word(" M", 0.25), Word(" MM.", 0.45))).clear(0.4) == "MM."
    assert Transcript((Word(" Uh", 0.6), Word("-huh.", 0.5))).text == "Uh-huh."
    assert is_backchannel("MM.") and is_backchannel("mm hmm")
    assert Transcript((Word("Stop.", 0.6),)).clear(0.4) == "Stop."
