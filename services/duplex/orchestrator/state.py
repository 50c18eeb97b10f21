"""The session state machine, as an explicit transition table.

LISTENING → THINKING → SPEAKING → (LISTENING when the reply ends)
SPEAKING → BARGED_IN → SPEAKING (false alarm: resume) | LISTENING (real interruption)
Every transition is an event the client sees; any other transition is a bug and raises.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from duplex.errors import DuplexError


class State(enum.StrEnum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    BARGED_IN = "barged_in"


class InvalidTransition(DuplexError):
    code = "invalid_transition"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.LISTENING: frozenset({State.THINKING}),
    # A reply may turn out empty (THINKING → LISTENING) or be cut before its first frame.
    State.THINKING: frozenset({State.SPEAKING, State.LISTENING, State.BARGED_IN}),
    State.SPEAKING: frozenset({State.LISTENING, State.BARGED_IN}),
    State.BARGED_IN: frozenset({State.SPEAKING, State.LISTENING, State.THINKING}),
}


class StateMachine:
    def __init__(self, on_change: Callable[[State, State], None]) -> None:
        self.state = State.LISTENING
        self._on_change = on_change

    def to(self, new: State) -> None:
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"invalid transition {self.state} → {new}")
        old, self.state = self.state, new
        self._on_change(old, new)
