"""Discovery through a Redis that speaks only TLS and knows only an ACL user: the worker
registers and the orchestrator routes over `rediss://user:password@…`; a wrong password or a
plain-text client is refused at start with a clear error."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from duplex.errors import InvalidInput, WorkerUnavailable
from duplex.orchestrator.router import ClientPool, RedisDirectory, Router
from duplex.ports import free_ports
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker

PASSWORD = "p-" + "r" * 30


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """redis-server with TLS on its only port, the default user off, one user for duplex's
    keys and channel."""
    d = tmp_path_factory.mktemp("redis-tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=redis",
            "-keyout", "redis.key", "-out", "redis.csr", cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", "redis.crt", "-extfile", "san.ext",
            cwd=d)  # fmt: skip
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(d / "redis.crt"), "--tls-key-file", str(d / "redis.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(d),
         "--user", "default", "off",
         "--user", "duplex", "on", f">{PASSWORD}", "~duplex:*", "&duplex:*",
         "+@all", "-@admin", "-@dangerous"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    probe = redis.Redis(
        host="127.0.0.1",
        port=port,
        username="duplex",
        password=PASSWORD,
        ssl=True,
        ssl_ca_certs=str(d / "ca.crt"),
        socket_timeout=1,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server with TLS did not start") from None
                time.sleep(0.05)
        yield port, d / "ca.crt"
    finally:
        probe.close()
        proc.terminate()
        proc.wait(timeout=10)


def url(port: int, ca: Path | None, password: str = PASSWORD) -> str:
    if ca is None:  # plain text
        return f"redis://duplex:{password}@127.0.0.1:{port}/0"
    return f"rediss://duplex:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"


def worker_config(name: str, redis_url: str) -> WorkerConfig:
    return WorkerConfig(
        name=name, port=0, default_model="tone", test_models=True, redis=redis_url,
        heartbeat_seconds=0.2,
    )  # fmt: skip


async def test_discovery_over_tls_with_an_acl_user(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    async with Worker(worker_config("tls-redis-worker", url(port, ca))):
        pool = ClientPool()
        directory = RedisDirectory(pool, url(port, ca))
        try:
            await directory.start()
            route = await Router(directory).route("tone")
            assert route.worker.name == "tls-redis-worker"
            client = pool.get(route.worker.addr)
            await client.start_session("s1", "tone", {"pacing": "none"})
            frames = [f async for f in client.say("s1", "found over TLS")]
            assert frames[-1].is_final and len(frames) > 10
            await client.end_session("s1")
        finally:
            await directory.aclose()
            await pool.aclose()


@pytest.mark.parametrize(
    ("how", "message"),
    [("wrong password", "invalid username-password"), ("plain text", "")],
)
async def test_a_worker_that_cannot_reach_redis_fails_at_start(
    tls_redis: tuple[int, Path], how: str, message: str
) -> None:
    port, ca = tls_redis
    bad = url(port, ca, password="nope") if how == "wrong password" else url(port, None)
    with pytest.raises(WorkerUnavailable) as caught:
        async with Worker(worker_config("refused", bad)):
            pass
    said = str(caught.value)
    assert "Redis at 127.0.0.1" in said and message in said.lower(), said
    assert "nope" not in said and PASSWORD not in said  # no password in logs


async def test_a_tls_option_on_a_plain_url_is_a_clear_error(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    with pytest.raises(InvalidInput, match="rediss://") as caught:
        async with Worker(worker_config("misconfigured", url(port, ca).replace("rediss", "redis"))):
            pass
    assert PASSWORD not in str(caught.value)
