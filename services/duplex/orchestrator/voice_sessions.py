"""A conversation's claim on a model in Kubernetes mode: one VoiceSession per conversation.

The orchestrator creates the VoiceSession when a conversation starts, the operator binds it to
a worker that holds (or loads) the model, and the conversation moves to that worker once the
model is resident there; the VoiceSession is deleted when the conversation ends. One watch per
orchestrator follows every VoiceSession it owns (by label), so a conversation learns of its
binding without polling. Each VoiceSession is owned by the orchestrator's Pod: the garbage
collector removes those of a Pod that is gone, and a restarted container (same Pod) deletes
what its predecessor left before it creates any.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from duplex.errors import InvalidInput, ModelLoadFailed, UnknownModel
from duplex.kube import KubeApiError, KubeClient, sleep_backoff
from duplex.orchestrator.config import KubeSettings
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

API_VERSION = "duplex.dev/v1alpha1"
# Every VoiceSession of one orchestrator Pod carries its uid (names may be too long for a label).
OWNER_LABEL = "duplex.dev/orchestrator-uid"


@dataclass
class Claim:
    """One VoiceSession of this orchestrator, as its status was last seen."""

    name: str
    model: str
    status: dict[str, Any] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def worker(self) -> str | None:
        """The worker it is bound to (phase Bound or Active), else None."""
        worker = self.status.get("worker")
        return str(worker) if worker and self.phase in ("Bound", "Active") else None

    @property
    def ready(self) -> bool:
        """Bound, and its model resident on that worker (the operator's Ready condition)."""
        return self.worker is not None and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in self.status.get("conditions") or []
        )

    def raise_if_unservable(self) -> None:
        """UnknownModel or ModelLoadFailed, when the operator says it cannot be served."""
        for cond in self.status.get("conditions") or []:
            if cond.get("type") == "Bound" and cond.get("reason") == "UnknownModel":
                raise UnknownModel(str(cond.get("message", "")))
        if self.phase == "Failed":
            messages = [str(c.get("message", "")) for c in self.status.get("conditions") or []]
            raise ModelLoadFailed("; ".join(m for m in messages if m) or "the session failed")

    def _observe(self, status: dict[str, Any]) -> None:
        if status != self.status:
            self.status = status
            self.changed.set()


class VoiceSessions:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        owner_name: str,
        owner_uid: str,
        *,
        max_duration_seconds: int = 86400,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self._owner_name = owner_name
        self._owner_uid = owner_uid
        self._max_duration = max_duration_seconds
        self._claims: dict[str, Claim] = {}
        self._tasks = TaskSet("voice-sessions")
        self._deleting: set[asyncio.Task[None]] = set()
        self._path = f"/apis/{API_VERSION}/namespaces/{namespace}/voicesessions"
        self._selector = f"{OWNER_LABEL}={owner_uid}"

    @classmethod
    def from_settings(cls, settings: KubeSettings) -> VoiceSessions:
        """From the config, the Pod's identity defaulting to the downward API's variables."""
        name = settings.pod_name or os.environ.get("POD_NAME")
        uid = settings.pod_uid or os.environ.get("POD_UID")
        if not name or not uid:
            raise InvalidInput(
                "Kubernetes mode needs this orchestrator's Pod name and uid "
                "(kube.pod_name/pod_uid, or POD_NAME/POD_UID from the downward API)"
            )
        client = KubeClient.load(settings.kubeconfig, user_agent="duplex-orchestrator")
        namespace = settings.namespace or os.environ.get("POD_NAMESPACE") or client.namespace
        return cls(client, namespace, name, uid, max_duration_seconds=settings.max_duration_seconds)

    async def start(self) -> None:
        """Delete what an earlier process of this Pod left, then follow this Pod's sessions."""
        listing = await self.client.list(self._path, label_selector=self._selector)
        for obj in listing.get("items", []):
            self._delete_later(obj["metadata"]["name"])
        version = str(listing["metadata"].get("resourceVersion", ""))
        self._tasks.spawn(self._follow(version), "watch")

    async def claim(self, model: str, language: str | None, room: str | None) -> Claim:
        """Create the conversation's VoiceSession (its name chosen here, so that a cancelled
        create can still be deleted)."""
        name = f"{self._owner_name[:40].rstrip('-.')}-{uuid.uuid4().hex[:12]}"
        claim = Claim(name, model)
        self._claims[name] = claim
        body = {
            "apiVersion": API_VERSION,
            "kind": "VoiceSession",
            "metadata": {
                "name": name,
                "labels": {OWNER_LABEL: self._owner_uid},
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": self._owner_name,
                        "uid": self._owner_uid,
                        "controller": False,
                        "blockOwnerDeletion": False,
                    }
                ],
            },
            "spec": {
                "modelId": model,
                "language": language or "en",
                "room": (room or name)[:256],
                "maxDurationSeconds": self._max_duration,
            },
        }
        try:
            await self.client.create(self._path, body)
        except BaseException:
            self.release_later(claim)
            raise
        return claim

    async def release(self, claim: Claim) -> None:
        """Delete the VoiceSession: the conversation is over."""
        self._claims.pop(claim.name, None)
        try:
            await self.client.delete(f"{self._path}/{claim.name}")
        except KubeApiError as exc:
            if exc.status != 404:
                raise

    def release_later(self, claim: Claim) -> None:
        """Delete it in the background (a cancelled conversation must not leave it behind)."""
        self._claims.pop(claim.name, None)
        self._delete_later(claim.name)

    def _delete_later(self, name: str) -> None:
        task = self._tasks.spawn(self._delete(name), f"delete:{name}")
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _delete(self, name: str) -> None:
        for attempt in range(5):
            try:
                await self.client.delete(f"{self._path}/{name}")
                return
            except KubeApiError as exc:
                if exc.status == 404:
                    return
                log.warning("deleting VoiceSession %s failed: %s", name, exc)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("deleting VoiceSession %s failed: %s", name, exc)
            await sleep_backoff(attempt)
        # Still there: the garbage collector takes it when this Pod goes.
        log.error("VoiceSession %s could not be deleted", name)

    async def _follow(self, version: str | None) -> None:
        attempt = 0
        while True:
            try:
                if version is None:
                    listing = await self.client.list(self._path, label_selector=self._selector)
                    for obj in listing.get("items", []):
                        self._observe(obj)
                    version = str(listing["metadata"].get("resourceVersion", ""))
                async for event in self.client.watch(
                    self._path, resource_version=version, label_selector=self._selector
                ):
                    obj = event.get("object") or {}
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                attempt = 0
            except KubeApiError as exc:
                if exc.status == 410:  # too old a version: list afresh
                    version = None
                    continue
                log.warning("watching VoiceSessions failed: %s", exc)
                await sleep_backoff(attempt)
                attempt += 1
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("watching VoiceSessions failed: %s", exc)
                await sleep_backoff(attempt)
                attempt += 1

    def _observe(self, obj: dict[str, Any]) -> None:
        claim = self._claims.get(str(obj.get("metadata", {}).get("name", "")))
        if claim is not None:
            claim._observe(dict(obj.get("status") or {}))

    async def aclose(self) -> None:
        # Deletes under way are let finish (briefly): they are what conversations left.
        if self._deleting:
            await asyncio.wait(set(self._deleting), timeout=5)
        await self._tasks.aclose()
        await self.client.aclose()
