"""The demo page in headless Chromium with a fake microphone playing a spoken question."""

from __future__ import annotations

import asyncio
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duplex.livekit_server import LiveKitServer
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.livekit_tokens import LiveKitConfig
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
    """A 48 kHz WAV: silence, the question, then silence (Chromium loops the file).

    The lead-in leaves time to join: over WebRTC the agent hears the microphone only once it
    is dispatched, in the room and subscribed, which can take a second or two.
    """
    async with TtsClient(worker.address) as client:
        await client.start_session("browser-q", "piper-joe", {"pacing": "none"})
        frames = [f.frame async for f in client.say("browser-q", "What is your name?") if f.frame]
        await client.end_session("browser-q")
    pcm = np.concatenate([f.samples() for f in frames])
    pcm = np.concatenate([np.zeros(48000 * 3, np.int16), pcm, np.zeros(48000 * 12, np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())


async def test_page_completes_a_spoken_turn(
    demo: tuple[Worker, Orchestrator], tmp_path: Path
) -> None:
    worker, orch = demo
    log = await spoken_turn(worker, orch.port, tmp_path)
    # No LiveKit on this orchestrator: its token endpoint says 404 and the page uses /ws.
    assert log["transport"] == "websocket"


async def test_page_completes_a_spoken_turn_over_webrtc(
    demo: tuple[Worker, Orchestrator], livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    worker, _ = demo
    livekit = LiveKitConfig(
        url=livekit_server.url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
    )
    config = OrchestratorConfig(port=0, workers=[worker.address], livekit=livekit)
    async with Orchestrator(config) as orch:
        assert orch.agent is not None
        async with asyncio.timeout(30):
            await orch.agent.registered.wait()
        log = await spoken_turn(worker, orch.port, tmp_path)
        assert log["transport"] == "livekit"
        # The page asked for the smallest playout delay, and this Chromium took it.
        assert log["jitter_buffer_target"] == 0
        assert orch.agent.served >= 1


async def test_page_falls_back_to_the_websocket_when_livekit_is_unreachable(
    demo: tuple[Worker, Orchestrator], tmp_path: Path
) -> None:
    worker, _ = demo
    from duplex.ports import free_ports

    (port,) = free_ports(1)  # nothing listens there
    livekit = LiveKitConfig(
        url=f"ws://127.0.0.1:{port}", api_key="duplex", api_secret="s" * 48, agent=False
    )
    config = OrchestratorConfig(port=0, workers=[worker.address], livekit=livekit)
    async with Orchestrator(config) as orch:
        log = await spoken_turn(worker, orch.port, tmp_path)
    assert log["transport"] == "websocket"


async def spoken_turn(worker: Worker, port: int, tmp_path: Path) -> dict[str, Any]:
    """Load the page with a fake microphone asking a question; check the turn completes."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import async_playwright

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
            console: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            await page.goto(f"http://127.0.0.1:{port}/?autostart=1")
            try:
                await page.wait_for_function(
                    """() => window.duplex && window.duplex.log.some(e => e.type === 'transcript'
                           && e.final && e.text.toLowerCase().includes('what is your name'))""",
                    timeout=40_000,
                )
                await page.wait_for_function(
                    "() => window.duplex.framesPlayed > 25", timeout=30_000
                )
                # Over WebRTC, events (data channel) and audio (media) travel apart.
                await page.wait_for_function(
                    """() => window.duplex.log.some(
                           e => e.type === 'reply' && e.text.toLowerCase().includes('duplex'))""",
                    timeout=10_000,
                )
            except PlaywrightTimeout:
                log = await page.evaluate("window.duplex && window.duplex.log")
                seen = await page.evaluate(
                    """() => ({page: document.getElementById('log').innerText,
                               state: window.duplex.state,
                               received: window.duplex.framesReceived,
                               played: window.duplex.framesPlayed,
                               elements: [...document.querySelectorAll('audio')].map(
                                 a => ({paused: a.paused, muted: a.muted, volume: a.volume,
                                        track: a.srcObject && a.srcObject.getAudioTracks()
                                          .map(t => [t.readyState, t.muted, t.enabled])}))})"""
                )
                stats = await page.evaluate(
                    """async () => { const r = window.duplex.room; const out = [];
                    if (!r) return out;
                    for (const p of r.remoteParticipants.values())
                      for (const pub of p.trackPublications.values())
                        if (pub.track) { const st = await pub.track.getRTCStatsReport();
                          st.forEach(v => { if (v.type === 'inbound-rtp') out.push({
                            pk: v.packetsReceived, lvl: v.audioLevel, e: v.totalAudioEnergy,
                            conceal: v.concealedSamples, n: v.totalSamplesReceived}); }); }
                    return out; }"""
                )
                tail = console[-30:]
                raise AssertionError(f"{seen} {stats}\nlog: {log}\nconsole: {tail}") from None
            log = await page.evaluate("window.duplex.log")
            sent = await page.evaluate("window.duplex.sent")
            await check_against_schema(port, log, sent)
            finals = [e["text"].lower() for e in log if e["type"] == "transcript" and e["final"]]
            assert any("what is your name" in f for f in finals), finals
            assert any(e["type"] == "reply" and "duplex" in e["text"].lower() for e in log)
            states = [e["state"] for e in log if e["type"] == "state"]
            assert "speaking" in states
            transport = await page.evaluate("window.duplex.transport")
            jitter = await page.evaluate("window.duplex.jitterBufferTarget")
            await page.screenshot(path=str(tmp_path / f"demo-{transport}.png"))
            assert errors == []
            return {"transport": transport, "events": log, "jitter_buffer_target": jitter}
        finally:
            await browser.close()


async def check_against_schema(
    port: int, read: list[dict[str, Any]], sent: list[dict[str, Any]]
) -> None:
    """Everything the page read and sent is in the protocol the orchestrator serves."""
    import aiohttp
    import jsonschema

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/api/schema") as response:
            schema = await response.json()
    assert read  # over /ws the page sends session.start too; in a room it need not
    for side, messages in (("server", read), ("client", sent)):
        validator = jsonschema.Draft202012Validator({**schema, "$ref": f"#/{side}"})
        for message in messages:
            errors = [e.message for e in validator.iter_errors(message)]
            assert not errors, (side, message, errors)


async def test_page_reconnects_after_the_orchestrator_restarts(
    demo: tuple[Worker, Orchestrator],
) -> None:
    from playwright.async_api import async_playwright

    from duplex.ports import free_ports

    worker, _ = demo
    (port,) = free_ports(1)
    config = OrchestratorConfig(port=port, workers=[worker.address])
    started = "() => window.duplex && window.duplex.log.filter(e => e.type === 'session.started')"
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
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            page = await browser.new_page()
            async with Orchestrator(config):
                await page.goto(f"http://127.0.0.1:{port}/?autostart=1&transport=ws")
                await page.wait_for_function(f"({started})().length === 1", timeout=30_000)
            # That orchestrator said goodbye (1001) and is gone; a new one takes its place.
            log = await page.evaluate("window.duplex.log")
            assert any(e["type"] == "session.ended" for e in log), log
            async with Orchestrator(config):
                await page.wait_for_function(f"({started})().length === 2", timeout=30_000)
        finally:
            await browser.close()
