"""Kubeconfig parsing, and the model-set annotations as the worker reads them.

The apiserver-backed tests use one kind of kubeconfig; these cover the other shapes a real
cluster hands out (tokens, inline client certificates, relative file paths).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from duplex.errors import InvalidInput
from duplex.kube import KubeConfig
from duplex.worker.podwatch import parse_model_set, parse_model_specs
from duplex_operator.pods import model_set_metadata
from duplex_operator.resources import MODEL_SET, MODEL_SPECS, parse_model


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


def test_a_token_user(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        cluster={"server": "https://kube.example:6443/"},
        user={"token": "s3cret"},
        namespace="voice",
    )
    config = KubeConfig.from_kubeconfig(path)

    assert config.server == "https://kube.example:6443"  # no trailing slash
    assert config.namespace == "voice"
    assert config.bearer() == "s3cret"
    assert (config.ca_file, config.cert_file, config.key_file) == (None, None, None)
    assert not config.insecure


def test_an_explicit_context_and_the_default_namespace(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster={"server": "http://127.0.0.1:8080"})
    assert KubeConfig.from_kubeconfig(path).namespace == "default"
    assert KubeConfig.from_kubeconfig(path).bearer() is None  # no user: no auth
    prod = KubeConfig.from_kubeconfig(path, context="prod")
    assert (prod.server, prod.namespace) == ("https://other.example:6443", "prod")


def test_inline_client_certificates_become_files_until_cleanup(tmp_path: Path) -> None:
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
    config = KubeConfig.from_kubeconfig(path)

    files = [config.ca_file, config.cert_file, config.key_file]
    assert all(f is not None for f in files)
    assert [f.read_bytes() for f in files if f is not None] == [ca, cert, key]
    assert config.bearer() is None
    config.cleanup()
    assert not any(f.exists() for f in files if f is not None)
    config.cleanup()  # a second cleanup (client closed twice) is harmless


def test_insecure_skip_tls_verify(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        cluster={"server": "https://kube.example:6443", "insecure-skip-tls-verify": True},
        user={"token": "t"},
    )
    config = KubeConfig.from_kubeconfig(path)

    assert config.insecure
    ctx = config.ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    home = tmp_path / "kube"
    home.mkdir()
    token = tmp_path / "token"
    token.write_text("rotated-token\n")
    path = write_kubeconfig(
        home / "config",
        cluster={"server": "https://kube.example:6443", "certificate-authority": "certs/ca.crt"},
        user={
            "client-certificate": "/etc/kube/client.crt",
            "client-key": "client.key",
            "tokenFile": str(token),
        },
    )
    config = KubeConfig.from_kubeconfig(path)

    assert config.ca_file == home / "certs" / "ca.crt"
    assert config.cert_file == Path("/etc/kube/client.crt")  # absolute: as written
    assert config.key_file == home / "client.key"
    assert config.bearer() == "rotated-token"  # read from the file on use


def test_a_missing_context_is_invalid_input(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster={"server": "https://k:6443"})
    with pytest.raises(InvalidInput, match="no context named 'staging'") as err:
        KubeConfig.from_kubeconfig(path, context="staging")
    assert str(path) in str(err.value)

    bare = write_kubeconfig(tmp_path / "bare", cluster={"server": "https://k:6443"}, current=None)
    with pytest.raises(InvalidInput, match="no current-context"):
        KubeConfig.from_kubeconfig(bare)


def test_an_unreadable_kubeconfig_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read kubeconfig"):
        KubeConfig.from_kubeconfig(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.write_text("clusters: [unclosed\n")
    with pytest.raises(InvalidInput, match="cannot read kubeconfig"):
        KubeConfig.from_kubeconfig(broken)


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


def test_a_relative_token_file_is_read_next_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    path = write_kubeconfig(
        tmp_path / "config", cluster={"server": "https://k:6443"}, user={"tokenFile": "token"}
    )
    assert KubeConfig.from_kubeconfig(path).bearer() == "from-file"


def test_a_cluster_without_a_server_is_invalid_input(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster={"insecure-skip-tls-verify": True})
    with pytest.raises(InvalidInput, match="has no server"):
        KubeConfig.from_kubeconfig(path)
