"""The operator's planner as a pure function: a World in, a Plan out; no API server, no Redis.

Worlds are built from the typed views the reconciler parses (TtsModel, VoiceSession, WorkerPod,
WorkerRecord). `apply` plays the reconciler's writes back into a World, the way the next pass
would observe them, so a test can check that planning again changes nothing (restart safety).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import pytest

from duplex.discovery import WorkerRecord, session_id_for
from duplex_operator.config import GPU_RESOURCE, OperatorConfig, WorkerPool
from duplex_operator.planner import EMPTY_POD_GRACE_SECONDS, Event, Plan, Planner, World
from duplex_operator.pods import GPU_TOLERATION, model_set_metadata, worker_pod
from duplex_operator.resources import (
    ANNOTATION_BUDGET,
    API_VERSION,
    ENTRY_LIMIT,
    MODEL_ADDED,
    MODEL_SET,
    MODEL_SPECS,
    POOL_LABEL,
    InvalidObject,
    TtsModel,
    VoiceSession,
    WorkerPod,
    format_time,
    parse_pod,
)

NOW = 1_700_000_000.0
HOUR = 3600.0
# Pods made by `worker` are this old: past the empty-pod grace, well inside a model's TTL.
POD_AGE = 2 * EMPTY_POD_GRACE_SECONDS

CPU = WorkerPool(name="cpu", max_pods=3, memory_mib=100)
GPU = WorkerPool(
    name="gpu",
    gpu=True,
    max_pods=1,
    memory_mib=8000,
    node_selector={"nvidia.com/gpu.present": "true"},
    resources={"limits": {"memory": "8Gi"}},
)


def cpu_pod(n: int) -> str:
    return f"duplex-worker-cpu-{n}"


# -- building worlds ---------------------------------------------------------------------------


def tts_model(
    model_id: str,
    *,
    name: str | None = None,
    memory_mib: int = 10,
    gpu: bool = False,
    min_resident: int = 0,
    ttl_seconds: int = 600,
    min_residency_seconds: int = 30,
    created: float = NOW - HOUR,
    generation: int = 1,
) -> TtsModel:
    name = name or model_id
    return TtsModel(
        name=name,
        uid=f"uid-{name}",
        generation=generation,
        model_id=model_id,
        family="pico",
        gpu=gpu,
        memory_mib=memory_mib,
        min_resident=min_resident,
        ttl_seconds=ttl_seconds,
        min_residency_seconds=min_residency_seconds,
        created=created,
        entry={"id": model_id, "family": "pico", "memory_mib": memory_mib},
    )


def voice_session(
    name: str,
    model_id: str,
    *,
    created: float = NOW - 10,
    max_duration_seconds: int = 3600,
    status: dict[str, Any] | None = None,
) -> VoiceSession:
    return VoiceSession(
        name=name,
        uid=f"uid-{name}",
        generation=1,
        model_id=model_id,
        language="en",
        room=f"room-{name}",
        max_duration_seconds=max_duration_seconds,
        created=created,
        status=dict(status or {}),
    )


def worker(
    name: str,
    *models: TtsModel,
    pool: str = "cpu",
    created: float = NOW - POD_AGE,
    added: float | None = None,
    deleting: bool = False,
) -> WorkerPod:
    """A worker Pod as the operator left it: its annotations are the ones the planner writes."""
    since = created if added is None else added
    annotations, owners = model_set_metadata(list(models), {m.model_id: since for m in models})
    obj = pod_object(name, pool, annotations, owners, created)
    if deleting:
        obj["metadata"]["deletionTimestamp"] = format_time(NOW)
    return parse_pod(obj)


def pod_object(
    name: str,
    pool: str,
    annotations: Mapping[str, str],
    owners: list[dict[str, Any]],
    created: float,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {POOL_LABEL: pool},
            "annotations": dict(annotations),
            "ownerReferences": owners,
            "creationTimestamp": format_time(created),
        },
    }


def record(
    name: str,
    *,
    resident: Iterable[str] = (),
    loading: Iterable[str] = (),
    model_set: list[str] | None = None,
    errors: Mapping[str, str] | None = None,
    last_used: Mapping[str, float] | None = None,
    active: int = 0,
    serving: Iterable[str] = (),
) -> WorkerRecord:
    """A worker's Redis record; `serving` names the VoiceSessions it holds TTS sessions for."""
    ids = [session_id_for(name, "tts") for name in serving]
    return WorkerRecord(
        name=name,
        addr=f"{name}.workers:50051",
        resident_models=list(resident),
        loading_models=list(loading),
        model_set=model_set,
        model_errors=dict(errors or {}),
        model_last_used=dict(last_used or {}),
        active_sessions=max(active, len(ids)),
        session_ids=ids,
        max_sessions=16,
    )


def world(
    models: Iterable[TtsModel] = (),
    sessions: Iterable[VoiceSession] = (),
    pods: Iterable[WorkerPod] = (),
    records: Iterable[WorkerRecord] = (),
    now: float = NOW,
) -> World:
    return World(
        models=list(models),
        sessions=list(sessions),
        pods=list(pods),
        records={r.name: r for r in records},
        now=now,
    )


def planner(*pools: WorkerPool, started_at: float = NOW - HOUR) -> Planner:
    return Planner(OperatorConfig(pools=list(pools or (CPU,))), started_at)


# -- applying plans ----------------------------------------------------------------------------


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies the reconciler's merge patches."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def apply(before: World, plan: Plan, *, now: float | None = None) -> World:
    """The world the next pass observes after the reconciler wrote `plan` (records unchanged)."""
    pods = []
    for pod in before.pods:
        annotations = {
            MODEL_SET: ",".join(pod.model_set),
            MODEL_SPECS: pod.specs,
            MODEL_ADDED: pod.added_raw,
        }
        owners = [{"kind": "TTSModel", "uid": uid} for uid in pod.owners]
        obj = pod_object(pod.name, pod.pool, annotations, owners, pod.created)
        if pod.ip:
            obj["status"] = {"podIP": pod.ip}
        if pod.deleting or pod.name in plan.delete_pods:
            obj["metadata"]["deletionTimestamp"] = format_time(before.now)
        pods.append(parse_pod(merge_patch(obj, plan.patch_pods.get(pod.name, {}))))
    for new_pod in plan.create_pods:
        stamp = {"metadata": {"creationTimestamp": format_time(before.now)}}
        pods.append(parse_pod(merge_patch(new_pod, stamp)))
    models = [
        replace(m, status=merge_patch(m.status, plan.model_status.get(m.name, {})))
        for m in before.models
    ]
    sessions = [
        replace(s, status=merge_patch(s.status, plan.session_status.get(s.name, {})))
        for s in before.sessions
    ]
    return World(models, sessions, pods, dict(before.records), before.now if now is None else now)


