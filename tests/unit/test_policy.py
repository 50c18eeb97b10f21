"""The turn and barge-in policy on scripted timelines: what the session would see, tick by tick,
and what the policy tells it to do. A small driver applies each act's effect on the state the
policy reads back (silenced, waved on, a new onset), as the session does."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from duplex.orchestrator.asr import Transcript, Word
from duplex.orchestrator.config import BargeInConfig
from duplex.orchestrator.policy import (
    Act,
    Heard,
    Interruption,
    Listening,
    Onset,
    at_onset,
    end_of_turn,
    judge_interruption,
    takes_over,
)
from duplex.orchestrator.turn import TurnPolicy

CONFIG = BargeInConfig()
POLICY = TurnPolicy()


def said(text: str, probability: float = 0.95) -> Transcript:
    return Transcript(tuple(Word(f" {w}", probability) for w in text.split()))


def heard(text: str, probability: float = 0.95, *, complete: bool = True) -> Heard:
    return Heard(said(text, probability), complete)


@dataclass
class Tick:
    """One moment of a timeline: seconds since the onset of the speech over the reply."""

    at: float
    now: Listening


def over_reply(timeline: list[Tick]) -> list[tuple[float, Act]]:
    """Drive the barge-in judgement along a timeline, as the session does."""
    barge = Interruption(heard_for=0.0, elapsed=0.0)
    onset = 0.0
    acts: list[tuple[float, Act]] = []
    for tick in timeline:
        barge = replace(barge, heard_for=tick.at - onset, elapsed=tick.at)
        for act in judge_interruption(tick.now, barge, CONFIG):
            acts.append((tick.at, act))
            if act is Act.SILENCE:
                barge = replace(barge, paused=True)
            elif act is Act.WAVE_ON:
                barge = replace(barge, paused=False, waved=True)
            elif act is Act.WAVE_ON_WATCHING:
                barge = replace(barge, paused=False, waved=True, waved_on_pause=True)
            elif act is Act.NEW_ONSET:
                onset = tick.at
                barge = replace(barge, heard_for=0.0, waved=False, waved_on_pause=False)
    return acts


def speaking(**kw: object) -> Listening:
    return Listening(speaking=True, has_speech=True, **kw)  # type: ignore[arg-type]


def ended(**kw: object) -> Listening:
    return Listening(speaking=False, has_speech=True, ending=True, **kw)  # type: ignore[arg-type]


def test_a_backchannel_is_silenced_briefly_then_waved_on_and_resumed() -> None:
    timeline = [
        Tick(0.10, speaking()),
        Tick(0.16, speaking()),  # long enough to silence the reply
        Tick(0.26, speaking()),  # long enough for a first look at the words
        Tick(0.30, speaking(transcribing=True)),
        Tick(0.40, speaking(heard=heard("uh-huh", complete=False))),
        Tick(0.50, ended(utterance_seconds=0.5, heard=heard("uh-huh"))),
    ]
    assert over_reply(timeline) == [
        (0.16, Act.SILENCE),
        (0.26, Act.LOOK),
        (0.40, Act.WAVE_ON),
        (0.50, Act.RESUME),
    ]


def test_a_real_interruption_stops_the_reply_while_it_is_still_being_said() -> None:
    timeline = [Tick(t / 100, speaking(transcribing=t > 26)) for t in range(0, 120, 4)]
    acts = over_reply(timeline)
    assert acts[0] == (0.16, Act.SILENCE)
    assert (1.0, Act.CONFIRM) in acts and Act.RESUME not in [a for _, a in acts]


def test_words_that_end_early_stop_the_reply_and_a_cough_waits_for_the_silence() -> None:
    words = over_reply([Tick(0.6, ended(utterance_seconds=0.6, heard=heard("stop please")))])
    assert words == [(0.6, Act.CONFIRM)]
    cough = [
        Tick(0.5, ended(utterance_seconds=0.4, heard=heard("oh", 0.2), silent_for=0.1)),
        Tick(0.8, ended(utterance_seconds=0.4, heard=heard("oh", 0.2), silent_for=0.4)),
    ]
    assert over_reply(cough) == [(0.8, Act.RESUME)]


def test_a_doubtful_backchannel_plays_on_until_the_voice_comes_back() -> None:
    doubtful = heard("ah", 0.3)
    timeline = [
        Tick(0.16, speaking()),
        Tick(0.30, speaking(pausing=True, heard=doubtful)),  # the voice dropped on an "ah"
        Tick(0.40, speaking(pausing=True, heard=doubtful)),
        Tick(0.50, speaking(heard=doubtful)),  # ... and came back: timed from here
        Tick(0.60, speaking(heard=doubtful)),
        Tick(0.66, speaking(heard=doubtful)),
    ]
    assert over_reply(timeline) == [
        (0.16, Act.SILENCE),
        (0.30, Act.WAVE_ON_WATCHING),
        (0.50, Act.NEW_ONSET),
        (0.66, Act.SILENCE),
    ]


def test_a_transcript_from_before_the_speech_ended_is_redone_first() -> None:
    paused = Interruption(heard_for=0.5, elapsed=0.5, paused=True)
    partial = ended(utterance_seconds=0.5, heard=heard("yeah", complete=False))
    assert judge_interruption(partial, paused, CONFIG) == [Act.WAVE_ON, Act.TRANSCRIBE]
    other = ended(utterance_seconds=0.5, heard=heard("wait", complete=False))
    assert judge_interruption(other, paused, CONFIG) == [Act.TRANSCRIBE]
    assert judge_interruption(ended(), paused, CONFIG) == [Act.TRANSCRIBE]
    assert judge_interruption(ended(transcribing=True), paused, CONFIG) == []


def test_an_utterance_ends_its_turn_after_a_silence_its_words_decide() -> None:
    question = heard("What is your name?")
    assert end_of_turn(ended(heard=question, silent_for=0.2), POLICY) is None
    assert end_of_turn(ended(heard=question, silent_for=0.3), POLICY) is Act.TAKE_TURN
    # The VAD thinks the voice may be coming back: wait for it.
    assert end_of_turn(ended(heard=question, silent_for=0.3, resuming=True), POLICY) is None
    # "a table for ...": a pause mid-sentence is not the end of the turn.
    clause = heard("I would like to book a table for")
    assert end_of_turn(ended(heard=clause, silent_for=1.0), POLICY) is None
    assert end_of_turn(ended(heard=clause, silent_for=2.2), POLICY) is Act.TAKE_TURN


@pytest.mark.parametrize(
    ("now", "act"),
    [
        (Listening(speaking=False), None),
        (ended(heard=heard("", complete=True)), Act.NOISE),
        (ended(heard=heard("What time is it?", complete=False)), Act.TRANSCRIBE),
        (ended(transcribing=True), None),
        (speaking(speech_for=31.0), Act.CUT),
        (speaking(speech_for=2.0, untranscribed=1.5), Act.PARTIAL),
        (speaking(speech_for=2.0, untranscribed=1.5, transcribing=True), None),
        (speaking(speech_for=2.0, untranscribed=1.5, may_look=False), None),
        (speaking(speech_for=1.0, untranscribed=1.5), None),
        (speaking(background=True), None),
        (ended(background=True, heard=heard("and now the weather")), Act.DROP_BACKGROUND),
    ],
)
def test_what_the_listener_does_next(now: Listening, act: Act | None) -> None:
    assert end_of_turn(now, POLICY) is act


@pytest.mark.parametrize(
    ("onset", "act"),
    [
        # The user over the reply: lower it at once.
        (Onset("speaking", level_db=-20.0, user_db=-20.0), Act.DUCK),
        (Onset("thinking", level_db=-20.0, user_db=None), Act.DUCK),
        # A television 20 dB below the user: background, whatever the bot does.
        (Onset("speaking", level_db=-40.0, user_db=-20.0), Act.BACKGROUND),
        (Onset("barged_in", level_db=-40.0, user_db=-20.0), Act.BACKGROUND),
        # 10 dB below: the user, unless background speech was just heard.
        (Onset("speaking", level_db=-30.0, user_db=-20.0), Act.DUCK),
        (Onset("speaking", level_db=-30.0, user_db=-20.0, after_background=True), Act.BACKGROUND),
        # While the bot listens, anyone may be the user.
        (Onset("listening", level_db=-40.0, user_db=-20.0), None),
        (Onset("barged_in", level_db=-20.0, user_db=-20.0), Act.MORE_SPEECH),
        (Onset("speaking", level_db=-20.0, user_db=-20.0, reply_on=False), None),
    ],
)
def test_what_speech_is_when_it_begins(onset: Onset, act: Act | None) -> None:
    assert at_onset(onset, CONFIG) is act


def test_the_user_takes_over_from_the_background_only_at_their_own_level() -> None:
    assert takes_over([-40.0, -22.0, -21.0, -20.0], user_db=-20.0)
    assert not takes_over([-22.0, -35.0, -21.0], user_db=-20.0)  # one loud syllable
    assert not takes_over([-21.0, -20.0], user_db=-20.0)  # too short to tell
    assert not takes_over([-20.0, -20.0, -20.0], user_db=None)
