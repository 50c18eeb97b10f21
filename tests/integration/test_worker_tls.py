"""A worker behind mutual TLS: only clients with a certificate from its CA get in; admin RPCs
need an admin identity; the health service stays open in plain text."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from duplex.rpc.client import Command, TtsClient
from duplex.rpc.security import ClientTls
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker

ADMIN_TOKEN = "t-" + "a" * 30


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the worker's certificate for 127.0.0.1, and two client certificates."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("worker", ["-extfile", "san.ext"]), ("orchestrator", []), ("ops-admin", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", *ext, cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
async def worker(pki: Path) -> AsyncIterator[Worker]:
    config = WorkerConfig(
        name="tls-worker",
        port=0,
        default_model="tone",
        test_models=True,
        tls_cert=str(pki / "worker.crt"),
        tls_key=str(pki / "worker.key"),
        tls_client_ca=str(pki / "ca.crt"),
        admin_names=["ops-admin"],
        admin_tokens=[ADMIN_TOKEN],
        health_port=0,
    )
    async with Worker(config) as w:
        yield w


def tls(pki: Path, name: str | None) -> ClientTls:
    if name is None:
        return ClientTls(ca=str(pki / "ca.crt"))
    return ClientTls(
        ca=str(pki / "ca.crt"), cert=str(pki / f"{name}.crt"), key=str(pki / f"{name}.key")
    )


async def test_a_client_with_a_certificate_speaks(worker: Worker, pki: Path) -> None:
    async with TtsClient(worker.address, tls=tls(pki, "orchestrator")) as client:
        await client.start_session("s1", "tone", {"pacing": "none"})
        frames = [f async for f in client.say("s1", "over mutual TLS")]
        assert frames[-1].is_final and len(frames) > 10
        await client.control("s1", Command.KEEPALIVE)
        await client.end_session("s1")


@pytest.mark.parametrize("how", ["plain text", "no client certificate"])
async def test_clients_without_a_certificate_do_not_get_in(
    worker: Worker, pki: Path, how: str
) -> None:
    client = (
        TtsClient(worker.address)
        if how == "plain text"
        else TtsClient(worker.address, tls=tls(pki, None))
    )
    async with client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.list_models()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_admin_rpcs_need_an_admin_identity(worker: Worker, pki: Path) -> None:
    async with TtsClient(worker.address, tls=tls(pki, "orchestrator")) as plain:
        for call in (lambda: plain.load_model("pico-en"), lambda: plain.unload_model("tone")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "admin" in (info.value.details() or "")
        await plain.start_session("s2", "tone")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await plain.control("s2", Command.RELOAD)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await plain.end_session("s2")
    async with TtsClient(worker.address, tls=tls(pki, "ops-admin")) as admin:
        await admin.load_model("pico-en")
        await admin.unload_model("pico-en")
    async with TtsClient(
        worker.address, tls=tls(pki, "orchestrator"), admin_token=ADMIN_TOKEN
    ) as with_token:
        await with_token.load_model("pico-en")


async def test_health_stays_open_in_plain_text(worker: Worker) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="tts.TTSService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_admin_token_replaces_the_loopback_default() -> None:
    config = WorkerConfig(
        name="token-worker", port=0, default_model="tone", test_models=True,
        admin_tokens=[ADMIN_TOKEN],
    )  # fmt: skip
    async with Worker(config) as w:
        async with TtsClient(w.address) as local:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await local.load_model("pico-en")
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with TtsClient(w.address, admin_token=ADMIN_TOKEN) as admin:
            await admin.load_model("pico-en")