def assert_settled(p: Planner, w: World) -> None:
    again = p.plan(w)
    assert again.empty, again
    assert again.events == []


# -- reading plans -----------------------------------------------------------------------------


def cond(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in status.get("conditions") or [] if c["type"] == kind]
    assert len(found) == 1, status
    return dict(found[0])


def reasons(plan: Plan, kind: str | None = None) -> list[str]:
    return [e.reason for e in plan.events if kind is None or e.kind == kind]


def created(plan: Plan) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in plan.create_pods}


def model_set_of(pod: Mapping[str, Any]) -> str:
    annotations: dict[str, str] = pod["metadata"]["annotations"]
    return annotations[MODEL_SET]


# -- placement ---------------------------------------------------------------------------------


def test_a_model_kept_resident_gets_a_pod_of_its_own_pool() -> None:
    model = tts_model("pico-en", min_resident=1)
    plan = planner(CPU, GPU).plan(world([model]))

    assert list(created(plan)) == [cpu_pod(0)]
    pod = plan.create_pods[0]
    meta = pod["metadata"]
    assert meta["labels"][POOL_LABEL] == "cpu"
    assert meta["annotations"][MODEL_SET] == "pico-en"
    assert json.loads(meta["annotations"][MODEL_SPECS]) == [model.entry]
    assert json.loads(meta["annotations"][MODEL_ADDED]) == {"pico-en": NOW}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": API_VERSION,
            "kind": "TTSModel",
            "name": "pico-en",
            "uid": "uid-pico-en",
            "controller": False,
            "blockOwnerDeletion": False,
        }
    ]
    spec = pod["spec"]
    assert "resources" not in spec["containers"][0]  # a CPU pool requests no GPU
    assert "tolerations" not in spec and "nodeSelector" not in spec
    assert plan.events == [
        Event(
            "TTSModel",
            "pico-en",
            "uid-pico-en",
            "Normal",
            "Placed",
            f"placed on worker {cpu_pod(0)}",
        )
    ]
    status = plan.model_status["pico-en"]
    assert cond(status, "Ready")["reason"] == "Schedulable"
    resident = cond(status, "Resident")
    assert (resident["status"], resident["reason"]) == ("False", "Loading")
    assert resident["message"] == f"loading on {cpu_pod(0)}"


def test_a_gpu_model_gets_a_gpu_pod_and_cpu_models_stay_off_it() -> None:
    gpu_model = tts_model("big-gpu", memory_mib=1000, gpu=True, min_resident=1)
    cpu_model = tts_model("pico-en", min_resident=1, created=NOW - 10)
    plan = planner(CPU, GPU).plan(world([gpu_model, cpu_model]))

    pods = created(plan)
    assert {name: model_set_of(pod) for name, pod in pods.items()} == {
        "duplex-worker-gpu-0": "big-gpu",
        cpu_pod(0): "pico-en",
    }
    spec = pods["duplex-worker-gpu-0"]["spec"]
    assert spec["containers"][0]["resources"] == {"limits": {"memory": "8Gi", GPU_RESOURCE: 1}}
    assert GPU_TOLERATION in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert GPU.resources == {"limits": {"memory": "8Gi"}}  # the pool's config is not mutated


