"""Where the time of one turn went: its timeline, and one OpenTelemetry trace per turn.

A `TurnTrace` notes the moments of a turn as they happen (a float each): the end of the user's
speech, the transcription, the decision to answer, the responder's first token, the worker's
first frame, the first frame handed to the transport, and every barge-in into the reply. The
page and `duplex talk` get the breakdown in the turn's `metrics` event, and the log one line
per turn.

When an OTLP endpoint is configured (the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `Tracing` exports every turn as a trace over OTLP/HTTP:
a root span `turn` from the end of the user's speech to the end of the reply, with a child span
per stage. Otherwise the OpenTelemetry SDK is never imported (it is the `otel` extra).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from duplex.errors import DuplexError
from duplex.orchestrator.events import TurnMetrics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVICE_NAME = "duplex-orchestrator"
# The stages of a turn, in order: (key in the metrics event, span name, what it measures).
STAGES = (
    ("end_of_turn", "vad.end_of_turn", "end of speech → the turn is taken"),
    ("responder", "responder.first_token", "→ the responder's first token"),
    ("tts", "tts.first_frame", "→ the worker's first frame"),
    ("transport", "transport.first_frame", "→ the first frame handed to the transport"),
)


class Tracing:
    """Where turns' traces go: an OTLP/HTTP exporter, or nowhere (the default)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = (
            provider.get_tracer("duplex.orchestrator") if provider is not None else None
        )

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Tracing:
        """On when an OTLP endpoint is set; the exporter reads the rest of the standard
        OTEL_* variables (headers, timeout, certificates, service name, sampler) itself."""
        endpoint = next((name for name in ENDPOINT_VARIABLES if env.get(name)), None)
        if endpoint is None or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return cls()
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise DuplexError(
                f"{endpoint} is set, and exporting traces needs the OpenTelemetry SDK: "
                f"pip install 'duplex-voice[otel]' ({exc})"
            ) from None
        named = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
        provider = TracerProvider(resource=Resource.create(named))
        # The specification's rule: the traces variable is the whole URL, the general one a
        # base to which the signal's path is added.
        url = (
            env.get(ENDPOINT_VARIABLES[0]) or env[ENDPOINT_VARIABLES[1]].rstrip("/") + "/v1/traces"
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        log.info("exporting a trace of every turn to %s", url)
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def turn(
        self, session_id: str, speech_ended: float, asr: tuple[float, float] | None = None
    ) -> TurnTrace:
        """A turn taken now; its user stopped speaking at `speech_ended` (monotonic). `asr`:
        when its transcription started and ended, for a spoken turn (None: typed)."""
        return TurnTrace(self._tracer, session_id, speech_ended, asr)

    def close(self) -> None:
        """Send what is still queued, then stop (blocks: call it from a thread)."""
        if self._provider is not None:
            self._provider.shutdown()


@dataclass
class _BargeIn:
    onset: float
    paused: float
    outcome: str | None = None


class TurnTrace:
    """The moments of one turn (monotonic seconds) and, while exported, its root span."""

    def __init__(
        self,
        tracer: Tracer | None,
        session_id: str,
        speech_ended: float,
        asr: tuple[float, float] | None,
    ) -> None:
        self.session_id = session_id
        self.speech_ended = speech_ended
        self.taken = time.monotonic()
        self.asr = asr
        self.first_token_at: float | None = None
        self.first_tts_frame_at: float | None = None
        self.first_out_at: float | None = None
        self._barge_ins: list[_BargeIn] = []
        self._ended = False
        self._tracer = tracer
        self._root: Span | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None  # the root's: what calls for this turn descend from
        if tracer is not None:
            # Monotonic moments become wall-clock ones by the offset between the clocks now.
            self._offset_ns = time.time_ns() - time.monotonic_ns()
            # A speculative transcription may have started a moment before the speech ended.
            begun = min(speech_ended, asr[0]) if asr is not None else speech_ended
            self._root = tracer.start_span(
                "turn",
                start_time=self._ns(begun),
                attributes={
                    "duplex.session.id": session_id,
                    "duplex.turn.input": "speech" if asr is not None else "text",
                },
            )
            context = self._root.get_span_context()
            self.trace_id = format(context.trace_id, "032x")
            self.span_id = format(context.span_id, "016x")

    # -- moments, noted by the session and the reply (each once; later calls are no-ops) --

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def first_tts_frame(self) -> None:
        if self.first_tts_frame_at is None:
            self.first_tts_frame_at = time.monotonic()

    def first_frame_out(self, at: float) -> None:
        if self.first_out_at is None:
            self.first_out_at = at

    def barge_in(self, onset: float, paused: float) -> None:
        """Speech over the reply, from its onset to the reply's pause."""
        self._barge_ins.append(_BargeIn(onset, paused))

    def barge_in_judged(self, outcome: str) -> None:
        """What the last barge-in turned out to be: confirmed or resumed."""
        if self._barge_ins and self._barge_ins[-1].outcome is None:
            self._barge_ins[-1].outcome = outcome

    # -- reading it ----------------------------------------------------------------------

    @property
    def barge_ins(self) -> list[tuple[float, float, str | None]]:
        """(onset, paused, outcome) of each barge-in into the reply, in order."""
        return [(b.onset, b.paused, b.outcome) for b in self._barge_ins]

    @property
    def voice_to_voice(self) -> float | None:
        """End of speech → first reply frame to the transport, in seconds."""
        return None if self.first_out_at is None else self.first_out_at - self.speech_ended

    def stages(self) -> Iterator[tuple[str, str, float, float]]:
        """(key, span name, start, end) of each stage reached, back to back: their sum is
        the voice-to-voice time. A typed turn has no end-of-turn stage."""
        moments = (self.taken, self.first_token_at, self.first_tts_frame_at, self.first_out_at)
        start = self.speech_ended
        for (key, name, _), end in zip(STAGES, moments, strict=True):
            if end is None:
                return
            if key != "end_of_turn" or self.asr is not None:
                yield key, name, start, max(start, end)
            start = max(start, end)

    def breakdown(self) -> dict[str, Any]:
        """The stages in milliseconds (and the transcription, which overlaps end of turn)."""
        turn: dict[str, Any] = {"input": "speech" if self.asr is not None else "text"}
        for key, _, start, end in self.stages():
            turn[f"{key}_ms"] = _ms(end - start)
        if self.asr is not None:
            turn["asr_ms"] = _ms(self.asr[1] - self.asr[0])
        if self.trace_id is not None:
            turn["trace_id"] = self.trace_id
        return turn

    def metrics(self) -> TurnMetrics:
        """The client's `metrics` event, once the first frame is out."""
        v2v = self.voice_to_voice
        return TurnMetrics(None if v2v is None else _ms(v2v), self.breakdown())

    def metrics_event(self) -> dict[str, Any]:
        return self.metrics().to_json()

    # -- the end -------------------------------------------------------------------------

    def end(self, outcome: str) -> None:
        """The reply is over (complete, interrupted, failed or cancelled): log the turn, and
        export its trace."""
        if self._ended:
            return
        self._ended = True
        now = time.monotonic()
        stages = list(self.stages())
        if stages:
            parts = ", ".join(
                f"{key.replace('_', ' ')} {_ms(e - s):.0f}" for key, _, s, e in stages
            )
            v2v = self.voice_to_voice
            head = f"voice→voice {v2v * 1000:.0f} ms" if v2v is not None else "no audio"
            log.info("turn %s: %s (%s ms)", outcome, head, parts)
        if self._root is not None:
            self._export(stages, outcome, now)

    def _export(
        self, stages: list[tuple[str, str, float, float]], outcome: str, now: float
    ) -> None:
        from opentelemetry import trace

        assert self._tracer is not None and self._root is not None
        parent = trace.set_span_in_context(self._root)
        spans: list[tuple[str, float, float, dict[str, Any]]] = [
            (name, start, end, {}) for _, name, start, end in stages
        ]
        if self.asr is not None:
            spans.append(("asr", self.asr[0], self.asr[1], {}))
        for barge in self._barge_ins:
            outcome_of = {"duplex.barge_in.outcome": barge.outcome or "undecided"}
            spans.append(("barge_in", barge.onset, barge.paused, outcome_of))
        for name, start, end, attributes in spans:
            span = self._tracer.start_span(
                name, context=parent, start_time=self._ns(start), attributes=attributes
            )
            span.end(end_time=self._ns(max(start, end)))
        self._root.set_attribute("duplex.turn.outcome", outcome)
        if (v2v := self.voice_to_voice) is not None:
            self._root.set_attribute("duplex.voice_to_voice_ms", _ms(v2v))
        self._root.end(end_time=self._ns(now))

    def _ns(self, moment: float) -> int:
        return int(moment * 1e9) + self._offset_ns


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
