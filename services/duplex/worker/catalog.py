"""The model catalog: which model ids this worker can serve, and how to load each."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from duplex.errors import UnknownModel
from duplex.worker.adapters import FAMILIES, ModelSpec, adapter_for

_KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "piper-joe",
        "piper",
        languages=("en", "en-US"),
        memory_mib=120,
        # Two threads halve the first-audio time; speech and ASR rarely run at the same moment.
        threads=2,
        description="Piper VITS en_US-joe-medium (packaged voice, CC0)",
    ),
    ModelSpec(
        "kokoro-ja",
        "kokoro",
        languages=("en", "en-US"),
        voices=_KOKORO_VOICES,
        default_voice="jf_alpha",
        memory_mib=350,
        threads=2,
        description="Kokoro-82M int8 with the packaged Japanese voices (English with an accent)",
    ),
    ModelSpec(
        "pico-en",
        "pico",
        languages=("en", "en-US"),
        voices=("en-US",),
        default_voice="en-US",
        memory_mib=10,
        description="SVOX Pico en-US (non-neural, very fast)",
    ),
    ModelSpec(
        "pico-en-gb",
        "pico",
        languages=("en", "en-GB"),
        voices=("en-GB",),
        default_voice="en-GB",
        memory_mib=10,
        description="SVOX Pico en-GB",
    ),
    *(
        ModelSpec(
            f"pico-{lang[:2]}",
            "pico",
            languages=(lang[:2], lang),
            voices=(lang,),
            default_voice=lang,
            memory_mib=10,
            description=f"SVOX Pico {lang}",
        )
        for lang in ("de-DE", "es-ES", "fr-FR", "it-IT")
    ),
)

TEST_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("tone", "tone", memory_mib=1, description="test tones, one per word"),
    ModelSpec(
        "tone-broken",
        "tone",
        memory_mib=1,
        description="a test model whose load always fails",
        options={"fail_load": "1"},
    ),
)


class Catalog:
    """A map of model id → `ModelSpec`; entries are added by config or by the model set."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.family not in FAMILIES:
                adapter_for(spec)  # raises UnknownFamily with the valid names
            self._specs[spec.model_id] = spec

    @classmethod
    def default(cls, extra: Iterable[ModelSpec] = (), *, test_models: bool = False) -> Catalog:
        """Built-in models, then the configured ones (which may override a built-in id)."""
        return cls([*BUILTIN_MODELS, *(TEST_MODELS if test_models else ()), *extra])

    def define(self, spec: ModelSpec) -> None:
        """Add or replace an entry (a resident copy keeps its old spec until reloaded)."""
        if spec.family not in FAMILIES:
            adapter_for(spec)  # raises UnknownFamily with the valid names
        self._specs[spec.model_id] = spec

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise UnknownModel(
                f"unknown model id {model_id[:80]!r}; valid ids: {', '.join(sorted(self._specs))}"
            ) from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def ids(self) -> list[str]:
        return sorted(self._specs)
