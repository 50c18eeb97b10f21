"""The deployable files agree with each other: chart CRDs, manifests and their kustomization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "duplex"


def crd_files() -> list[Path]:
    return sorted((MANIFESTS / "crds").glob("*.yaml"))


def test_there_are_crds_to_compare() -> None:
    assert [p.name for p in crd_files()] == [
        "ttsmodels.duplex.dev.yaml",
        "voicesessions.duplex.dev.yaml",
    ]


@pytest.mark.parametrize("source", crd_files(), ids=lambda p: p.name)
def test_chart_crd_is_a_byte_identical_copy(source: Path) -> None:
    copy = CHART / "crds" / source.name
    assert copy.is_file(), f"charts/duplex/crds/ lacks {source.name}: cp {source} {copy}"
    assert copy.read_bytes() == source.read_bytes(), f"cp {source} {copy}"


def test_chart_has_no_crd_of_its_own() -> None:
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [p.name for p in crd_files()]


def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return doc


def test_kustomization_names_files_that_exist() -> None:
    resources = kustomization()["resources"]
    assert resources
    missing = [r for r in resources if not (MANIFESTS / r).is_file()]
    assert not missing


def test_kustomization_installs_every_manifest_but_no_sample() -> None:
    resources = set(kustomization()["resources"])
    on_disk = {
        str(p.relative_to(MANIFESTS))
        for p in [*MANIFESTS.glob("*.yaml"), *MANIFESTS.glob("crds/*.yaml")]
        if p.name != "kustomization.yaml"
    }
    assert resources == on_disk
    assert not any(r.startswith("samples/") for r in resources)


def manifest_docs() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def test_kustomization_fixes_the_namespace_its_bindings_name() -> None:
    namespace = kustomization()["namespace"]
    docs = manifest_docs()
    [ns] = [doc for doc in docs if doc["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == namespace
    bindings = [doc for doc in docs if doc["kind"] == "RoleBinding"]
    # The operator, the orchestrator and the Job that makes TLS certificates (each worker Pod's
    # own binding is the operator's to make).
    assert len(bindings) == 3
    assert {s["namespace"] for b in bindings for s in b["subjects"]} == {namespace}


def test_manifests_grant_nothing_cluster_wide() -> None:
    kinds = {doc["kind"] for doc in manifest_docs()}
    assert {"Role", "RoleBinding"} <= kinds
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
