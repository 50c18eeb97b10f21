"""Responders: what produces the assistant's reply text, streamed piece by piece into TTS.

`OfflineResponder` needs nothing but still makes a useful demo (including a long answer to try
barge-in on); `OpenAIResponder` talks to any OpenAI-compatible streaming chat endpoint.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from duplex.errors import DuplexError, InvalidInput
from duplex.orchestrator.local_llm import PACKAGED as PACKAGED_LLM
from duplex.orchestrator.local_llm import LocalLlm


class ResponderError(DuplexError):
    code = "responder_failed"
    retryable = True


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


class Responder(Protocol):
    def respond(self, history: Sequence[Message], user_text: str) -> AsyncIterator[str]:
        """Yield the reply as text pieces (tokens or words, with their spacing) as produced."""
        ...

    async def start(self) -> None:
        """Get ready (load a model, start a server); before the first reply."""

    async def aclose(self) -> None: ...


DEFAULT_SYSTEM_PROMPT = (
    "You are duplex, a friendly voice assistant in a realtime spoken conversation. Everything "
    "you write is read aloud, so answer in one to three short, natural spoken sentences. Never "
    "use markdown, lists, headings, code, emoji or special symbols; spell things out as you "
    "would say them. The user may interrupt you at any time."
)

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    " fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_FOLLOW_UPS = (
    "Can you tell me more about that?",
    "Why do you say that?",
    "What made you think of that?",
    "How do you feel about that?",
    "What would you like to talk about next?",
)
_STORY = (
    "Once upon a time, a little lighthouse stood alone on a rocky island. Every night it swept "
    "its beam across the dark sea, hoping someone would notice. One stormy evening, a small "
    "fishing boat lost its way between the waves. The lighthouse shone brighter than it ever "
    "had before. The fisherman saw the light and steered carefully toward the harbour. When he "
    "reached the shore, he climbed the long stairs to say thank you. He found no keeper there, "
    "only the lamp, humming quietly to itself. From that night on, he rowed out every Sunday to "
    "keep the lighthouse company. And the lighthouse was never lonely again. You can interrupt "
    "me whenever you like, by the way."
)
_EXPLANATION = (
    "Sure, here is how this demo works. Your microphone audio streams to the server in small "
    "frames. A voice activity detector decides when you start and stop speaking. When you "
    "finish, a speech recogniser turns your words into text. A responder, which is me, writes "
    "a reply one word at a time. The reply is cut into short sentences as it arrives. Each "
    "sentence goes to a speech synthesis worker, and the audio streams straight back to you. "
    "If you start talking while I am speaking, I stop right away and listen. That is called "
    "barge-in, and you are welcome to try it now."
)
# Markdown markers would be read aloud as "asterisk" or "hash".
_MARKDOWN = str.maketrans("", "", "*#`")


def number_word(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    return "one hundred"


def _count_target(text: str) -> int:
    match = re.search(r"\bcount (?:up )?to (.+)", text)
    if match is None:
        return 10
    rest = match.group(1)
    if digits := re.match(r"\d+", rest):
        return int(digits.group())
    words = re.findall(r"[a-z]+", rest)[:2]
    by_word = {number_word(i): i for i in range(1, 101)} | {"hundred": 100, "a-hundred": 100}
    for candidate in ("-".join(words), *words[:1]):
        if candidate in by_word:
            return by_word[candidate]
    return 10


def _count_reply(target: int) -> str:
    n = max(1, min(target, 100))
    note = " I will stop at one hundred." if target > 100 else ""
    numbers = ", ".join(number_word(i) for i in range(1, n + 1))
    return f"Okay, counting to {number_word(n)}.{note} {numbers[0].upper()}{numbers[1:]}."


def _echo(user_text: str, lowered: str) -> str:
    words = user_text.replace('"', "").split()
    said = " ".join(words[:12]).rstrip(".,;:!?") + ("..." if len(words) > 12 else "")
    follow_up = _FOLLOW_UPS[zlib.crc32(lowered.encode()) % len(_FOLLOW_UPS)]
    return f'You said: "{said}". {follow_up}'


class OfflineResponder:
    """Deterministic rules over the user's words; no model, no network."""

    def __init__(self, clock: Callable[[], datetime] = datetime.now) -> None:
        self._clock = clock

    def reply(self, user_text: str) -> str:
        text = " ".join(user_text.lower().replace("’", "'").split())
        if not re.search(r"\w", text):
            return "Sorry, I didn't catch that."
        rules: tuple[tuple[str, Callable[[], str]], ...] = (
            (
                r"\bcount (?:up )?to\b|^(?:can you |please )?count\b",
                lambda: _count_reply(_count_target(text)),
            ),
            (
                r"\bwhat time is it\b|\bwhat(?:'s| is) the time\b",
                lambda: f"It's {self._clock().strftime('%H:%M')}.",
            ),
            (
                r"\bwhat(?:'s| is) your name\b|\bwho are you\b",
                lambda: "I'm duplex, a realtime voice demo. You can talk to me and interrupt me.",
            ),
            (
                r"\bhelp\b|\bwhat can you do\b",
                lambda: (
                    "You can just talk to me, and interrupt me at any time by speaking over me. "
                    "To try that, ask me for a long story."
                ),
            ),
            (r"\bstor(?:y|ies)\b", lambda: _STORY),
            (
                r"(?<!how )\blong\b|\bexplain\b|\btalk for a while\b|\bkeep talking\b",
                lambda: _EXPLANATION,
            ),
            (r"\b(?:bye|goodbye|good night|see you)\b", lambda: "Goodbye! It was nice talking."),
            (r"\b(?:thanks|thank you)\b", lambda: "You're welcome! Anything else?"),
            (
                r"\b(?:hello|hi|hey|good (?:morning|afternoon|evening))\b",
                lambda: "Hello! Nice to hear you. What would you like to talk about?",
            ),
        )
        for pattern, answer in rules:
            if re.search(pattern, text):
                return answer()
        return _echo(user_text, text)

    async def respond(self, history: Sequence[Message], user_text: str) -> AsyncIterator[str]:
        for word in self.reply(user_text).split():
            yield word + " "
            await asyncio.sleep(0)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream, whatever the chunk boundaries."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip().decode("utf-8", errors="replace")
    # A server may close without a final newline after its last event.
    if buffer.startswith(b"data:"):
        yield buffer[5:].strip().decode("utf-8", errors="replace")


