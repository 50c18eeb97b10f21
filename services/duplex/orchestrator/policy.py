"""The turn-taking and barge-in policy: pure functions from what the listener knows to what
the session does.

The session (`session.py`) observes the audio (VAD, levels, transcripts, clocks), puts what it
knows at one moment into a view, and carries out the acts these functions return, in order.
Nothing here touches audio, tasks or time, so the policy is tested on scripted timelines of
views (tests/unit/test_policy.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from duplex.orchestrator.asr import Transcript
from duplex.orchestrator.config import BargeInConfig
from duplex.orchestrator.turn import TurnPolicy, is_backchannel, transcript_silence, words

# Whisper's confidence below which a word heard over the bot is too unclear to count as an
# interruption: on a grunt it guesses ("Oh", "I'll").
UNCLEAR = 0.4
# A paused reply resumes only after this much silence: an unclear first word ("Wait,") can be
# judged before the rest of an interruption, and resuming then would play a burst of reply.
RESUME_HOLD = 0.4
# Backchannels are short: speech over the reply that has gone on this long without reading as
# one is judged when it ends.
GLIMPSE_UNTIL = 0.7
# Partial transcripts while the user speaks: not in the first 1.5 s, and only once 1.2 s more
# than the last one covered has been said.
PARTIAL_AFTER = 1.5
PARTIAL_NEW_AUDIO = 1.2
# After background speech, for this long, speech counts as the user's only within this many dB
# of the user's level (the background's own level varies a lot from syllable to syllable).
BACKGROUND_HOLD = 3.0
NEAR_USER_DB = 8.0
TAKEOVER_FRAMES = 3  # 60 ms


@dataclass(frozen=True)
class Heard:
    """The last finished transcription of the utterance."""

    transcript: Transcript
    complete: bool  # it covers the speech up to where it ended (not only a head start)


@dataclass(frozen=True)
class Listening:
    """What the listener knows at one moment, in seconds: `silent_for` on the audio clock (a
    backlog of frames is not silence), `speech_for` on the wall clock."""

    speaking: bool  # the VAD hears speech
    pausing: bool = False  # ... and the voice has just dropped
    resuming: bool = False  # ... or, in a silence, may be coming back
    has_speech: bool = False  # an utterance is under way (speech, or its ending silence)
    ending: bool = False  # its speech has ended and the turn may be over
    silent_for: float = 0.0  # since its speech ended
    speech_for: float = 0.0  # since it began
    utterance_seconds: float = 0.0  # its audio after the preroll
    untranscribed: float = 0.0  # seconds of it no transcription has covered yet
    heard: Heard | None = None
    transcribing: bool = False
    may_look: bool = True  # the ASR's share allows another early transcription now
    background: bool = False  # the speech is quieter than the user's: not meant for the bot


@dataclass(frozen=True)
class Interruption:
    """Speech over the reply: what has happened since its onset."""

    heard_for: float  # speech since the onset, on the audio clock
    elapsed: float  # since the barge-in began
    reply_on: bool = True  # a reply is still going
    paused: bool = False  # the reply is silenced
    waved: bool = False  # a first look heard an "uh-huh": the reply goes on, lowered
    waved_on_pause: bool = False  # ... an unclear one, as the voice dropped


@dataclass(frozen=True)
class Onset:
    """Speech has just begun."""

    bot: str  # the conversation's state: listening, thinking, speaking or barged_in
    level_db: float  # the loudest of the windows the VAD decided on
    user_db: float | None  # the user's own level, learnt from their turns
    after_background: bool = False  # background speech ended less than BACKGROUND_HOLD ago
    reply_on: bool = True  # a reply is going


class Act(enum.Enum):
    # Speech begins
    BACKGROUND = "background"  # not meant for the bot: it neither interrupts nor is a turn
    DUCK = "duck"  # over the reply: lower it at once, judge it as it goes on
    MORE_SPEECH = "more_speech"  # more speech over the silenced reply: time it afresh
    # End of turn
    CUT = "cut"  # unbroken speech at max_turn_seconds: what was said so far is a turn
    PARTIAL = "partial"  # transcribe what was said so far, and show it
    TRANSCRIBE = "transcribe"  # (again) up to where the speech ended
    NOISE = "noise"  # nothing was said: forget the utterance
    DROP_BACKGROUND = "drop_background"  # background speech ended: no turn
    TAKE_TURN = "take_turn"  # the user is done: answer
    # Barge-in
    NEW_ONSET = "new_onset"  # the voice came back after an unclear "uh-huh": time it afresh
    SILENCE = "silence"  # pause the reply
    WAVE_ON = "wave_on"  # let it play on, lowered, while the words are judged in full
    WAVE_ON_WATCHING = "wave_on_watching"  # ... and silence it again if the voice comes back
    LOOK = "look"  # an early transcription of the words so far, at a larger ASR share
    CONFIRM = "confirm"  # a real interruption: stop the reply; the speech is the next turn
    RESUME = "resume"  # a cough or a backchannel: the reply goes on at full volume


def at_onset(onset: Onset, config: BargeInConfig) -> Act | None:
    """What speech that has just begun is. Over the bot only, speech much quieter than the
    user's (a television, people across the room) is background. While the bot listens,
    anything may be the user, who may have stepped back: ignoring them would be worse."""
    busy = onset.bot in ("speaking", "thinking", "barged_in")
    if busy and onset.user_db is not None:
        margin = config.background_db
        if onset.after_background:
            # More background is likely (a television talks on): then only speech near the
            # user's own level counts as the user.
            margin = min(margin, NEAR_USER_DB)
        if onset.level_db < onset.user_db - margin:
            return Act.BACKGROUND
    if onset.bot in ("speaking", "thinking") and onset.reply_on:
        return Act.DUCK
    if onset.bot == "barged_in":
        return Act.MORE_SPEECH
    return None


def takes_over(levels_db: list[float], user_db: float | None) -> bool:
    """During background speech: the user's voice, not a loud syllable of the background (the
    last few 20 ms frames all near the user's own level; one frame of a television can come
    within a few dB)."""
    recent = levels_db[-TAKEOVER_FRAMES:]
    return (
        user_db is not None
        and len(recent) == TAKEOVER_FRAMES
        and min(recent) >= user_db - NEAR_USER_DB
    )


def end_of_turn(now: Listening, policy: TurnPolicy) -> Act | None:
    """While the bot is not being interrupted: whether the user's turn is over."""
    if not now.has_speech:
        return None
    if now.background:
        return None if now.speaking else Act.DROP_BACKGROUND
    if now.speaking:
        if now.speech_for > policy.max_turn_seconds:
            return Act.CUT
        # Transcribe while the user talks: partials, and a head start at the end. Not too
        # often: a partial still running when the speech ends delays the answer.
        if (
            now.speech_for > PARTIAL_AFTER
            and now.may_look
            and not now.transcribing
            and now.untranscribed > PARTIAL_NEW_AUDIO
        ):
            return Act.PARTIAL
        return None
    if not now.ending or now.heard is None:
        return None
    # A transcription that started before the speech ended misses its tail: redo it.
    if not now.heard.complete:
        return Act.TRANSCRIBE
    if not words(now.heard.transcript.text):
        return Act.NOISE
    if now.silent_for < transcript_silence(now.heard.transcript, policy):
        return None
    if now.resuming:
        return None  # the user may be going on: the VAD will say at its next window
    return Act.TAKE_TURN


