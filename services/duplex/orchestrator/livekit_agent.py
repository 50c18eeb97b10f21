"""The orchestrator as a LiveKit agent: a WebRTC room feeds the same session pipeline.

livekit-agents registers this process with the LiveKit server, which dispatches a job for
every room whose token asks for the agent (the page's tokens do). Each job runs on the agents
framework's own thread and event loop, and joins its room there, as the framework expects
(`ctx.connect()`, `ctx.shutdown()`). The models, the TTS client pool and the router live on
the orchestrator's loop, and so does the room's `Conversation`: the user's audio and messages
cross to it, and its output crosses back to the room's loop through `CrossLoopOutput`.

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
from concurrent.futures import Future
from typing import Any

from aiohttp import web
from livekit import rtc

from duplex.audio.frame import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE, PcmFrame
from duplex.errors import InvalidInput
from duplex.orchestrator.conversation import Conversation
from duplex.orchestrator.events import SHUTDOWN, ErrorEvent, ServerEvent, StartSession
from duplex.orchestrator.livekit_tokens import AGENT_NAME, LiveKitConfig
from duplex.orchestrator.session import Services, SessionStart
from duplex.orchestrator.transport import ClientPlayout, Output
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

TOPIC = "duplex"
MODEL_ATTRIBUTE = "duplex.model"
VOICE_ATTRIBUTE = "duplex.voice"
_SOURCE_QUEUE_MS = 200  # the SDK's own buffer in front of the encoder
# Events and 20 ms frames waiting for the room (20 s of audio): beyond that the room is not
# taking what we send, and the agent leaves it rather than hold the backlog in memory.
_MAX_QUEUED = 1000
_MAX_MESSAGES = 100  # client messages waiting for the conversation


class RoomOutput(ClientPlayout):
    """A session's output into a room: audio onto our track, events onto the data channel.

    The reply already arrives paced at real time (plus a small lead), so little is ever
    queued. Barge-in acts here, synchronously, the moment the session emits its event:
    a flush empties both our queue and the SDK's; a pause takes back the frames the SDK has
    not yet sent, so a resume after a cough plays them and loses nothing. The page is told
    as well, as over the WebSocket.
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

    def event(self, event: ServerEvent) -> None:
        if not self._full():
            self._events.put_nowait(event.to_json())

    def play(self, frame: PcmFrame) -> None:
        if self._full():
            return
        self._audio.append(frame)
        self._wake.set()

    def pause(self) -> None:
        self._drop_queued(keep=True)
        self._paused = True
        super().pause()

    def resume(self) -> None:
        self._paused = False
        self._wake.set()
        super().resume()

    def flush(self) -> None:
        self._drop_queued(keep=False)
        self._paused = False
        super().flush()

    def refuse(self, code: str, message: str) -> None:
        self._events.put_nowait(ErrorEvent(code, message).to_json())
        self._events.put_nowait(None)  # after that event: leave the room

    def unheard_seconds(self) -> float:
        return len(self._audio) * FRAME_SECONDS + self._source.queued_duration

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


