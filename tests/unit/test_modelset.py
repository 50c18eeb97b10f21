"""The model-set contract: what the operator writes on a Pod is what its worker reads."""

from __future__ import annotations

from duplex.modelset import (
    DEFAULT_MEMORY_MIB,
    ModelEntry,
    entry_from_spec,
    format_model_added,
    format_model_set,
    format_model_specs,
    parse_model_added,
    parse_model_set,
    parse_model_specs,
)
from duplex_operator.pods import model_set_metadata
from duplex_operator.resources import parse_model


def _ttsmodel(name: str, spec: dict[str, object]) -> dict[str, object]:
    return {"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": spec}


def test_what_the_operator_writes_the_worker_reads_back() -> None:
    full = parse_model(
        _ttsmodel(
            "joe",
            {
                "modelId": "piper-joe",
                "family": "piper",
                "source": "/models/joe.onnx",
                "languages": ["en", "de"],
                "voices": ["joe"],
                "defaultVoice": "joe",
                "threads": 2,
                "description": "a voice",
                "options": {"length_scale": "1.1"},
                "resources": {"memoryMiB": 300},
            },
        )
    )
    bare = parse_model(_ttsmodel("pico", {"modelId": "pico-en", "family": "pico"}))
    annotations, _ = model_set_metadata([full, bare], {"piper-joe": 12.3456})
    ids = parse_model_set(annotations["duplex.dev/model-set"])
    entries = parse_model_specs(annotations["duplex.dev/model-specs"])
    assert ids == ["piper-joe", "pico-en"]
    assert [e.id for e in entries] == ids
    joe, pico = (e.to_spec() for e in entries)
    assert (joe.source, joe.languages, joe.default_voice, joe.memory_mib, joe.threads) == (
        "/models/joe.onnx",
        ("en", "de"),
        "joe",
        300,
        2,
    )
    assert joe.options == {"length_scale": "1.1"}
    # One default on both sides: the operator packs by it, the worker reports it.
    assert pico.memory_mib == bare.memory_mib == DEFAULT_MEMORY_MIB
    assert ModelEntry(id="x", family="pico").memory_mib == DEFAULT_MEMORY_MIB
    assert parse_model_added(annotations["duplex.dev/model-added"]) == {"piper-joe": 12.346}


def test_formats_and_parsers_are_inverse_and_forgiving() -> None:
    assert parse_model_set(format_model_set(["a", "b"])) == ["a", "b"]
    assert parse_model_set(" a, b,,a ,") == ["a", "b"]
    assert parse_model_set(None) == []
    entry = entry_from_spec({"modelId": "m", "family": "tone"})
    assert parse_model_specs(format_model_specs([entry]))[0].id == "m"
    assert parse_model_specs("") == []
    assert parse_model_added(format_model_added({"a": 1.0, "gone": 2.0}, ["a"])) == {"a": 1.0}
    for junk in ("{not json", "[1, 2]", '{"a": "soon"}'):
        assert parse_model_added(junk) == {}


def test_a_bad_specs_annotation_names_itself() -> None:
    for bad in ("{not json", '[{"id": "a"}]', '[{"id": "a", "family": "pico", "memory_mib": 0}]'):
        try:
            parse_model_specs(bad)
        except ValueError as exc:
            assert "duplex.dev/model-specs" in str(exc)
        else:
            raise AssertionError(f"accepted {bad!r}")


def test_a_model_on_cuda_goes_to_a_gpu_pool_and_its_workers_are_told_the_device() -> None:
    from tests.unit.test_planner import CPU, GPU, created, model_set_of, planner, world

    cuda = parse_model(
        _ttsmodel(
            "kokoro",
            {
                "modelId": "kokoro-ja",
                "family": "kokoro",
                "device": "cuda:1",
                "minResident": 1,
                "resources": {"memoryMiB": 500},
            },
        )
    )
    unset = parse_model(_ttsmodel("joe", {"modelId": "piper-joe", "family": "piper"}))
    assert (cuda.gpu, unset.gpu) == (True, False)
    assert "device" not in unset.entry  # the worker's own --device decides
    pods = created(planner(CPU, GPU).plan(world([cuda])))
    (gpu_pod,) = (pod for name, pod in pods.items() if "-gpu-" in name)
    assert model_set_of(gpu_pod) == "kokoro-ja"
    (entry,) = parse_model_specs(gpu_pod["metadata"]["annotations"]["duplex.dev/model-specs"])
    assert entry.to_spec().device == "cuda:1"
    for bad in ("gpu", "cuda:x", 1):
        try:
            entry_from_spec({"modelId": "m", "family": "piper", "device": bad})
        except ValueError:
            continue
        raise AssertionError(f"accepted device {bad!r}")
