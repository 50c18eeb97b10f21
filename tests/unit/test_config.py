from __future__ import annotations

from pathlib import Path

import pytest

from duplex.config import load_config
from duplex.errors import InvalidInput, UnknownFamily
from duplex.worker.catalog import Catalog
from duplex.worker.config import WorkerConfig


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("port: 6000\nmax_resident: 2\npreload: [pico-en]\nname: from-file\n")
    env = {
        "DUPLEX_PORT": "7000",
        "DUPLEX_PRELOAD": "pico-en, kokoro-ja",
        "DUPLEX_LABELS": "gpu=a10",
    }
    config = load_config(WorkerConfig, path, env=env, overrides={"port": 8000, "name": None})
    assert config.port == 8000
    assert config.max_resident == 2
    assert config.preload == ["pico-en", "kokoro-ja"]
    assert config.labels == {"gpu": "a10"}
    assert config.name == "from-file"


def test_invalid_values_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="max_resident"):
        load_config(WorkerConfig, None, env={"DUPLEX_MAX_RESIDENT": "0"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(InvalidInput, match="mapping"):
        load_config(WorkerConfig, bad, env={})


def test_configured_models_join_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("models:\n  - id: my-voice\n    family: piper\n    source: /voices/x.onnx\n")
    config = load_config(WorkerConfig, path, env={})
    catalog = Catalog.default(config.model_specs())
    assert catalog.get("my-voice").source == "/voices/x.onnx"
    assert "piper-joe" in catalog


def test_unknown_family_lists_valid_ones() -> None:
    config = WorkerConfig.model_validate({"models": [{"id": "x", "family": "bark"}]})
    with pytest.raises(UnknownFamily, match="valid families: kokoro, pico, piper, tone"):
        Catalog.default(config.model_specs())
