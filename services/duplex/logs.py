"""Log lines as text or as JSON, each with the conversation and the turn it belongs to.

The ids live in context variables: a conversation binds its session id when it starts, a reply
its turn's trace id (when traces are exported). Every task spawned under them inherits both,
so every line logged on their behalf carries them, whichever module logs it.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

SESSION_ID: ContextVar[str | None] = ContextVar("duplex_session_id", default=None)
TRACE_ID: ContextVar[str | None] = ContextVar("duplex_trace_id", default=None)


def bind(*, session_id: str | None = None, trace_id: str | None = None) -> None:
    """Tag what the current task (and the tasks it spawns from now on) logs."""
    if session_id is not None:
        SESSION_ID.set(session_id)
    if trace_id is not None:
        TRACE_ID.set(trace_id)


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
