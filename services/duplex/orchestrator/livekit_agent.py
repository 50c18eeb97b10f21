"""The orchestrator as a LiveKit agent: a WebRTC room feeds the same session pipeline.

livekit-agents registers this process with the LiveKit server, which dispatches a job for
every room whose token asks for the agent (the page's tokens do). Jobs run on the agents
framework's own threads and event loops, but the models, the TTS client pool and the router
live on the orchestrator's loop; so a job only hands its room's name over, and the room is
joined and served on the orchestrator's loop, where `ConversationSession` runs exactly as it
does behind a WebSocket.

In the room: the user's microphone track in (48 kHz mono, 20 ms frames), one audio track of
ours out, and JSON on the data channel (topic "duplex") both ways — the same events and
client messages as the WebSocket transport's text frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

from livekit import rtc

from duplex.audio.frame import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE, PcmFrame
from duplex.errors import DuplexError, InvalidInput
from duplex.orchestrator.livekit_tokens import AGENT_NAME, LiveKitConfig, agent_token
from duplex.orchestrator.session import (
    ConversationSession,
    Services,
    SessionStart,
    apply_client_message,
)
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

TOPIC = "duplex"
MODEL_ATTRIBUTE = "duplex.model"
VOICE_ATTRIBUTE = "duplex.voice"
_SOURCE_QUEUE_MS = 200  # the SDK's own buffer in front of the encoder
# Events and 20 ms frames waiting for the room (20 s of audio): beyond that the room is not
# taking what we send, and the agent leaves it rather than hold the backlog in memory.
_MAX_QUEUED = 1000
SHUTDOWN_EVENT = {"type": "session.ended", "reason": "the server is shutting down"}


class RoomOutput:
    """A session's output into a room: audio onto our track, events onto the data channel.

    The reply already arrives paced at real time (plus a small lead), so little is ever
    queued. Barge-in acts here, synchronously, the moment the session emits its event:
    a flush empties both our queue and the SDK's; a pause takes back the frames the SDK has
    not yet sent, so a resume after a cough plays them and loses nothing.
    """

    def __init__(self, room: rtc.Room, source: rtc.AudioSource) -> None:
        self._room = room
        self._source = source
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._audio: collections.deque[PcmFrame] = collections.deque()
        # Frames handed to the SDK, newest last: the tail of these is what it still holds.
        self._sent: collections.deque[PcmFrame] = collections.deque(
            maxlen=math.ceil(_SOURCE_QUEUE_MS / 1000 / FRAME_SECONDS) + 2
        )
        self._generation = 0  # bumped by pause and flush: a frame in flight is not "sent"
        self._paused = False
        self._wake = asyncio.Event()
        # Set once a refusal has been delivered: the agent then leaves the room.
        self.hung_up = asyncio.Event()
        self._leaving = False

    def _full(self) -> bool:
        if self._leaving:
            return True
        if self._events.qsize() + len(self._audio) < _MAX_QUEUED:
            return False
        log.warning("the room is not taking our audio and events; leaving it")
        self._leaving = True
        self._audio.clear()
        self._events.put_nowait(None)
        return True

    def send_event(self, event: dict[str, Any]) -> None:
        if self._full():
            return
        if event.get("type") == "playback":
            action = event.get("action")
            if action == "flush":
                self._drop_queued(keep=False)
                self._paused = False
            elif action == "pause":
                self._drop_queued(keep=True)
                self._paused = True
            elif action == "resume":
                self._paused = False
                self._wake.set()
        self._events.put_nowait(event)

    def send_audio(self, frame: PcmFrame) -> None:
        if self._full():
            return
        self._audio.append(frame)
        self._wake.set()

    def refuse(self, code: str, message: str) -> None:
        self._events.put_nowait({"type": "error", "code": code, "message": message})
        self._events.put_nowait(None)  # after that event: leave the room

    def _drop_queued(self, *, keep: bool) -> None:
        self._generation += 1
        if keep:
            unsent = min(len(self._sent), math.ceil(self._source.queued_duration / FRAME_SECONDS))
            held = list(self._sent)[len(self._sent) - unsent :]
            self._audio.extendleft(reversed(held))
        else:
            self._audio.clear()
        self._sent.clear()
        self._source.clear_queue()

    async def write_audio(self) -> None:
        while True:
            while self._paused or not self._audio:
                self._wake.clear()
                await self._wake.wait()
            frame = self._audio.popleft()
            generation = self._generation
            await self._source.capture_frame(
                rtc.AudioFrame(frame.data, SAMPLE_RATE, 1, FRAME_SAMPLES)
            )
            if generation == self._generation:
                self._sent.append(frame)

    async def write_events(self) -> None:
        participant = self._room.local_participant
        while True:
            event = await self._events.get()
            if event is None:
                self.hung_up.set()
                return
            try:
                await participant.publish_data(json.dumps(event), reliable=True, topic=TOPIC)
            except Exception as exc:  # boundary: a closing room drops its last events
                log.warning("event %s not delivered: %s", event.get("type"), exc)


class LiveKitAgent:
    """Registers with a LiveKit server and serves each room it is dispatched to."""

    def __init__(self, services: Services, config: LiveKitConfig) -> None:
        self._s = services
        self._config = config
        self._url = config.agent_url or config.url
        self._loop = asyncio.get_running_loop()
        self._rooms = TaskSet("livekit-rooms")
        self.registered = asyncio.Event()
        self.served = 0  # rooms joined since start: for tests and the logs

    async def run(self) -> None:
        """Serve until cancelled; then leave every room."""
        from livekit.agents import AgentServer, JobExecutorType

        server = AgentServer(
            ws_url=self._url,
            api_key=self._config.api_key,
            api_secret=self._config.api_secret,
            # Jobs only hand over a room name; the work happens on this loop.
            job_executor_type=JobExecutorType.THREAD,
            num_idle_processes=1,
            load_fnc=self._load,
            load_threshold=0.999,
            host="127.0.0.1",
            port=0,
        )
        server.rtc_session(self._entrypoint, agent_name=AGENT_NAME)
        server.on("worker_registered", lambda *_: self._on_registered())
        try:
            await server.run()
        finally:
            # Rooms first: each job waits for its room, so the agent server closes at once
            # after them, and no room hears another reply while it waits.
            await self._rooms.aclose()
            with contextlib.suppress(Exception):
                await server.aclose()

    def _on_registered(self) -> None:
        log.info("registered with LiveKit at %s as agent %r", self._url, AGENT_NAME)
        self.registered.set()

    def _load(self) -> float:
        return len(self._rooms) / self._config.max_rooms

    async def _entrypoint(self, ctx: Any) -> None:
        # On a job thread's own loop: hand the room to the orchestrator's loop and wait.
        future = asyncio.run_coroutine_threadsafe(
            self._serve_owned(ctx.job.room.name, ctx.job.id), self._loop
        )
        try:
            await asyncio.wrap_future(future)
        finally:
            future.cancel()
            ctx.shutdown("the conversation ended")

    async def _serve_owned(self, room_name: str, job_id: str) -> None:
        # The room belongs to the agent's task set (closed with it, failures logged there);
        # this waits for it on behalf of the job, and a cancelled job leaves the room.
        task = self._rooms.spawn(self.serve_room(room_name, job_id), f"room-{room_name}")
        try:
            await asyncio.wait({task})
        finally:
            task.cancel()

    async def serve_room(self, room_name: str, job_id: str) -> None:
        room = rtc.Room()
        identity = f"agent-{job_id or secrets.token_hex(4)}"
        await room.connect(self._url, agent_token(self._config, room_name, identity))
        self.served += 1
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=_SOURCE_QUEUE_MS)
        try:
            track = rtc.LocalAudioTrack.create_audio_track("duplex-reply", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
            user, mic = await _first_microphone(room)
            log.info("room %s: talking with %s", room_name, user.identity)
            await self._converse(room, source, user, mic)
        except asyncio.CancelledError:
            # The orchestrator is shutting down: say so before leaving.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await room.local_participant.publish_data(
                        json.dumps(SHUTDOWN_EVENT), reliable=True, topic=TOPIC
                    )
            raise
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()
            await room.disconnect()

    async def _converse(
        self,
        room: rtc.Room,
        source: rtc.AudioSource,
        user: rtc.RemoteParticipant,
        mic: rtc.Track,
    ) -> None:
        output = RoomOutput(room, source)
        messages: asyncio.Queue[str] = asyncio.Queue(maxsize=100)
        gone = asyncio.Event()

        def on_data(packet: rtc.DataPacket) -> None:
            sender = packet.participant
            ours = sender is not None and sender.identity == user.identity
            if packet.topic == TOPIC and ours and not messages.full():
                messages.put_nowait(bytes(packet.data).decode("utf-8", "replace"))

        def on_left(participant: rtc.RemoteParticipant) -> None:
            if participant.identity == user.identity:
                gone.set()

        room.on("data_received", on_data)
        room.on("participant_disconnected", on_left)
        room.on("disconnected", lambda *_: gone.set())
        start = SessionStart.parse(
            {
                "sample_rate": SAMPLE_RATE,
                "model": user.attributes.get(MODEL_ATTRIBUTE),
                "voice": user.attributes.get(VOICE_ATTRIBUTE),
            },
            self._s.config,
        )
        async with TaskSet(f"room-{room.name}") as tasks:
            holder = _SessionHolder(lambda s: ConversationSession(self._s, output, s), tasks)
            holder.restart(start)
            tasks.spawn(output.write_audio(), "audio-out")
            tasks.spawn(output.write_events(), "events-out")
            tasks.spawn(_hear(mic, holder), "audio-in")
            tasks.spawn(self._handle_messages(messages, holder, output), "messages")
            tasks.spawn(_set_when(output.hung_up, gone), "hang-up")
            await gone.wait()
        room.off("data_received", on_data)
        room.off("participant_disconnected", on_left)

    async def _handle_messages(
        self, messages: asyncio.Queue[str], holder: _SessionHolder, output: RoomOutput
    ) -> None:
        while True:
            data = await messages.get()
            try:
                start = await apply_client_message(data, holder.session, self._s.config)
                if start is not None:
                    # The room fixes the audio format: 48 kHz, whatever the message says.
                    holder.restart(
                        SessionStart(SAMPLE_RATE, start.model, start.voice, start.language)
                    )
            except DuplexError as exc:
                self._s.metrics.errors.labels(exc.code).inc()
                output.send_event({"type": "error", "code": exc.code, "message": str(exc)})


class _SessionHolder:
    """The room's current session; a session.start message replaces it."""

    def __init__(self, make: Callable[[SessionStart], ConversationSession], tasks: TaskSet) -> None:
        self._make = make
        self._tasks = tasks
        self.session: ConversationSession | None = None
        self._task: asyncio.Task[None] | None = None

    def restart(self, start: SessionStart) -> None:
        if self._task is not None:
            self._task.cancel()
        self.session = self._make(start)
        self._task = self._tasks.spawn(self.session.run(), "session")


async def _first_microphone(room: rtc.Room) -> tuple[rtc.RemoteParticipant, rtc.Track]:
    """The first remote participant's audio track, once we are subscribed to it."""
    found: asyncio.Future[tuple[rtc.RemoteParticipant, rtc.Track]] = (
        asyncio.get_running_loop().create_future()
    )

    def on_subscribed(
        track: rtc.Track, _pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and not found.done():
            found.set_result((participant, track))

    room.on("track_subscribed", on_subscribed)
    try:
        for participant in room.remote_participants.values():
            for pub in participant.track_publications.values():
                if pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO:
                    return participant, pub.track
        return await found
    finally:
        room.off("track_subscribed", on_subscribed)


async def _hear(track: rtc.Track, holder: _SessionHolder) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=20)
    try:
        async for event in stream:
            session = holder.session
            if session is None:
                continue
            try:
                session.feed_audio(bytes(event.frame.data))
            except InvalidInput as exc:  # a partial frame at the end of a track
                log.debug("skipped audio: %s", exc)
    finally:
        await stream.aclose()


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
