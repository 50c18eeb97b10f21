"""The demo page in headless Chromium with a fake microphone playing a spoken question."""

from __future__ import annotations

import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.server import Orchestrator
from duplex.rpc.client import TtsClient
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
async def demo() -> AsyncIterator[tuple[Worker, Orchestrator]]:
    async with Worker(WorkerConfig(name="browser-worker", port=0, default_model="piper-joe")) as w:
        async with Orchestrator(OrchestratorConfig(port=0, workers=[w.address])) as orch:
            yield w, orch


async def question_wav(worker: Worker, path: Path) -> None:
    """A 48 kHz WAV: the question, then silence (Chromium loops the file)."""
    async with TtsClient(worker.address) as client:
        await client.start_session("browser-q", "piper-joe", {"pacing": "none"})
        frames = [f.frame async for f in client.say("browser-q", "What is your name?") if f.frame]
        await client.end_session("browser-q")
    pcm = np.concatenate([f.samples() for f in frames])
    pcm = np.concatenate([np.zeros(48000, np.int16), pcm, np.zeros(48000 * 12, np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())


async def test_page_completes_a_spoken_turn(
    demo: tuple[Worker, Orchestrator], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    worker, orch = demo
    wav = tmp_path / "question.wav"
    await question_wav(worker, wav)
    async with async_playwright() as pw:
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
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{orch.port}/?autostart=1")
            await page.wait_for_function(
                """() => window.duplex && window.duplex.log.some(
                       e => e.type === 'transcript' && e.final)""",
                timeout=30_000,
            )
            await page.wait_for_function("() => window.duplex.framesPlayed > 25", timeout=30_000)
            log = await page.evaluate("window.duplex.log")
            finals = [e["text"].lower() for e in log if e["type"] == "transcript" and e["final"]]
            assert "name" in finals[0]
            assert any(e["type"] == "reply" and "duplex" in e["text"].lower() for e in log)
            states = [e["state"] for e in log if e["type"] == "state"]
            assert "speaking" in states
            await page.screenshot(path=str(tmp_path / "demo.png"))
            assert errors == []
        finally:
            await browser.close()
