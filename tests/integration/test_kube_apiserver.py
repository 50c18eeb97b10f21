"""The project's CRDs in a real kube-apiserver: served, defaulted, validated and printed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from duplex.kube import KubeClient, KubeResponse
from duplex.testing.apiserver import KubeApiServer
from duplex_operator.resources import ENTRY_LIMIT, parse_model

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
GROUP_VERSION = "/apis/duplex.dev/v1alpha1"
MERGE_PATCH = "application/merge-patch+json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"

# What the schemas default when a spec leaves a field out.
DEFAULTS: dict[str, dict[str, Any]] = {
    "TTSModel": {
        "source": "package",
        "languages": ["en"],
        "threads": 1,
        "resources": {"gpu": False, "memoryMiB": 200},
        "minResident": 0,
        "ttlSeconds": 600,
        "minResidencySeconds": 30,
    },
    "VoiceSession": {"language": "en", "maxDurationSeconds": 3600},
}


def plurals() -> dict[str, str]:
    names = (
        yaml.safe_load(path.read_text())["spec"]["names"]
        for path in (MANIFESTS / "crds").glob("*.yaml")
    )
    return {n["kind"]: n["plural"] for n in names}


PLURALS = plurals()
SAMPLES = sorted((MANIFESTS / "samples").glob("*.yaml"))


def collection(namespace: str, kind: str) -> str:
    return f"{GROUP_VERSION}/namespaces/{namespace}/{PLURALS[kind]}"


async def create(
    kube: KubeClient, namespace: str, kind: str, name: str, spec: dict[str, Any]
) -> KubeResponse:
    body = {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }
    return await kube.request_raw("POST", collection(namespace, kind), body)


def with_defaults(defaults: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in spec.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            value = with_defaults(default, value)
        merged[key] = value
    return merged


PIPER = {"modelId": "piper-joe", "family": "piper"}
SESSION = {"modelId": "piper-joe", "room": "demo"}


async def test_kubeconfig_reaches_the_apiserver(kube_apiserver: KubeApiServer) -> None:
    config = yaml.safe_load(kube_apiserver.kubeconfig.read_text())
    (context,) = config["contexts"]
    assert config["current-context"] == context["name"]
    assert context["context"]["namespace"] == "default"
    (cluster,) = config["clusters"]
    assert cluster["cluster"]["server"] == kube_apiserver.url
    assert kube_apiserver.url.startswith("https://127.0.0.1:")
    async with KubeClient.load(kube_apiserver.kubeconfig) as from_file:
        version = await from_file.request_raw("GET", "/version")
        assert version.status == 200 and version.json()["gitVersion"] == "v1.31.4"
        # The token is the cluster admin's.
        access = await from_file.request_raw(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {"spec": {"resourceAttributes": {"verb": "*", "group": "*", "resource": "*"}}},
        )
    assert access.status == 201 and access.json()["status"]["allowed"] is True


async def test_anonymous_requests_are_refused(
    kube_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    config = yaml.safe_load(kube_apiserver.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": "not-a-token"}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    async with KubeClient.load(path) as anonymous:
        assert (await anonymous.request_raw("GET", "/api/v1/namespaces")).status == 401


async def test_crds_are_served(kube: KubeClient) -> None:
    response = await kube.request_raw("GET", GROUP_VERSION)
    assert response.status == 200, response.text
    resources = {r["name"]: r for r in response.json()["resources"]}
    assert {"ttsmodels", "ttsmodels/status", "voicesessions", "voicesessions/status"} <= set(
        resources
    )
    assert resources["ttsmodels"]["namespaced"] is True
    assert resources["ttsmodels"]["shortNames"] == ["ttsm"]
    assert resources["voicesessions"]["shortNames"] == ["vs"]


async def test_pods_can_be_created_without_a_controller_manager(
    kube: KubeClient, kube_namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "worker-0"},
        "spec": {"containers": [{"name": "worker", "image": "duplex-worker:test"}]},
    }
    created = await kube.request_raw("POST", f"/api/v1/namespaces/{kube_namespace}/pods", pod)
    assert created.status == 201, created.text


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.name)
async def test_sample_is_stored_with_schema_defaults(
    kube: KubeClient, kube_namespace: str, path: Path
) -> None:
    sample = yaml.safe_load(await asyncio.to_thread(path.read_text))
    kind, name = sample["kind"], sample["metadata"]["name"]
    created = await kube.request_raw("POST", collection(kube_namespace, kind), sample)
    assert created.status == 201, created.text
    stored = await kube.request_raw("GET", f"{collection(kube_namespace, kind)}/{name}")
    assert stored.status == 200, stored.text
    assert stored.json()["spec"] == with_defaults(DEFAULTS[kind], sample["spec"])


@pytest.mark.parametrize(("kind", "spec"), [("TTSModel", PIPER), ("VoiceSession", SESSION)])
async def test_minimal_spec_gets_every_default(
    kube: KubeClient, kube_namespace: str, kind: str, spec: dict[str, Any]
) -> None:
    created = await create(kube, kube_namespace, kind, "minimal", spec)
    assert created.status == 201, created.text
    assert created.json()["spec"] == {**spec, **DEFAULTS[kind]}


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        ("TTSModel", {"modelId": "x", "family": "bark"}, 'spec.family: Unsupported value: "bark"'),
        ("TTSModel", {**PIPER, "minResident": -1}, "spec.minResident: Invalid value: -1"),
        ("TTSModel", {**PIPER, "modelId": "piper joe"}, 'spec.modelId: Invalid value: "piper joe"'),
        ("TTSModel", {"family": "piper"}, "spec.modelId: Required value"),
        (
            "TTSModel",
            {**PIPER, "voices": ["a", "b"], "defaultVoice": "c"},
            "defaultVoice must be one of voices",
        ),
        (
            "TTSModel",
            {**PIPER, "options": {f"o{i}": "v" for i in range(33)}},
            "spec.options: Too many: 33: must have at most 32 items",
        ),
        (
            "TTSModel",
            {**PIPER, "options": {"k" * 64: "v"}},
            "option names are at most 63 characters",
        ),
        ("TTSModel", {**PIPER, "options": {"k": "v" * 1025}}, "spec.options.k: Too long"),
        ("TTSModel", {**PIPER, "voices": ["v" * 65]}, "spec.voices[0]: Too long"),
        ("VoiceSession", {**SESSION, "maxDurationSeconds": 0}, "spec.maxDurationSeconds"),
        ("VoiceSession", {"modelId": "piper-joe"}, "spec.room: Required value"),
    ],
)
async def test_invalid_spec_is_rejected(
    kube: KubeClient,
    kube_namespace: str,
    kind: str,
    spec: dict[str, Any],
    expected: str,
) -> None:
    response = await create(kube, kube_namespace, kind, "bad", spec)
    assert response.status == 422, response.text
    assert expected in response.message


async def test_the_largest_spec_the_crd_allows_fits_a_worker_pods_annotations(
    kube: KubeClient, kube_namespace: str
) -> None:
    # Every bounded field at its bound: the catalog entry the operator would put on a Pod.
    spec = {
        **PIPER,
        "source": "s" * 1024,
        "description": "d" * 1024,
        "languages": [
            f"{chr(97 + i // 26)}{chr(97 + i % 26)}-{'a' * 8}-{'b' * 8}-{'c' * 8}-de"
            for i in range(64)
        ],
        "voices": [f"{i:03d}" + "v" * 61 for i in range(128)],
        "defaultVoice": "000" + "v" * 61,
        "options": {f"{i:02d}" + "k" * 61: "o" * 1024 for i in range(32)},
    }
    created = await create(kube, kube_namespace, "TTSModel", "largest", spec)
    assert created.status == 201, created.text
    model = parse_model(created.json())
    assert 40 * 1024 < model.entry_bytes <= ENTRY_LIMIT


@pytest.mark.parametrize(
    ("kind", "spec", "change", "expected"),
    [
        ("TTSModel", PIPER, {"modelId": "piper-joe-2"}, "modelId is immutable"),
        ("VoiceSession", SESSION, {"modelId": "kokoro-ja"}, "modelId is immutable"),
        ("VoiceSession", SESSION, {"room": "other"}, "room is immutable"),
    ],
)
async def test_immutable_field_cannot_change(
    kube: KubeClient,
    kube_namespace: str,
    kind: str,
    spec: dict[str, Any],
    change: dict[str, Any],
    expected: str,
) -> None:
    assert (await create(kube, kube_namespace, kind, "x", spec)).status == 201
    path = f"{collection(kube_namespace, kind)}/x"
    response = await kube.request_raw("PATCH", path, {"spec": change}, content_type=MERGE_PATCH)
    assert response.status == 422, response.text
    assert expected in response.message


async def test_mutable_spec_fields_can_change(kube: KubeClient, kube_namespace: str) -> None:
    assert (await create(kube, kube_namespace, "TTSModel", "piper", PIPER)).status == 201
    path = f"{collection(kube_namespace, 'TTSModel')}/piper"
    patch = {"spec": {"minResident": 2, "ttlSeconds": 0}}
    response = await kube.request_raw("PATCH", path, patch, content_type=MERGE_PATCH)
    assert response.status == 200, response.text
    stored = response.json()
    assert (stored["spec"]["minResident"], stored["spec"]["ttlSeconds"]) == (2, 0)
    assert stored["metadata"]["generation"] == 2


async def test_voicesession_status_goes_through_its_subresource(
    kube: KubeClient, kube_namespace: str
) -> None:
    assert (await create(kube, kube_namespace, "VoiceSession", "s", SESSION)).status == 201
    path = f"{collection(kube_namespace, 'VoiceSession')}/s"

    async def set_status(target: str, status: dict[str, Any]) -> KubeResponse:
        body = {"status": status}
        return await kube.request_raw("PATCH", target, body, content_type=MERGE_PATCH)

    # A write to the main resource leaves status alone.
    ignored = await set_status(path, {"phase": "Ended"})
    assert ignored.status == 200 and "status" not in ignored.json()

    unbound = await set_status(f"{path}/status", {"phase": "Bound"})
    assert unbound.status == 422
    assert "worker must be set when phase is Bound or Active" in unbound.message

    for phase in ("Pending", "Bound", "Active", "Ended"):
        moved = await set_status(f"{path}/status", {"phase": phase, "worker": "worker-0"})
        assert moved.status == 200, moved.text
        assert moved.json()["status"]["phase"] == phase

    back = await set_status(f"{path}/status", {"phase": "Bound"})
    assert back.status == 422
    assert "phase Ended and Failed are final" in back.message
    stored = (await kube.request_raw("GET", path)).json()
    assert stored["status"]["phase"] == "Ended"


@pytest.mark.parametrize(
    ("sample", "columns"),
    [
        ("ttsmodel-piper-joe.yaml", ["Model", "Family", "MinResident", "Resident"]),
        ("voicesession.yaml", ["Model", "Phase", "Worker"]),
    ],
)
async def test_printer_columns(
    kube: KubeClient, kube_namespace: str, sample: str, columns: list[str]
) -> None:
    resource = yaml.safe_load((MANIFESTS / "samples" / sample).read_text())
    path = collection(kube_namespace, resource["kind"])
    assert (await kube.request_raw("POST", path, resource)).status == 201
    table = await kube.request_raw("GET", path, accept=TABLE)
    assert table.status == 200, table.text
    body = table.json()
    assert body["kind"] == "Table"
    names = [column["name"] for column in body["columnDefinitions"]]
    assert names[0] == "Name"
    assert set(columns) <= set(names)
    (row,) = body["rows"]
    cells = dict(zip(names, row["cells"], strict=True))
    assert cells["Name"] == resource["metadata"]["name"]
    assert cells["Model"] == resource["spec"]["modelId"]