def judge_interruption(now: Listening, barge: Interruption, config: BargeInConfig) -> list[Act]:
    """While someone speaks over the reply: lower, silence, look, resume or stop it."""
    acts: list[Act] = []
    paused, waved, heard_for = barge.paused, barge.waved, barge.heard_for
    if now.speaking and barge.reply_on:
        if barge.waved_on_pause and not now.pausing:
            # The voice came back after what read as an "uh-huh": new speech over the reply.
            acts.append(Act.NEW_ONSET)
            waved, heard_for = False, 0.0
        if not (paused or waved) and heard_for >= config.pause_after_seconds:
            acts.append(Act.SILENCE)
            paused = True
        if paused and config.glimpse_after_seconds <= heard_for < GLIMPSE_UNTIL:
            acts.extend(_glimpse(now))
    if now.speaking:
        if barge.elapsed >= config.confirm_after_seconds:
            acts.append(Act.CONFIRM)  # long enough to be meant: take the floor
        return acts
    heard = now.heard
    if heard is None:
        if not now.transcribing:
            acts.append(Act.TRANSCRIBE)
        return acts
    said = heard.transcript
    if not heard.complete:
        # A speculative transcript from before the speech ended misses its tail: redo it, or
        # "Wait, stop" judged on "Wai-" sounds like a cough and the reply resumes.
        if paused and is_backchannel(said.text):
            acts.append(Act.WAVE_ON)  # lowered while the whole of it is judged
        acts.append(Act.TRANSCRIBE)
        return acts
    clear = said.clear(UNCLEAR)
    if (
        now.utterance_seconds >= config.min_speech_seconds
        and words(clear)
        and not is_backchannel(clear)
    ):
        acts.append(Act.CONFIRM)
    elif is_backchannel(clear) or now.silent_for >= RESUME_HOLD:
        # A clear "uh-huh" resumes at once; nothing clear (a cough, or an unclear first word
        # like "Wait,") only after a pause long enough to show nothing follows.
        acts.append(Act.RESUME)
    elif paused and is_backchannel(said.text):
        # No more than a doubtful backchannel ("uh-huh" as "ah"): play on, lowered, while the
        # pause shows whether more follows. No word at all stays silent: over WebRTC that is
        # how Whisper often hears "Wait," before the rest of an interruption.
        acts.append(Act.WAVE_ON)
    return acts


def _glimpse(now: Listening) -> list[Act]:
    """A first look at the words over the silenced reply, while they are still being said:
    an "uh-huh" lets the reply go on, still lowered, so that a backchannel costs a moment's
    silence rather than a second's. The words are judged again in full when they end; a
    real interruption that began like a backchannel ("yeah, but...") then stops the reply."""
    heard = None if now.transcribing or now.heard is None else now.heard.transcript
    if heard is not None and is_backchannel(heard.clear(UNCLEAR)):
        return [Act.WAVE_ON]
    if heard is not None and now.pausing and is_backchannel(heard.text):
        # The voice has just dropped and no more than a doubtful backchannel was heard
        # ("uh-huh" as "ah"): play on, lowered; if the voice comes back it is silenced
        # again. A doubtful other word ("way" for "Wait,"), or none, keeps it silent.
        return [Act.WAVE_ON_WATCHING]
    if not now.transcribing and now.may_look:
        # Not clear yet ("uh-" reads as "of"): look again at the longer stretch. Looks are
        # few (backchannels are short), so they may take a larger share of the ASR.
        return [Act.LOOK]
    return []
