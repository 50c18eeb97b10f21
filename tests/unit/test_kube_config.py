"""Kubeconfigs as the client reads them: every shape a real cluster hands out, no server.

The client is kubernetes_asyncio's; these check what duplex.kube makes of its result (the
server, the Authorization header, TLS files, the namespace, where credentials come from) and
the errors a person sees. tests/integration/test_kube_credentials.py takes the same kinds to
a real API server.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml

from duplex import kube
from duplex.errors import InvalidInput
from duplex.kube import KubeClient, KubeCredentials, KubeSource
from duplex.modelset import MODEL_SET, MODEL_SPECS, parse_model_set, parse_model_specs
from duplex_operator.pods import model_set_metadata
from duplex_operator.resources import parse_model
from tests.kubeconfigs import exec_user


def write_kubeconfig(
    path: Path,
    *,
    cluster: dict[str, Any],
    user: dict[str, Any] | None = None,
    namespace: str | None = None,
    current: str | None = "dev",
) -> Path:
    context: dict[str, Any] = {"cluster": "c1"}
    if user is not None:
        context["user"] = "u1"
    if namespace is not None:
        context["namespace"] = namespace
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "other", "cluster": {"server": "https://other.example:6443"}},
            {"name": "c1", "cluster": cluster},
        ],
        "contexts": [
            {"name": "dev", "context": context},
            {"name": "prod", "context": {"cluster": "other", "namespace": "prod"}},
        ],
        "users": [{"name": "u1", "user": user}] if user is not None else [],
    }
    if current is not None:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


def contents(*paths: str) -> list[bytes]:
    return [Path(p).read_bytes() for p in paths]


async def credentials(path: Path | str, context: str | None = None) -> KubeCredentials:
    async with KubeClient.load(path, context) as client:
        return await client.credentials()


@pytest.fixture
def no_cluster_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No service account, no KUBECONFIG, an empty home: only what a test sets is found."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", tmp_path / "sa")
    return tmp_path


async def test_a_token_user(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        cluster={"server": "https://kube.example:6443/"},
        user={"token": "s3cret"},
        namespace="voice",
    )
    assert KubeClient.load(path).namespace == "voice"
    creds = await credentials(path)
    assert creds.server == "https://kube.example:6443"  # no trailing slash
    assert creds.authorization == "Bearer s3cret"
    assert (creds.cert_file, creds.key_file, creds.proxy, creds.expires) == (None,) * 4
    assert not creds.insecure


async def test_an_explicit_context_and_the_default_namespace(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster={"server": "http://127.0.0.1:8080"})
    assert KubeClient.load(path).namespace == "default"
    assert (await credentials(path)).authorization is None  # no user, plain HTTP: no auth
    # The library cannot run an HTTPS context without a user: a clear error, at once.
    with pytest.raises(InvalidInput, match="context 'prod' names no user"):
        KubeClient.load(path, "prod")


async def test_inline_client_certificates_become_files(tmp_path: Path) -> None:
    cert, key, ca = b"-----CERT-----\n", b"-----KEY-----\n", b"-----CA-----\n"
    path = write_kubeconfig(
        tmp_path / "config",
        cluster={
            "server": "https://kube.example:6443",
            "certificate-authority-data": base64.b64encode(ca).decode(),
        },
        user={
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        },
    )
    client = KubeClient.load(path)
    # The fake certificates load no TLS context; what is read from the kubeconfig is checked.
    await client._credentials.load()
    conf = client._credentials.configuration
    assert contents(conf.ssl_ca_cert, conf.cert_file, conf.key_file) == [ca, cert, key]
    assert await client._credentials.authorization() is None


async def test_insecure_skip_tls_verify_proxy_and_server_name(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        cluster={
            "server": "https://kube.example:6443",
            "insecure-skip-tls-verify": True,
            "proxy-url": "http://proxy.example:3128",
            "tls-server-name": "kubernetes.default.svc",
        },
        user={"token": "t"},
    )
    creds = await credentials(path)
    assert creds.insecure
    assert creds.proxy == "http://proxy.example:3128"
    client = KubeClient.load(path)
    await client._credentials.load()
    assert client._credentials.configuration.tls_server_name == "kubernetes.default.svc"


async def test_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    home = tmp_path / "kube"
    (home / "certs").mkdir(parents=True)
    shutil.copy(certifi.where(), home / "certs" / "ca.crt")
    (home / "token").write_text("from-file\n")
    path = write_kubeconfig(
        home / "config",
        cluster={"server": "https://kube.example:6443", "certificate-authority": "certs/ca.crt"},
        user={"tokenFile": "token"},
    )
    creds = await credentials(path)
    assert creds.ca_file == str(home / "certs" / "ca.crt")
    assert creds.authorization == "Bearer from-file"


async def test_a_token_file_is_read_again_when_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    path = write_kubeconfig(
        tmp_path / "config", cluster={"server": "https://k:6443"}, user={"tokenFile": str(token)}
    )
    async with KubeClient.load(path) as client:
        assert (await client.credentials()).authorization == "Bearer first"
        token.write_text("rotated")
        assert (await client.credentials()).authorization == "Bearer first"  # not yet due
        monkeypatch.setattr(kube, "_TOKEN_FILE_SECONDS", 0.0)
        assert (await client.credentials()).authorization == "Bearer rotated"


async def test_an_exec_plugin_runs_once_until_its_token_is_due(tmp_path: Path) -> None:
    tokens, calls = tmp_path / "tokens", tmp_path / "calls"
    tokens.write_text("one\ntwo\n")
    user = exec_user(tokens, calls=calls)
    path = write_kubeconfig(tmp_path / "config", cluster={"server": "https://k:6443"}, user=user)
    async with KubeClient.load(path) as client:
        first = await client.credentials()
        assert first.authorization == "Bearer one"
        assert first.expires is not None
        assert (await client.credentials()).authorization == "Bearer one"
        assert len(calls.read_text().splitlines()) == 1
        # What the plugin is told: the ExecCredential request of client-go.
        info = json.loads(calls.read_text().splitlines()[0])["exec_info"]
        assert (info["kind"], info["apiVersion"]) == (
            "ExecCredential",
            "client.authentication.k8s.io/v1",
        )
        await client._credentials.refresh(force=True)  # what a 401 does
        assert (await client.credentials()).authorization == "Bearer two"
        assert len(calls.read_text().splitlines()) == 2


async def test_an_exec_token_close_to_expiry_is_renewed(tmp_path: Path) -> None:
    tokens, calls = tmp_path / "tokens", tmp_path / "calls"
    tokens.write_text("one\ntwo\n")
    # Within the client's five-minute margin: due at every use.
    user = exec_user(tokens, calls=calls, ttl=60)
    path = write_kubeconfig(tmp_path / "config", cluster={"server": "https://k:6443"}, user=user)
    async with KubeClient.load(path) as client:
        assert (await client.credentials()).authorization == "Bearer one"
        assert (await client.credentials()).authorization == "Bearer two"


async def test_a_failing_exec_plugin_is_invalid_input(tmp_path: Path) -> None:
    empty = tmp_path / "tokens"
    empty.write_text("")
    user = exec_user(empty)
    path = write_kubeconfig(tmp_path / "config", cluster={"server": "https://k:6443"}, user=user)
    with pytest.raises(InvalidInput, match="no token to hand out"):
        await credentials(path)


async def test_several_kubeconfig_files_are_merged(
    no_cluster_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cluster in one file, the user in another, the context in a third: as
    # KUBECONFIG=a:b:c gives them to kubectl. A name defined twice keeps its first definition.
    a, b, c = (no_cluster_env / n for n in "abc")
    a.write_text(
        yaml.safe_dump({"clusters": [{"name": "k", "cluster": {"server": "https://a:1"}}]})
    )
    b.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "k", "cluster": {"server": "https://ignored:1"}}],
                "users": [{"name": "me", "user": {"token": "from-b"}}],
            }
        )
    )
    context = {"cluster": "k", "user": "me", "namespace": "voice"}
    c.write_text(
        yaml.safe_dump({"contexts": [{"name": "x", "context": context}], "current-context": "x"})
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(map(str, [a, no_cluster_env / "gone", b, c])))
    client = KubeClient.load()
    assert client.namespace == "voice"
    creds = await client.credentials()
    await client.aclose()
    assert (creds.server, creds.authorization) == ("https://a:1", "Bearer from-b")


def test_where_credentials_come_from(no_cluster_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = no_cluster_env / "home" / ".kube"
    home.mkdir(parents=True)
    write_kubeconfig(home / "config", cluster={"server": "http://home:1"}, namespace="h")
    env = write_kubeconfig(no_cluster_env / "env", cluster={"server": "http://env:1"})
    given = write_kubeconfig(no_cluster_env / "given", cluster={"server": "http://given:1"})
    assert KubeSource.find().kubeconfig == str(home / "config")
    monkeypatch.setenv("KUBECONFIG", str(env))
    assert KubeSource.find().kubeconfig == str(env)
    # In a Pod the service account wins over $KUBECONFIG; an explicit file wins over both.
    sa = no_cluster_env / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    (sa / "namespace").write_text("pods-ns\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    source = KubeSource.find()
    assert (source.kubeconfig, source.namespace, source.service_account_dir) == (
        None,
        "pods-ns",
        sa,
    )
    assert KubeSource.find(given).kubeconfig == str(given)


def test_no_credentials_anywhere_is_invalid_input(no_cluster_env: Path) -> None:
    with pytest.raises(InvalidInput, match="no Kubernetes credentials: not in a Pod"):
        KubeSource.find()


def test_a_missing_context_is_invalid_input(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster={"server": "https://k:6443"})
    with pytest.raises(InvalidInput, match="staging") as err:
        KubeClient.load(path, context="staging")
    assert str(path) in str(err.value)

    bare = write_kubeconfig(tmp_path / "bare", cluster={"server": "https://k:6443"}, current=None)
    with pytest.raises(InvalidInput, match="current-context"):
        KubeClient.load(bare)


def test_an_unreadable_kubeconfig_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no kubeconfig at"):
        KubeClient.load(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.write_text("clusters: [unclosed\n")
    with pytest.raises(InvalidInput, match="cannot use kubeconfig"):
        KubeClient.load(broken)


def test_a_cluster_without_a_server_is_invalid_input(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster={"insecure-skip-tls-verify": True})
    with pytest.raises(InvalidInput, match="the cluster of context 'dev' has no server"):
        KubeClient.load(path)


# -- the model-set annotations, as the worker reads them ---------------------------------------


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        (None, []),
        ("", []),
        (" , ,", []),
        ("pico-en", ["pico-en"]),
        ("a, b,,a ,c", ["a", "b", "c"]),
    ],
)
def test_parse_model_set_drops_blanks_and_repeats(value: str | None, ids: list[str]) -> None:
    assert parse_model_set(value) == ids


def test_parse_model_specs_reads_what_the_operator_writes() -> None:
    obj = {
        "metadata": {"name": "joe", "uid": "u"},
        "spec": {
            "modelId": "piper-joe",
            "family": "piper",
            "source": "/models/joe.onnx",
            "languages": ["en"],
            "voices": ["joe"],
            "defaultVoice": "joe",
            "resources": {"memoryMiB": 120},
            "options": {"length_scale": "1.1"},
        },
    }
    annotations, _ = model_set_metadata([parse_model(obj)], {})
    assert parse_model_set(annotations[MODEL_SET]) == ["piper-joe"]
    (entry,) = parse_model_specs(annotations[MODEL_SPECS])
    assert (entry.id, entry.family, entry.source) == ("piper-joe", "piper", "/models/joe.onnx")
    assert (entry.memory_mib, entry.default_voice) == (120, "joe")
    assert entry.options == {"length_scale": "1.1"}
    assert parse_model_specs(None) == [] and parse_model_specs("") == []


@pytest.mark.parametrize(
    "value",
    [
        "[{not json",
        json.dumps({"id": "a", "family": "pico"}),  # an object, not a list
        json.dumps([{"id": "a", "family": "pico", "colour": "blue"}]),  # unknown field
        json.dumps([{"id": "a"}]),  # no family
        json.dumps([{"id": "a", "family": "pico", "memory_mib": 0}]),
    ],
)
def test_parse_model_specs_rejects_bad_annotations(value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad {MODEL_SPECS} annotation")):
        parse_model_specs(value)
