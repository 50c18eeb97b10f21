"""End of turn: how long a silence must last before the bot takes the floor.

A fixed silence timeout either talks over people who pause mid-sentence ("a table for …
four people") or leaves a long gap after a plain question. The words so far decide instead:
a finished question or sentence answers after a short silence; a clause that ends on a
conjunction, preposition, article or filler waits much longer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from duplex.orchestrator.asr import Transcript

_WORD = re.compile(r"[a-z']+")
# Words after which an English utterance is almost never finished.
_CONTINUATIONS = frozenset(
    (
        "and or but so because if when while although though since unless until than that"
        " which who whose whom where whereas to for of in on at by with from about into onto"
        " over under after before between through during without like as the a an my your"
        " his her their our its this these those some any no every each more most very really"
        " just um uh er erm hmm like i'm i'd i'll we're you're it's there's is are was were be"
        " been being have has had do does did can could would should will shall may might must"
        " not let's then also plus maybe"
    ).split()
)
_BACKCHANNELS = frozenset(
    (
        "uh-huh uh huh mhm mm mmm hmm hm yeah yep yes ok okay right sure aha ah oh uhuh"
        " i see got it cool nice wow alright m"
    ).split()
)
_QUESTION_START = frozenset(
    "what who whom whose when where why how which is are do does did can could would will"
    " should shall may".split()
)


@dataclass(frozen=True)
class TurnPolicy:
    min_silence: float = 0.3  # after a finished sentence or question
    default_silence: float = 0.7  # when the words give no clear sign
    incomplete_silence: float = 2.2  # after "… for", "… and", "um"
    max_turn_seconds: float = 30.0


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("-", " "))


def completeness(text: str) -> float:
    """0 (clearly unfinished) … 1 (clearly finished) for the transcript so far."""
    ws = words(text)
    if not ws:
        return 0.0
    stripped = text.rstrip()
    if stripped.endswith(("...", "…", ",", "-", "—")):
        return 0.1
    # Whisper's question mark is reliable ("What can you do?" ends on an auxiliary, yet ends);
    # its full stop is not: it puts one after "a table for" too.
    if stripped.endswith("?"):
        return 1.0
    if ws[-1] in _CONTINUATIONS:
        return 0.1
    if ws[0] in _QUESTION_START and len(ws) >= 3:
        return 1.0
    if stripped.endswith((".", "!")):
        return 0.9 if len(ws) >= 2 else 0.6
    return 0.5


def required_silence(text: str, policy: TurnPolicy = TurnPolicy()) -> float:
    score = completeness(text)
    if score >= 0.9:
        return policy.min_silence
    if score <= 0.2:
        return policy.incomplete_silence
    return policy.default_silence


# Whisper's confidence below which a word it ends on may be one it made up.
DOUBTFUL = 0.8


def transcript_silence(transcript: Transcript, policy: TurnPolicy = TurnPolicy()) -> float:
    """`required_silence` for what Whisper heard, distrusting how it closes an open clause.

    When the audio stops inside a clause ("a table for"), Whisper tends to finish it with a
    word that was never said ("… for it."), at lower confidence than the words before. So
    if dropping a doubtful last word leaves a clause that is clearly unfinished, the turn
    waits as for that clause; a doubtful word anywhere else changes nothing.
    """
    settled = transcript.settled(DOUBTFUL)
    if settled != transcript.text and completeness(settled) <= 0.2:
        return required_silence(settled, policy)
    return required_silence(transcript.text, policy)


def is_backchannel(text: str) -> bool:
    """Short acknowledgements that should not interrupt the bot."""
    ws = words(text)
    return bool(ws) and len(ws) <= 3 and all(w in _BACKCHANNELS for w in ws)
