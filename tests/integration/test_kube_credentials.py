"""Every kind of kubeconfig the client accepts, against a real kube-apiserver.

The apiserver knows an admin token, a second user's token (handed out here only by a
credential plugin) and client certificates of its own CA; it answers SelfSubjectReview with
the user a request authenticated as, which is what these tests check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from duplex.kube import KubeClient, KubeSource
from duplex.testing.apiserver import CERT_USER, OIDC_USER, PLUGIN_USER, KubeApiServer
from tests.kubeconfigs import exec_kubeconfig, exec_user

REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


async def whoami(client: KubeClient) -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    review = await client.create(REVIEW, body)
    return str(review["status"]["userInfo"]["username"])


async def test_an_exec_plugin_user(kube_apiserver: KubeApiServer, tmp_path: Path) -> None:
    path, calls = exec_kubeconfig(kube_apiserver, tmp_path)
    async with KubeClient.load(path) as client:
        assert await whoami(client) == PLUGIN_USER
        await client.get("/api/v1/namespaces/default")
    # Its token is good for an hour: one run of the plugin serves every request.
    assert len(calls.read_text().splitlines()) == 1


async def test_an_exec_plugin_is_run_again_when_its_token_is_refused(
    kube_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    # The first token it hands out is revoked (unknown to the server), the next one good.
    tokens, calls = tmp_path / "tokens", tmp_path / "calls"
    tokens.write_text(f"revoked\n{kube_apiserver.plugin_token}\n")
    path = kube_apiserver.write_kubeconfig(tmp_path / "config", exec_user(tokens, calls=calls))
    async with KubeClient.load(path) as client:
        assert await whoami(client) == PLUGIN_USER
    assert len(calls.read_text().splitlines()) == 2


async def test_a_client_certificate(kube_apiserver: KubeApiServer, tmp_path: Path) -> None:
    inline = {
        "client-certificate-data": _b64(kube_apiserver.client_cert),
        "client-key-data": _b64(kube_apiserver.client_key),
    }
    for user in (
        {"client-certificate": str(kube_apiserver.client_cert), "client-key": "client.key"},
        inline,
    ):
        # A relative path is read next to the kubeconfig.
        path = kube_apiserver.write_kubeconfig(kube_apiserver.client_key.parent / "cert", user)
        async with KubeClient.load(path) as client:
            assert await whoami(client) == CERT_USER


async def test_an_oidc_auth_provider(kube_apiserver: KubeApiServer, tmp_path: Path) -> None:
    # What `kubectl oidc-login` or an identity provider's setup writes: an id-token that has
    # not expired is sent as it is, with no call to the issuer.
    provider = {
        "name": "oidc",
        "config": {
            "client-id": "duplex",
            "idp-issuer-url": "https://issuer.invalid",
            "id-token": kube_apiserver.oidc_token,
        },
    }
    path = kube_apiserver.write_kubeconfig(tmp_path / "config", {"auth-provider": provider})
    async with KubeClient.load(path) as client:
        assert await whoami(client) == OIDC_USER


async def test_a_token_file_that_rotates(kube_apiserver: KubeApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("expired\n")
    path = kube_apiserver.write_kubeconfig(tmp_path / "config", {"tokenFile": str(token)})
    async with KubeClient.load(path) as client:
        await client.credentials()  # read now: the old token
        token.write_text(kube_apiserver.token + "\n")  # rotated, with the usual newline
        # The server refuses the old token; the client reads the file again and goes on.
        assert await whoami(client) == "admin"


async def test_in_cluster_with_a_rotating_service_account_token(
    kube_apiserver: KubeApiServer,
    kube: KubeClient,
    kube_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await kube.create(
        f"/api/v1/namespaces/{kube_namespace}/serviceaccounts", {"metadata": {"name": "pod-sa"}}
    )
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    answer = await kube.create(
        f"/api/v1/namespaces/{kube_namespace}/serviceaccounts/pod-sa/token", request
    )
    # What the kubelet mounts into a Pod, and the environment it sets.
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(kube_apiserver.ca_file.read_bytes())
    (account / "namespace").write_text(kube_namespace)
    (account / "token").write_text("token-of-an-hour-ago")
    host, port = kube_apiserver.url.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    source = KubeSource.in_cluster(account)
    assert source.namespace == kube_namespace
    async with KubeClient(source) as client:
        await client.credentials()
        (account / "token").write_text(answer["status"]["token"])  # the kubelet rotated it
        assert await whoami(client) == f"system:serviceaccount:{kube_namespace}:pod-sa"


async def test_several_kubeconfig_files(
    kube_apiserver: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = yaml.safe_load(kube_apiserver.kubeconfig.read_text())
    clusters, users = tmp_path / "clusters", tmp_path / "users"
    clusters.write_text(yaml.safe_dump({k: whole[k] for k in ("clusters", "contexts")}))
    users.write_text(yaml.safe_dump({"users": whole["users"], "current-context": "test"}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(clusters), str(users)]))
    async with KubeClient.load() as client:
        assert await whoami(client) == "admin"


async def test_a_proxy_url(kube_apiserver: KubeApiServer, tmp_path: Path) -> None:
    async with connect_proxy() as (proxy, tunnels):
        cluster = {
            "server": kube_apiserver.url,
            "certificate-authority": str(kube_apiserver.ca_file),
            "proxy-url": proxy,
        }
        path = kube_apiserver.write_kubeconfig(
            tmp_path / "config", {"token": kube_apiserver.token}, cluster=cluster
        )
        async with KubeClient.load(path) as client:
            assert await whoami(client) == "admin"
    assert tunnels == [kube_apiserver.url.removeprefix("https://")]


async def test_a_tls_server_name(kube_apiserver: KubeApiServer, tmp_path: Path) -> None:
    # The serving certificate names 127.0.0.1 and kubernetes*, not localhost.
    server = kube_apiserver.url.replace("127.0.0.1", "localhost")
    user = {"token": kube_apiserver.token}
    for name, works in ((None, False), ("kubernetes.default.svc", True), ("wrong.example", False)):
        cluster = {"server": server, "certificate-authority": str(kube_apiserver.ca_file)}
        if name:
            cluster["tls-server-name"] = name
        path = kube_apiserver.write_kubeconfig(tmp_path / "config", user, cluster=cluster)
        async with KubeClient.load(path) as client:
            if works:
                assert await whoami(client) == "admin"
            else:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await whoami(client)


async def test_a_throttled_request_is_sent_again(tmp_path: Path) -> None:
    # API Priority and Fairness answers 429 with Retry-After; nothing was done, so the client
    # waits as asked and sends the same request again (a server of our own plays the part).
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.method)
        if len(seen) == 1:
            return web.json_response(
                {"kind": "Status", "code": 429, "reason": "TooManyRequests"},
                status=429,
                headers={"Retry-After": "0.2"},
            )
        return web.json_response({"kind": "ConfigMap", "metadata": {"name": "cm"}}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        path = tmp_path / "config"
        path.write_text(
            yaml.safe_dump(
                {
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c"}}],
                    "current-context": "x",
                }
            )
        )
        async with KubeClient.load(path) as client:
            created = await client.create("/api/v1/namespaces/x/configmaps", {"data": {}})
            assert created["metadata"]["name"] == "cm"
            assert client.writes["POST"] == 2
    finally:
        await runner.cleanup()
    assert seen == ["POST", "POST"]


@contextlib.asynccontextmanager
async def connect_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP CONNECT proxy on loopback; yields its URL and the targets it tunnelled to."""
    tunnels: list[str] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.decode().split("\r\n")[0].split(" ")
        assert method == "CONNECT"
        tunnels.append(target)
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", tunnels


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
