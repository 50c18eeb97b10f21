"""One active operator among replicas: leader election on a coordination.k8s.io Lease.

The rules are client-go's. A candidate takes the Lease when it is free (no holder) or when its
record has not changed for `lease_seconds` as timed on the candidate's own clock (so clocks
need not agree, only tick at the same rate); every change goes through the resourceVersion, so
of two candidates only one wins. The leader renews every `retry_seconds`; if it cannot renew
for `renew_seconds` (< `lease_seconds`) it stops acting before anyone else may start. Its
term's work is a task that is cancelled *and awaited* before the elector reports the term
over, and `leading()` turns False at the same moment, for writes to check. On shutdown the
leader gives the Lease up, so a standby takes over at once instead of after a lease.

kubernetes_asyncio ships an elector too; it is not used: it leaves its leader task running
unawaited when leadership ends, has no timeout on a renewal that hangs (the leader would go
on acting through a partition), and writes local time as UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from duplex.kube import KubeApiError, KubeClient
from duplex_operator.config import LeaderElection

log = logging.getLogger(__name__)


def micro_time(ts: float) -> str:
    """metav1.MicroTime, as Lease times are written."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    lease_seconds: float
    version: str  # resourceVersion: a changed record is a live holder


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        identity: str,
        settings: LeaderElection,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.identity = identity
        self.settings = settings
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._clock = clock
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._valid_until = 0.0  # monotonic: acting is safe until then
        self.terms = 0

    def leading(self) -> bool:
        return self._clock() < self._valid_until

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Campaign, run `lead()` for each term won, until cancelled (then give up the Lease)."""
        try:
            while True:
                await self._acquire()
                self.terms += 1
                log.info("%s leads (term %d)", self.identity, self.terms)
                await self._lead(lead)
                log.warning("%s lost the lease; standing by", self.identity)
        finally:
            if self._valid_until > 0:
                self._valid_until = 0.0
                await asyncio.shield(self._release())

    async def _acquire(self) -> None:
        # Polled, as client-go does: a watch would not see a holder that silently died.
        while True:
            if await self._try(timeout=self.settings.retry_seconds):
                return
            await asyncio.sleep(self.settings.retry_seconds)

    async def _lead(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        work = asyncio.create_task(lead(), name="leader-term")
        try:
            while not work.done():
                done, _ = await asyncio.wait([work], timeout=self.settings.retry_seconds)
                if done:
                    break
                if not await self._renew():
                    break
        finally:
            # The term is over before anything else happens: no write outlives leadership.
            self._valid_until = min(self._valid_until, self._clock())
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

    async def _renew(self) -> bool:
        """Renew until it works or the renew deadline passes; False when it passed."""
        while True:
            left = self._valid_until - self._clock()
            if left <= 0:
                return False
            if await self._try(timeout=left):
                return True
            await asyncio.sleep(min(self.settings.retry_seconds, max(0.0, left)))

    async def _try(self, *, timeout: float) -> bool:
        """One attempt to take or renew the Lease."""
        started = self._clock()
        try:
            async with asyncio.timeout(timeout):
                taken = await self._try_once(started)
        except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("lease %s: %s", self.settings.lease_name, exc)
            return False
        if taken:
            # Safe to act for renew_seconds from when the request left, not when it answered.
            self._valid_until = started + self.settings.renew_seconds
        return taken

    async def _try_once(self, started: float) -> bool:
        name = self.settings.lease_name
        answer = await self.client.request_raw("GET", f"{self._path}/{name}", timeout=30)
        now = time.time()
        if answer.status == 404:
            lease: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name},
                "spec": self._spec(now, now, transitions=0),
            }
            created = await self.client.request_raw("POST", self._path, lease, timeout=30)
            return self._won(created.status, 201)
        if answer.status != 200:
            raise answer.error()
        lease = answer.json()
        spec: dict[str, Any] = lease.get("spec") or {}
        record = LeaseRecord(
            holder=str(spec.get("holderIdentity") or ""),
            lease_seconds=float(spec.get("leaseDurationSeconds") or self.settings.lease_seconds),
            version=str(lease["metadata"].get("resourceVersion", "")),
        )
        if record != self._observed:
            self._observed, self._observed_at = record, started
        ours = record.holder == self.identity
        expired = self._clock() - self._observed_at >= record.lease_seconds
        if record.holder and not ours and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        acquired = parse_micro(spec.get("acquireTime")) if ours else None
        lease["spec"] = self._spec(acquired or now, now, transitions=transitions)
        replaced = await self.client.request_raw("PUT", f"{self._path}/{name}", lease, timeout=30)
        return self._won(replaced.status, 200)

    def _won(self, status: int, expected: int) -> bool:
        if status == 409:  # another candidate changed it first
            return False
        if status != expected:
            raise KubeApiError(status, "", f"unexpected answer {status} on the lease")
        return True

    def _spec(self, acquired: float, renewed: float, *, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_seconds)),
            "acquireTime": micro_time(acquired),
            "renewTime": micro_time(renewed),
            "leaseTransitions": transitions,
        }

    async def _release(self) -> None:
        """Give the Lease up (no holder) so that a standby need not wait out the lease."""
        path = f"{self._path}/{self.settings.lease_name}"
        try:
            async with asyncio.timeout(self.settings.retry_seconds):
                answer = await self.client.request_raw("GET", path)
                if answer.status != 200:
                    return
                lease = answer.json()
                if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                    return
                lease["spec"] = {
                    **lease["spec"],
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "renewTime": micro_time(time.time()),
                }
                await self.client.request_raw("PUT", path, lease)
                log.info("%s gave up the lease", self.identity)
        except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not give up the lease: %s", exc)


def parse_micro(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
