"""Prometheus metrics of the orchestrator, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BARGE_BUCKETS = (0.02, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)


class OrchestratorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.voice_to_voice = Histogram(
            "duplex_voice_to_voice_seconds",
            "End of user speech → first reply audio sent to the client",
            buckets=_BUCKETS,
            registry=r,
        )
        self.asr = Histogram(
            "duplex_asr_seconds", "Transcription time per utterance", buckets=_BUCKETS, registry=r
        )
        self.barge_in = Histogram(
            "duplex_barge_in_seconds",
            "Arrival of the interrupting speech's onset (the VAD's onset) → reply paused",
            buckets=_BARGE_BUCKETS,
            registry=r,
        )
        self.barge_in_last_frame = Histogram(
            "duplex_barge_in_last_frame_seconds",
            "Arrival of the interrupting speech's onset → last reply frame handed to the transport",
            buckets=_BARGE_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter(
            "duplex_barge_ins", "Interruptions by outcome", ["outcome"], registry=r
        )
        self.sessions = Gauge("duplex_sessions", "Open conversation sessions", registry=r)
        self.sessions_total = Counter("duplex_sessions_started", "Sessions started", registry=r)
        self.turns = Counter("duplex_turns", "User turns answered", registry=r)
        self.errors = Counter(
            "duplex_session_errors", "Errors sent to clients", ["code"], registry=r
        )
