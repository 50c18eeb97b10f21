"""`duplex check`: is an orchestrator serving? Its models, then one typed turn, spoken back.

What `helm test` runs in the cluster, and what anyone can run against a deployment: it asks
`/api/models` (with the API key), starts a conversation over `/ws` with a model that is
resident on some worker, types one question and checks that a reply comes back as audio:
whole 20 ms frames, as many as the reply says it sent, and not silence. Exit status 0 when
all of that holds, 1 otherwise, with the reason.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from duplex.audio.frame import FRAME_BYTES, FRAME_SECONDS
from duplex.clients.talk import auth_headers
from duplex.errors import DuplexError

QUESTION = "Hello there, can you hear me?"
# Quieter than this (RMS of int16 samples) is silence, not speech.
_SILENCE_RMS = 30.0


class CheckFailed(DuplexError):
    """The orchestrator did not do what a working deployment does."""


@dataclass
class CheckResult:
    models: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    frames: int = 0
    reply: str = ""
    voice_to_voice_ms: float | None = None
    rms: float = 0.0


async def check(
    url: str,
    api_key: str | None = None,
    *,
    model: str | None = None,
    text: str = QUESTION,
    timeout: float = 60.0,
) -> CheckResult:
    """Raises CheckFailed with what went wrong."""
    base = url.rstrip("/")
    result = CheckResult()
    headers = auth_headers(api_key)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(f"{base}/api/models", headers=headers) as resp:
            if resp.status != 200:
                raise CheckFailed(f"GET {base}/api/models answered HTTP {resp.status}")
            body = await resp.json()
        result.models = list(body.get("models") or [])
        if not result.models:
            raise CheckFailed("the orchestrator lists no models: no TTS worker answered it")
        resident = [m["model_id"] for m in result.models if m.get("resident")]
        result.model = model or (resident[0] if resident else "")
        if not result.model:
            raise CheckFailed(
                "no model is resident on any worker; make one resident first, e.g. "
                "kubectl apply -f manifests/samples/ttsmodel-piper-joe.yaml"
            )
        ws_url = "ws" + base.removeprefix("http") + "/ws"
        async with http.ws_connect(ws_url, headers=headers, max_msg_size=4 << 20) as ws:
            await _turn(ws, result, text, timeout)
    return result


async def _turn(
    ws: aiohttp.ClientWebSocketResponse, result: CheckResult, text: str, timeout: float
) -> None:
    start = {"type": "session.start", "sample_rate": 16000, "model": result.model}
    await ws.send_str(json.dumps(start))
    audio = bytearray()
    final: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(timeout):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    if len(msg.data) != FRAME_BYTES:
                        raise CheckFailed(f"a frame of {len(msg.data)} bytes, not {FRAME_BYTES}")
                    result.frames += 1
                    audio += msg.data
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                kind = event.get("type")
                if kind == "error":
                    raise CheckFailed(f"the orchestrator said {event.get('code')}: {event}")
                if kind == "session.started":
                    await ws.send_str(json.dumps({"type": "text", "text": text}))
                elif kind == "metrics" and result.voice_to_voice_ms is None:
                    result.voice_to_voice_ms = event.get("voice_to_voice_ms")
                elif kind == "reply" and event.get("final"):
                    final = event
                    break
    except TimeoutError:
        raise CheckFailed(f"no complete reply within {timeout:.0f} s") from None
    if final is None:
        raise CheckFailed("the connection closed before the reply was complete")
    result.reply = str(final.get("text", ""))
    if result.frames == 0:
        raise CheckFailed(f"the reply {result.reply!r} came back without audio")
    if final.get("frames") != result.frames:
        raise CheckFailed(f"the reply said {final.get('frames')} frames; {result.frames} came")
    samples = np.frombuffer(bytes(audio), dtype="<i2").astype(np.float64)
    result.rms = float(np.sqrt(np.mean(samples**2)))
    if result.rms < _SILENCE_RMS:
        raise CheckFailed(f"the reply's {result.frames} frames are silence (RMS {result.rms:.1f})")


def run(url: str, api_key: str | None, model: str | None, text: str, timeout: float) -> int:
    try:
        result = asyncio.run(check(url, api_key, model=model, text=text, timeout=timeout))
    except CheckFailed as exc:
        print(f"FAILED: {exc}")
        return 1
    names = ", ".join(
        m["model_id"] + (" (resident)" if m.get("resident") else "") for m in result.models
    )
    print(f"models: {names}")
    v2v = result.voice_to_voice_ms
    print(
        f"turn with {result.model}: {result.frames} frames, "
        f"{result.frames * FRAME_SECONDS:.2f} s of audio (RMS {result.rms:.0f}), "
        f"first audio after {v2v if v2v is not None else '?'} ms: {result.reply!r}"
    )
    print("OK")
    return 0
