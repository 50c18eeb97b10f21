"""What a conversation tells its client, and what the client may tell it.

One definition for every transport (WebSocket text frames, LiveKit data packets), for the page
and for the JSON schema that `/api/schema` serves: each message is a dataclass whose `type`
names it on the wire, and pydantic generates the schema from the fields.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import TypeAdapter

from duplex.errors import InvalidInput

PlaybackAction = Literal["pause", "resume", "flush", "duck"]
ControlCommand = Literal["stop", "pause", "resume"]
ConversationState = Literal["listening", "thinking", "speaking", "barged_in"]


@dataclass(frozen=True)
class Message:
    """A message on the wire: `{"type": TYPE, ...fields}`; an optional field left unset is
    not sent."""

    type: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = value
        return out


# -- the server's events ---------------------------------------------------------------------


@dataclass(frozen=True)
class SessionStarted(Message):
    """The conversation is admitted: its TTS session is held until it ends."""

    type = "session.started"
    session_id: str
    model: str  # the model asked for
    speaking_with: str  # the model that speaks (the same unless a fallback took over)


@dataclass(frozen=True)
class StateChanged(Message):
    type = "state"
    state: ConversationState


@dataclass(frozen=True)
class TranscriptText(Message):
    """What the user said so far (`final` false) or in all (`final` true)."""

    type = "transcript"
    text: str
    final: bool


@dataclass(frozen=True)
class ReplyText(Message):
    """The reply's text as it is spoken; the final one carries all of it and the number of
    20 ms frames sent, so that a client can tell whether it got them all."""

    type = "reply"
    text: str
    final: bool | None = None
    frames: int | None = None


@dataclass(frozen=True)
class Playback(Message):
    """What the client's player does with the reply audio it holds: `pause` keeps it for a
    `resume`, `flush` drops it, `duck` plays it at `gain`."""

    type = "playback"
    action: PlaybackAction
    gain: float | None = None


@dataclass(frozen=True)
class BargeIn(Message):
    """The user spoke over the reply and it was silenced this long after the speech began."""

    type = "barge_in"
    latency_ms: float


@dataclass(frozen=True)
class TurnMetrics(Message):
    """Once a reply's first frame is out: how long each stage of the turn took."""

    type = "metrics"
    voice_to_voice_ms: float | None
    turn: dict[str, Any]


@dataclass(frozen=True)
class ErrorEvent(Message):
    type = "error"
    code: str
    message: str


@dataclass(frozen=True)
class SessionEnded(Message):
    type = "session.ended"
    reason: str


ServerEvent = (
    SessionStarted
    | StateChanged
    | TranscriptText
    | ReplyText
    | Playback
    | BargeIn
    | TurnMetrics
    | ErrorEvent
    | SessionEnded
)
SERVER_EVENTS: tuple[type[Message], ...] = get_args(ServerEvent)
SHUTDOWN = SessionEnded("the server is shutting down")


# -- the client's messages -------------------------------------------------------------------


@dataclass(frozen=True)
class StartSession(Message):
    """Start (or restart) the conversation; audio follows as binary 20 ms frames of 16-bit mono
    PCM at `sample_rate`. Unset fields take the server's defaults."""

    type = "session.start"
    sample_rate: int
    model: str | None = None
    voice: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class SendText(Message):
    """A typed turn: answered as if it had been said."""

    type = "text"
    text: str


@dataclass(frozen=True)
class Control(Message):
    type = "control"
    command: ControlCommand


ClientMessage = StartSession | SendText | Control
CLIENT_MESSAGES: tuple[type[Message], ...] = get_args(ClientMessage)
_CLIENT_BY_TYPE = {m.type: m for m in CLIENT_MESSAGES}


def parse_client_message(data: str) -> ClientMessage:
    """A client's text message, checked against its dataclass; anything else is InvalidInput.

    The values a field takes beyond its type (a supported sample rate, a known model, a text's
    length) are the session's to judge.
    """
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise InvalidInput('a text message is a JSON object with a "type"')
    cls = _CLIENT_BY_TYPE.get(raw["type"])
    if cls is None:
        valid = ", ".join(_CLIENT_BY_TYPE)
        raise InvalidInput(f"unknown message type {raw['type']!r}; valid: {valid}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw or raw[f.name] is None:
            if f.default is dataclasses.MISSING:
                raise InvalidInput(f"{cls.type} needs {f.name!r}")
            continue
        value = raw[f.name]
        if not _fits(value, hints[f.name]):
            raise InvalidInput(f"{cls.type}: {f.name} must be {_describe(hints[f.name])}")
        values[f.name] = value
    return typing.cast(ClientMessage, cls(**values))


def _fits(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, a) for a in get_args(hint) if a is not type(None))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
    return names.get(hint, "an object")


# -- the schema ------------------------------------------------------------------------------


def _message_schema(cls: type[Message]) -> dict[str, Any]:
    """pydantic's schema of the dataclass, with the `type` it is sent under and no other field."""
    schema: dict[str, Any] = TypeAdapter(cls).json_schema()
    schema["properties"] = {"type": {"const": cls.type}, **schema["properties"]}
    schema["required"] = ["type", *schema.get("required", ())]
    schema["additionalProperties"] = False
    return schema


def json_schema() -> dict[str, Any]:
    """The wire protocol as JSON Schema (draft 2020-12): `$defs` has one schema per message;
    `server` and `client` list which side sends which."""
    defs = {cls.type: _message_schema(cls) for cls in (*SERVER_EVENTS, *CLIENT_MESSAGES)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "duplex conversation protocol",
        "$defs": defs,
        "server": {"oneOf": [{"$ref": f"#/$defs/{c.type}"} for c in SERVER_EVENTS]},
        "client": {"oneOf": [{"$ref": f"#/$defs/{c.type}"} for c in CLIENT_MESSAGES]},
    }
