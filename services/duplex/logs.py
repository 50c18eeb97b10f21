"""Log lines as text or as JSON, each with the conversation and the turn it belongs to.

The ids live in context variables: a conversation binds its session id when it starts, a reply
its turn's trace id (when traces are exported). Every task spawned under them inherits both,
so every line logged on their behalf carries them, whichever module logs it. A reply's calls to
a worker carry the turn's W3C `traceparent`, so the worker's lines for that stream name the same
trace as the orchestrator's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

SESSION_ID: ContextVar[str | None] = ContextVar("duplex_session_id", default=None)
TRACE_ID: ContextVar[str | None] = ContextVar("duplex_trace_id", default=None)
# The span that calls made on behalf of the turn descend from (the turn's root span).
SPAN_ID: ContextVar[str | None] = ContextVar("duplex_span_id", default=None)

TRACEPARENT = "traceparent"  # the W3C Trace Context header, as gRPC metadata
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def bind(
    *, session_id: str | None = None, trace_id: str | None = None, span_id: str | None = None
) -> None:
    """Tag what the current task (and the tasks it spawns from now on) logs."""
    if session_id is not None:
        SESSION_ID.set(session_id)
    if trace_id is not None:
        TRACE_ID.set(trace_id)
    if span_id is not None:
        SPAN_ID.set(span_id)


@contextmanager
def bound(*, session_id: str) -> Iterator[None]:
    """Tag the lines logged inside the block only (for a task that serves many sessions)."""
    token = SESSION_ID.set(session_id)
    try:
        yield
    finally:
        SESSION_ID.reset(token)


def traceparent() -> str | None:
    """The current turn's W3C `traceparent` for an outgoing call, if it has a trace."""
    trace_id, span_id = TRACE_ID.get(), SPAN_ID.get()
    if trace_id is None or span_id is None:
        return None
    return f"00-{trace_id}-{span_id}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id a caller's `traceparent` names; None for a missing or malformed one
    (a bad header costs the caller its log correlation, never its call)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(1)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the ids where there are."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Read where the line was logged: handlers here are synchronous, in the caller's task.
        if (session_id := SESSION_ID.get()) is not None:
            entry["session_id"] = session_id
        if (trace_id := TRACE_ID.get()) is not None:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(log_format: str, *, verbose: bool = False) -> None:
    """The process's logging, once, at its entry point."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; valid: {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