class OpenAIResponder:
    """Streams replies from an OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_tokens: int = 200,
        temperature: float = 0.7,
        timeout_s: float = 30,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model = model
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._headers = {"Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # No total timeout: a long reply may legitimately stream for longer than timeout_s.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        return None

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("OpenAIResponder is closed")
        # Created lazily because a ClientSession must be made inside the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def respond(self, history: Sequence[Message], user_text: str) -> AsyncIterator[str]:
        messages = [{"role": "system", "content": self.system_prompt}]
        messages += [{"role": m.role, "content": m.content} for m in history]
        messages.append({"role": "user", "content": user_text})
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        try:
            async with self._client().post(self.url, json=body) as response:
                if response.status >= 400:
                    excerpt = (await response.text(errors="replace"))[:300].strip()
                    raise ResponderError(f"{self.url} answered HTTP {response.status}: {excerpt}")
                if response.content_type == "application/json":
                    # Some servers ignore `stream` and answer with one whole completion.
                    if piece := self._piece(await response.text(), "message"):
                        yield piece
                    return
                async for data in sse_data(response.content.iter_any()):
                    if data == "[DONE]":
                        return
                    if piece := self._piece(data, "delta"):
                        yield piece
        except aiohttp.ClientError as exc:
            raise ResponderError(f"cannot reach {self.url}: {exc}") from exc
        except TimeoutError as exc:
            raise ResponderError(f"{self.url} timed out") from exc

    def _piece(self, data: str, field: Literal["delta", "message"]) -> str:
        try:
            event = json.loads(data)
            if "error" in event:
                raise ResponderError(f"{self.url} reported an error: {str(event['error'])[:300]}")
            choices = event["choices"]
            # A final usage-only event has no choices; role-only deltas have no content.
            content = choices[0][field].get("content") if choices else None
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise ResponderError(f"{self.url} sent a malformed event {data[:200]!r}") from exc
        return str(content or "").translate(_MARKDOWN)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


class LocalResponder:
    """llama.cpp with a small model in this process, asked like any OpenAI endpoint."""

    def __init__(self, llm: LocalLlm, system_prompt: str, max_tokens: int, temperature: float):
        self._llm = llm
        self._settings = (system_prompt, max_tokens, temperature)
        self._client: OpenAIResponder | None = None

    async def start(self) -> None:
        url = await self._llm.start()
        prompt, max_tokens, temperature = self._settings
        self._client = OpenAIResponder(
            url, "local", system_prompt=prompt, max_tokens=max_tokens, temperature=temperature
        )

    async def respond(self, history: Sequence[Message], user_text: str) -> AsyncIterator[str]:
        if self._client is None:
            raise ResponderError("the local LLM has not started")
        async for piece in self._client.respond(history, user_text):
            yield piece

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self._llm.aclose()


class ResponderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # offline: built-in rules; openai: any OpenAI-compatible endpoint at `url`; local:
    # llama.cpp in this process with `local_model` (the packaged Qwen2.5 0.5B, or a GGUF path).
    kind: Literal["offline", "openai", "local"] = "offline"
    url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    system_prompt: str | None = None
    max_tokens: int = 200
    temperature: float = 0.7
    local_model: str = PACKAGED_LLM
    # llama.cpp threads. It generates once the words are recognised, so both cores are free
    # then: measured on 2 cores, voice-to-voice p50 729 ms with 2 threads, 870 ms with 1.
    local_threads: int = Field(2, ge=1)


def make_responder(config: ResponderConfig) -> Responder:
    if config.kind == "offline":
        return OfflineResponder()
    if config.kind == "local":
        return LocalResponder(
            LocalLlm(config.local_model, threads=config.local_threads),
            config.system_prompt or DEFAULT_SYSTEM_PROMPT,
            # Spoken answers are short; a small model rambles when allowed to.
            min(config.max_tokens, 120),
            config.temperature,
        )
    if not config.url:
        raise InvalidInput(
            "responder kind 'openai' needs a url, e.g. http://127.0.0.1:8000/v1 (the base that "
            "/chat/completions is appended to)"
        )
    return OpenAIResponder(
        config.url,
        config.model,
        api_key=config.api_key,
        system_prompt=config.system_prompt or DEFAULT_SYSTEM_PROMPT,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
    )
