"""Generated TTSModel and VoiceSession specs, well- and ill-formed, against the operator.

The API server enforces the CRDs' schemas, but objects written before a schema change, or
by a client that skipped validation through an older CRD, still reach the operator. For any
spec: reading it never raises (a bad one becomes a condition on that object alone), whatever
the schema admits is read, and a planning pass over it still places every good model.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from duplex_operator.resources import (
    InvalidObject,
    TtsModel,
    VoiceSession,
    parse_model,
    parse_or_invalid,
    parse_session,
)
from tests.unit.test_crds import crd_schema, sample
from tests.unit.test_planner import created, model_set_of, planner, tts_model, world

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            out += _paths(inner, (*prefix, key))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with some fields replaced, removed or added, anywhere in it."""
    spec = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(spec)
        path = draw(st.sampled_from(paths)) if paths else ()
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if not isinstance(parent, dict) or not path:
            break
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "remove":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.text(max_size=12))] = draw(json_values)
    return spec


def _object(kind: str, spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fuzzed", "uid": "uid-fuzzed", "generation": 3},
        "spec": spec,
    }


def _admitted(spec: Any, kind: str) -> bool:
    try:
        jsonschema.validate(spec, crd_schema(kind))
    except jsonschema.ValidationError:
        return False
    return True


MODEL_SPECS = st.sampled_from(["ttsmodel-piper-joe.yaml", "ttsmodel-kokoro-ja.yaml"]).flatmap(
    lambda name: mutated(sample(name))
) | json_values.map(lambda v: v)


@FUZZ
@given(MODEL_SPECS)
def test_any_ttsmodel_spec_is_read_or_named_invalid_and_the_rest_is_placed(spec: Any) -> None:
    read = parse_or_invalid("TTSModel", _object("TTSModel", spec), parse_model)
    if isinstance(read, InvalidObject):
        assert read.error.startswith("the spec cannot be read")
        assert (read.name, read.generation) == ("fuzzed", 3)
        assert not _admitted(spec, "TTSModel"), f"the schema admits what cannot be read: {spec}"
    else:
        assert isinstance(read, TtsModel)
    # One planning pass over it and a good model: the good one is placed either way.
    good = tts_model("pico-good", min_resident=1)
    w = world(
        [good] + ([read] if isinstance(read, TtsModel) and read.model_id != "pico-good" else [])
    )
    if isinstance(read, InvalidObject):
        w.invalid = [read]
    plan = planner().plan(w)
    placed = [model_set_of(pod).split(",") for pod in created(plan).values()]
    assert any("pico-good" in models for models in placed), plan


@FUZZ
@given(mutated(sample("voicesession.yaml")) | json_values)
def test_any_voicesession_spec_is_read_or_named_invalid(spec: Any) -> None:
    read = parse_or_invalid("VoiceSession", _object("VoiceSession", spec), parse_session)
    if isinstance(read, InvalidObject):
        assert read.error.startswith("the spec cannot be read")
        assert not _admitted(spec, "VoiceSession"), f"the schema admits what cannot be read: {spec}"
    else:
        assert isinstance(read, VoiceSession)
        planner().plan(world([tts_model("pico-good")], sessions=[read]))
