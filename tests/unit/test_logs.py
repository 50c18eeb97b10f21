"""JSON log lines carry the session and trace ids of the task that logged them; every
subcommand takes --log-format."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from duplex.cli import build_parser
from duplex.logs import JsonFormatter, bind, bound, trace_id_of, traceparent


def record(message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("duplex.test", logging.WARNING, __file__, 1, message, (), info)


async def test_ids_follow_the_tasks_that_bound_them() -> None:
    formatter = JsonFormatter()
    lines: dict[str, dict[str, object]] = {}

    def log(name: str) -> None:
        lines[name] = json.loads(formatter.format(record(name)))

    async def turn() -> None:
        bind(trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
        log("in the turn")
        await asyncio.create_task(asyncio.to_thread(log, "in its thread"))

    async def session() -> None:
        bind(session_id="a1b2c3d4e5f6")
        log("in the session")
        await asyncio.create_task(turn())
        log("after the turn")

    log("before")
    await asyncio.create_task(session())
    log("outside")
    assert "session_id" not in lines["before"] and "session_id" not in lines["outside"]
    assert lines["in the session"]["session_id"] == "a1b2c3d4e5f6"
    assert "trace_id" not in lines["in the session"]
    for name in ("in the turn", "in its thread"):
        assert lines[name]["session_id"] == "a1b2c3d4e5f6"
        assert lines[name]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "trace_id" not in lines["after the turn"]  # the turn's binding stayed in its task
    assert set(lines["before"]) == {"time", "level", "logger", "message"}
    assert lines["before"]["level"] == "WARNING" and lines["before"]["logger"] == "duplex.test"


def test_an_exception_goes_into_its_line() -> None:
    line = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert line["message"] == "failed"
    assert "ValueError: bad" in str(line["exception"])


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found += subcommands(sub, (*path, name))
    return found


def test_every_subcommand_takes_log_format_before_or_after_its_name() -> None:
    parser = build_parser()
    leaves = [path for path in subcommands(parser) if path not in {("bench",)}]
    assert ("worker",) in leaves and ("bench", "soak") in leaves and ("check",) in leaves
    required: dict[tuple[str, ...], list[str]] = {("say",): ["hi", "--out", "x.wav"]}
    for path in leaves:
        extra = required.get(path, [])
        after = parser.parse_args([*path, *extra, "--log-format", "json"])
        before = parser.parse_args(["--log-format", "json", *path, *extra])
        plain = parser.parse_args([*path, *extra])
        assert (after.log_format, before.log_format, plain.log_format) == ("json", "json", None)
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--log-format", "xml"])


@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--log-format", "json"], {}), ([], {"DUPLEX_LOG_FORMAT": "json"})],
    ids=["flag", "environment"],
)
def test_a_command_logs_only_json_lines(
    flags: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    # `duplex say` without a worker runs one in-process, which logs as it loads its model.
    argv = ["say", "Hello.", "--out", str(tmp_path / "hi.wav"), "--model", "pico-en", *flags]
    result = subprocess.run(
        [sys.executable, "-m", "duplex.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(line["logger"] == "duplex.worker.model_manager" for line in lines), lines
    assert result.stdout.startswith("wrote ")  # what the command prints is not a log line


def test_an_unknown_format_in_the_environment_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "duplex.cli", "models"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DUPLEX_LOG_FORMAT": "xml"},
    )
    assert result.returncode == 2
    assert "DUPLEX_LOG_FORMAT must be one of text, json" in result.stderr


async def test_a_turn_traced_hands_its_traceparent_to_the_calls_it_makes() -> None:
    async def turn() -> str | None:
        assert traceparent() is None  # a session, but no trace: nothing to hand on
        bind(session_id="s1")
        assert traceparent() is None
        bind(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7")
        return traceparent()

    parent = await asyncio.create_task(turn())
    assert parent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id_of(parent) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traceparent() is None  # bound in that task only


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # a digit short
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # the invalid all-zero id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "x" * 10_000,
    ],
)
def test_a_bad_traceparent_names_no_trace(header: str | None) -> None:
    assert trace_id_of(header) is None


def test_a_line_logged_inside_bound_names_that_session_only() -> None:
    formatter = JsonFormatter()
    with bound(session_id="reaped"):
        inside = json.loads(formatter.format(record("ending idle session")))
    outside = json.loads(formatter.format(record("next")))
    assert inside["session_id"] == "reaped"
    assert "session_id" not in outside
