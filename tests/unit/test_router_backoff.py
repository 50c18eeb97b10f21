"""Per-worker backoff in the router's view: a failing worker is left out for a while that
doubles with each failure in a row, the others are not touched, and a refresh keeps it."""

from __future__ import annotations

import time

import pytest

from duplex.errors import UnknownModel
from duplex.orchestrator.router import ClientPool, Directory, Router, WorkerView


class _Fixed(Directory):
    """Pure logic: the view is what the test says it is (every refresh reports it anew)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(ClientPool())
        self.names = names

    async def refresh(self) -> None:
        for name in self.names:
            view = WorkerView(
                name=name,
                addr=f"{name}:1",
                models={"m"},
                resident={"m"},
                max_sessions=4,
            )
            self._workers[name] = self._keep_backoff(view)


async def test_a_failing_worker_is_left_out_alone_for_longer_each_time() -> None:
    directory = _Fixed(["a", "b"])
    router = Router(directory)
    await directory.refresh()
    waits = []
    for _ in range(7):
        directory.mark_failed("a")
        (view,) = (w for w in directory._workers.values() if w.name == "a")
        waits.append(round(view.failed_until - time.monotonic()))
        # Only b is routed to meanwhile, and a refresh does not forgive a.
        assert {(await router.route("m")).worker.name for _ in range(20)} == {"b"}
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    directory.mark_ok("a")
    assert {w.name for w in directory.workers()} == {"a", "b"}


async def test_every_worker_failing_means_none_to_route_to_until_one_recovers() -> None:
    directory = _Fixed(["a", "b"])
    router = Router(directory)
    await directory.refresh()
    directory.mark_failed("a")
    directory.mark_failed("b")
    with pytest.raises(UnknownModel, match="no workers are up"):
        await router.route("m")
    for view in directory._workers.values():
        view.failed_until = time.monotonic() - 0.01  # its backoff ran out
    assert {(await router.route("m")).worker.name for _ in range(30)} == {"a", "b"}
