"""One conversation: the only module that wires the stages, in the order data flows.

audio in → resample to 16 kHz → Silero VAD → end-of-turn (ASR + turn policy) → responder
→ Reply (TTS worker → paced frames) → out. Barge-in: speech while the bot talks pauses the
reply at once (client told to pause playback); words confirm it (STOP, flush, new turn);
a cough or a backchannel resumes it where it paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from duplex.audio.resample import StreamResampler
from duplex.errors import AtCapacity, DuplexError, InvalidInput
from duplex.logs import bind as bind_log_context
from duplex.orchestrator.asr import ASR_RATE, Transcript, WhisperTranscriber
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.events import (
    BargeIn,
    ErrorEvent,
    ReplyText,
    SessionStarted,
    StartSession,
    StateChanged,
    TranscriptText,
)
from duplex.orchestrator.metrics import OrchestratorMetrics
from duplex.orchestrator.policy import (
    BACKGROUND_HOLD,
    Act,
    Heard,
    Interruption,
    Listening,
    Onset,
    at_onset,
    end_of_turn,
    judge_interruption,
    takes_over,
)
from duplex.orchestrator.reply import Reply
from duplex.orchestrator.responder import Message, Responder
from duplex.orchestrator.router import ClientPool, Router
from duplex.orchestrator.state import State, StateMachine
from duplex.orchestrator.tracing import Tracing
from duplex.orchestrator.transport import Output
from duplex.orchestrator.tts_link import TtsLink
from duplex.orchestrator.turn import TurnPolicy, words
from duplex.orchestrator.vad import SileroModel, SileroVad, VadKind
from duplex.orchestrator.voice_sessions import VoiceSessions
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
_PREROLL_SECONDS = 0.3  # audio kept from before the VAD fired: onsets are detected late
_HISTORY_TURNS = 20
# No audio for this long while the VAD hears speech: the client stopped sending mid-sentence
# (a dropped connection, a muted tab, the end of a file), and the speech ended with it.
_STALL_SECONDS = 0.5
# A pause inside an utterance at least this long splits it for transcription (_settle_head);
# shorter ones (a comma, a breath) stay within one decode, where Whisper uses the context.
_SEGMENT_PAUSE_SECONDS = 0.5
_TICK_SECONDS = 0.05  # the listener's clock when no audio comes
# Transcripts taken while the user still speaks (partials, and speculative ones at every
# dip in the voice) may use the ASR thread at most this share of the time, however long the
# turn: the next waits for three times as long as the last one took.
_ASR_DUTY = 0.25
_FIELD_CHARS = 128  # model, voice and language names
# Looks at the words over the reply while they are said (backchannels are short, so looks are
# few) may take this larger share of the ASR.
_GLIMPSE_DUTY = 0.5


@dataclass
class Services:
    """What every session of an orchestrator process shares."""

    config: OrchestratorConfig
    router: Router
    pool: ClientPool
    asr: WhisperTranscriber
    responder: Responder
    metrics: OrchestratorMetrics
    vad: SileroModel  # one network for every conversation; each keeps its own state
    # On Kubernetes: each conversation claims its model with a VoiceSession.
    voice_sessions: VoiceSessions | None = None
    tracing: Tracing = field(default_factory=Tracing)


@dataclass(frozen=True)
class SessionStart:
    sample_rate: int
    model: str
    voice: str | None = None
    language: str | None = None

    @classmethod
    def parse(cls, msg: StartSession, config: OrchestratorConfig) -> SessionStart:
        """The client's `session.start`, judged and completed with the server's defaults."""
        if msg.sample_rate not in SUPPORTED_RATES:
            raise InvalidInput(
                f"sample_rate must be one of {', '.join(map(str, SUPPORTED_RATES))}, "
                f"got {msg.sample_rate!r}"
            )
        model = msg.model or config.default_model
        voice = msg.voice or (config.default_voice if model == config.default_model else None)
        language = msg.language or config.language
        for name, value in (("model", model), ("voice", voice), ("language", language)):
            if value is not None and len(value) > _FIELD_CHARS:
                raise InvalidInput(f"{name} exceeds {_FIELD_CHARS} characters")
        return cls(msg.sample_rate, model, voice, language)


class ConversationSession:
    def __init__(self, services: Services, output: Output, start: SessionStart) -> None:
        self.id = uuid.uuid4().hex[:12]
        self._s = services
        self._out = output
        self.start = start
        self.frame_bytes = start.sample_rate // 50 * 2
        self._policy = TurnPolicy(**services.config.turn.model_dump())
        self._machine = StateMachine(self._on_state)
        self._tasks = TaskSet(f"session-{self.id}")
        # Each frame with the moment it arrived: barge-in is timed from the arrival of the
        # audio that holds the onset, however far behind the listener is.
        self._audio: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(maxsize=500)
        self._resampler = StreamResampler(start.sample_rate, ASR_RATE)
        self._vad = SileroVad(services.vad)
        self._vad_samples = 0  # 16 kHz samples given to the VAD: its clock
        # (VAD samples up to the end of a frame, when that frame arrived), the last 10 s.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=500)
        self._preroll: deque[npt.NDArray[np.float32]] = deque(maxlen=int(_PREROLL_SECONDS * 50))
        self._speech: list[npt.NDArray[np.float32]] = []  # the utterance being spoken
        self._speech_samples = 0  # ... its length, kept as it grows (read every frame)
        self._speech_started = 0.0  # monotonic
        self._silence_since: float | None = None  # monotonic, while a turn may be ending
        # The same moment on the audio clock (VAD seconds). Silence is timed by the audio that
        # arrived, not by the wall clock: when the loop falls behind on a busy CPU, a backlog
        # of frames must not read as a pause and end the user's turn mid-sentence.
        self._silence_audio: float | None = None
        # How long no audio has come, counted only while this loop runs on time: a loop held up
        # (a busy CPU, a long callback) finds the client's frames queued when it runs again,
        # and that wait is not the client's silence.
        self._starved = 0.0
        self._transcript: asyncio.Task[Transcript] | None = None
        self._transcript_len = 0  # samples the running transcription covers
        # What was said before a long pause inside the utterance, transcribed at that pause,
        # and the sample where the audio still to transcribe begins (see _settle_head).
        self._head: tuple[Transcript, int] | None = None
        self._spoken_len = 0  # samples of the utterance up to where its speech ended
        self._next_early_asr = 0.0  # monotonic: no partial/speculative transcript before
        self._asr_span = (0.0, 0.0)  # when the last transcription started and ended
        # A turn cut at max_turn_seconds while the speech went on: its final transcript.
        self._cut: tuple[asyncio.Task[Transcript], float] | None = None
        self._history: list[Message] = []
        self._reply: Reply | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._barge_started = 0.0
        self._barge_onset = 0.0  # monotonic arrival of the interrupting speech's onset
        self._barge_onset_audio = 0.0  # the same onset on the VAD's clock
        self._barge_paused = False  # the reply was silenced (not only lowered)
        self._barge_waved = False  # a first look heard an "uh-huh": the reply goes on, lowered
        self._barge_waved_on_pause = False  # ... an unclear one, as the voice dropped
        self._levels: deque[float] = deque(maxlen=25)  # dBFS of the last half second, 20 ms each
        self._speech_levels: list[float] = []  # ... of the utterance's voiced frames
        self._user_db: float | None = None  # the user's speech level, learnt from their turns
        self._background = False  # the speech now is background, not the user
        self._background_until = 0.0  # VAD clock: background speech was heard until then
        self._link = TtsLink(
            services.router,
            services.pool,
            self._tasks,
            model=start.model,
            voice=start.voice,
            language=start.language,
            voice_sessions=services.voice_sessions,
            room=self.id,
        )
        self._admitted = asyncio.Event()
        self.closed = asyncio.Event()

    # -- inputs from the transport -----------------------------------------------------------

    def feed_audio(self, pcm: bytes) -> None:
        if len(pcm) != self.frame_bytes:
            raise InvalidInput(
                f"audio messages are 20 ms of 16-bit mono PCM at {self.start.sample_rate} Hz: "
                f"{self.frame_bytes} bytes, got {len(pcm)}"
            )
        if self._audio.full():  # the listener fell behind by 10 s: drop the oldest
            self._audio.get_nowait()
        self._audio.put_nowait((pcm, time.monotonic()))

    async def submit_text(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("text must be a non-empty string")
        if len(text) > self._s.config.max_text_chars:
            raise InvalidInput(
                f"text of {len(text)} characters exceeds {self._s.config.max_text_chars}"
            )
        await self._interrupt()
        self._out.event(TranscriptText(text, final=True))
        self._begin_reply(text, ended_at=time.monotonic())

    async def control(self, command: str) -> None:
        reply = self._reply
        if command == "stop":
            await self._interrupt()
        elif command == "pause" and reply and self._machine.state == State.SPEAKING:
            reply.pause()
            self._out.pause()
        elif command == "resume" and reply:
            reply.resume()
            self._out.resume()
        elif command not in ("pause", "resume"):
            raise InvalidInput(f"unknown control command {command!r}; valid: stop, pause, resume")

    # -- the session loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Admit the conversation (a TTS session it keeps to the end), then serve it."""
        self._s.metrics.sessions.inc()
        self._s.metrics.sessions_total.inc()
        bind_log_context(session_id=self.id)
        try:
            try:
                session = await self._link.admit()
            except AtCapacity as exc:
                self._s.metrics.errors.labels(exc.code).inc()
                self._out.refuse(exc.code, str(exc))
                return
            except DuplexError as exc:
                await self._error(exc.code, str(exc))
                return
            self._admitted.set()
            self._out.event(SessionStarted(self.id, self.start.model, session.model))
            self._out.event(StateChanged(self._machine.state.value))
            await self._listen()
        finally:
            await self._tasks.aclose()
            await self._link.aclose()
            self._s.metrics.sessions.dec()
            self.closed.set()

    async def _listen(self) -> None:
        tick = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(_TICK_SECONDS):
                    pcm, arrived = await self._audio.get()
            except TimeoutError:
                # No audio: still let timers (end of turn) run.
                self._starved += min(time.monotonic() - tick, 2 * _TICK_SECONDS)
            else:
                self._starved = 0.0
                await self._hear(pcm, arrived)
            tick = time.monotonic()
            await self._decide()

    async def _hear(self, pcm: bytes, arrived: float) -> None:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        audio16 = self._resampler.process(audio)
        self._vad_samples += audio16.size
        self._arrivals.append((self._vad_samples, arrived))
        level = _dbfs(audio16)
        self._levels.append(level)
        if self._vad.speaking or self._speech or self._silence_since is not None:
            self._speech.append(audio16)
            self._speech_samples += audio16.size
            if self._vad.speaking:
                # Voiced frames only: the silence after a turn lasts as long as the ASR takes
                # and would pull the user's level down on a busy machine.
                self._speech_levels.append(level)
        else:
            self._preroll.append(audio16)
        for event in self._vad.process(audio16):
            if event.kind is VadKind.START:
                await self._on_speech_start(self._arrival_of(event.at), event.at)
            else:
                self._on_speech_end(hangover=self._vad.now - event.at)
        if (
            self._background
            and self._vad.speaking
            and takes_over(list(self._levels), self._user_db)
        ):
            # It was background at its onset; now someone speaks at the user's level. Their
            # utterance starts here: the background before it is not theirs to answer.
            said = self._speech
            self._reset_utterance()
            self._preroll.extend(said[-(self._preroll.maxlen or 1) :])
            await self._on_speech_start(arrived, self._vad.now)
        if (
            self._vad.pausing
            and self._speech
            and (self._transcript is None or self._transcript.done())
            and time.monotonic() >= self._next_early_asr
        ):
            # Speculative: transcribe as soon as the voice drops, before the VAD is sure the
            # speech has ended; if it has, the transcript is ready when the decision is due.
            self._start_transcript(early=True)

    def _arrival_of(self, audio_time: float) -> float:
        """When the frame holding this moment of the VAD's clock arrived (monotonic)."""
        sample = audio_time * ASR_RATE
        for end, arrived in self._arrivals:
            if end > sample:
                return arrived
        return self._arrivals[-1][1] if self._arrivals else time.monotonic()

    async def _on_speech_start(self, onset: float, onset_audio: float) -> None:
        now = time.monotonic()
        if not self._speech:
            self._speech = list(self._preroll)
            self._speech_samples = sum(a.size for a in self._speech)
            self._speech_started = now
        elif self._silence_audio is not None:
            self._settle_head(onset_audio)
        self._silence_since = None
        self._silence_audio = None
        onset_level = max(list(self._levels)[-6:], default=-120.0)  # the VAD's deciding windows
        act = at_onset(
            Onset(
                bot=self._machine.state.value,
                level_db=onset_level,
                user_db=self._user_db,
                after_background=self._vad.now < self._background_until,
                reply_on=self._reply is not None,
            ),
            self._s.config.barge_in,
        )
        self._background = act is Act.BACKGROUND
        if act is Act.DUCK:
            await self._duck(onset, onset_audio)
        elif act is Act.MORE_SPEECH:
            self._barge_onset_audio = onset_audio  # more speech: silence it if it goes on
            self._barge_waved = self._barge_waved_on_pause = False

    def _learn_user_level(self) -> None:
        """The user's speech level, from their turns (the loud part of each utterance)."""
        if not self._speech_levels:
            return
        level = float(np.percentile(self._speech_levels, 90))
        self._user_db = level if self._user_db is None else 0.7 * self._user_db + 0.3 * level

    def _on_speech_end(self, hangover: float) -> None:
        # Silence began a little before the VAD could tell (its hangover).
        self._silence_since = time.monotonic() - hangover
        self._silence_audio = self._vad.now - hangover
        self._spoken_len = self._speech_samples - int(hangover * ASR_RATE)
        if not self._background:
            self._start_transcript()

    def _settle_head(self, onset_audio: float) -> None:
        """Speech resumes after a long pause: what came before it stays as transcribed at the
        pause, and from now on only what follows is transcribed.

        Given a long pause inside its window, Whisper now and then stops at the pause and
        drops everything after it ("I would like to book a table for." with "four people
        please" lost); and the head need not be decoded again at the end of the turn.
        """
        assert self._silence_audio is not None
        task = self._transcript
        if (
            onset_audio - self._silence_audio < _SEGMENT_PAUSE_SECONDS
            or task is None
            or not task.done()
            or task.cancelled()
            or task.exception() is not None
            # It must cover the speech before the pause (not a partial taken mid-speech).
            or self._transcript_len < self._spoken_len - ASR_RATE * 0.05
        ):
            return
        head = task.result()
        if not words(head.text):
            return
        buffered = self._speech_samples
        onset = buffered - (self._vad_samples - round(onset_audio * ASR_RATE))
        # The tail keeps a little of the pause before its onset, as the preroll does.
        start = max(self._spoken_len, onset - round(_PREROLL_SECONDS * ASR_RATE))
        self._head = (head, min(start, buffered))

    def _start_transcript(self, *, early: bool = False, duty: float = _ASR_DUTY) -> None:
        if self._transcript is not None and not self._transcript.done():
            return
        audio = np.concatenate(self._speech) if self._speech else np.zeros(0, np.float32)
        self._transcript_len = audio.size
        self._transcript = self._tasks.spawn(
            self._transcribe(audio, self._head, early=early, duty=duty), "asr"
        )

    async def _transcribe(
        self,
        audio: npt.NDArray[np.float32],
        head: tuple[Transcript, int] | None,
        *,
        early: bool,
        duty: float = _ASR_DUTY,
    ) -> Transcript:
        """The utterance in `audio`: its settled head as it was, the rest transcribed now."""
        said, start = head or (Transcript(), 0)
        started = time.monotonic()
        transcript = await self._s.asr.transcribe(audio[start:])
        transcript = Transcript(said.words + transcript.words)
        took = time.monotonic() - started
        self._s.metrics.asr.observe(took)
        self._asr_span = (started, started + took)
        if early:
            self._next_early_asr = time.monotonic() + took * (1 - duty) / duty
        return transcript

    async def _decide(self) -> None:
        """Called every frame (or 50 ms): act on what the listener knows now."""
        speaking = self._vad.speaking
        now = time.monotonic()
        if speaking and self._starved > _STALL_SECONDS:
            self._vad.end_speech()
            self._on_speech_end(hangover=self._starved)
            speaking = False
        if self._cut is not None and self._cut[0].done():
            cut, ended_at = self._cut
            self._cut = None
            await self._take_turn(_result(cut).text, ended_at)
        if self._machine.state == State.BARGED_IN:
            await self._judge_interruption(speaking, now)
            return
        if not self._speech:
            return  # nothing to decide on
        act = end_of_turn(self._listening(speaking, now), self._policy)
        if act is Act.DROP_BACKGROUND:
            self._background_until = self._vad.now + BACKGROUND_HOLD
            self._reset_utterance()  # speech not meant for the bot: no turn
        elif act is Act.CUT:
            self._cut_turn(now)
        elif act is Act.PARTIAL:
            self._start_transcript(early=True)
            self._tasks.spawn(self._send_partial(self._transcript), "partial")
        elif act is Act.TRANSCRIBE:
            self._start_transcript()
        elif act is Act.NOISE:
            self._reset_utterance()  # nothing was said
        elif act is Act.TAKE_TURN:
            assert self._transcript is not None and self._silence_since is not None
            text = _result(self._transcript).text
            ended_at = self._silence_since
            self._learn_user_level()
            self._reset_utterance()
            await self._take_turn(text, ended_at)

    def _listening(self, speaking: bool, now: float) -> Listening:
        """What the listener knows now, for the policy."""
        task = self._transcript
        heard = None
        if task is not None and task.done():
            # A transcription that started before the speech ended misses its tail.
            complete = self._transcript_len >= self._spoken_len - ASR_RATE * 0.05
            heard = Heard(_result(task), complete)
        samples = self._speech_samples
        return Listening(
            speaking=speaking,
            pausing=self._vad.pausing,
            resuming=self._vad.resuming,
            has_speech=bool(self._speech),
            ending=self._silence_since is not None,
            silent_for=self._silent_for(now),
            speech_for=now - self._speech_started,
            utterance_seconds=samples / ASR_RATE - _PREROLL_SECONDS,
            untranscribed=(samples - self._transcript_len) / ASR_RATE,
            heard=heard,
            transcribing=task is not None and not task.done(),
            may_look=now >= self._next_early_asr,
            background=self._background,
        )

    async def _take_turn(self, text: str, ended_at: float) -> None:
        """The user's turn is over: answer it (a reply still going gives way to it)."""
        if not words(text):
            return
        if self._reply is not None:
            await self._interrupt()
        self._out.event(TranscriptText(text, final=True))
        self._begin_reply(text, ended_at, asr=self._asr_span)

    def _cut_turn(self, now: float) -> None:
        """`max_turn_seconds` of unbroken speech: what was said so far is the turn (transcribed
        whole, once), and the speech that goes on starts the next utterance."""
        audio = np.concatenate(self._speech)
        if self._cut is None:
            cut = self._transcribe(audio, self._head, early=False)
            self._cut = (self._tasks.spawn(cut, "asr-cut"), now)
        self._learn_user_level()
        self._reset_utterance()
        self._speech_started = now

    async def _send_partial(self, task: asyncio.Task[Transcript] | None) -> None:
        if task is None:
            return
        text = (await task).text
        if text and self._speech:
            self._out.event(TranscriptText(text, final=False))

    def _silent_for(self, now: float) -> float:
        if self._silence_since is None:
            return 0.0
        if self._silence_audio is None:
            return now - self._silence_since
        # A client that stops sending audio (end of a file, a muted tab) still ends its turn:
        # wall time since its last frame counts once it exceeds one frame's slack.
        stalled = max(0.0, self._starved - 0.1)
        return self._vad.now - self._silence_audio + stalled

    def _reset_utterance(self) -> None:
        self._speech = []
        self._speech_samples = 0
        self._speech_levels = []
        self._background = False
        self._silence_since = None
        self._silence_audio = None
        self._transcript = None
        self._transcript_len = 0
        self._spoken_len = 0
        self._head = None

    # -- barge-in ----------------------------------------------------------------------------

    async def _duck(self, onset: float, onset_audio: float) -> None:
        """Speech while the bot talks: lower the reply at once; silence it if the speech goes
        on (`_judge_interruption`); decide later whether to resume."""
        assert self._reply is not None
        gain = self._s.config.barge_in.duck_gain
        self._reply.duck(gain)
        self._out.duck(gain)
        self._barge_started = time.monotonic()
        self._barge_onset = onset
        self._barge_onset_audio = onset_audio
        self._barge_paused = False
        self._barge_waved = self._barge_waved_on_pause = False
        self._machine.to(State.BARGED_IN)

    def _silence_reply(self) -> None:
        """The speech over the reply went on: silence it now, decide later whether to resume."""
        assert self._reply is not None
        self._reply.pause()
        self._barge_paused = True
        paused = time.monotonic()
        onset = self._barge_onset
        self._reply.trace.barge_in(onset, paused)
        self._out.pause()
        # From the arrival of the audio that holds the onset: the VAD's own delay, any backlog
        # in front of it and the time to act all count.
        latency = paused - onset
        self._s.metrics.barge_in.observe(latency)
        self._out.event(BargeIn(round(latency * 1000, 1)))

    def _observe_audio_stop(self, reply: Reply | None) -> None:
        """Once the interruption is judged: onset → the last reply frame handed to the transport."""
        if reply is None or reply.stats.first_frame_at is None:
            return  # nothing was playing yet
        self._s.metrics.barge_in_last_frame.observe(
            max(0.0, reply.stats.last_sent_at - self._barge_onset)
        )

    async def _judge_interruption(self, speaking: bool, now: float) -> None:
        barge = Interruption(
            heard_for=self._vad.now - self._barge_onset_audio,
            elapsed=now - self._barge_started,
            reply_on=self._reply is not None,
            paused=self._barge_paused,
            waved=self._barge_waved,
            waved_on_pause=self._barge_waved_on_pause,
        )
        listening = self._listening(speaking, now)
        for act in judge_interruption(listening, barge, self._s.config.barge_in):
            if act is Act.NEW_ONSET:
                self._barge_waved = self._barge_waved_on_pause = False
                self._barge_onset, self._barge_onset_audio = now, self._vad.now
            elif act is Act.SILENCE:
                self._silence_reply()
            elif act is Act.WAVE_ON:
                self._wave_on()
            elif act is Act.WAVE_ON_WATCHING:
                self._wave_on()
                self._barge_waved_on_pause = True
            elif act is Act.LOOK:
                self._start_transcript(early=True, duty=_GLIMPSE_DUTY)
            elif act is Act.TRANSCRIBE:
                self._start_transcript()
            elif act is Act.CONFIRM:
                await self._confirm_interruption()
            elif act is Act.RESUME:
                assert listening.heard is not None
                await self._resume_after_false_alarm(listening.heard.transcript.text)

    def _wave_on(self) -> None:
        assert self._reply is not None
        self._reply.resume(judged=False)
        self._barge_paused = False
        self._barge_waved = True
        self._out.resume()

    async def _resume_after_false_alarm(self, text: str) -> None:
        self._reset_utterance()
        self._s.metrics.barge_ins.labels("resumed").inc()
        reply = self._reply
        self._observe_audio_stop(reply)
        if reply is None or self._reply_task is None or self._reply_task.done():
            self._machine.to(State.LISTENING)
            return
        if self._barge_paused:
            reply.resume()
            self._out.resume()
        else:
            reply.trace.barge_in_judged("resumed")
        reply.duck(1.0)
        self._out.duck(1.0)
        self._barge_paused = False
        self._machine.to(State.SPEAKING)
        log.info("resumed after %r", text)

    async def _confirm_interruption(self) -> None:
        """A real interruption: stop the reply for good; the speech goes on as a new turn."""
        self._s.metrics.barge_ins.labels("confirmed").inc()
        reply = self._reply
        await self._stop_reply()
        self._observe_audio_stop(reply)
        self._machine.to(State.LISTENING)

    async def _interrupt(self) -> None:
        if self._reply is not None:
            await self._stop_reply()
        if self._machine.state != State.LISTENING:
            self._machine.to(State.LISTENING)

    async def _stop_reply(self) -> None:
        reply, task = self._reply, self._reply_task
        self._reply = self._reply_task = None
        if reply is None or task is None:
            return
        unheard = self._out.unheard_seconds()
        self._out.flush()
        await reply.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._remember(reply, complete=False, unheard=unheard)

    # -- replies -----------------------------------------------------------------------------

    def _begin_reply(
        self, user_text: str, ended_at: float, asr: tuple[float, float] | None = None
    ) -> None:
        self._s.metrics.turns.inc()
        self._machine.to(State.THINKING)
        history = list(self._history)
        self._history.append(Message("user", user_text))
        trace = self._s.tracing.turn(self.id, ended_at, asr)

        def first_frame() -> None:
            self._s.metrics.voice_to_voice.observe(trace.voice_to_voice or 0.0)
            if self._machine.state == State.THINKING:
                self._machine.to(State.SPEAKING)
            self._out.event(trace.metrics())

        reply = Reply(
            link=self._link,
            lead_seconds=self._s.config.client_lead_ms / 1000,
            send_audio=self._out.play,
            on_text=self._send_reply_text,
            on_first_frame=first_frame,
            tasks=self._tasks,
            trace=trace,
        )
        self._reply = reply
        self._reply_task = self._tasks.spawn(self._speak(reply, history, user_text), "reply")

    def _send_reply_text(self, text: str) -> None:
        self._out.event(ReplyText(text))

    async def _speak(self, reply: Reply, history: list[Message], user_text: str) -> None:
        bind_log_context(
            session_id=self.id, trace_id=reply.trace.trace_id, span_id=reply.trace.span_id
        )
        await self._admitted.wait()
        try:
            complete = await reply.run(self._s.responder, history, user_text)
        except DuplexError as exc:
            await self._error(exc.code, str(exc))
            complete = False
        except Exception:  # boundary: an unexpected failure ends this reply only
            log.exception("reply failed")
            await self._error(
                "internal", "the reply failed on an internal error; the server log has details"
            )
            complete = False
        if self._reply is not reply:
            return  # interrupted: the interrupter took over
        self._reply = self._reply_task = None
        self._remember(reply, complete, unheard=self._out.unheard_seconds())
        if self._machine.state != State.LISTENING:
            self._machine.to(State.LISTENING)
        self._out.event(ReplyText(reply.text.text, final=True, frames=reply.stats.frames_sent))

    def _remember(self, reply: Reply, complete: bool, unheard: float) -> None:
        """History keeps only what the user heard of the reply."""
        heard = reply.heard_text(complete, unheard)
        if heard:
            self._history.append(Message("assistant", heard if complete else heard + " …"))
        del self._history[: max(0, len(self._history) - 2 * _HISTORY_TURNS)]

    # -- plumbing ----------------------------------------------------------------------------

    def _on_state(self, old: State, new: State) -> None:
        self._out.event(StateChanged(new.value))

    async def _error(self, code: str, message: str) -> None:
        self._s.metrics.errors.labels(code).inc()
        self._out.event(ErrorEvent(code, message))


def _dbfs(audio: npt.NDArray[np.float32]) -> float:
    """The level of a chunk of audio, in dB below full scale."""
    if not audio.size:
        return -120.0
    return float(10 * np.log10(float(np.mean(audio * audio)) + 1e-12))


def _result(task: asyncio.Task[Transcript]) -> Transcript:
    """What a finished transcription heard; nothing if it failed (logged by its task set)."""
    if task.cancelled() or task.exception() is not None:
        return Transcript()
    return task.result()
