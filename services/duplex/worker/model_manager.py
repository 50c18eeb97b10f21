"""Which models are resident on this worker, and for how long.

The manager loads models off the event loop (bounded parallelism), counts references so a model
in use is never unloaded, evicts idle models by TTL and by an LRU cap (both respecting a minimum
residency), and reconciles to a desired model set when something outside (the Kubernetes
operator) decides placement.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from duplex.audio.framer import to_float32
from duplex.audio.loudness import calibrate_gain
from duplex.devices import Device
from duplex.errors import AtCapacity, DuplexError, ModelInUse, ModelLoadFailed, ModelNotPlaced
from duplex.tasks import TaskSet
from duplex.worker.adapters import ModelSpec, TtsAdapter, adapter_for, device_for
from duplex.worker.catalog import Catalog
from duplex.worker.config import ManagerConfig
from duplex.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ResidentModel:
    """A loaded model instance. `refs` counts the leases on this instance."""

    spec: ModelSpec
    adapter: TtsAdapter
    gain: float
    load_seconds: float
    loaded_at: float  # monotonic
    last_used: float  # unix time, reported to discovery
    refs: int = 0
    retired: bool = False  # replaced or unloaded while leased: closed when the last lease ends

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def device(self) -> str:
        return str(self.adapter.device)


@dataclass(eq=False)
class ModelLease:
    """A claim on a resident model; release it exactly once (`ModelManager.release`)."""

    model: ResidentModel
    released: bool = field(default=False)


def _load_blocking(spec: ModelSpec, target_dbfs: float, device: str) -> tuple[TtsAdapter, float]:
    """Load and warm one model; the warm-up audio calibrates its loudness gain."""
    adapter = adapter_for(spec, device_for(spec, device))
    adapter.load()
    voice = spec.voice_or_default(None)
    first, *rest = adapter.warmup_texts
    try:
        chunks = [to_float32(c) for c in adapter.synthesize(first, voice, 1.0)]
        for text in rest:
            for _ in adapter.synthesize(text, voice, 1.0):
                pass
    except Exception as exc:  # boundary: any inference failure is a failed load
        adapter.close()
        raise ModelLoadFailed(f"model {spec.model_id!r} failed its warm-up: {exc}") from exc
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        adapter.close()
        raise ModelLoadFailed(f"model {spec.model_id!r} produced no audio on warm-up")
    return adapter, calibrate_gain(audio, adapter.native_rate, target_dbfs)


class ModelManager:
    def __init__(
        self,
        catalog: Catalog,
        config: ManagerConfig,
        metrics: WorkerMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self._metrics = metrics or WorkerMetrics()
        self._clock = clock
        self._wall = wall_clock
        self._resident: dict[str, ResidentModel] = {}
        self._loading: dict[str, asyncio.Future[ResidentModel]] = {}
        self._load_slots = asyncio.Semaphore(config.max_parallel_loads)
        self._tasks = TaskSet("model-manager")
        self._changed = asyncio.Event()  # wakes the eviction timer
        self._listeners: list[Callable[[], None]] = []
        # Models kept regardless of TTL: the default and preloads, or the desired set once given.
        self._pinned: set[str] = {config.default_model, *config.preload}
        self._desired: set[str] | None = None
        self._reserved = 0  # loads past _make_room, not yet resident
        self.last_error: dict[str, str] = {}
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, follow_model_set: bool = False) -> None:
        """Load the default model (and preloads) and start the eviction timer.

        With `follow_model_set` nothing is loaded: an outside owner (the Pod's model set)
        decides, through `reconcile`, and until it does the desired set is empty.
        """
        if follow_model_set:
            self._desired = set()
            self._pinned = set()
        else:
            self.catalog.get(self.config.default_model)
            for model_id in self.config.preload:
                self.catalog.get(model_id)
            await self.load(self.config.default_model)
            for model_id in self.config.preload:
                self._tasks.spawn(self._preload(model_id), f"preload:{model_id}")
        self._tasks.spawn(self._evict_loop(), "evict")

    async def aclose(self) -> None:
        await self._tasks.aclose()
        for model in list(self._resident.values()):
            model.retired = True
            await asyncio.to_thread(model.adapter.close)
        self._resident.clear()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    def executor(self, device: Device) -> concurrent.futures.ThreadPoolExecutor:
        """The threads that run synthesis on `device`, one pool per device."""
        key = str(device)
        pool = self._executors.get(key)
        if pool is None:
            threads = self.config.synthesis_threads or (
                32 if device.is_gpu else (os.cpu_count() or 1) + 4
            )
            pool = concurrent.futures.ThreadPoolExecutor(threads, f"synth-{key}")
            self._executors[key] = pool
        return pool

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` runs whenever the resident or loading set changes."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        self._changed.set()
        for callback in self._listeners:
            callback()

    # -- queries ---------------------------------------------------------------------------

    def resident_ids(self) -> list[str]:
        return sorted(self._resident)

    def loading_ids(self) -> list[str]:
        return sorted(self._loading)

    def devices(self) -> dict[str, str]:
        """Where each resident model runs (cpu, cuda:0, ...)."""
        return {m.model_id: m.device for m in self._resident.values()}

    def last_used(self) -> dict[str, float]:
        return {m.model_id: m.last_used for m in self._resident.values()}

    def is_resident(self, model_id: str) -> bool:
        return model_id in self._resident

    def in_use(self, model_id: str) -> int:
        model = self._resident.get(model_id)
        return model.refs if model else 0

    def check_placed(self, model_id: str) -> None:
        """Following a model set, only its models may be loaded or used (ModelNotPlaced)."""
        if self._desired is not None and model_id not in self._desired:
            held = ", ".join(sorted(self._desired)) or "none"
            raise ModelNotPlaced(
                f"model {model_id!r} is not in this worker's model set (it holds: {held}); "
                "on Kubernetes the operator places models: a VoiceSession asks for one"
            )

    # -- loading ---------------------------------------------------------------------------

    async def load(self, model_id: str) -> ResidentModel:
        """Make `model_id` resident (idempotent; concurrent callers share one load)."""
        spec = self.catalog.get(model_id)
        self.check_placed(model_id)
        if model_id in self._resident:
            return self._resident[model_id]
        future = self._loading.get(model_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._loading[model_id] = future
            self._tasks.spawn(self._load(spec, future), f"load:{model_id}")
            self._notify()
        # The load belongs to the manager: a caller that goes away must not cancel it.
        return await asyncio.shield(future)

    async def _preload(self, model_id: str) -> None:
        try:
            await self.load(model_id)
        except DuplexError as exc:
            log.error("preload of %s failed: %s", model_id, exc)

    async def _load(self, spec: ModelSpec, future: asyncio.Future[ResidentModel]) -> None:
        model_id = spec.model_id
        try:
            async with self._load_slots:
                await self._make_room(model_id)
                self._reserved += 1  # counts against the cap from here until it is resident
                try:
                    started = self._clock()
                    adapter, gain = await asyncio.to_thread(
                        _load_blocking, spec, self.config.loudness_target_dbfs, self.config.device
                    )
                    elapsed = self._clock() - started
                finally:
                    self._reserved -= 1
            if self._desired is not None and model_id not in self._desired:
                # The model set dropped it while it loaded: keeping it would hold a model
                # nobody placed here, outside the operator's memory accounting.
                await asyncio.to_thread(adapter.close)
                self._metrics.loads.labels(model_id, "discarded").inc()
                raise ModelNotPlaced(f"model {model_id!r} left the model set while it loaded")
            model = ResidentModel(
                spec, adapter, gain, elapsed, loaded_at=self._clock(), last_used=self._wall()
            )
            self._resident[model_id] = model
            self.last_error.pop(model_id, None)
            self._metrics.loads.labels(model_id, "ok").inc()
            self._metrics.load_seconds.labels(model_id).observe(elapsed)
            self._metrics.resident.labels(model_id).set(1)
            log.info("loaded %s in %.2f s (gain %.2f)", model_id, elapsed, gain)
            future.set_result(model)
        except DuplexError as exc:
            self._fail(model_id, future, exc)
        except Exception as exc:  # boundary: a family's loader may raise anything
            self._fail(model_id, future, ModelLoadFailed(f"loading {model_id!r} failed: {exc}"))
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            self._loading.pop(model_id, None)
            self._notify()

    def _fail(self, model_id: str, future: asyncio.Future[ResidentModel], exc: DuplexError) -> None:
        log.error("load of %s failed: %s", model_id, exc)
        self.last_error[model_id] = str(exc)
        self._metrics.loads.labels(model_id, "error").inc()
        future.set_exception(exc)
        future.exception()  # a preload has no awaiter; the error is logged and kept above

    async def _make_room(self, model_id: str) -> None:
        """Evict least-recently-used idle models until one more fits under the cap (loads
        in flight count: each will be resident)."""
        while len(self._resident) + self._reserved >= self.config.max_resident:
            victim = self._lru_victim(exclude=model_id)
            if victim is None:
                raise AtCapacity(
                    f"cannot load {model_id!r}: {len(self._resident)} models resident "
                    f"(cap {self.config.max_resident}) and none is idle and past its minimum "
                    f"residency: {', '.join(self.resident_ids())}"
                )
            await self._unload(victim, reason="lru")

    def _evictable(self, model: ResidentModel, now: float) -> bool:
        return model.refs == 0 and now - model.loaded_at >= self.config.min_residency_seconds

    def _lru_victim(self, exclude: str) -> ResidentModel | None:
        now = self._clock()
        candidates = [
            m
            for m in self._resident.values()
            if m.model_id != exclude
            and self._evictable(m, now)
            # A model set is kept whole: evicting one of it would only load it back.
            and (self._desired is None or m.model_id not in self._desired)
        ]
        # Unpinned models go first; a pinned one only when nothing else can make room.
        candidates.sort(key=lambda m: (m.model_id in self._pinned, m.last_used))
        return candidates[0] if candidates else None

    # -- unloading -------------------------------------------------------------------------

    async def unload(self, model_id: str) -> None:
        """Unload now; refused while a session uses the model."""
        self.catalog.get(model_id)
        model = self._resident.get(model_id)
        if model is None:
            return
        if model.refs:
            raise ModelInUse(f"model {model_id!r} is in use by {model.refs} session(s)")
        if self._desired is None:
            self._pinned.discard(model_id)
        await self._unload(model, reason="request")

    async def _unload(self, model: ResidentModel, reason: str) -> None:
        if self._resident.get(model.model_id) is model:
            del self._resident[model.model_id]
        model.retired = True
        self._metrics.resident.labels(model.model_id).set(0)
        self._metrics.unloads.labels(model.model_id, reason).inc()
        self._notify()
        if model.refs == 0:
            started = self._clock()
            await asyncio.to_thread(model.adapter.close)
            self._metrics.unload_seconds.labels(model.model_id).observe(self._clock() - started)
        log.info("unloaded %s (%s)", model.model_id, reason)
        if self._desired is not None and model.model_id in self._desired:
            # Level-triggered: the model set still names it (an UnloadModel call took it), so
            # it is loaded again; only the model set itself unloads for good.
            log.info("%s is in the model set: loading it again", model.model_id)
            self._tasks.spawn(self._preload(model.model_id), f"reload:{model.model_id}")

    async def reload(self, model_id: str) -> ResidentModel:
        """Load a fresh instance and swap it in; leases on the old one finish undisturbed."""
        old = self._resident.pop(model_id, None)
        try:
            fresh = await self.load(model_id)
        except BaseException:
            if old is not None and model_id not in self._resident:
                self._resident[model_id] = old
            raise
        if old is not None:
            old.retired = True
            if old.refs == 0:
                await asyncio.to_thread(old.adapter.close)
        return fresh

    # -- use -------------------------------------------------------------------------------

    async def acquire(self, model_id: str) -> ModelLease:
        model = await self.load(model_id)
        model.refs += 1
        model.last_used = self._wall()
        return ModelLease(model)

    def release(self, lease: ModelLease) -> None:
        if lease.released:
            return
        lease.released = True
        model = lease.model
        model.refs -= 1
        model.last_used = self._wall()
        if model.refs == 0:
            if model.retired:
                self._tasks.spawn(asyncio.to_thread(model.adapter.close), "close-retired")
            elif self._desired is not None and model.model_id not in self._desired:
                self._tasks.spawn(self._unload(model, reason="model-set"), "unload")
        self._notify()

    def touch(self, model: ResidentModel) -> None:
        model.last_used = self._wall()

    # -- desired set and eviction ------------------------------------------------------------

    async def reconcile(self, desired: Iterable[str]) -> None:
        """Converge on exactly `desired`: load what is missing, unload idle extras.

        Extras still in use are unloaded when their last lease is released. Unknown ids are
        skipped (and reported by `last_error`) so one bad id does not block the rest.
        """
        wanted = set(desired)
        # Errors of an earlier attempt would read as this attempt's result until it ends.
        for model_id in list(self.last_error):
            if model_id in wanted or (self._desired is not None and model_id in self._desired):
                del self.last_error[model_id]
        self._desired = wanted
        self._pinned = set(wanted)
        for model in list(self._resident.values()):
            if model.model_id not in wanted and model.refs == 0:
                await self._unload(model, reason="model-set")
        loads = []
        for model_id in sorted(wanted):
            if model_id not in self.catalog:
                self.last_error[model_id] = f"unknown model id {model_id!r}"
                continue
            if model_id not in self._resident:
                loads.append(self.load(model_id))
        for result in await asyncio.gather(*loads, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, DuplexError):
                raise result

    def evict_idle(self) -> list[ResidentModel]:
        """Models idle past the TTL (not pinned, not in use, past minimum residency)."""
        ttl = self.config.ttl_seconds
        if ttl <= 0:
            return []
        now, wall = self._clock(), self._wall()
        return [
            m
            for m in self._resident.values()
            if m.model_id not in self._pinned
            and self._evictable(m, now)
            and wall - m.last_used >= ttl
        ]

    def _next_eviction_in(self) -> float | None:
        ttl = self.config.ttl_seconds
        if ttl <= 0:
            return None
        now, wall = self._clock(), self._wall()
        waits = [
            max(ttl - (wall - m.last_used), self.config.min_residency_seconds - (now - m.loaded_at))
            for m in self._resident.values()
            if m.model_id not in self._pinned and m.refs == 0
        ]
        return max(0.0, min(waits)) if waits else None

    async def _evict_loop(self) -> None:
        # Sleeps until the earliest moment a model could expire, or until something changes.
        while True:
            for model in self.evict_idle():
                await self._unload(model, reason="ttl")
            self._changed.clear()
            delay = self._next_eviction_in()
            try:
                async with asyncio.timeout(None if delay is None else delay + 0.01):
                    await self._changed.wait()
            except TimeoutError:
                pass
