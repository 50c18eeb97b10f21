"""The page's latency panel shows where the time of a turn went, as the turn's trace does.

Headless Chromium with a fake microphone asks a question of an orchestrator that exports its
traces to a collector in this test (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, the full URL).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.server import Orchestrator
from duplex.orchestrator.tracing import STAGES, Tracing
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker
from tests.e2e.test_browser import question_wav
from tests.otlp import Collector

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LABELS = ["End of turn", "Responder → first token", "TTS → first frame", "Out to the transport"]


async def test_the_latency_panel_breaks_the_turn_down_and_names_its_trace(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    collector = Collector()
    endpoint = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.url}/v1/traces"}
    try:
        async with Worker(
            WorkerConfig(name="panel-worker", port=0, default_model="piper-joe")
        ) as w:
            wav = tmp_path / "question.wav"
            await question_wav(w, wav)
            config = OrchestratorConfig(port=0, workers=[w.address])
            async with (
                Orchestrator(config, tracing=Tracing.from_environment(endpoint)) as orch,
                async_playwright() as pw,
            ):
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    args=[
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--no-first-run",
                        "--use-fake-ui-for-media-stream",
                        "--use-fake-device-for-media-stream",
                        f"--use-file-for-fake-audio-capture={wav}",
                        "--autoplay-policy=no-user-gesture-required",
                    ],
                )
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 800})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(f"http://127.0.0.1:{orch.port}/?autostart=1&transport=ws")
                    await page.wait_for_function(
                        "() => window.duplex && window.duplex.turn && window.duplex.turn.trace_id",
                        timeout=40_000,
                    )
                    turn = await page.evaluate("window.duplex.turn")
                    metrics = await page.evaluate("window.duplex.metrics")
                    panel = page.locator("#turn")
                    assert await panel.is_visible()
                    assert await page.locator("#turn .turn-bar .seg").count() == len(STAGES)
                    rows = await page.locator("#turn dt").all_inner_texts()
                    assert [r.strip() for r in rows] == [*LABELS, "ASR (within the end of turn)"]
                    shown = await page.locator("#turn .turn-trace").inner_text()
                    assert shown == f"trace {turn['trace_id']}"
                    await page.locator(".panel.latency").screenshot(
                        path=str(tmp_path / "panel.png")
                    )
                    assert errors == []
                finally:
                    await browser.close()
        # The bar's parts add up to the voice-to-voice time, and the trace it names arrived.
        parts = sum(turn[f"{key}_ms"] for key, _, _ in STAGES)
        assert parts == pytest.approx(metrics["voice_to_voice_ms"], abs=0.5)
        names = {"turn", "asr", *(name for _, name, _ in STAGES)}
        spans = collector.trace(turn["trace_id"], names, timeout=10)
        assert names <= {s.name for s in spans}
    finally:
        collector.close()
