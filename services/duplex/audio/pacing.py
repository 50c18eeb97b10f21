"""Real-time pacing of 20 ms frames against a listener's buffer, and how late each frame went."""

from __future__ import annotations

from dataclasses import dataclass

from duplex.audio.frame import FRAME_SECONDS

_EPSILON = 1e-6  # sums of 20 ms steps drift by rounding; a microsecond is no gap


@dataclass(frozen=True, slots=True)
class Lateness:
    lateness: float  # seconds after its due time that the frame went out (>= 0)
    underrun: bool  # it went out after it should have started playing: the listener heard a gap


class FramePacer:
    """When each frame of a real-time stream is due on the wire, and how late it went.

    The listener plays frame k at `start + k × 20 ms`; it is due on the wire `lead` before
    that, and never before the clock started (so the first `lead` of audio goes out at once,
    filling the listener's buffer). A frame sent after its playout time has emptied that
    buffer (an underrun): the clock restarts there, so the stream does not burst to catch up.
    """

    def __init__(self, lead_seconds: float) -> None:
        self._lead = lead_seconds
        self._start: float | None = None  # when the clock (re)started
        self._next_play = 0.0  # playout time of the next frame

    def restart(self) -> None:
        self._start = None

    def due(self, now: float) -> float:
        """When the next frame should go out; `now` for the first frame of a clock."""
        if self._start is None:
            return now
        return max(self._start, self._next_play - self._lead)

    @property
    def played_out_at(self) -> float:
        """When the listener finishes playing what was sent (0 before the first frame)."""
        return self._next_play

    def sent(self, at: float) -> Lateness:
        if self._start is None:  # the first frame starts the clock: it cannot be late
            self._start = self._next_play = at
        due = self.due(at)
        underrun = at > self._next_play + _EPSILON
        if underrun:
            self._start = self._next_play = at
        self._next_play += FRAME_SECONDS
        return Lateness(max(0.0, at - due), underrun)
