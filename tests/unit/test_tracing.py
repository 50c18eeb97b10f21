"""A turn's timeline and its breakdown, without an exporter; the SDK stays out unless asked for.

The trace that reaches an OTLP collector from real processes is tested in
tests/integration/test_observability.py.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import time

import pytest

from duplex.orchestrator.tracing import STAGES, Tracing, TurnTrace


def spoken_turn(ended: float) -> TurnTrace:
    """A turn whose user stopped speaking at `ended`, transcribed from 0.05 s before it."""
    return Tracing().turn("s1", ended, asr=(ended - 0.05, ended + 0.12))


def test_stages_run_back_to_back_and_add_up_to_voice_to_voice() -> None:
    ended = time.monotonic() - 0.3  # the turn is taken now, 300 ms after the speech ended
    trace = spoken_turn(ended)
    trace.first_token_at = trace.taken + 0.04
    trace.first_tts_frame_at = trace.taken + 0.13
    trace.first_frame_out(trace.taken + 0.135)
    stages = list(trace.stages())
    assert [s[0] for s in stages] == [key for key, _, _ in STAGES]
    assert stages[0][2] == ended and stages[-1][3] == trace.first_out_at
    for (_, _, _, end), (_, _, start, _) in itertools.pairwise(stages):
        assert end == start
    turn = trace.breakdown()
    assert turn["input"] == "speech" and "trace_id" not in turn
    assert turn["end_of_turn_ms"] == pytest.approx(300, abs=1)
    assert (turn["responder_ms"], turn["tts_ms"], turn["transport_ms"]) == (40.0, 90.0, 5.0)
    assert turn["asr_ms"] == 170.0
    event = trace.metrics_event()
    parts = sum(turn[f"{key}_ms"] for key, _, _ in STAGES)
    assert event["voice_to_voice_ms"] == pytest.approx(parts, abs=0.3)


def test_a_typed_turn_has_no_end_of_turn_nor_transcription() -> None:
    now = time.monotonic()
    trace = Tracing().turn("s1", now)
    trace.first_token()
    trace.first_tts_frame()
    trace.first_frame_out(time.monotonic())
    turn = trace.breakdown()
    assert turn["input"] == "text"
    assert set(turn) == {"input", "responder_ms", "tts_ms", "transport_ms"}


def test_only_the_first_of_each_moment_counts_and_stages_stop_at_the_last_reached() -> None:
    trace = spoken_turn(time.monotonic())
    trace.first_token()
    first = trace.first_token_at
    trace.first_token()
    assert trace.first_token_at == first
    # No frame yet: the breakdown holds what happened so far, voice-to-voice is not known.
    assert [s[0] for s in trace.stages()] == ["end_of_turn", "responder"]
    assert trace.metrics_event()["voice_to_voice_ms"] is None
    trace.first_frame_out(1.0)
    trace.first_frame_out(2.0)
    assert trace.first_out_at == 1.0


def test_a_barge_in_is_judged_once() -> None:
    trace = spoken_turn(time.monotonic())
    trace.barge_in_judged("resumed")  # no barge-in yet: nothing to judge
    trace.barge_in(10.0, 10.08)
    trace.barge_in_judged("resumed")
    trace.barge_in_judged("confirmed")  # the next judgement needs the next barge-in
    trace.barge_in(11.0, 11.07)
    trace.barge_in_judged("confirmed")
    assert [(outcome, round(paused - onset, 2)) for onset, paused, outcome in trace.barge_ins] == [
        ("resumed", 0.08),
        ("confirmed", 0.07),
    ]


def test_the_end_of_a_turn_is_logged_once_with_its_breakdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace = spoken_turn(time.monotonic() - 0.2)
    trace.first_token()
    trace.first_tts_frame()
    trace.first_frame_out(time.monotonic())
    with caplog.at_level(logging.INFO, logger="duplex.orchestrator.tracing"):
        trace.end("complete")
        trace.end("interrupted")
    [record] = caplog.records
    assert record.getMessage().startswith("turn complete: voice→voice ")
    assert "end of turn 2" in record.getMessage()  # about 200 ms


def test_without_an_endpoint_nothing_of_opentelemetry_is_needed() -> None:
    # The default install has no OpenTelemetry: a process where importing it fails serves
    # turns all the same, and setting an endpoint there is an error that says what to install.
    script = """
import sys
sys.modules["opentelemetry"] = None  # every import of it fails
import duplex.orchestrator.server
from duplex.errors import DuplexError
from duplex.orchestrator.tracing import Tracing
tracing = Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
assert not tracing.enabled
turn = tracing.turn("s1", 0.0)
turn.first_token()
turn.end("complete")
try:
    Tracing.from_environment({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318"})
except DuplexError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set" in result.stdout
    assert "pip install 'duplex-voice[otel]'" in result.stdout


def test_the_sdk_switched_off_or_no_endpoint_means_no_tracer() -> None:
    assert not Tracing.from_environment({}).enabled
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    assert not Tracing.from_environment(off).enabled
