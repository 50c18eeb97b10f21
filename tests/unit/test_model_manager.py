"""ModelManager policy with the tone family (a real adapter without weights) and fake clocks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from duplex.errors import AtCapacity, ModelInUse, ModelLoadFailed, ModelNotPlaced, UnknownModel
from duplex.worker.adapters import ModelSpec
from duplex.worker.catalog import Catalog
from duplex.worker.config import ManagerConfig
from duplex.worker.model_manager import ModelManager


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def catalog() -> Catalog:
    specs = [ModelSpec(f"t{i}", "tone") for i in range(5)]
    specs.append(ModelSpec("broken", "tone", options={"fail_load": "1"}))
    return Catalog(specs)


def manager(clock: Clock, **overrides: object) -> ModelManager:
    config = ManagerConfig.model_validate(
        {
            "default_model": "t0",
            "ttl_seconds": 60,
            "min_residency_seconds": 10,
            "max_resident": 3,
            **overrides,
        }
    )
    return ModelManager(catalog(), config, clock=clock, wall_clock=clock)


async def test_default_loaded_at_start_and_unknown_ids_listed() -> None:
    m = manager(Clock())
    await m.start()
    try:
        assert m.resident_ids() == ["t0"]
        with pytest.raises(UnknownModel, match="valid ids: broken, t0, t1"):
            await m.load("nope")
    finally:
        await m.aclose()


async def test_concurrent_loads_share_one_instance() -> None:
    m = manager(Clock())
    a, b = await asyncio.gather(m.load("t1"), m.load("t1"))
    assert a is b
    await m.aclose()


async def test_failed_load_is_reported_and_leaves_the_rest() -> None:
    m = manager(Clock())
    await m.load("t1")
    with pytest.raises(ModelLoadFailed, match="configured to fail"):
        await m.load("broken")
    assert m.resident_ids() == ["t1"]
    assert "broken" in m.last_error
    await m.aclose()


async def test_ttl_evicts_idle_unpinned_after_min_residency() -> None:
    clock = Clock()
    m = manager(clock)
    await m.load("t0")
    await m.load("t1")
    clock.now += 30
    assert m.evict_idle() == []  # idle 30 s < ttl 60 s
    clock.now += 31
    assert [x.model_id for x in m.evict_idle()] == ["t1"]  # t0 is the pinned default
    await m.aclose()


async def test_model_in_use_is_never_evicted_or_unloaded() -> None:
    clock = Clock()
    m = manager(clock)
    lease = await m.acquire("t1")
    clock.now += 1000
    assert m.evict_idle() == []
    with pytest.raises(ModelInUse):
        await m.unload("t1")
    m.release(lease)
    clock.now += 61
    assert [x.model_id for x in m.evict_idle()] == ["t1"]
    await m.aclose()


async def test_min_residency_protects_fresh_models() -> None:
    clock = Clock()
    m = manager(clock, ttl_seconds=1, min_residency_seconds=100)
    await m.load("t1")
    clock.now += 50
    assert m.evict_idle() == []
    clock.now += 51
    assert [x.model_id for x in m.evict_idle()] == ["t1"]
    await m.aclose()


async def test_lru_cap_evicts_least_recently_used_idle_model() -> None:
    clock = Clock()
    m = manager(clock, max_resident=3)
    for model_id in ("t1", "t2", "t3"):
        await m.load(model_id)
        clock.now += 20
    m.release(await m.acquire("t1"))  # t1 becomes the most recently used
    await m.load("t4")
    assert m.resident_ids() == ["t1", "t3", "t4"]
    await m.aclose()


async def test_at_cap_with_every_model_in_use_is_resource_exhausted() -> None:
    clock = Clock()
    m = manager(clock, max_resident=2)
    leases = [await m.acquire("t1"), await m.acquire("t2")]
    clock.now += 100
    with pytest.raises(AtCapacity, match="cap 2"):
        await m.load("t3")
    assert m.resident_ids() == ["t1", "t2"]
    for lease in leases:
        m.release(lease)
    await m.load("t3")
    assert len(m.resident_ids()) == 2
    await m.aclose()


async def test_reconcile_to_desired_set() -> None:
    clock = Clock()
    m = manager(clock)
    await m.load("t0")
    lease = await m.acquire("t1")
    await m.reconcile(["t2", "unknown-id"])
    # t0 idle → unloaded; t1 in use → kept until released; t2 loaded; unknown id reported.
    assert m.resident_ids() == ["t1", "t2"]
    assert "unknown-id" in m.last_error
    m.release(lease)
    await asyncio.sleep(0.05)
    assert m.resident_ids() == ["t2"]
    await m.aclose()


async def test_eviction_timer_unloads_without_polling() -> None:
    m = ModelManager(
        catalog(),
        ManagerConfig(default_model="t0", ttl_seconds=0.2, min_residency_seconds=0),
    )
    await m.start()
    await m.load("t1")
    changed = asyncio.Event()
    m.add_listener(changed.set)
    async with asyncio.timeout(5):
        while m.is_resident("t1"):
            changed.clear()
            await changed.wait()
    assert m.resident_ids() == ["t0"]
    await m.aclose()


async def test_reload_swaps_instance_and_keeps_old_lease_working() -> None:
    m = manager(Clock())
    lease = await m.acquire("t1")
    fresh = await m.reload("t1")
    assert fresh is not lease.model and lease.model.retired
    assert lease.model.adapter.native_rate == 16000
    m.release(lease)
    await m.aclose()


def slow_catalog(n: int) -> Catalog:
    """Tone models whose load takes 0.3 s: long enough for something to change meanwhile."""
    return Catalog(
        [ModelSpec(f"s{i}", "tone", options={"load_delay_seconds": "0.3"}) for i in range(n)]
    )


async def test_a_load_that_finishes_after_its_model_left_the_set_is_not_kept() -> None:
    config = ManagerConfig(default_model="s0", min_residency_seconds=0)
    m = ModelManager(slow_catalog(2), config)
    await m.start(follow_model_set=True)
    try:
        first = asyncio.create_task(m.reconcile(["s1"]))
        async with asyncio.timeout(5):
            while not m.loading_ids():
                await asyncio.sleep(0.01)
        await m.reconcile([])  # the operator took it out while it loaded
        await first
        async with asyncio.timeout(5):
            while m.loading_ids():
                await asyncio.sleep(0.01)
        assert m.resident_ids() == []
        with pytest.raises(ModelNotPlaced):
            await m.acquire("s1")
    finally:
        await m.aclose()


async def test_loads_in_flight_count_against_the_resident_cap() -> None:
    config = ManagerConfig(
        default_model="s0", max_resident=2, max_parallel_loads=3, min_residency_seconds=0
    )
    m = ModelManager(slow_catalog(4), config)
    await m.start()
    try:
        results = await asyncio.gather(
            *(m.load(f"s{i}") for i in (1, 2, 3)), return_exceptions=True
        )
        assert len(m.resident_ids()) <= 2, (m.resident_ids(), results)
        assert any(isinstance(r, AtCapacity) for r in results), results
    finally:
        await m.aclose()


async def test_every_warm_up_text_is_spoken_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from duplex.worker.adapters.base import NativeAudio
    from duplex.worker.adapters.tone import ToneAdapter

    spoken: list[str] = []
    synthesize = ToneAdapter.synthesize

    def recording(
        self: ToneAdapter, text: str, voice: str | None, speed: float
    ) -> Iterator[NativeAudio]:
        spoken.append(text)
        return synthesize(self, text, voice, speed)

    monkeypatch.setattr(ToneAdapter, "synthesize", recording)
    monkeypatch.setattr(ToneAdapter, "warmup_texts", ("one two", "a much longer warm up text"))
    m = manager(Clock())
    await m.load("t2")
    await m.aclose()
    assert spoken == ["one two", "a much longer warm up text"]