class CrossLoopOutput:
    """A room's output as its session sees it: the session runs on the orchestrator's loop,
    the room on its job's loop, and each call is carried over to the room's loop, in order."""

    def __init__(self, room: RoomOutput, loop: asyncio.AbstractEventLoop) -> None:
        self._room = room
        self._loop = loop

    def _post(self, call: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the room's loop has closed: it is gone
            self._loop.call_soon_threadsafe(call, *args)

    def play(self, frame: PcmFrame) -> None:
        self._post(self._room.play, frame)

    def pause(self) -> None:
        self._post(self._room.pause)

    def resume(self) -> None:
        self._post(self._room.resume)

    def flush(self) -> None:
        self._post(self._room.flush)

    def duck(self, gain: float) -> None:
        self._post(self._room.duck, gain)

    def event(self, event: ServerEvent) -> None:
        self._post(self._room.event, event)

    def refuse(self, code: str, message: str) -> None:
        self._post(self._room.refuse, code, message)

    def unheard_seconds(self) -> float:
        return self._room.unheard_seconds()


class _Inbox:
    """What the room's user sends, carried from the room's loop to the conversation's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.conversation: Conversation | None = None  # set on the orchestrator's loop
        self.messages: asyncio.Queue[str] = asyncio.Queue(maxsize=_MAX_MESSAGES)

    def audio(self, pcm: bytes) -> None:
        self._loop.call_soon_threadsafe(self._feed, pcm)

    def message(self, data: str) -> None:
        self._loop.call_soon_threadsafe(self._put, data)

    def _feed(self, pcm: bytes) -> None:
        if self.conversation is None:
            return
        try:
            self.conversation.feed_audio(pcm)
        except InvalidInput as exc:  # a partial frame at the end of a track
            log.debug("skipped audio: %s", exc)

    def _put(self, data: str) -> None:
        if not self.messages.full():
            self.messages.put_nowait(data)


class LiveKitAgent:
    """Registers with a LiveKit server and serves each room it is dispatched to."""

    name = "livekit"

    def __init__(self, services: Services, config: LiveKitConfig) -> None:
        self._s = services
        self._config = config
        self._url = config.agent_url or config.url
        self._loop = asyncio.get_running_loop()
        self._rooms = TaskSet("livekit-rooms")  # each room's conversation, on this loop
        self.registered = asyncio.Event()
        self.served = 0  # rooms joined since start: for tests and the logs

    def routes(self) -> list[web.RouteDef]:
        return []  # the token endpoint is the orchestrator's, on with or without the agent

    async def goodbye(self) -> None:
        return  # each room says goodbye as `run` is cancelled

    async def run(self) -> None:
        """Serve until cancelled; then leave every room."""
        from livekit.agents import AgentServer, JobExecutorType

        server = AgentServer(
            ws_url=self._url,
            api_key=self._config.api_key,
            api_secret=self._config.api_secret,
            # A job is a room's audio pump; the conversation itself runs on this loop.
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
            # Conversations first: each job then says goodbye and leaves its room, so the
            # agent server closes at once after them, and no room hears another reply.
            await self._rooms.aclose()
            with contextlib.suppress(Exception):
                await server.aclose()

    def _on_registered(self) -> None:
        log.info("registered with LiveKit at %s as agent %r", self._url, AGENT_NAME)
        self.registered.set()

    def _load(self) -> float:
        return len(self._rooms) / self._config.max_rooms

    # -- on the job's loop -------------------------------------------------------------------

    async def _entrypoint(self, ctx: Any) -> None:
        from livekit.agents import AutoSubscribe

        reason = "the conversation ended"
        try:
            await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
            self._loop.call_soon_threadsafe(self._count_room)
            reason = await self._serve_room(ctx.room)
        finally:
            ctx.shutdown(reason)  # the framework leaves the room

    def _count_room(self) -> None:
        self.served += 1

    async def _serve_room(self, room: rtc.Room) -> str:
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=_SOURCE_QUEUE_MS)
        try:
            track = rtc.LocalAudioTrack.create_audio_track("duplex-reply", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
            user, mic = await _first_microphone(room)
            log.info("room %s: talking with %s", room.name, user.identity)
            return await self._pump(room, source, user, mic)
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()

    async def _pump(
        self,
        room: rtc.Room,
        source: rtc.AudioSource,
        user: rtc.RemoteParticipant,
        mic: rtc.Track,
    ) -> str:
        """Carry the room's audio and messages to its conversation and back, until the user
        leaves, the conversation hangs up, or the orchestrator stops (the user is told)."""
        output = RoomOutput(room, source)
        inbox = _Inbox(self._loop)
        gone = asyncio.Event()

        def on_data(packet: rtc.DataPacket) -> None:
            sender = packet.participant
            if packet.topic == TOPIC and sender is not None and sender.identity == user.identity:
                inbox.message(bytes(packet.data).decode("utf-8", "replace"))

        def on_left(participant: rtc.RemoteParticipant) -> None:
            if participant.identity == user.identity:
                gone.set()

        room.on("data_received", on_data)
        room.on("participant_disconnected", on_left)
        room.on("disconnected", lambda *_: gone.set())
        start = StartSession(
            SAMPLE_RATE,
            model=user.attributes.get(MODEL_ATTRIBUTE),
            voice=user.attributes.get(VOICE_ATTRIBUTE),
        )
        crossing = CrossLoopOutput(output, asyncio.get_running_loop())
        conversation: Future[None] = asyncio.run_coroutine_threadsafe(
            self._converse(room.name, crossing, inbox, start), self._loop
        )
        served = asyncio.wrap_future(conversation)
        try:
            async with TaskSet(f"room-{room.name}") as tasks:
                tasks.spawn(output.write_audio(), "audio-out")
                tasks.spawn(output.write_events(), "events-out")
                tasks.spawn(_hear(mic, inbox), "audio-in")
                left = tasks.spawn(gone.wait(), "user-left")
                hung_up = tasks.spawn(output.hung_up.wait(), "hung-up")
                ends: set[asyncio.Future[Any]] = {left, hung_up, served}
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            if served.done() and served.cancelled():
                # The orchestrator is stopping: say so before leaving.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await room.local_participant.publish_data(
                            json.dumps(SHUTDOWN.to_json()), reliable=True, topic=TOPIC
                        )
                return SHUTDOWN.reason
            return "the conversation ended"
        finally:
            conversation.cancel()
            room.off("data_received", on_data)
            room.off("participant_disconnected", on_left)

    # -- on the orchestrator's loop ------------------------------------------------------------

    async def _converse(
        self, room_name: str, output: Output, inbox: _Inbox, start: StartSession
    ) -> None:
        # The conversation belongs to the agent's task set (closed with it, failures logged
        # there); this waits for it on behalf of the job, whose leaving cancels it.
        task = self._rooms.spawn(self._conversation(output, inbox, start), f"room-{room_name}")
        try:
            await asyncio.wait({task})
        finally:
            task.cancel()
        if task.cancelled():
            raise asyncio.CancelledError

    async def _conversation(self, output: Output, inbox: _Inbox, start: StartSession) -> None:
        async with TaskSet("room-conversation") as tasks:
            conversation = Conversation(self._s, output, tasks, sample_rate=SAMPLE_RATE)
            try:
                conversation.start(SessionStart.parse(start, self._s.config))
            except InvalidInput as exc:
                output.event(ErrorEvent(exc.code, str(exc)))
            inbox.conversation = conversation
            try:
                while True:
                    await conversation.message(await inbox.messages.get())
            finally:
                inbox.conversation = None
                conversation.end()


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


async def _hear(track: rtc.Track, inbox: _Inbox) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=20)
    try:
        async for event in stream:
            inbox.audio(bytes(event.frame.data))
    finally:
        await stream.aclose()


def transport(services: Services) -> LiveKitAgent:
    assert services.config.livekit is not None
    return LiveKitAgent(services, services.config.livekit)
