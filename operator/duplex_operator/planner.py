"""One reconcile pass as a pure function: the observed world in, the changes to make out.

Level-triggered: every pass starts from what the API server and Redis say now, so the result is
the same whether the operator ran all along or was restarted a moment ago. What must survive a
restart lives in the cluster: model sets and the time each model entered a set in Pod
annotations, session bindings and load failures in the resources' status. The only in-memory
state is when a session was last seen bound to a worker, when a worker last held a model, and
when creating a pool's Pod last failed; after a restart the first two start at the restart
time, which can delay an eviction by one TTL (or a scale-down by one grace period) but never
make it early.

Capacity: a model is placed on as many Pods as `minResident` asks, one when a session wants it,
and one more whenever every Pod holding it serves its pool's `max_sessions_per_pod` (scale
out). Copies beyond that are evicted after `ttlSeconds` idle, and a Pod left empty is removed
after its pool's `scale_down_seconds` (scale in), down to `min_pods`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from duplex.discovery import WorkerRecord, voice_session_of
from duplex.modelset import MODEL_ADDED, MODEL_SET, MODEL_SPECS, format_model_set
from duplex_operator.config import DEFAULT_SCALE_DOWN_SECONDS, OperatorConfig, WorkerPool
from duplex_operator.pods import model_set_metadata, worker_pod
from duplex_operator.resources import (
    ANNOTATION_BUDGET,
    ENTRY_LIMIT,
    InvalidObject,
    TtsModel,
    VoiceSession,
    WorkerPod,
    format_time,
    parse_time,
)

# Kept for the tests and the README: the default grace before an empty Pod is removed.
EMPTY_POD_GRACE_SECONDS = DEFAULT_SCALE_DOWN_SECONDS
# After a Pod of a pool could not be created, the next try waits this long (doubling).
CREATE_RETRY_SECONDS = 5.0
CREATE_RETRY_MAX_SECONDS = 300.0
# Reasons a TTSModel's Ready condition turns False with, told once as a Warning event.
_STATUS_WARNINGS = frozenset({"SpecTooLarge", "PodCreateFailed"})
# Event reasons that are warnings; every other reason is Normal.
WARNINGS = frozenset(
    {"LoadFailed", "Failed", "WorkerLost", "SpecTooLarge", "InvalidSpec", "PodCreateFailed"}
)


@dataclass(frozen=True)
class Event:
    kind: str  # TTSModel, VoiceSession or Pod
    name: str
    uid: str
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class World:
    models: list[TtsModel]
    sessions: list[VoiceSession]
    pods: list[WorkerPod]
    records: dict[str, WorkerRecord]
    now: float
    # Set when Redis could not be read: `records` is then empty and means nothing.
    redis_error: str | None = None
    invalid: list[InvalidObject] = field(default_factory=list)


@dataclass
class Plan:
    create_pods: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    patch_pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # merge patches
    model_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # changed only
    session_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # changed only
    events: list[Event] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.create_pods
            or self.delete_pods
            or self.patch_pods
            or self.model_status
            or self.session_status
        )

    @property
    def writes(self) -> int:
        """API writes the plan takes, events included."""
        return (
            len(self.create_pods)
            + len(self.delete_pods)
            + len(self.patch_pods)
            + len(self.model_status)
            + len(self.session_status)
            + len(self.events)
        )


def condition(
    old: dict[str, Any],
    kind: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: float,
) -> dict[str, Any]:
    """A metav1.Condition (status None: Unknown); lastTransitionTime moves only on a flip."""
    value = "Unknown" if status is None else "True" if status else "False"
    previous = next((c for c in old.get("conditions") or [] if c.get("type") == kind), None)
    since = (
        previous["lastTransitionTime"]
        if previous is not None and previous.get("status") == value
        else format_time(now)
    )
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def _cond_status(status: dict[str, Any], kind: str) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


@dataclass
class _CreateFailure:
    message: str
    retry_at: float
    delay: float


class Planner:
    def __init__(self, config: OperatorConfig, started_at: float) -> None:
        self.config = config
        self.pools = {p.name: p for p in config.pools}
        self.started_at = started_at
        # (pod, model id) -> last time a live VoiceSession was bound there.
        self.last_bound: dict[tuple[str, str], float] = {}
        # pod -> last time its model set was not empty (the grace for scale-down counts from it).
        self.last_held: dict[str, float] = {}
        # pool -> why creating its last Pod failed, and when to try again.
        self.create_failures: dict[str, _CreateFailure] = {}

    def plan(self, world: World) -> Plan:
        return _Pass(self, world).run()

    def pod_create_failed(self, pool: str, message: str, now: float) -> None:
        """The API server refused a Pod of `pool` (e.g. admission): back off, say why."""
        old = self.create_failures.get(pool)
        delay = min(CREATE_RETRY_MAX_SECONDS, old.delay * 2) if old else CREATE_RETRY_SECONDS
        self.create_failures[pool] = _CreateFailure(message, now + delay, delay)

    def pod_created(self, pool: str) -> None:
        self.create_failures.pop(pool, None)


class _Pass:
    """The working state of one pass (kept apart so the planner itself stays small)."""

    def __init__(self, planner: Planner, world: World) -> None:
        self.p = planner
        self.cfg = planner.config
        self.world = world
        self.now = world.now
        self.plan = Plan()
        # None: Redis is out, nothing is known of what workers hold or serve.
        self.records: dict[str, WorkerRecord] | None = (
            None if world.redis_error is not None else world.records
        )
        self.by_id: dict[str, TtsModel] = {}
        self.duplicates: dict[str, str] = {}  # TTSModel name -> the one that owns its modelId
        for model in sorted(world.models, key=lambda m: (m.created, m.name)):
            if model.model_id in self.by_id:
                self.duplicates[model.name] = self.by_id[model.model_id].name
            else:
                self.by_id[model.model_id] = model
        self.pods = {p.name: p for p in world.pods if not p.deleting}
        self.all_names = {p.name for p in world.pods}
        self.sets = {n: list(p.model_set) for n, p in self.pods.items()}
        self.added = {n: dict(p.added) for n, p in self.pods.items()}
        self.new_pods: dict[str, WorkerPool] = {}
        self.failed: dict[str, str] = {}
        for model in self.by_id.values():
            message = model.load_failed()
            if message is not None:
                self.failed[model.model_id] = message
        self.unplaceable: dict[str, tuple[str, str]] = {}  # model id -> (reason, message)
        self.too_large: set[str] = set()
        for model in self.by_id.values():
            if model.entry_bytes > ENTRY_LIMIT:
                self.too_large.add(model.model_id)
                self.unplaceable[model.model_id] = (
                    "SpecTooLarge",
                    f"its catalog entry takes {model.entry_bytes // 1024} KiB; a worker Pod's "
                    f"annotations hold at most {ENTRY_LIMIT // 1024} KiB of one model: shorten "
                    "options, voices or description",
                )
        self.bound: dict[tuple[str, str], int] = defaultdict(int)
        self.wanted_by: dict[str, list[VoiceSession]] = defaultdict(list)
        # Sessions each Pod serves or is about to (see `bind`).
        self.occupancy: dict[str, int] = defaultdict(int)
        # Models whose every holder is at its pool's session target: they get one more.
        self.pressure: dict[str, TtsModel] = {}

    # -- helpers -----------------------------------------------------------------------------

    def event(self, kind: str, name: str, uid: str, reason: str, message: str) -> None:
        kind_type = "Warning" if reason in WARNINGS else "Normal"
        self.plan.events.append(Event(kind, name, uid, kind_type, reason, message))

    def model_event(self, model: TtsModel, reason: str, message: str) -> None:
        self.event("TTSModel", model.name, model.uid, reason, message)

    def pool_of(self, name: str) -> WorkerPool | None:
        if name in self.new_pods:
            return self.new_pods[name]
        pod = self.pods.get(name)
        return self.p.pools.get(pod.pool) if pod else None

    def holders(self, model_id: str) -> list[str]:
        return sorted(n for n, s in self.sets.items() if model_id in s)

    def used_mib(self, name: str) -> int:
        return sum(self.by_id[m].memory_mib for m in self.sets[name] if m in self.by_id)

    def capacity_mib(self, name: str) -> int:
        """Model memory Pod `name` holds: its GPU's, as its worker read it from the device, in a
        GPU pool (less what CUDA itself takes); else, and until then, its pool's size."""
        pool = self.pool_of(name)
        if pool is None:
            return 0
        record = (self.records or {}).get(name)
        if pool.gpu and record is not None and isinstance(record.gpu_memory_mib, dict):
            sizes = [v for v in record.gpu_memory_mib.values() if isinstance(v, int) and v > 0]
            if sizes:  # one GPU per Pod; were there more, the smallest bounds every model
                return max(0, min(sizes) - pool.gpu_reserve_mib)
        return pool.memory_mib

    def annotation_bytes(self, name: str, extra: TtsModel | None = None) -> int:
        """About what the Pod's annotations take with its set (plus `extra`), in bytes."""
        pool = self.pool_of(name)
        models = [self.by_id[m] for m in self.sets[name] if m in self.by_id]
        if extra is not None:
            models.append(extra)
        fixed = sum(len(k) + len(v) for k, v in (pool.annotations if pool else {}).items())
        # Per model: its id in the set, its entry in the specs list, its time in the added map.
        return fixed + 256 + sum(m.entry_bytes + 2 * len(m.model_id) + 24 for m in models)

    def resident(self, name: str, model_id: str) -> bool:
        record = (self.records or {}).get(name)
        return record is not None and model_id in record.resident_models

    def need(self, model: TtsModel) -> int:
        if model.model_id in self.failed or model.model_id in self.too_large:
            return 0
        return max(model.min_resident, 1 if self.wanted_by.get(model.model_id) else 0)

    def target(self, name: str) -> int:
        pool = self.pool_of(name)
        return pool.target_sessions if pool else 0

    def limit(self, name: str) -> int:
        pool = self.pool_of(name)
        return pool.max_sessions if pool else 0

    # -- the pass ----------------------------------------------------------------------------

    def run(self) -> Plan:
        self.collect_load_failures()
        self.drop_oversize()
        live = self.settle_sessions()
        self.place()
        self.ensure_min_pods()
        self.bind(live)
        self.scale_out()
        self.evict()
        self.scale_down()
        self.emit_pod_changes()
        self.model_statuses()
        self.invalid_statuses()
        for key in [k for k in self.p.last_bound if k[0] not in self.sets]:
            del self.p.last_bound[key]
        for name in [n for n in self.p.last_held if n not in self.sets]:
            del self.p.last_held[name]
        return self.plan

    def collect_load_failures(self) -> None:
        for name, record in (self.records or {}).items():
            if name not in self.sets or record.model_set is None:
                continue
            for model_id in list(self.sets[name]):
                error = record.model_errors.get(model_id)
                if (
                    not error
                    or model_id not in record.model_set
                    or model_id in record.resident_models
                    or model_id in record.loading_models
                ):
                    continue
                self.sets[name].remove(model_id)
                model = self.by_id.get(model_id)
                if model is not None and model_id not in self.failed:
                    self.failed[model_id] = f"worker {name}: {error}"
                    self.model_event(model, "LoadFailed", self.failed[model_id])

    def drop_oversize(self) -> None:
        # A spec that grew past what an annotation holds leaves every set (its Pods would
        # refuse the patch); its status says why.
        for model_id in self.too_large:
            for name in self.holders(model_id):
                self.sets[name].remove(model_id)

    def settle_sessions(self) -> list[VoiceSession]:
        live = []
        for session in self.world.sessions:
            if session.final:
                continue
            started = parse_time(session.status.get("startedTime")) or session.created
            if self.now - started >= session.max_duration_seconds:
                self.finish(
                    session,
                    "Ended",
                    "MaxDuration",
                    f"ended after maxDurationSeconds={session.max_duration_seconds}",
                )
                continue
            model = self.by_id.get(session.model_id)
            if model is None:
                self.set_session(
                    session,
                    phase="Pending",
                    worker=None,
                    conditions=[
                        condition(
                            session.status,
                            "Bound",
                            False,
                            "UnknownModel",
                            f"no TTSModel has modelId {session.model_id!r}",
                            session.generation,
                            self.now,
                        )
                    ],
                )
                continue
            if session.model_id in self.failed:
                self.finish(
                    session,
                    "Failed",
                    "LoadFailed",
                    f"model {session.model_id} cannot be loaded: {self.failed[session.model_id]}",
                )
                continue
            live.append(session)
            self.wanted_by[session.model_id].append(session)
        return live

    def place(self) -> None:
        for model in sorted(self.by_id.values(), key=lambda m: (m.created, m.name)):
            have = len(self.holders(model.model_id))
            while have < self.need(model) and self.add_holder(model) is not None:
                have += 1

    def add_holder(self, model: TtsModel, *, with_room: bool = False) -> str | None:
        """Place one more copy of `model`: on the tightest Pod it fits, else on a new Pod."""
        target = self.best_fit(model, with_room=with_room) or self.new_pod_for(model)
        if target is None:
            return None
        self.sets[target].append(model.model_id)
        self.added[target][model.model_id] = self.now
        self.model_event(model, "Placed", f"placed on worker {target}")
        return target

    def best_fit(self, model: TtsModel, *, with_room: bool = False) -> str | None:
        candidates = []
        for name, models in self.sets.items():
            pool = self.pool_of(name)
            if pool is None or pool.gpu != model.gpu or model.model_id in models:
                continue
            if with_room and self.occupancy[name] >= self.target(name):
                continue
            free = self.capacity_mib(name) - self.used_mib(name) - model.memory_mib
            if free >= 0 and self.annotation_bytes(name, model) <= ANNOTATION_BUDGET:
                candidates.append((free, name))
        # Tightest fit first: whole pods stay free for large models (and can be scaled down).
        return min(candidates)[1] if candidates else None

    def new_pod_for(self, model: TtsModel) -> str | None:
        pools = [p for p in self.cfg.pools if p.gpu == model.gpu]
        if not pools:
            kind = "GPU" if model.gpu else "CPU"
            self.unplaceable[model.model_id] = ("NoPool", f"no {kind} worker pool is configured")
            return None
        fitting = [p for p in pools if p.memory_mib >= model.memory_mib]
        if not fitting:
            largest = max(p.memory_mib for p in pools)
            self.unplaceable[model.model_id] = (
                "NoCapacity",
                f"needs {model.memory_mib} MiB; the largest pool holds {largest} MiB per worker",
            )
            return None
        refused = []
        for pool in fitting:
            failure = self.p.create_failures.get(pool.name)
            if failure is not None and self.now < failure.retry_at:
                refused.append(f"{pool.name}: {failure.message}")
                continue
            if self.pool_size(pool) < pool.max_pods:
                name = self.create_pod(pool)
                if name is not None:
                    return name
        if refused:
            self.unplaceable[model.model_id] = (
                "PodCreateFailed",
                "the API server refused a new worker Pod (" + "; ".join(refused) + ")",
            )
            return None
        self.unplaceable[model.model_id] = (
            "NoCapacity",
            "every worker pool that could host it is full ("
            + ", ".join(f"{p.name}: {p.max_pods} pods" for p in fitting)
            + ")",
        )
        return None

    def pool_size(self, pool: WorkerPool) -> int:
        return sum(1 for name in self.sets if self.pool_of(name) is pool)

    def create_pod(self, pool: WorkerPool) -> str | None:
        """A new Pod under the first of the pool's names that is free.

        None while Pods still terminating hold every name: a later pass creates it. The names
        are bounded because the workers' Role grants each by name (WorkerPool.name_slots).
        """
        name = next((n for n in self.cfg.worker_pod_names(pool) if n not in self.all_names), None)
        if name is None:
            return None
        self.all_names.add(name)
        self.new_pods[name] = pool
        self.sets[name] = []
        self.added[name] = {}
        return name

    def ensure_min_pods(self) -> None:
        for pool in self.cfg.pools:
            while self.pool_size(pool) < pool.min_pods:
                if self.create_pod(pool) is None:
                    break

    # -- binding -----------------------------------------------------------------------------

    def bind(self, live: list[VoiceSession]) -> None:
        for name, record in (self.records or {}).items():
            self.occupancy[name] = record.active_sessions
        # Sessions already bound keep their worker; count them before choosing for new ones.
        keep: list[tuple[VoiceSession, str | None]] = []
        rebind: list[VoiceSession] = []
        for session in live:
            worker = session.worker
            if worker is not None and session.model_id in self.sets.get(worker, []):
                keep.append((session, worker))
                if self.serving(worker, session.name) is not True:
                    # Not yet on the worker: its record does not count it.
                    self.occupancy[worker] += 1
            else:
                rebind.append(session)
        for session in sorted(rebind, key=lambda s: (s.created, s.name)):
            chosen = self.choose(session)
            if session.worker is not None:
                self.event(
                    "VoiceSession",
                    session.name,
                    session.uid,
                    "WorkerLost",
                    f"worker {session.worker} is gone or no longer holds {session.model_id}",
                )
            if chosen is not None:
                self.occupancy[chosen] += 1
            keep.append((session, chosen))
        for session, worker in keep:
            self.set_binding(session, worker)

    def choose(self, session: VoiceSession) -> str | None:
        """A holder below its session target, else one below its limit (and the model gets
        one more holder), else a new holder; resident first, least occupied first."""
        model = self.by_id[session.model_id]
        if self.need(model) == 0:
            return None  # it cannot be placed at all (a spec too large)
        holders = self.holders(session.model_id)

        def best(names: list[str]) -> str:
            return min(
                names, key=lambda n: (not self.resident(n, model.model_id), self.occupancy[n], n)
            )

        roomy = [n for n in holders if self.occupancy[n] < self.target(n)]
        if roomy:
            return best(roomy)
        if holders:
            self.pressure[model.model_id] = model
        open_ = [n for n in holders if self.occupancy[n] < self.limit(n)]
        if open_:
            return best(open_)
        added = self.add_holder(model, with_room=True)
        if added is None and holders and model.model_id not in self.unplaceable:
            self.unplaceable[model.model_id] = (
                "NoCapacity",
                "every worker holding it is at its session limit",
            )
        return added

    def scale_out(self) -> None:
        for model_id, model in sorted(self.pressure.items()):
            holders = self.holders(model_id)
            if any(self.occupancy[n] < self.target(n) for n in holders):
                continue  # a holder was added while binding
            before = self.unplaceable.get(model_id)
            if self.add_holder(model, with_room=True) is None:
                # Served all the same (past the target, within the limit): still Ready.
                if before is None:
                    self.unplaceable.pop(model_id, None)
                else:
                    self.unplaceable[model_id] = before

    def serving(self, worker: str, session: str) -> bool | None:
        """Whether the worker reports a TTS session for the VoiceSession (None: unknown)."""
        if self.records is None:
            return None
        record = self.records.get(worker)
        return record is not None and any(
            voice_session_of(sid) == session for sid in record.session_ids
        )

    def set_binding(self, session: VoiceSession, worker: str | None) -> None:
        gen, old = session.generation, session.status
        if worker is None:
            reason, message = self.unplaceable.get(
                session.model_id, ("NoWorker", f"waiting for a worker for {session.model_id}")
            )
            self.set_session(
                session,
                phase="Pending",
                worker=None,
                conditions=[condition(old, "Bound", False, reason, message, gen, self.now)],
            )
            return
        self.bound[(worker, session.model_id)] += 1
        self.p.last_bound[(worker, session.model_id)] = self.now
        same = session.worker == worker
        serving = self.serving(worker, session.name)
        if serving is None:  # Redis is out: what was seen last stands
            phase = session.phase if same and session.phase in ("Bound", "Active") else "Bound"
        else:
            phase = "Active" if serving else "Bound"
        if not same:
            self.event(
                "VoiceSession", session.name, session.uid, "Bound", f"bound to worker {worker}"
            )
        elif phase == "Active" and session.phase != "Active":
            self.event(
                "VoiceSession", session.name, session.uid, "Active", f"served by worker {worker}"
            )
        if self.records is None:
            unknown = f"worker records cannot be read: {self.world.redis_error}"
            ready = next(
                (c for c in old.get("conditions") or [] if c.get("type") == "Ready"),
                condition(old, "Ready", None, "RedisUnavailable", unknown, gen, self.now),
            )
        else:
            resident = self.resident(worker, session.model_id)
            ready = condition(
                old,
                "Ready",
                resident,
                "Resident" if resident else "Loading",
                f"{session.model_id} is {'loaded' if resident else 'loading'} on {worker}",
                gen,
                self.now,
            )
        bound = condition(old, "Bound", True, "Bound", f"bound to worker {worker}", gen, self.now)
        extra = {}
        if phase == "Active" and not old.get("startedTime"):
            extra["startedTime"] = format_time(self.now)
        self.set_session(
            session, phase=phase, worker=worker, conditions=[bound, ready], extra=extra
        )

    def worker_addr(self, name: str) -> str | None:
        record = (self.records or {}).get(name)
        if record is not None and record.addr:
            return record.addr
        pod = self.pods.get(name)
        if pod is not None and pod.ip:
            return f"{pod.ip}:{pod.port}"
        return None

    def set_session(
        self,
        session: VoiceSession,
        *,
        phase: str,
        worker: str | None,
        conditions: list[dict[str, Any]],
        extra: dict[str, Any] | None = None,
    ) -> None:
        status: dict[str, Any] = {
            "phase": phase,
            "observedGeneration": session.generation,
            "conditions": conditions,
        }
        if worker is not None:
            status["worker"] = worker
            addr = self.worker_addr(worker)
            if self.records is None and session.worker == worker:
                addr = session.status.get("workerAddr") or addr  # keep what Redis said last
            if addr:
                status["workerAddr"] = addr
        for kept in ("startedTime", "endedTime"):
            if session.status.get(kept):
                status[kept] = session.status[kept]
        status.update(extra or {})
        self.update_session(session, status)

    def finish(self, session: VoiceSession, phase: str, reason: str, message: str) -> None:
        status = {
            **{k: v for k, v in session.status.items() if k not in ("conditions",)},
            "phase": phase,
            "endedTime": format_time(self.now),
            "observedGeneration": session.generation,
            "conditions": [
                condition(
                    session.status,
                    "Ready",
                    False,
                    reason,
                    message,
                    session.generation,
                    self.now,
                )
            ],
        }
        self.event("VoiceSession", session.name, session.uid, phase, message)
        self.update_session(session, status)

    def update_session(self, session: VoiceSession, status: dict[str, Any]) -> None:
        if status != session.status:
            # A merge patch leaves keys it does not name: clear what the new status drops.
            patch: dict[str, Any] = {k: None for k in session.status if k not in status}
            patch.update(status)
            self.plan.session_status[session.name] = patch

    # -- eviction and scale-in -----------------------------------------------------------------

    def evict(self) -> None:
        if self.records is None:
            return  # when each model was last used is not known
        for name in sorted(self.sets):
            if name in self.new_pods:
                continue
            record = self.records.get(name)
            pod = self.pods[name]
            for model_id in list(self.sets[name]):
                if self.bound.get((name, model_id)):
                    continue
                model = self.by_id.get(model_id)
                if model is None:  # its TTSModel was deleted
                    self.sets[name].remove(model_id)
                    continue
                if model.ttl_seconds <= 0 or len(self.holders(model_id)) - 1 < self.need(model):
                    continue
                since = self.added[name].get(model_id, pod.created)
                if self.now - since < model.min_residency_seconds:
                    continue
                last = max(
                    record.model_last_used.get(model_id, 0.0) if record else 0.0,
                    self.p.last_bound.get((name, model_id), 0.0),
                    self.p.started_at,
                    since,
                )
                if self.now - last < model.ttl_seconds:
                    continue
                self.sets[name].remove(model_id)
                self.model_event(
                    model,
                    "Evicted",
                    f"unloaded from worker {name} after {self.now - last:.0f} s idle",
                )

    def scale_down(self) -> None:
        for name, models in self.sets.items():
            pod = self.pods.get(name)
            if models or (pod is not None and pod.model_set):
                self.p.last_held[name] = self.now
        if self.records is None:
            return  # whether a worker still serves sessions is not known
        for pool in self.cfg.pools:
            names = sorted(
                (n for n in self.sets if self.pool_of(n) is pool and n not in self.new_pods),
                reverse=True,
            )
            size = len(names)
            for name in names:
                if size <= pool.min_pods:
                    break
                record = self.records.get(name)
                pod = self.pods[name]
                held = self.p.last_held.get(name, self.p.started_at)
                if (
                    self.sets[name]
                    or pod.model_set
                    or any(self.bound.get((name, m)) for m in pod.model_set)
                    or (record is not None and record.active_sessions > 0)
                    or self.now - max(pod.created, *pod.added.values(), held)
                    < pool.scale_down_seconds
                ):
                    continue
                self.plan.delete_pods.append(name)
                del self.sets[name]
                size -= 1

    # -- writes --------------------------------------------------------------------------------

    def emit_pod_changes(self) -> None:
        for name, pool in self.new_pods.items():
            models = [self.by_id[m] for m in self.sets[name]]
            self.plan.create_pods.append(worker_pod(self.cfg, pool, name, models, self.added[name]))
        for name, pod in self.pods.items():
            if name not in self.sets:
                continue
            models = [self.by_id[m] for m in self.sets[name] if m in self.by_id]
            annotations, owners = model_set_metadata(models, self.added[name])
            current = {
                MODEL_SET: format_model_set(pod.model_set),
                MODEL_SPECS: pod.specs,
                MODEL_ADDED: pod.added_raw,
            }
            if annotations != current or sorted(o["uid"] for o in owners) != sorted(pod.owners):
                self.plan.patch_pods[name] = {
                    "metadata": {"annotations": annotations, "ownerReferences": owners}
                }

    def model_statuses(self) -> None:
        for model in self.world.models:
            status = self.model_status(model)
            if status != model.status:
                self.plan.model_status[model.name] = status

    def model_status(self, model: TtsModel) -> dict[str, Any]:
        gen, old = model.generation, model.status
        records = self.records
        if records is None:
            # Kept as last seen, on Pods that still exist.
            resident_on = [n for n in old.get("residentOn") or [] if n in self.pods]
        else:
            resident_on = sorted(n for n in self.pods if self.resident(n, model.model_id))
        owner = self.duplicates.get(model.name)
        res: tuple[bool | None, str, str]
        if owner is not None:
            ready = (False, "DuplicateModelId", f"TTSModel {owner} already serves this modelId")
            res = (False, "DuplicateModelId", "not placed")
            resident_on = []
        elif model.model_id in self.failed:
            ready = (False, "LoadFailed", self.failed[model.model_id])
            res = (False, "LoadFailed", "not placed after a failed load")
        else:
            if model.model_id in self.unplaceable:
                ready = (False, *self.unplaceable[model.model_id])
            else:
                ready = (True, "Schedulable", "a worker pool can host the model")
            loading = [n for n in self.holders(model.model_id) if n not in resident_on]
            if records is None:
                res = (
                    None,
                    "RedisUnavailable",
                    f"worker records cannot be read: {self.world.redis_error}",
                )
            elif resident_on:
                res = (True, "Loaded", f"resident on {', '.join(resident_on)}")
            elif loading:
                res = (False, "Loading", f"loading on {', '.join(loading)}")
            elif model.model_id in self.unplaceable:
                res = (False, ready[1], "not placed: no worker can host it")
            else:
                res = (False, "NotRequested", "minResident is 0 and no session needs it")
        status: dict[str, Any] = {
            "observedGeneration": gen,
            "residentOn": resident_on,
            "conditions": [
                condition(old, "Ready", ready[0], ready[1], ready[2], gen, self.now),
                condition(old, "Resident", res[0], res[1], res[2], gen, self.now),
            ],
        }
        used = [
            r.model_last_used[model.model_id]
            for r in (records or {}).values()
            if model.model_id in r.model_last_used
        ]
        last = max([*used, parse_time(old.get("lastUsedTime")) or 0.0])
        if last > 0:
            status["lastUsedTime"] = format_time(last)
        if _cond_status(old, "Resident") != "True" and res[0]:
            self.model_event(model, "Resident", res[2])
        if _cond_status(old, "Ready") != "False" and ready[1] in _STATUS_WARNINGS:
            self.model_event(model, ready[1], ready[2])
        return status

    def invalid_statuses(self) -> None:
        for obj in self.world.invalid:
            kind = "Ready" if obj.kind == "TTSModel" else "Bound"
            status = {
                **({"phase": "Pending"} if obj.kind == "VoiceSession" else {}),
                "observedGeneration": obj.generation,
                "conditions": [
                    condition(
                        obj.status, kind, False, "InvalidSpec", obj.error, obj.generation, self.now
                    )
                ],
            }
            if status == obj.status:
                continue
            if _cond_status(obj.status, kind) != "False":
                self.event(obj.kind, obj.name, obj.uid, "InvalidSpec", obj.error)
            target = self.plan.model_status if obj.kind == "TTSModel" else self.plan.session_status
            patch: dict[str, Any] = {k: None for k in obj.status if k not in status}
            patch.update(status)
            target[obj.name] = patch
