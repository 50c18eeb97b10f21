"""The Prometheus endpoint reports what the worker did."""

from __future__ import annotations

import asyncio
import urllib.request

from duplex.rpc.client import TtsClient
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker


async def test_metrics_endpoint() -> None:
    config = WorkerConfig(
        name="w-metrics", port=0, metrics_port=0, default_model="tone", test_models=True
    )
    async with Worker(config) as worker, TtsClient(worker.address) as client:
        await client.start_session("m1", "tone", {"pacing": "realtime"})
        frames = [f async for f in client.say("m1", "count these words please")]
        assert frames[-1].is_final
        await client.end_session("m1")
        url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    text = body.decode()
    for name in (
        "duplex_worker_first_audio_seconds_count",
        "duplex_worker_frame_lateness_seconds_count",
        "duplex_worker_rtf_count",
        "duplex_worker_active_sessions",
        "duplex_worker_queue_depth",
        "duplex_worker_model_loads_total",
        "duplex_worker_model_load_seconds_count",
        "duplex_worker_pause_seconds_count",
    ):
        assert name in text, name
    assert 'duplex_worker_frames_total{model="tone"}' in text
    # Every paced frame is judged for lateness (the unit tests make frames late on purpose).
    sent = sum(1 for f in frames if f.frame is not None)
    assert f"duplex_worker_frame_lateness_seconds_count {float(sent)}" in text
    assert 'duplex_worker_model_loads_total{model="tone",result="ok"} 1.0' in text
