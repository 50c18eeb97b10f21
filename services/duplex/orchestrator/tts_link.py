"""A conversation's hold on TTS: one session on one worker, from admission to the end.

Capacity is decided once, when the conversation starts (admission): the router's candidates
are asked in turn to start a session, and a worker at its limit answers RESOURCE_EXHAUSTED (its
own count, not a stale report), which passes the request on to the next; when none has room the
conversation is refused as `busy`. The session is then held for every reply, kept alive between
replies with KEEPALIVE, and replaced only when its worker fails (failover), when the worker lost
it (NOT_FOUND, renewed once per reply), or when the wanted model became resident while a
fallback model spoke. So an admitted conversation never loses a reply to capacity.

In Kubernetes mode (a `VoiceSessions` given) the operator owns placement: admission creates the
conversation's VoiceSession instead of asking a worker to load the model, speaks meanwhile only
with models already resident, and once the session is bound, and its model resident on that
worker, the next reply moves there; its TTS sessions are named after the VoiceSession, which is
how the operator sees it Active. The VoiceSession is deleted when the conversation ends, and a
cancelled admission or close deletes it in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

import aiohttp
import grpc

from duplex.discovery import session_id_for
from duplex.errors import (
    AtCapacity,
    DuplexError,
    ModelLoadFailed,
    UnknownModel,
    WorkerUnavailable,
    from_status,
)
from duplex.kube import KubeApiError
from duplex.orchestrator.router import ClientPool, Route, Router, WorkerView
from duplex.orchestrator.voice_sessions import Claim, VoiceSessions
from duplex.rpc.client import Command, TtsClient
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 3.0  # well inside a worker's idle limit (10 s by default)
# Kubernetes mode, nothing resident anywhere: how long a new conversation waits for its model.
READY_WAIT_SECONDS = 120.0
_SESSION_OPTIONS = {"pacing": "realtime", "lead_ms": "100"}


@dataclass(frozen=True)
class TtsSession:
    """A session a worker confirmed: it exists there, for this process, until ended."""

    worker: WorkerView
    session_id: str
    model: str


class TtsLink:
    def __init__(
        self,
        router: Router,
        pool: ClientPool,
        tasks: TaskSet,
        *,
        model: str,
        voice: str | None,
        language: str | None,
        voice_sessions: VoiceSessions | None = None,
        room: str | None = None,
    ) -> None:
        self._router = router
        self._pool = pool
        self._tasks = tasks  # the conversation's: the keepalive lives and dies with it
        self.model = model
        self.voice = voice
        self.language = language
        self.session: TtsSession | None = None
        self._lost = False  # the worker no longer knows our session: renew before speaking
        self._voice_sessions = voice_sessions
        self._room = room
        self.claim: Claim | None = None  # the conversation's VoiceSession (Kubernetes mode)

    def client(self, session: TtsSession) -> TtsClient:
        return self._pool.get(session.worker.addr)

    # -- admission -------------------------------------------------------------------------

    async def admit(self) -> TtsSession:
        """Start the conversation's session; AtCapacity (`busy`) when no worker has room."""
        if self._voice_sessions is not None:
            await self._claim_model(self._voice_sessions)
        try:
            session = await self._start_anywhere(frozenset(), admitting=True)
        except BaseException:
            self._release_later()
            raise
        self._tasks.spawn(self._keepalive(), "tts-keepalive")
        return session

    async def _claim_model(self, voice_sessions: VoiceSessions) -> None:
        try:
            self.claim = await voice_sessions.claim(self.model, self.language, self._room)
        except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The conversation goes on with what is resident; the model is just not claimed.
            log.warning("could not create a VoiceSession for %s: %s", self.model, exc)

    def _release_later(self) -> None:
        claim, self.claim = self.claim, None
        if claim is not None and self._voice_sessions is not None:
            self._voice_sessions.release_later(claim)

    async def _start_anywhere(
        self, exclude: frozenset[str], *, admitting: bool = False
    ) -> TtsSession:
        try:
            routes = await self._router.candidates(self.model, self.language, exclude)
        except UnknownModel:
            if not (admitting and self.claim is not None):
                raise
            # No worker knows it yet: the operator hands workers the catalog entry with it.
            return await self._start_when_ready(self.claim)
        full: list[str] = []
        failed: list[str] = []
        for route in routes:
            if self._voice_sessions is not None and route.model not in route.worker.resident:
                continue  # Kubernetes mode: no worker loads a model the operator did not place
            try:
                session = await self._start(route.worker, route.model)
            except AtCapacity:
                full.append(route.worker.name)
                continue
            except (WorkerUnavailable, UnknownModel, ModelLoadFailed) as exc:
                # Gone, or its view is stale (the model left its catalog or its set): next.
                log.warning("worker %s cannot take a session: %s", route.worker.name, exc)
                if isinstance(exc, WorkerUnavailable):
                    self._router.directory.mark_failed(route.worker.name)
                failed.append(route.worker.name)
                continue
            self._router.directory.mark_ok(route.worker.name)
            self._switch(session)
            if route.load_on is not None and self._voice_sessions is None:
                self._request_load(route)
            return session
        if admitting and self.claim is not None and not full:
            # Nothing resident to speak with meanwhile: wait for the operator to load it.
            return await self._start_when_ready(self.claim)
        if full:
            raise AtCapacity(
                f"every TTS worker for {self.model!r} is at its session limit; "
                "try again in a moment"
            )
        raise WorkerUnavailable(
            f"no TTS worker for {self.model!r} could start a session "
            f"(tried {', '.join(failed) or 'none'})"
        )

    async def _start(self, worker: WorkerView, model: str) -> TtsSession:
        session_id = uuid.uuid4().hex
        if self.claim is not None:
            # Named after the VoiceSession: the bound worker's record shows it is served.
            session_id = session_id_for(self.claim.name, session_id[:12])
        options = dict(_SESSION_OPTIONS)
        # The conversation's voice belongs to its model; a fallback speaks with its own.
        if self.voice and model == self.model:
            options["voice"] = self.voice
        client = self._pool.get(worker.addr)
        try:
            await client.start_session(session_id, model, options)
        except asyncio.CancelledError:
            # The worker may have started it as the call was cancelled: end it regardless.
            self._pool.end_later(worker.addr, session_id)
            raise
        except grpc.aio.AioRpcError as exc:
            raise from_status(exc.code(), exc.details() or "") from None
        return TtsSession(worker, session_id, model)

    def _switch(self, session: TtsSession) -> None:
        old, self.session = self.session, session
        self._lost = False
        if old is not None and old != session:
            self._pool.end_later(old.worker.addr, old.session_id)

    def _request_load(self, route: Route) -> None:
        assert route.load_on is not None
        client = self._pool.get(route.load_on.addr)
        self._tasks.spawn(self._load(client, route.load_on.name), f"load:{self.model}")

    async def _load(self, client: TtsClient, worker: str) -> None:
        try:
            await client.load_model(self.model, preload_only=True)
        except grpc.aio.AioRpcError as exc:
            log.warning("asking %s to load %s failed: %s", worker, self.model, exc.details())

    # -- during the conversation -------------------------------------------------------------

    async def for_reply(self) -> TtsSession:
        """The session a reply speaks with: renewed if lost, upgraded from a fallback if the
        wanted model has become resident somewhere with room."""
        session = self.session
        if session is None:
            raise WorkerUnavailable("the conversation has no TTS session")
        if self._lost:
            return await self.renew(session)
        if self.claim is not None:
            await self._move_to_bound(session, self.claim)
        elif session.model != self.model:
            await self._upgrade(session)
        assert self.session is not None
        return self.session

    async def renew(self, lost: TtsSession) -> TtsSession:
        """The worker forgot our session (a restart, or it ended it): start another there,
        or anywhere."""
        log.info(
            "TTS session %s on %s was lost; starting another", lost.session_id, lost.worker.name
        )
        try:
            session = await self._start(lost.worker, lost.model)
        except (AtCapacity, WorkerUnavailable, UnknownModel):
            return await self._start_anywhere(frozenset())
        self._switch(session)
        return session

    async def failover(self, failed: TtsSession, why: str) -> TtsSession:
        """Its worker failed mid-reply: a session on another worker."""
        log.warning("worker %s failed (%s); failing over", failed.worker.name, why)
        self._router.directory.mark_failed(failed.worker.name)
        self._pool.end_later(failed.worker.addr, failed.session_id)
        if self.session == failed:
            self.session = None
        try:
            return await self._start_anywhere(frozenset({failed.worker.name}))
        except AtCapacity as exc:
            raise WorkerUnavailable(
                f"the TTS worker {failed.worker.name} failed and no other has room: {exc}"
            ) from None

    async def _upgrade(self, fallback: TtsSession) -> None:
        try:
            routes = await self._router.candidates(self.model, self.language)
        except DuplexError:
            return
        for route in routes:
            if route.model != self.model or self.model not in route.worker.resident:
                break
            try:
                session = await self._start(route.worker, self.model)
            except DuplexError:
                continue
            log.info("switching from %s to %s, now resident", fallback.model, self.model)
            self._switch(session)
            return

    async def _start_when_ready(self, claim: Claim) -> TtsSession:
        try:
            async with asyncio.timeout(READY_WAIT_SECONDS):
                while True:
                    claim.changed.clear()
                    claim.raise_if_unservable()
                    if claim.ready:
                        session = await self._start_on_bound(claim)
                        if session is not None:
                            return session
                    await claim.changed.wait()
        except TimeoutError:
            raise WorkerUnavailable(
                f"no TTS worker has {self.model!r} loaded, and VoiceSession {claim.name} was "
                f"not ready within {READY_WAIT_SECONDS:.0f} s (phase {claim.phase})"
            ) from None

    async def _start_on_bound(self, claim: Claim) -> TtsSession | None:
        """A session on the worker the VoiceSession is bound to, if the model is resident
        there as discovery sees it; None when it is not (yet)."""
        bound = claim.worker
        try:
            routes = await self._router.candidates(self.model, self.language)
        except DuplexError:
            return None
        for route in routes:
            if route.worker.name != bound or self.model not in route.worker.resident:
                continue
            try:
                session = await self._start(route.worker, self.model)
            except DuplexError as exc:
                log.warning("cannot start on the bound worker %s: %s", bound, exc)
                return None
            self._switch(session)
            return session
        return None

    async def _move_to_bound(self, current: TtsSession, claim: Claim) -> None:
        """Kubernetes mode: to the worker the operator bound the VoiceSession to, once its
        model is resident there (until then the current session speaks on)."""
        bound = claim.worker
        if bound is None or (current.worker.name == bound and current.model == self.model):
            return
        if await self._start_on_bound(claim) is not None:
            log.info("moved to %s, the worker VoiceSession %s is bound to", bound, claim.name)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            session = self.session
            if session is None or self._lost:
                continue
            try:
                await self.client(session).control(session.session_id, Command.KEEPALIVE)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and self.session == session:
                    self._lost = True
                elif exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    # A worker that predates KEEPALIVE: it keeps idle sessions for longer.
                    log.warning(
                        "worker %s refuses KEEPALIVE: %s", session.worker.name, exc.details()
                    )
                    return

    async def aclose(self) -> None:
        """End the session and delete the VoiceSession (the conversation is over)."""
        try:
            await self._end_session()
        finally:
            await self._release()

    async def _end_session(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        try:
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                async with asyncio.timeout(3):
                    await self.client(session).end_session(session.session_id)
        except asyncio.CancelledError:
            self._pool.end_later(session.worker.addr, session.session_id)
            raise

    async def _release(self) -> None:
        claim = self.claim
        if claim is None or self._voice_sessions is None:
            return
        self.claim = None
        try:
            async with asyncio.timeout(5):
                await self._voice_sessions.release(claim)
        except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("deleting VoiceSession %s failed, again later: %s", claim.name, exc)
            self._voice_sessions.release_later(claim)
        except asyncio.CancelledError:
            self._voice_sessions.release_later(claim)
            raise
