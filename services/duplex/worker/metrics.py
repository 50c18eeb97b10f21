"""Prometheus metrics of one worker, in a registry of its own (no global state)."""

from __future__ import annotations

import threading
from collections import deque
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)
_LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.first_audio = Histogram(
            "duplex_worker_first_audio_seconds",
            "First text chunk of an utterance in → its first frame out",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_lateness = Histogram(
            "duplex_worker_frame_lateness_seconds",
            "Paced frames: actual send time − due time, late frames included",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.underruns = Counter(
            "duplex_worker_underruns",
            "Frames sent after their playout time (the listener heard a gap), by cause: "
            "starved = the text or synthesis did not keep up, send = the frame waited to go out",
            ["cause"],
            registry=r,
        )
        self.rtf = Histogram(
            "duplex_worker_rtf",
            "Synthesis time / audio duration per speakable unit",
            ["model"],
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2),
            registry=r,
        )
        self.pause_latency = Histogram(
            "duplex_worker_pause_seconds",
            "PAUSE received → last frame sent after it (0 when none followed)",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.active_sessions = Gauge(
            "duplex_worker_active_sessions", "Sessions started and not ended", registry=r
        )
        self.queue_depth = Gauge(
            "duplex_worker_queue_depth", "Frames synthesised but not yet sent", registry=r
        )
        self.frames = Counter("duplex_worker_frames", "Audio frames sent", ["model"], registry=r)
        self.loads = Counter(
            "duplex_worker_model_loads", "Model loads", ["model", "result"], registry=r
        )
        self.unloads = Counter(
            "duplex_worker_model_unloads", "Model unloads", ["model", "reason"], registry=r
        )
        self.load_seconds = Histogram(
            "duplex_worker_model_load_seconds",
            "Load + warm-up time",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.unload_seconds = Histogram(
            "duplex_worker_model_unload_seconds",
            "Unload time",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.resident = Gauge(
            "duplex_worker_model_resident", "1 while a model is resident", ["model"], registry=r
        )
        # Recent per-unit RTF, for the Redis record's rtf_p50 (a histogram has no cheap median).
        self._recent_rtf: deque[float] = deque(maxlen=200)
        self._lock = threading.Lock()

    def observe_rtf(self, model: str, rtf: float) -> None:
        self.rtf.labels(model).observe(rtf)
        with self._lock:
            self._recent_rtf.append(rtf)

    def rtf_p50(self) -> float:
        with self._lock:
            values = sorted(self._recent_rtf)
        return values[len(values) // 2] if values else 0.0


class MetricsServer:
    """The /metrics HTTP endpoint, served from a thread that `close()` stops and joins."""

    def __init__(self, metrics: WorkerMetrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
