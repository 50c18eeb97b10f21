"""The conversation protocol: typed messages, their schema, and the page that speaks it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from duplex.errors import InvalidInput
from duplex.orchestrator.events import (
    CLIENT_MESSAGES,
    SERVER_EVENTS,
    Control,
    Playback,
    ReplyText,
    SendText,
    StartSession,
    TurnMetrics,
    json_schema,
    parse_client_message,
)

PAGE = Path(__file__).parents[2] / "services/duplex/orchestrator/web/app.js"


def validator(side: str) -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/{side}"})


def test_unset_optional_fields_are_not_sent_and_required_ones_are_even_when_null() -> None:
    assert ReplyText("Hi").to_json() == {"type": "reply", "text": "Hi"}
    assert ReplyText("Hi.", final=True, frames=12).to_json() == {
        "type": "reply",
        "text": "Hi.",
        "final": True,
        "frames": 12,
    }
    assert TurnMetrics(None, {}).to_json() == {
        "type": "metrics",
        "voice_to_voice_ms": None,
        "turn": {},
    }


@pytest.mark.parametrize(
    "event",
    [
        ReplyText("Hi"),
        ReplyText("Hi.", final=True, frames=3),
        Playback("pause"),
        Playback("duck", 0.3),
        TurnMetrics(412.5, {"input": "speech", "asr_ms": 80.0}),
        TurnMetrics(None, {}),
    ],
)
def test_what_the_server_sends_fits_its_schema(event: ReplyText | Playback | TurnMetrics) -> None:
    assert not list(validator("server").iter_errors(event.to_json()))


def test_a_message_off_the_schema_is_caught_by_it() -> None:
    server = validator("server")
    assert list(server.iter_errors({"type": "playback", "action": "rewind"}))
    assert list(server.iter_errors({"type": "reply"}))  # no text
    assert list(server.iter_errors({"type": "nonsense"}))
    client = validator("client")
    assert list(client.iter_errors({"type": "session.start", "sample_rate": "48000"}))


@pytest.mark.parametrize(
    "message",
    [
        StartSession(48000),
        StartSession(16000, model="piper-joe", voice=None, language="en"),
        SendText("hello"),
        Control("stop"),
    ],
)
def test_client_messages_survive_the_wire(message: StartSession | SendText | Control) -> None:
    wire = message.to_json()
    assert not list(validator("client").iter_errors(wire))
    assert parse_client_message(json.dumps(wire)) == message


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("{", "malformed JSON"),
        ("[1]", 'a JSON object with a "type"'),
        ('{"type": 3}', 'a JSON object with a "type"'),
        ('{"type": "dance"}', "unknown message type 'dance'; valid: session.start, text, control"),
        ('{"type": "session.start"}', "session.start needs 'sample_rate'"),
        ('{"type": "session.start", "sample_rate": true}', "sample_rate must be an integer"),
        ('{"type": "session.start", "sample_rate": 16000, "model": 7}', "model must be a string"),
        ('{"type": "text", "text": ["a"]}', "text must be a string"),
        ('{"type": "control", "command": "jump"}', "one of stop, pause, resume"),
    ],
)
def test_a_bad_client_message_gets_a_clear_error(data: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(says)):
        parse_client_message(data)


def test_a_null_optional_field_means_the_servers_default() -> None:
    data = '{"type": "session.start", "sample_rate": 48000, "voice": null}'
    assert parse_client_message(data) == StartSession(48000)


def test_the_page_sends_and_reads_what_the_schema_has() -> None:
    page = PAGE.read_text()
    sent = set(re.findall(r"(?:sendJson\(|const msg = )\{ type: '([a-z._]+)'", page))
    read = set(re.findall(r"^\s+case '([a-z._]+)':", page, re.M))
    assert sent == {m.type for m in CLIENT_MESSAGES}
    # Every event the server sends is handled by the page's dispatch, and nothing else is.
    assert read == {e.type for e in SERVER_EVENTS}
