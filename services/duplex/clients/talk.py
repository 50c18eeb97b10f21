"""`duplex talk`: a WebSocket client for the terminal.

With `--input q.wav --output a.wav` it speaks a WAV file into the conversation (in real time,
then silence, as a microphone would), records the reply and exits when the bot has finished.
Without them it uses the microphone and speaker (`pip install sounddevice`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from duplex.audio.frame import PcmFrame
from duplex.audio.resample import StreamResampler
from duplex.audio.wav import read_wav, write_wav

SEND_RATE = 16_000
SEND_SAMPLES = SEND_RATE // 50


@dataclass
class TalkResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: list[PcmFrame] = field(default_factory=list)
    first_frame_at: float | None = None  # monotonic
    speech_ended_at: float | None = None

    def transcript(self) -> str:
        finals = [e["text"] for e in self.events if e["type"] == "transcript" and e.get("final")]
        return " ".join(finals)

    def reply(self) -> str:
        replies = [e["text"] for e in self.events if e["type"] == "reply"]
        return replies[-1] if replies else ""


def wav_frames(path: Path) -> list[bytes]:
    """The WAV as 20 ms, 16 kHz int16 messages."""
    samples, rate = read_wav(path)
    audio = samples.astype(np.float32) / np.float32(32768)
    resampler = StreamResampler(rate, SEND_RATE)
    pcm = np.concatenate([resampler.process(audio), resampler.flush()])
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % SEND_SAMPLES, np.float32)])
    ints = np.clip(pcm * 32768, -32768, 32767).astype("<i2")
    return [ints[i : i + SEND_SAMPLES].tobytes() for i in range(0, ints.size, SEND_SAMPLES)]


async def talk_file(
    url: str,
    input_wav: Path,
    *,
    model: str | None = None,
    voice: str | None = None,
    timeout: float = 60.0,
    verbose: bool = True,
    api_key: str | None = None,
) -> TalkResult:
    result = TalkResult()
    frames = wav_frames(input_wav)
    silence = bytes(SEND_SAMPLES * 2)
    done = asyncio.Event()
    spoke = asyncio.Event()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, max_msg_size=4 << 20, headers=auth_headers(api_key)) as ws,
    ):
        start: dict[str, Any] = {"type": "session.start", "sample_rate": SEND_RATE}
        if model:
            start["model"] = model
        if voice:
            start["voice"] = voice
        await ws.send_str(json.dumps(start))

        async def send() -> None:
            t0 = time.monotonic()
            n = 0
            # A microphone never stops: after the question, silence until the reply is over.
            while not done.is_set():
                pcm = frames[n] if n < len(frames) else silence
                if n == len(frames):
                    result.speech_ended_at = time.monotonic()
                await ws.send_bytes(pcm)
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))

        async def receive() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    if result.first_frame_at is None:
                        result.first_frame_at = time.monotonic()
                    result.frames.append(PcmFrame(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    result.events.append(event)
                    if verbose:
                        _print_event(event)
                    if event["type"] == "state" and event["state"] == "speaking":
                        spoke.set()
                    if event["type"] == "reply" and event.get("final"):
                        done.set()
                        return

        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(send())
            receiver = tg.create_task(receive())
            try:
                async with asyncio.timeout(timeout):
                    await done.wait()
            except TimeoutError:
                if verbose:
                    print("(no complete reply before the timeout)", file=sys.stderr)
            finally:
                done.set()
                receiver.cancel()
                await sender
    return result


def _print_event(event: dict[str, Any]) -> None:
    kind = event["type"]
    if kind == "transcript":
        print(f"{'you' if event.get('final') else '...'}: {event['text']}")
    elif kind == "reply" and event.get("final"):
        print(f"bot: {event['text']}")
    elif kind == "state":
        print(f"[{event['state']}]")
    elif kind == "metrics" and isinstance(event.get("turn"), dict):
        print(turn_line(event))
    elif kind in ("error", "metrics", "barge_in", "session.started"):
        print(f"[{kind}] " + ", ".join(f"{k}={v}" for k, v in event.items() if k != "type"))


# The stages of a turn's breakdown (the server's `metrics` event), in the order they happen.
_STAGES = (
    ("end_of_turn_ms", "end of turn"),
    ("responder_ms", "responder"),
    ("tts_ms", "TTS"),
    ("transport_ms", "transport"),
)


def turn_line(event: dict[str, Any]) -> str:
    """Where the time of a turn went: `[turn] 412 ms = end of turn 250 + responder 30 + ...`,
    the transcription (part of the end of turn) and the trace id when there is one."""
    turn = event["turn"]
    parts = [f"{label} {turn[key]:.0f}" for key, label in _STAGES if key in turn]
    v2v = event.get("voice_to_voice_ms")
    line = f"[turn] {v2v:.0f} ms = " if isinstance(v2v, int | float) else "[turn] "
    line += " + ".join(parts)
    if "asr_ms" in turn:
        line += f" (ASR {turn['asr_ms']:.0f} within the end of turn)"
    if "trace_id" in turn:
        line += f" · trace {turn['trace_id']}"
    return line


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header an orchestrator with API keys asks for (the key, or a session token)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def talk_live(url: str, model: str | None, voice: str | None, api_key: str | None) -> None:
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise SystemExit(
            f"microphone mode needs sounddevice and a sound device ({exc}); "
            "pip install sounddevice, or use --input q.wav --output a.wav"
        ) from None
    loop = asyncio.get_running_loop()
    mic: asyncio.Queue[bytes] = asyncio.Queue()
    speaker: asyncio.Queue[bytes] = asyncio.Queue()

    def on_mic(indata: Any, frames: int, t: Any, status: Any) -> None:
        loop.call_soon_threadsafe(mic.put_nowait, bytes(indata))

    pending = bytearray()

    def on_speaker(outdata: Any, frames: int, t: Any, status: Any) -> None:
        while len(pending) < frames * 2 and not speaker.empty():
            pending.extend(speaker.get_nowait())
        n = min(len(pending), frames * 2)
        outdata[:n] = pending[:n]
        outdata[n:] = b"\x00" * (frames * 2 - n)
        del pending[:n]

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers=auth_headers(api_key)) as ws,
    ):
        start: dict[str, Any] = {"type": "session.start", "sample_rate": SEND_RATE}
        if model:
            start["model"] = model
        if voice:
            start["voice"] = voice
        await ws.send_str(json.dumps(start))
        with (
            sd.RawInputStream(SEND_RATE, SEND_SAMPLES, "int16", 1, callback=on_mic),
            sd.RawOutputStream(48000, 960, "int16", 1, callback=on_speaker),
        ):

            async def send() -> None:
                while True:
                    await ws.send_bytes(await mic.get())

            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(send())
                try:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            speaker.put_nowait(msg.data)
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            event = json.loads(msg.data)
                            _print_event(event)
                            if event["type"] == "playback" and event["action"] == "flush":
                                while not speaker.empty():
                                    speaker.get_nowait()
                                pending.clear()
                finally:
                    sender.cancel()


def run(
    url: str,
    input_wav: Path | None,
    output_wav: Path | None,
    model: str | None,
    voice: str | None,
    timeout: float,
    api_key: str | None = None,
) -> int:
    if input_wav is None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(talk_live(url, model, voice, api_key))
        return 0
    result = asyncio.run(
        talk_file(url, input_wav, model=model, voice=voice, timeout=timeout, api_key=api_key)
    )
    if output_wav is not None:
        seconds = write_wav(output_wav, result.frames)
        print(f"wrote {output_wav} ({seconds:.2f} s)")
    return 0 if result.frames else 1