@pytest.mark.parametrize(
    ("gpu_memory", "placed_on"),
    [
        # Unknown yet (no record, or a worker without NVML): the pool's 8000 MiB are assumed,
        # which the second model does not fit beside the first; the pool is at its maximum.
        (None, None),
        ({}, None),
        # Read from the device: an 80 GiB GPU holds both, less the reserve for CUDA itself.
        ({"cuda:0": 81559}, "duplex-worker-gpu-0"),
        # A small GPU holds less than the pool assumes: 6000 - 1024 cannot take 3000 more.
        ({"cuda:0": 6000}, None),
        ({"cuda:0": "lots"}, None),  # a malformed record is no size at all
    ],
)
def test_gpu_pods_hold_what_their_gpu_holds(
    gpu_memory: dict[str, object] | None, placed_on: str | None
) -> None:
    first = tts_model("first-gpu", memory_mib=3000, gpu=True)
    second = tts_model("second-gpu", memory_mib=6000, gpu=True, min_resident=1)
    if gpu_memory == {"cuda:0": 6000}:
        second = replace(second, memory_mib=2000)
    pods = [worker("duplex-worker-gpu-0", first, pool="gpu")]
    records = []
    if gpu_memory is not None:
        records.append(replace(record("duplex-worker-gpu-0"), gpu_memory_mib=gpu_memory))
    plan = planner(CPU, GPU).plan(world([first, second], pods=pods, records=records))
    if placed_on is None:
        assert plan.patch_pods == {} and plan.create_pods == []
        ready = cond(plan.model_status["second-gpu"], "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "NoCapacity")
    else:
        meta = plan.patch_pods[placed_on]["metadata"]
        assert meta["annotations"][MODEL_SET] == "first-gpu,second-gpu"


def test_the_tightest_fitting_pod_gets_the_model() -> None:
    roomy, snug = tts_model("roomy", memory_mib=20), tts_model("snug", memory_mib=60)
    new = tts_model("new", memory_mib=30, min_resident=1, created=NOW - 5)
    pods = [worker(cpu_pod(0), snug, added=NOW - 300), worker(cpu_pod(1), roomy)]
    plan = planner().plan(world([roomy, snug, new], pods=pods))

    assert plan.create_pods == []
    assert list(plan.patch_pods) == [cpu_pod(0)]  # 10 MiB left there, 50 MiB on the other
    meta = plan.patch_pods[cpu_pod(0)]["metadata"]
    assert meta["annotations"][MODEL_SET] == "snug,new"
    assert json.loads(meta["annotations"][MODEL_ADDED]) == {"snug": NOW - 300, "new": NOW}
    assert [o["uid"] for o in meta["ownerReferences"]] == ["uid-snug", "uid-new"]


def test_a_model_that_fits_nowhere_gets_a_new_pod() -> None:
    a, b = tts_model("a", memory_mib=60), tts_model("b", memory_mib=60)
    c = tts_model("c", memory_mib=60, min_resident=1)
    pods = [worker(cpu_pod(0), a), worker(cpu_pod(1), b)]
    plan = planner().plan(world([a, b, c], pods=pods))

    assert {n: model_set_of(p) for n, p in created(plan).items()} == {cpu_pod(2): "c"}
    assert plan.patch_pods == {}


def test_a_full_pool_at_its_maximum_is_no_capacity() -> None:
    pool = CPU.model_copy(update={"max_pods": 1})
    held = tts_model("held", memory_mib=60)
    more = tts_model("more", memory_mib=60, min_resident=1)
    waiting = voice_session("call", "more")
    plan = planner(pool).plan(world([held, more], [waiting], [worker(cpu_pod(0), held)]))

    assert plan.create_pods == [] and plan.patch_pods == {}
    ready = cond(plan.model_status["more"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoCapacity")
    assert "full" in ready["message"] and "cpu: 1 pods" in ready["message"]
    resident = cond(plan.model_status["more"], "Resident")
    assert (resident["status"], resident["reason"]) == ("False", "NoCapacity")
    assert resident["message"] == "not placed: no worker can host it"
    session = plan.session_status["call"]
    assert session["phase"] == "Pending" and "worker" not in session
    assert cond(session, "Bound")["reason"] == "NoCapacity"


def test_a_model_larger_than_any_pool_is_no_capacity() -> None:
    plan = planner().plan(world([tts_model("huge", memory_mib=500, min_resident=1)]))
    assert plan.create_pods == []
    ready = cond(plan.model_status["huge"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoCapacity")
    assert "largest pool holds 100 MiB" in ready["message"]


def test_a_gpu_model_without_a_gpu_pool_is_no_pool() -> None:
    model = tts_model("big-gpu", gpu=True, min_resident=1)
    plan = planner(CPU).plan(world([model], [voice_session("call", "big-gpu")]))

    assert plan.create_pods == []
    ready = cond(plan.model_status["big-gpu"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoPool")
    assert ready["message"] == "no GPU worker pool is configured"
    assert cond(plan.session_status["call"], "Bound")["reason"] == "NoPool"


def test_models_placed_in_one_pass_share_a_new_pod_while_they_fit() -> None:
    models = [
        tts_model(m, memory_mib=40, min_resident=1, created=NOW - 30 + i)
        for i, m in enumerate(["a", "b", "c"])
    ]
    plan = planner().plan(world(models))

    assert {n: model_set_of(p) for n, p in created(plan).items()} == {
        cpu_pod(0): "a,b",
        cpu_pod(1): "c",
    }
    owners = [o["name"] for o in created(plan)[cpu_pod(0)]["metadata"]["ownerReferences"]]
    assert owners == ["a", "b"]


def test_min_pods_are_created_empty() -> None:
    pool = CPU.model_copy(update={"min_pods": 2})
    plan = planner(pool).plan(world())

    pods = created(plan)
    assert list(pods) == [cpu_pod(0), cpu_pod(1)]
    for pod in pods.values():
        assert model_set_of(pod) == ""
        assert "ownerReferences" not in pod["metadata"]


def test_pod_names_take_the_lowest_free_number_past_pods_being_deleted() -> None:
    full = tts_model("full", memory_mib=100)
    new = tts_model("new", memory_mib=50, min_resident=1)
    pods = [worker(cpu_pod(0), full), worker(cpu_pod(1), deleting=True)]
    assert list(created(planner().plan(world([full, new], pods=pods)))) == [cpu_pod(2)]

    pods = [worker(cpu_pod(1), full)]
    assert list(created(planner().plan(world([full, new], pods=pods)))) == [cpu_pod(0)]


def test_pod_names_stay_within_the_names_the_workers_role_grants() -> None:
    # One Pod of at most one, and both names held by Pods still terminating: the pool waits.
    pool = WorkerPool(name="cpu", max_pods=1, memory_mib=100)
    assert OperatorConfig(pools=[pool]).worker_pod_names(pool) == [cpu_pod(0), cpu_pod(1)]
    model = tts_model("pico-en", min_resident=1)
    terminating = [worker(cpu_pod(n), model, deleting=True) for n in (0, 1)]
    plan = planner(pool).plan(world([model], pods=terminating))
    assert plan.create_pods == []
    assert cond(plan.model_status["pico-en"], "Ready")["reason"] == "NoCapacity"

    busy = pool.model_copy(update={"min_pods": 1})
    assert planner(busy).plan(world([], pods=terminating)).create_pods == []
    # Once one of them is gone its name is taken again.
    plan = planner(busy).plan(world([model], pods=terminating[1:]))
    assert list(created(plan)) == [cpu_pod(0)]


# -- binding -----------------------------------------------------------------------------------


def test_a_session_binds_where_its_model_is_resident_before_load() -> None:
    model = tts_model("pico-en")
    pods = [worker(cpu_pod(0), model), worker(cpu_pod(1), model)]
    records = [
        record(cpu_pod(0), loading=["pico-en"]),
        record(cpu_pod(1), resident=["pico-en"], active=5),
    ]
    plan = planner().plan(world([model], [voice_session("call", "pico-en")], pods, records))

    status = plan.session_status["call"]
    assert status["phase"] == "Bound"
    assert status["worker"] == cpu_pod(1)
    assert status["workerAddr"] == f"{cpu_pod(1)}.workers:50051"
    bound, ready = cond(status, "Bound"), cond(status, "Ready")
    assert (bound["status"], ready["status"], ready["reason"]) == ("True", "True", "Resident")
    assert reasons(plan, "VoiceSession") == ["Bound"]
    assert plan.patch_pods == {} and plan.create_pods == []


def test_new_sessions_go_to_the_least_loaded_worker_counting_this_pass() -> None:
    model = tts_model("pico-en")
    pods = [worker(cpu_pod(0), model), worker(cpu_pod(1), model)]
    records = [
        record(cpu_pod(0), resident=["pico-en"], active=2),
        record(cpu_pod(1), resident=["pico-en"], active=1),
    ]
    sessions = [
        voice_session("first", "pico-en", created=NOW - 20),
        voice_session("second", "pico-en", created=NOW - 10),
    ]
    plan = planner().plan(world([model], sessions, pods, records))

    assert plan.session_status["first"]["worker"] == cpu_pod(1)
    assert plan.session_status["second"]["worker"] == cpu_pod(0)  # 2 and 2: by name


def test_sessions_already_bound_count_towards_load() -> None:
    model = tts_model("pico-en")
    pods = [worker(cpu_pod(0), model), worker(cpu_pod(1), model)]
    records = [record(n, resident=["pico-en"]) for n in (cpu_pod(0), cpu_pod(1))]
    old = voice_session("old", "pico-en", status={"phase": "Bound", "worker": cpu_pod(0)})
    plan = planner().plan(world([model], [old, voice_session("new", "pico-en")], pods, records))

    assert plan.session_status["old"]["worker"] == cpu_pod(0)
    assert plan.session_status["new"]["worker"] == cpu_pod(1)
    assert reasons(plan, "VoiceSession") == ["Bound"]  # only the new one is (re)bound


@pytest.mark.parametrize("lost", ["gone", "deleting"])
def test_a_session_whose_worker_is_lost_is_rebound(lost: str) -> None:
    model = tts_model("pico-en")
    pods = [worker(cpu_pod(0), model)]
    if lost == "deleting":
        pods.append(worker(cpu_pod(7), model, deleting=True))
    status = {"phase": "Active", "worker": cpu_pod(7), "workerAddr": "10.0.0.7:50051"}
    session = voice_session("call", "pico-en", status=status)
    plan = planner().plan(world([model], [session], pods))

    new = plan.session_status["call"]
    assert (new["phase"], new["worker"]) == ("Bound", cpu_pod(0))
    assert new["workerAddr"] is None  # cleared: the new worker has no address yet
    lost_events = [e for e in plan.events if e.reason == "WorkerLost"]
    assert len(lost_events) == 1 and lost_events[0].type == "Warning"
    assert cpu_pod(7) in lost_events[0].message


def test_a_session_for_an_unknown_model_waits() -> None:
    plan = planner().plan(world([tts_model("pico-en")], [voice_session("call", "nope")]))

    status = plan.session_status["call"]
    assert status["phase"] == "Pending" and "worker" not in status
    bound = cond(status, "Bound")
    assert (bound["status"], bound["reason"]) == ("False", "UnknownModel")
    assert "'nope'" in bound["message"]
    assert plan.create_pods == []


def test_a_session_past_its_max_duration_ends() -> None:
    model = tts_model("pico-en")
    bound = {"phase": "Active", "worker": cpu_pod(0)}
    overdue = voice_session("overdue", "pico-en", created=NOW - 100, max_duration_seconds=60)
    started = voice_session(
        "started",
        "pico-en",
        created=NOW - 100,
        max_duration_seconds=60,
        status={**bound, "startedTime": format_time(NOW - 30)},
    )
    records = [record(cpu_pod(0), resident=["pico-en"], serving=["started"])]
    plan = planner().plan(world([model], [overdue, started], [worker(cpu_pod(0), model)], records))

    ended = plan.session_status["overdue"]
    assert ended["phase"] == "Ended"
    assert ended["endedTime"] == format_time(NOW)
    ready = cond(ended, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "MaxDuration")
    # The duration counts from startedTime when the session has one.
    assert plan.session_status["started"]["phase"] == "Active"


def test_final_sessions_are_left_alone_and_need_no_model() -> None:
    ended = {"phase": "Ended", "endedTime": format_time(NOW - 5)}
    session = voice_session("done", "pico-en", created=NOW - 2 * HOUR, status=ended)
    plan = planner().plan(world([tts_model("pico-en")], [session]))
    assert "done" not in plan.session_status
    assert plan.create_pods == []


def test_a_session_is_active_while_its_worker_serves_it_and_the_operator_says_so() -> None:
    model = tts_model("pico-en")
    bound = {"phase": "Bound", "worker": cpu_pod(0)}
    p = planner()
    w = world(
        [model],
        [voice_session("call", "pico-en", status=bound)],
        [worker(cpu_pod(0), model)],
        [record(cpu_pod(0), resident=["pico-en"], serving=["call"])],
    )
    plan = p.plan(w)

    new = plan.session_status["call"]
    assert (new["phase"], new["worker"]) == ("Active", cpu_pod(0))
    assert new["startedTime"] == format_time(NOW)  # when the worker was first seen serving it
    assert reasons(plan, "VoiceSession") == ["Active"]
    w = apply(w, plan, now=NOW + 1)
    assert_settled(p, w)
    # The conversation moved away (its TTS session ended there): Bound again, started kept.
    w.records[cpu_pod(0)] = record(cpu_pod(0), resident=["pico-en"])
    back = p.plan(w).session_status["call"]
    assert (back["phase"], back["startedTime"]) == ("Bound", format_time(NOW))


def test_a_client_cannot_make_a_session_active() -> None:
    model = tts_model("pico-en")
    claimed = {"phase": "Active", "worker": cpu_pod(0)}
    w = world(
        [model],
        [voice_session("call", "pico-en", status=claimed)],
        [worker(cpu_pod(0), model)],
        # The worker serves other sessions, none of them this VoiceSession's.
        [record(cpu_pod(0), resident=["pico-en"], serving=["other"], active=3)],
    )
    assert planner().plan(w).session_status["call"]["phase"] == "Bound"


# -- eviction ----------------------------------------------------------------------------------


def idle_world(
    model: TtsModel,
    *,
    added: float = NOW - 1000,
    last_used: float = NOW - 700,
    sessions: Iterable[VoiceSession] = (),
    now: float = NOW,
) -> World:
    """`model` alone on one worker, resident there and last used at `last_used`."""
    return world(
        [model],
        sessions,
        [worker(cpu_pod(0), model, created=NOW - HOUR, added=added)],
        [record(cpu_pod(0), resident=[model.model_id], last_used={model.model_id: last_used})],
        now=now,
    )


def evicted(plan: Plan) -> dict[str, str]:
    """Pod -> its new model set, for the pods the plan patches."""
    return {n: p["metadata"]["annotations"][MODEL_SET] for n, p in plan.patch_pods.items()}


def test_an_idle_model_is_evicted() -> None:
    plan = planner().plan(idle_world(tts_model("pico-de")))

    assert evicted(plan) == {cpu_pod(0): ""}
    meta = plan.patch_pods[cpu_pod(0)]["metadata"]
    assert json.loads(meta["annotations"][MODEL_ADDED]) == {}
    assert meta["ownerReferences"] == []
    assert [e for e in plan.events if e.reason == "Evicted"] == [
        Event(
            "TTSModel",
            "pico-de",
            "uid-pico-de",
            "Normal",
            "Evicted",
            f"unloaded from worker {cpu_pod(0)} after 700 s idle",
        )
    ]
    assert plan.delete_pods == []  # the worker unloads first; the pod goes on a later pass


def test_a_model_is_not_evicted_while_a_session_is_bound_nor_for_a_ttl_after() -> None:
    model = tts_model("pico-de")
    bound = {"phase": "Active", "worker": cpu_pod(0)}
    p = planner()
    plan = p.plan(idle_world(model, sessions=[voice_session("call", "pico-de", status=bound)]))
    assert evicted(plan) == {}
    # Two idle copies and one session: the copy it is bound to stays, the other goes.
    two = idle_world(model, sessions=[voice_session("call", "pico-de", status=bound)])
    two.pods.append(worker(cpu_pod(1), model, added=NOW - 1000))
    assert evicted(planner().plan(two)) == {cpu_pod(1): ""}

    done = voice_session("call", "pico-de", status={"phase": "Ended"})
    assert evicted(p.plan(idle_world(model, sessions=[done], now=NOW + 599))) == {}
    assert evicted(p.plan(idle_world(model, sessions=[done], now=NOW + 600))) == {cpu_pod(0): ""}


def test_a_model_is_not_evicted_before_its_minimum_residency() -> None:
    # The pod is an hour old, but the model entered its set (the annotation) 20 s ago.
    model = tts_model("pico-de", ttl_seconds=5, min_residency_seconds=30)
    assert evicted(planner().plan(idle_world(model, added=NOW - 20, last_used=0.0))) == {}
    later = idle_world(model, added=NOW - 20, last_used=0.0, now=NOW + 10)
    assert evicted(planner().plan(later)) == {cpu_pod(0): ""}


def test_eviction_keeps_min_resident_copies() -> None:
    model = tts_model("pico-en", min_resident=1)
    assert evicted(planner().plan(idle_world(model))) == {}

    pods = [worker(n, model, added=NOW - 1000) for n in (cpu_pod(0), cpu_pod(1))]
    plan = planner().plan(world([model], pods=pods))
    assert evicted(plan) == {cpu_pod(0): ""}  # one copy goes, the last one stays
    assert reasons(plan) == ["Evicted"]


def test_a_ttl_of_zero_never_evicts() -> None:
    model = tts_model("pico-en", ttl_seconds=0)
    assert evicted(planner().plan(idle_world(model, added=NOW - 10 * HOUR, last_used=0))) == {}


def test_a_restarted_operator_waits_a_ttl_before_evicting() -> None:
    # What it cannot know (sessions bound before it started) it makes up for by waiting.
    w = idle_world(tts_model("pico-de"), last_used=0.0)
    assert evicted(Planner(OperatorConfig(pools=[CPU]), started_at=NOW - 10).plan(w)) == {}
    assert evicted(Planner(OperatorConfig(pools=[CPU]), started_at=NOW - 600).plan(w)) == {
        cpu_pod(0): ""
    }


def test_recent_use_reported_by_the_worker_keeps_a_model() -> None:
    assert evicted(planner().plan(idle_world(tts_model("pico-de"), last_used=NOW - 10))) == {}


def test_a_deleted_model_leaves_the_set() -> None:
    gone = tts_model("gone")
    plan = planner().plan(world([], pods=[worker(cpu_pod(0), gone, added=NOW - 5)]))
    assert evicted(plan) == {cpu_pod(0): ""}
    assert plan.events == []


# -- load failures -----------------------------------------------------------------------------

ERROR = "cannot open /nonexistent/voice.onnx"
# A pool that keeps one pod, so taking the failed model out does not also delete its pod.
KEEP_ONE = CPU.model_copy(update={"min_pods": 1})


def failing_world(model: TtsModel, **worker_report: Any) -> World:
    report = {"model_set": [model.model_id], "errors": {model.model_id: ERROR}, **worker_report}
    return world(
        [model],
        [voice_session("call", model.model_id)],
        [worker(cpu_pod(0), model)],
        [record(cpu_pod(0), **report)],
    )


def test_a_model_the_worker_cannot_load_fails_with_the_workers_error() -> None:
    model = tts_model("broken", min_resident=1, generation=3)
    plan = planner(KEEP_ONE).plan(failing_world(model))

    assert evicted(plan) == {cpu_pod(0): ""}
    assert plan.create_pods == []
    status = plan.model_status["broken"]
    assert status["observedGeneration"] == 3
    ready = cond(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "LoadFailed")
    assert ready["message"] == f"worker {cpu_pod(0)}: {ERROR}"
    assert ready["observedGeneration"] == 3
    session = plan.session_status["call"]
    assert session["phase"] == "Failed"
    assert session["endedTime"] == format_time(NOW)
    assert ERROR in cond(session, "Ready")["message"]
    failures = [e for e in plan.events if e.reason == "LoadFailed"]
    assert [(e.kind, e.type) for e in failures] == [("TTSModel", "Warning")]


@pytest.mark.parametrize(
    "report",
    [
        {"model_set": None},  # the worker follows no model set (not in Kubernetes mode)
        {"model_set": []},  # an error from a set before this one
        {"loading": ["broken"]},  # being loaded again
        {"resident": ["broken"]},  # loaded after all
    ],
)
def test_a_stale_load_error_is_ignored(report: dict[str, Any]) -> None:
    plan = planner(KEEP_ONE).plan(failing_world(tts_model("broken", min_resident=1), **report))

    assert plan.patch_pods == {}
    assert cond(plan.model_status["broken"], "Ready")["status"] == "True"
    assert plan.session_status["call"]["phase"] == "Bound"
    assert "LoadFailed" not in reasons(plan)


def test_a_failed_generation_is_not_placed_again_but_the_next_one_is() -> None:
    model = tts_model("broken", min_resident=1, generation=3)
    p = planner(KEEP_ONE)
    w = failing_world(model)
    w = apply(w, p.plan(w), now=NOW + 1)
    assert w.pods[0].model_set == []
    assert_settled(p, w)
    # The worker applies the smaller set; its record keeps the error.
    w.records[cpu_pod(0)] = record(cpu_pod(0), model_set=[], errors={"broken": ERROR})
    assert_settled(p, w)
    assert_settled(planner(KEEP_ONE, started_at=NOW + 1), w)

    w.models[0] = replace(w.models[0], generation=4)
    plan = p.plan(w)
    assert evicted(plan) == {cpu_pod(0): "broken"}
    ready = cond(plan.model_status["broken"], "Ready")
    assert (ready["status"], ready["observedGeneration"]) == ("True", 4)


# -- duplicates and scale-down -----------------------------------------------------------------


def test_the_younger_of_two_models_with_one_model_id_is_refused() -> None:
    older = tts_model("pico-en", name="older", min_resident=1, created=NOW - HOUR)
    younger = tts_model("pico-en", name="younger", min_resident=1, created=NOW - 60)
    plan = planner().plan(world([younger, older]))

    pods = created(plan)
    assert {n: model_set_of(p) for n, p in pods.items()} == {cpu_pod(0): "pico-en"}
    assert [o["name"] for o in pods[cpu_pod(0)]["metadata"]["ownerReferences"]] == ["older"]
    ready = cond(plan.model_status["younger"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DuplicateModelId")
    assert "older" in ready["message"]
    assert plan.model_status["younger"]["residentOn"] == []
    assert cond(plan.model_status["older"], "Ready")["status"] == "True"


def test_empty_pods_above_the_minimum_are_deleted_unless_in_use() -> None:
    pool = CPU.model_copy(update={"min_pods": 3, "max_pods": 4})
    model = tts_model("pico-en")
    pods = [
        worker(cpu_pod(0)),
        worker(cpu_pod(1)),
        worker(cpu_pod(2)),  # empty, but its worker still serves a session
        worker(cpu_pod(3), model),
    ]
    plan = planner(pool).plan(world([model], pods=pods, records=[record(cpu_pod(2), active=1)]))
    # Highest names go first; cpu-0 stays because the pool keeps three pods.
    assert plan.delete_pods == [cpu_pod(1)]


def test_a_young_empty_pod_is_kept_for_the_grace_period() -> None:
    young = worker(cpu_pod(0), created=NOW - EMPTY_POD_GRACE_SECONDS + 1)
    assert planner().plan(world(pods=[young])).delete_pods == []
    old = worker(cpu_pod(0), created=NOW - EMPTY_POD_GRACE_SECONDS)
    assert planner().plan(world(pods=[old])).delete_pods == [cpu_pod(0)]


def test_a_pod_emptied_by_eviction_is_kept_for_the_grace_period() -> None:
    # The pod is an hour old: the grace counts from when it last held a model.
    p = planner()
    w = idle_world(tts_model("pico-de"))
    w = apply(w, p.plan(w), now=NOW + 1)
    assert w.pods[0].model_set == []
    w.records[cpu_pod(0)] = record(cpu_pod(0), model_set=[])
    assert p.plan(w).delete_pods == []
    w.now = NOW + EMPTY_POD_GRACE_SECONDS
    assert p.plan(w).delete_pods == [cpu_pod(0)]
    # A restarted operator cannot know when the pod emptied: it waits a grace from its start.
    restarted = planner(started_at=NOW + 10)
    assert restarted.plan(w).delete_pods == []
    w.now = NOW + 10 + EMPTY_POD_GRACE_SECONDS
    assert restarted.plan(w).delete_pods == [cpu_pod(0)]


# -- idempotence -------------------------------------------------------------------------------


def test_planning_again_after_applying_changes_nothing() -> None:
    models = [
        tts_model("pico-en", min_resident=1, created=NOW - 50),
        tts_model("pico-de", created=NOW - 40),
        tts_model("pico-gb", gpu=True, min_resident=1, created=NOW - 30),
        tts_model("huge", memory_mib=500, min_resident=1, created=NOW - 20),
        tts_model("pico-en", name="pico-en-copy", created=NOW - 10),
    ]
    sessions = [
        voice_session("call", "pico-de"),
        voice_session("lost", "nope"),
        voice_session("long", "pico-en", created=NOW - 2 * HOUR),
        voice_session("waits", "huge"),
    ]
    p = planner(CPU, GPU)
    w = world(models, sessions)
    first = p.plan(w)
    assert {n: model_set_of(pod) for n, pod in created(first).items()} == {
        cpu_pod(0): "pico-en,pico-de",
        "duplex-worker-gpu-0": "pico-gb",
    }
    assert {n: s["phase"] for n, s in first.session_status.items()} == {
        "call": "Bound",
        "lost": "Pending",
        "long": "Ended",
        "waits": "Pending",
    }

    w = apply(w, first)
    assert_settled(p, w)
    assert_settled(planner(CPU, GPU, started_at=NOW), w)  # a restarted operator agrees

    # The workers start and load their sets: statuses follow once, then settle again.
    w.records.update(
        {
            cpu_pod(0): record(cpu_pod(0), resident=["pico-en", "pico-de"], active=1),
            "duplex-worker-gpu-0": record("duplex-worker-gpu-0", resident=["pico-gb"]),
        }
    )
    w.now = NOW + 5
    second = p.plan(w)
    assert set(second.model_status) == {"pico-en", "pico-de", "pico-gb"}
    assert set(second.session_status) == {"call"}
    assert second.session_status["call"]["workerAddr"] == f"{cpu_pod(0)}.workers:50051"
    assert sorted(reasons(second)) == ["Resident", "Resident", "Resident"]
    w = apply(w, second, now=NOW + 10)
    assert_settled(p, w)
    assert_settled(planner(CPU, GPU, started_at=NOW + 10), w)

    en = next(m for m in w.models if m.name == "pico-en")
    assert (en.condition("Ready") or {})["lastTransitionTime"] == format_time(NOW)
    assert (en.condition("Resident") or {})["lastTransitionTime"] == format_time(NOW + 5)
    call = next(s for s in w.sessions if s.name == "call")
    assert cond(call.status, "Bound")["lastTransitionTime"] == format_time(NOW)
    assert cond(call.status, "Ready")["lastTransitionTime"] == format_time(NOW + 5)


def test_a_pass_that_evicts_and_scales_down_settles() -> None:
    model = tts_model("pico-de")
    p = planner()
    w = idle_world(model)
    first = p.plan(w)
    assert evicted(first) == {cpu_pod(0): ""}
    w = apply(w, first, now=NOW + 1)
    # The worker has unloaded: the empty pod is scaled down a grace period later.
    w.records[cpu_pod(0)] = record(cpu_pod(0), model_set=[], last_used={"pico-de": NOW - 700})
    w.now = NOW + EMPTY_POD_GRACE_SECONDS
    second = p.plan(w)
    assert second.delete_pods == [cpu_pod(0)]
    w = apply(w, second, now=NOW + EMPTY_POD_GRACE_SECONDS + 1)
    assert w.pods[0].deleting
    assert_settled(p, w)


def test_worker_image_overrides_every_pools_image() -> None:
    config = OperatorConfig(pools=[CPU, GPU], worker_image="registry.example/duplex:dev")
    for pool in (CPU, GPU):
        pod = worker_pod(config, pool, "w", [], {})
        assert pod["spec"]["containers"][0]["image"] == "registry.example/duplex:dev"
    pod = worker_pod(OperatorConfig(pools=[CPU]), CPU, "w", [], {})
    assert pod["spec"]["containers"][0]["image"] == CPU.image


# -- scaling on demand -------------------------------------------------------------------------

# Two sessions per Pod is the target, three the limit.
SCALING = CPU.model_copy(update={"max_sessions_per_pod": 2, "max_sessions": 3, "max_pods": 3})


def sessions_for(model_id: str, count: int, *, start: int = 0) -> list[VoiceSession]:
    return [
        voice_session(f"call-{i}", model_id, created=NOW - 100 + i)
        for i in range(start, start + count)
    ]


def bound_to(plan: Plan) -> dict[str, str | None]:
    return {name: status.get("worker") for name, status in plan.session_status.items()}


@pytest.mark.parametrize(
    ("sessions", "pods", "bound"),
    [
        # Up to the target on the one Pod: no scale-out.
        (1, [cpu_pod(0)], {cpu_pod(0): 1}),
        (2, [cpu_pod(0)], {cpu_pod(0): 2}),
        # The third session goes over the target (the model is resident there, a new Pod is
        # not), and a second Pod is made for the next ones.
        (3, [cpu_pod(0), cpu_pod(1)], {cpu_pod(0): 3}),
        # The fourth is past the limit of the first Pod: it waits on the new one.
        (4, [cpu_pod(0), cpu_pod(1)], {cpu_pod(0): 3, cpu_pod(1): 1}),
    ],
)
def test_sessions_past_the_target_add_a_pod(
    sessions: int, pods: list[str], bound: dict[str, int]
) -> None:
    model = tts_model("pico-en")
    w = world(
        [model],
        sessions_for("pico-en", sessions),
        [worker(cpu_pod(0), model)],
        [record(cpu_pod(0), resident=["pico-en"])],
    )
    plan = planner(SCALING).plan(w)

    holders = [cpu_pod(0), *created(plan)]
    assert holders == pods
    for name, pod in created(plan).items():
        assert model_set_of(pod) == "pico-en", name
    counts: dict[str, int] = {}
    for worker_name in bound_to(plan).values():
        assert worker_name is not None
        counts[worker_name] = counts.get(worker_name, 0) + 1
    assert counts == bound


def test_scaling_out_prefers_an_existing_pod_with_room() -> None:
    busy, other = tts_model("busy"), tts_model("other")
    w = world(
        [busy, other],
        sessions_for("busy", 3),
        [worker(cpu_pod(0), busy), worker(cpu_pod(1), other)],
        [record(cpu_pod(0), resident=["busy"]), record(cpu_pod(1), resident=["other"])],
    )
    plan = planner(SCALING).plan(w)

    assert plan.create_pods == []
    assert evicted(plan) == {cpu_pod(1): "other,busy"}  # the model joins the Pod with room
    assert set(bound_to(plan).values()) == {cpu_pod(0)}  # resident there, below its limit


def test_a_full_pool_leaves_sessions_past_every_limit_pending() -> None:
    pool = SCALING.model_copy(update={"max_pods": 1})
    model = tts_model("pico-en")
    w = world(
        [model],
        sessions_for("pico-en", 4),
        [worker(cpu_pod(0), model)],
        [record(cpu_pod(0), resident=["pico-en"])],
    )
    plan = planner(pool).plan(w)

    phases = [plan.session_status[f"call-{i}"]["phase"] for i in range(4)]
    assert phases == ["Bound", "Bound", "Bound", "Pending"]
    assert cond(plan.session_status["call-3"], "Bound")["reason"] == "NoCapacity"


def test_a_model_served_past_its_target_with_no_room_to_scale_stays_ready() -> None:
    pool = SCALING.model_copy(update={"max_pods": 1})
    model = tts_model("pico-en")
    w = world(
        [model],
        sessions_for("pico-en", 3),
        [worker(cpu_pod(0), model)],
        [record(cpu_pod(0), resident=["pico-en"])],
    )
    plan = planner(pool).plan(w)
    assert [s["phase"] for s in plan.session_status.values()] == ["Bound"] * 3
    assert cond(plan.model_status["pico-en"], "Ready")["status"] == "True"


def test_a_scaled_out_pod_settles_and_takes_the_next_sessions() -> None:
    model = tts_model("pico-en")
    p = planner(SCALING)
    w = world(
        [model],
        sessions_for("pico-en", 3),
        [worker(cpu_pod(0), model)],
        [record(cpu_pod(0), resident=["pico-en"])],
    )
    w = apply(w, p.plan(w), now=NOW + 1)
    assert [pod.name for pod in w.pods] == [cpu_pod(0), cpu_pod(1)]
    w.records[cpu_pod(1)] = record(cpu_pod(1), resident=["pico-en"])
    first = p.plan(w)
    assert first.create_pods == [] and first.patch_pods == {}
    w = apply(w, first, now=NOW + 2)
    assert_settled(p, w)
    # A new conversation goes to the new Pod, where there is room below the target.
    w.sessions.append(voice_session("late", "pico-en", created=NOW + 2))
    assert bound_to(p.plan(w)) == {"late": cpu_pod(1)}


def test_the_extra_copy_is_evicted_once_idle_and_its_pod_removed() -> None:
    model = tts_model("pico-en", ttl_seconds=60, min_residency_seconds=0)
    pods = [worker(cpu_pod(0), model), worker(cpu_pod(1), model, added=NOW - 1000)]
    records = [
        record(cpu_pod(0), resident=["pico-en"], last_used={"pico-en": NOW - 10}),
        record(cpu_pod(1), resident=["pico-en"], last_used={"pico-en": NOW - 100}),
    ]
    p = planner(SCALING, started_at=NOW - HOUR)
    w = world([model], [], pods, records)
    plan = p.plan(w)
    # Idle past its TTL on cpu-1; the copy on cpu-0 was used 10 s ago and stays.
    assert evicted(plan) == {cpu_pod(1): ""}
    w = apply(w, plan, now=NOW + 1)
    w.records[cpu_pod(1)] = record(cpu_pod(1), model_set=[])
    w.now = NOW + SCALING.scale_down_seconds
    assert p.plan(w).delete_pods == [cpu_pod(1)]


@pytest.mark.parametrize("target", [1, 2, 5])
@pytest.mark.parametrize("count", [0, 1, 4, 9])
def test_no_pod_serves_more_than_its_limit_and_the_pool_grows_with_demand(
    target: int, count: int
) -> None:
    pool = CPU.model_copy(
        update={"max_sessions_per_pod": target, "max_sessions": target + 1, "max_pods": 10}
    )
    model = tts_model("pico-en", min_resident=1)
    p = planner(pool)
    w = world([model], sessions_for("pico-en", count))
    # Play passes to the end, with every placed model resident at once.
    for step in range(12):
        plan = p.plan(w)
        w = apply(w, plan, now=NOW + step + 1)
        w.records = {
            pod.name: record(pod.name, resident=pod.model_set) for pod in w.pods if not pod.deleting
        }
        if plan.empty:
            break
    assert_settled(p, w)
    load: dict[str, int] = {}
    for session in w.sessions:
        assert session.phase == "Bound", session
        load[session.worker or ""] = load.get(session.worker or "", 0) + 1
    assert all(n <= pool.max_sessions for n in load.values())
    pods = [pod for pod in w.pods if not pod.deleting]
    # Enough Pods for the demand at the target, never more than one beyond.
    assert len(pods) >= -(-count // pool.max_sessions)
    assert len(pods) <= max(1, -(-count // target) + 1)


# -- nothing stalls the rest -------------------------------------------------------------------


def test_a_catalog_entry_too_large_for_an_annotation_is_a_condition() -> None:
    huge = tts_model("huge", min_resident=1)
    huge.entry["description"] = "\u2603" * (ENTRY_LIMIT // 3)  # escaped: 6 bytes a character
    fine = tts_model("fine", min_resident=1)
    plan = planner().plan(world([huge, fine], [voice_session("call", "huge")]))

    assert {n: model_set_of(p) for n, p in created(plan).items()} == {cpu_pod(0): "fine"}
    ready = cond(plan.model_status["huge"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SpecTooLarge")
    assert "KiB" in ready["message"] and "options, voices or description" in ready["message"]
    assert cond(plan.session_status["call"], "Bound")["reason"] == "SpecTooLarge"
    warnings = [e for e in plan.events if e.reason == "SpecTooLarge"]
    assert [(e.name, e.type) for e in warnings] == [("huge", "Warning")]


def test_a_spec_that_grew_too_large_leaves_the_sets_it_was_in() -> None:
    model = tts_model("grew")
    pod = worker(cpu_pod(0), model)
    model.entry["options"] = {"k": "\u2603" * (ENTRY_LIMIT // 3)}
    plan = planner(KEEP_ONE).plan(world([model], pods=[pod]))
    assert evicted(plan) == {cpu_pod(0): ""}


def test_models_spill_to_another_pod_when_annotations_would_overflow() -> None:
    # Four entries of about a quarter of the budget each do not fit one Pod's annotations,
    # although their memory would.
    models = [tts_model(f"m{i}", min_resident=1, created=NOW - 10 + i) for i in range(4)]
    for model in models:
        model.entry["description"] = "d" * (ANNOTATION_BUDGET // 4 - 100)
    plan = planner().plan(world(models))
    sets = {n: model_set_of(p) for n, p in created(plan).items()}
    assert sets == {cpu_pod(0): "m0,m1,m2", cpu_pod(1): "m3"}
    for pod in plan.create_pods:
        size = sum(len(k) + len(v) for k, v in pod["metadata"]["annotations"].items())
        assert size <= ANNOTATION_BUDGET


def test_a_refused_pod_is_a_condition_and_retried_after_a_backoff() -> None:
    model = tts_model("pico-en", min_resident=1)
    p = planner()
    assert list(created(p.plan(world([model])))) == [cpu_pod(0)]
    p.pod_create_failed("cpu", "pods is forbidden: violates PodSecurity", NOW)
    plan = p.plan(world([model], now=NOW + 1))
    assert plan.create_pods == []
    ready = cond(plan.model_status["pico-en"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PodCreateFailed")
    assert "violates PodSecurity" in ready["message"]
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["PodCreateFailed"]
    # Tried again after the backoff; the delay doubles on each refusal.
    assert list(created(p.plan(world([model], now=NOW + 6)))) == [cpu_pod(0)]
    p.pod_create_failed("cpu", "again", NOW + 6)
    assert p.plan(world([model], now=NOW + 15)).create_pods == []
    assert list(created(p.plan(world([model], now=NOW + 16)))) == [cpu_pod(0)]
    p.pod_created("cpu")
    assert p.create_failures == {}


def outage(w: World) -> World:
    return replace(w, records={}, redis_error="Redis at redis://r:6379/0 is unavailable")


def test_a_redis_outage_keeps_what_needs_no_redis_going() -> None:
    model = tts_model("pico-en", min_resident=1)
    new = tts_model("pico-de", min_resident=1)
    overdue = voice_session("overdue", "pico-en", created=NOW - 100, max_duration_seconds=60)
    waiting = voice_session("waiting", "pico-de")
    pool = CPU.model_copy(update={"memory_mib": 10})  # one model per Pod
    w = outage(world([model, new], [overdue, waiting], [worker(cpu_pod(0), model)]))
    plan = planner(pool).plan(w)

    assert plan.session_status["overdue"]["phase"] == "Ended"
    assert {n: model_set_of(p) for n, p in created(plan).items()} == {cpu_pod(1): "pico-de"}
    assert bound_to(plan)["waiting"] == cpu_pod(1)
    resident = cond(plan.model_status["pico-en"], "Resident")
    assert (resident["status"], resident["reason"]) == ("Unknown", "RedisUnavailable")
    assert "redis://r:6379/0" in resident["message"]


def test_a_redis_outage_evicts_nothing_removes_no_pod_and_keeps_what_was_seen() -> None:
    model = tts_model("pico-de")
    p = planner()
    w = idle_world(model)
    active = {"phase": "Active", "worker": cpu_pod(1), "workerAddr": "10.1.1.1:50051"}
    w.models[0] = replace(
        model, status={"residentOn": [cpu_pod(0)], "lastUsedTime": format_time(NOW - 700)}
    )
    bound_model = tts_model("bound")
    w.models.append(bound_model)
    w.pods.append(worker(cpu_pod(1), bound_model))
    w.sessions.append(voice_session("talking", "bound", status=active))
    plan = p.plan(outage(w))

    assert evicted(plan) == {} and plan.delete_pods == []
    assert plan.model_status["pico-de"]["residentOn"] == [cpu_pod(0)]
    assert plan.model_status["pico-de"]["lastUsedTime"] == format_time(NOW - 700)
    talking = plan.session_status["talking"]
    assert (talking["phase"], talking["workerAddr"]) == ("Active", "10.1.1.1:50051")


def test_after_an_outage_statuses_follow_redis_again_and_settle() -> None:
    model = tts_model("pico-en", min_resident=1)
    p = planner()
    w = world([model], pods=[worker(cpu_pod(0), model)], records=[record(cpu_pod(0))])
    w.records[cpu_pod(0)] = record(cpu_pod(0), resident=["pico-en"])
    w = apply(w, p.plan(w), now=NOW + 1)
    assert_settled(p, w)
    down = apply(outage(w), p.plan(outage(w)), now=NOW + 2)
    assert_settled(p, outage(down))
    up = replace(down, records=w.records, redis_error=None)
    again = p.plan(up)
    assert cond(again.model_status["pico-en"], "Resident")["status"] == "True"
    assert_settled(p, apply(up, again, now=NOW + 3))


def test_an_object_that_cannot_be_read_gets_a_condition_once() -> None:
    bad_model = InvalidObject("TTSModel", "broken", "uid-b", 2, {}, "the spec cannot be read: x")
    bad_session = InvalidObject("VoiceSession", "odd", "uid-o", 1, {}, "the spec cannot be read: y")
    w = world([tts_model("pico-en", min_resident=1)])
    w.invalid = [bad_model, bad_session]
    p = planner()
    plan = p.plan(w)

    ready = cond(plan.model_status["broken"], "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "InvalidSpec",
        "the spec cannot be read: x",
    )
    assert plan.session_status["odd"]["phase"] == "Pending"
    assert cond(plan.session_status["odd"], "Bound")["reason"] == "InvalidSpec"
    assert sorted(e.name for e in plan.events if e.reason == "InvalidSpec") == ["broken", "odd"]
    assert list(created(plan)) == [cpu_pod(0)]  # the rest of the pass went on
    # Written once: the next pass sees the condition and writes nothing more for them.
    w.invalid = [
        replace(bad_model, status=plan.model_status["broken"]),
        replace(bad_session, status=plan.session_status["odd"]),
    ]
    again = p.plan(apply(w, plan, now=NOW + 1))
    assert "broken" not in again.model_status and "odd" not in again.session_status
