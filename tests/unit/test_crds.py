"""The CRDs' OpenAPI schemas accept the samples and reject bad specs.

(Checked here with a JSON-schema validator; the apiserver-backed tests of the operator apply
the same files to a real kube-apiserver.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "manifests"


def crd_schema(kind: str) -> dict[str, Any]:
    for path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            assert crd["spec"]["group"] == "duplex.dev"
            version = crd["spec"]["versions"][0]
            assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
            return schema
    raise AssertionError(f"no CRD for {kind}")


def sample(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "samples" / name).read_text())["spec"]
    return spec


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("TTSModel", "ttsmodel-piper-joe.yaml"),
        ("TTSModel", "ttsmodel-kokoro-ja.yaml"),
        ("VoiceSession", "voicesession.yaml"),
    ],
)
def test_samples_match_their_schema(kind: str, name: str) -> None:
    jsonschema.validate(sample(name), crd_schema(kind))


@pytest.mark.parametrize(
    "bad",
    [
        {"family": "piper"},  # no modelId
        {"modelId": "x", "family": "bark"},  # unknown family
        {"modelId": "x", "family": "piper", "minResident": -1},
        {"modelId": "Bad Id!", "family": "piper"},
    ],
)
def test_bad_ttsmodel_specs_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("TTSModel"))


def test_bad_voicesession_spec_is_rejected() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"modelId": "piper-joe", "maxDurationSeconds": 0}, crd_schema("VoiceSession")
        )


def test_the_crd_offers_every_family_but_the_test_ones() -> None:
    from duplex.worker.adapters import FAMILIES

    offered = crd_schema("TTSModel")["properties"]["family"]["enum"]
    assert set(offered) == {name for name, cls in FAMILIES.items() if not cls.test_only}
    assert any(cls.test_only for cls in FAMILIES.values())  # there is one to leave out
