"""What an operator of the service sees of one conversation, from real processes.

A `duplex worker` and a `duplex orchestrator` run as processes, the orchestrator with JSON logs
and an OTLP/HTTP endpoint that points at a collector in this test (a small HTTP server that
decodes the OTLP protobuf). One spoken question, interrupted while the bot answers, must reach
the collector as one trace with every span of a turn; the client's metrics event, the log and
the trace must tell the same story; and every metric the chart's dashboard and alerts query
must be one the processes export.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest

from duplex.bench.client import Conversation, conversation, to_frames
from duplex.clients.check import check
from duplex.clients.talk import SEND_RATE, turn_line
from duplex.orchestrator.tracing import STAGES
from duplex.ports import free_ports
from duplex.rpc.client import TtsClient
from duplex.testing.apiserver import locate_binaries
from duplex_operator.metrics import OperatorMetrics
from tests import processes
from tests.otlp import Collector
from tests.promql import dashboard_targets, exported, unknown_references

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "observability-test-key"
STORY = "Please tell me a story."
INTERRUPTION = "Wait, stop, I have another question."
SPANS = {
    "turn",
    "vad.end_of_turn",
    "asr",
    "responder.first_token",
    "tts.first_frame",
    "transport.first_frame",
    "barge_in",
}


@dataclass
class Stack:
    worker: processes.ServiceProcess
    orchestrator: processes.ServiceProcess
    worker_metrics: int
    orchestrator_metrics: int
    collector: Collector

    @property
    def url(self) -> str:
        return f"ws://{processes.address(self.orchestrator)}/ws"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    collector = Collector()
    worker_metrics, orchestrator_metrics = free_ports(2)
    worker = processes.worker(
        "obs-worker", model="piper-joe", metrics_port=worker_metrics, log_format="json"
    )
    config = tmp_path_factory.mktemp("orchestrator") / "orchestrator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 0,
                "workers": [processes.address(worker)],
                "metrics_port": orchestrator_metrics,
                "api_keys": [API_KEY],
            }
        )
    )
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not the default 5 s
    }
    try:
        orchestrator = processes.ServiceProcess(
            ["--log-format", "json", "orchestrator", "--config", str(config)],
            r"on http://(\S+?)/",
            env,
        )
    except BaseException:
        worker.stop()
        collector.close()
        raise
    yield Stack(worker, orchestrator, worker_metrics, orchestrator_metrics, collector)
    orchestrator.stop()
    worker.stop()
    collector.close()


async def speak(stack: Stack, texts: list[str]) -> dict[str, list[bytes]]:
    """The utterances, spoken by the running worker, as 20 ms frames of 16 kHz."""
    import soxr

    out = {}
    async with TtsClient(processes.address(stack.worker)) as client:
        for i, text in enumerate(texts):
            await client.start_session(f"utt{i}", "piper-joe", {"pacing": "none"})
            frames = [f.frame.samples() async for f in client.say(f"utt{i}", text) if f.frame]
            await client.end_session(f"utt{i}")
            pcm = np.concatenate(frames).astype(np.float32) / 32768
            out[text] = to_frames(soxr.resample(pcm, 48000, SEND_RATE).astype(np.float32))
    return out


@dataclass
class Interrupted:
    """A spoken question answered, the answer interrupted, the interruption answered."""

    session_id: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def events(conv: Conversation, kind: str) -> list[dict[str, Any]]:
    return [e for _, e in conv.events if e["type"] == kind]


@pytest.fixture(scope="module")
async def interrupted(stack: Stack) -> AsyncIterator[Interrupted]:
    utterances = await speak(stack, [STORY, INTERRUPTION])
    async with conversation(stack.url, "piper-joe", API_KEY) as conv:
        conv.say(utterances[STORY], {})
        assert await conv.wait_for(lambda: len(conv.frames) > 50, 30), "no reply to the story"
        conv.say(utterances[INTERRUPTION], {})
        assert await conv.wait_for(lambda: bool(events(conv, "barge_in")), 10), "no barge-in"
        # The interruption is the next turn: answered, with its own metrics event.
        assert await conv.wait_for(lambda: len(events(conv, "metrics")) >= 2, 30), conv.events
        assert await conv.wait_for(
            lambda: any(e.get("final") for e in events(conv, "reply")), 30
        ), "the second reply did not finish"
        [started] = events(conv, "session.started")
        everything = [e for _, e in conv.events]
        yield Interrupted(str(started["session_id"]), events(conv, "metrics"), everything)


def test_an_interrupted_turn_reaches_the_collector_as_one_trace_with_every_span(
    stack: Stack, interrupted: Interrupted
) -> None:
    first = interrupted.metrics[0]
    trace_id = first["turn"]["trace_id"]
    spans = stack.collector.trace(trace_id, SPANS, timeout=10)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == SPANS, sorted(by_name)
    assert len(spans) == len(SPANS)  # one barge-in, one of each stage
    root = by_name["turn"]
    assert root.parent_id == "" and root.service == "duplex-orchestrator"
    assert {s.parent_id for s in spans if s is not root} == {root.span_id}
    assert root.attributes["duplex.session.id"] == interrupted.session_id
    assert root.attributes["duplex.turn.input"] == "speech"
    assert root.attributes["duplex.turn.outcome"] == "interrupted"
    assert by_name["barge_in"].attributes["duplex.barge_in.outcome"] == "confirmed"
    # The stages run back to back, and what each took is what the client was told.
    stages = [by_name[name] for _, name, _ in STAGES]
    for before, after in itertools.pairwise(stages):
        assert before.end_ns == after.start_ns, (before.name, after.name)
    for (key, _, _), span in zip(STAGES, stages, strict=True):
        took_ms = (span.end_ns - span.start_ns) / 1e6
        assert took_ms == pytest.approx(first["turn"][f"{key}_ms"], abs=0.1), key
    v2v_ms = (stages[-1].end_ns - stages[0].start_ns) / 1e6
    assert v2v_ms == pytest.approx(first["voice_to_voice_ms"], abs=0.2)
    asr = by_name["asr"]
    assert (asr.end_ns - asr.start_ns) / 1e6 == pytest.approx(first["turn"]["asr_ms"], abs=0.1)
    # The turn's spans lie within it; the barge-in came while its reply played.
    assert all(root.start_ns <= s.start_ns <= s.end_ns <= root.end_ns for s in spans)
    barge = by_name["barge_in"]
    assert barge.start_ns >= by_name["transport.first_frame"].end_ns
    [event] = [e for e in interrupted.events if e["type"] == "barge_in"]
    assert (barge.end_ns - barge.start_ns) / 1e6 == pytest.approx(event["latency_ms"], abs=0.1)
    # The second turn is a trace of its own.
    second = interrupted.metrics[1]["turn"]["trace_id"]
    assert second != trace_id
    assert stack.collector.trace(second, {"turn"}, timeout=10)


def json_lines(process: processes.ServiceProcess) -> list[dict[str, Any]]:
    """A service's log: every line JSON but the address it prints when it starts."""
    lines = []
    for line in process.log().splitlines():
        starts = ("duplex orchestrator on ", "  /metrics and /healthz on port", "duplex worker ")
        if line.startswith(starts):
            continue
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        lines.append(entry)
    return lines


def test_log_lines_are_json_and_carry_the_session_and_the_turn(
    stack: Stack, interrupted: Interrupted
) -> None:
    first = interrupted.metrics[0]["turn"]["trace_id"]
    lines = json_lines(stack.orchestrator)
    turns = [e for e in lines if e["message"].startswith("turn ")]
    [ended] = [e for e in turns if e.get("trace_id") == first]
    assert ended["session_id"] == interrupted.session_id
    assert ended["message"].startswith("turn interrupted: voice→voice ")
    # Whatever is logged on behalf of a turn carries its session; nothing else claims one.
    for entry in lines:
        if "trace_id" in entry:
            assert entry["session_id"] == interrupted.session_id, entry


def test_the_workers_lines_name_the_session_and_the_turn_they_serve(
    stack: Stack, interrupted: Interrupted
) -> None:
    traces = {m["turn"]["trace_id"] for m in interrupted.metrics}
    lines = json_lines(stack.worker)
    streams = [
        e for e in lines if e["message"].startswith(("stream ended: ", "stream cancelled: "))
    ]
    # Each reply's stream on the worker names the turn's trace, carried in its traceparent.
    assert traces <= {e.get("trace_id") for e in streams}, streams
    # A session's lines all name it: from its start to its streams (the conversation's TTS
    # session, distinct from the utterances spoken for the test's own audio).
    ours = {e["session_id"] for e in streams if e.get("trace_id") in traces}
    assert len(ours) == 1, streams
    [sid] = ours
    started = [e for e in lines if e["message"].startswith("session started on piper-joe")]
    assert sid in {e.get("session_id") for e in started}, started
    for entry in lines:
        if entry["logger"] == "duplex.worker.service":
            assert entry.get("session_id"), entry
    # The test's own utterances were not part of a traced turn: their streams name no trace.
    assert {e["session_id"] for e in streams if "trace_id" not in e} >= {"utt0", "utt1"}


def test_talk_prints_where_the_time_of_a_turn_went(interrupted: Interrupted) -> None:
    event = interrupted.metrics[0]
    line = turn_line(event)
    turn = event["turn"]
    assert line.startswith(f"[turn] {event['voice_to_voice_ms']:.0f} ms = end of turn ")
    assert f"+ TTS {turn['tts_ms']:.0f} +" in line
    assert line.endswith(f"· trace {turn['trace_id']}")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def chart_monitoring() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The dashboard (from its ConfigMap) and the alert rules, as the chart renders them."""
    import subprocess

    helm = locate_binaries(("helm",))["helm"]
    apis = ["monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/PrometheusRule"]
    args = [str(helm), "template", "duplex", str(ROOT / "charts" / "duplex"), "-n", "voice"]
    args += [arg for api in apis for arg in ("--api-versions", api)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    [configmap] = [o for o in objects if o["metadata"]["name"] == "duplex-dashboard"]
    [rule] = [o for o in objects if o["kind"] == "PrometheusRule"]
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    return json.loads(configmap["data"]["duplex.json"]), rules


def test_the_dashboard_and_the_alerts_query_what_the_processes_export(
    stack: Stack, interrupted: Interrupted
) -> None:
    known = exported(scrape(stack.orchestrator_metrics))
    worker = exported(scrape(stack.worker_metrics))
    # The operator's, from its own registry (a running operator: test_operator_metrics.py).
    operator = exported(generate_latest(OperatorMetrics().registry).decode())
    for names in (worker, operator):
        for name, labels in names.items():
            known.setdefault(name, set()).update(labels)
    known["up"] = set()  # Prometheus's own, for every target
    # The scrape saw what the conversation did: the histograms have samples with labels.
    assert known["duplex_voice_to_voice_seconds_bucket"] == {"le"}
    assert "model" in known["duplex_worker_first_audio_seconds_bucket"]
    assert "outcome" in known["duplex_barge_ins_total"]

    dashboard, rules = chart_monitoring()
    problems = []
    targets = list(dashboard_targets(dashboard))
    assert len(targets) >= 20
    for title, target in targets:
        problems += [f"{title}: {p}" for p in unknown_references(target["expr"], known)]
    assert len(rules) >= 6
    for rule in rules:
        problems += [f"{rule['alert']}: {p}" for p in unknown_references(rule["expr"], known)]
    assert not problems, problems
    # The check can fail: a misspelt metric is caught.
    assert unknown_references("rate(duplex_voice_to_voice_second_bucket[5m])", known)


async def test_duplex_check_passes_against_the_running_orchestrator(stack: Stack) -> None:
    """What `helm test` runs: the models, then a typed turn spoken back."""
    url = f"http://{processes.address(stack.orchestrator)}"
    result = await check(url, API_KEY, timeout=60)
    assert result.model == "piper-joe"
    assert result.frames > 10 and result.rms > 100
    assert result.voice_to_voice_ms is not None
    # Without the key the orchestrator refuses, and so does the check.
    with pytest.raises(Exception, match="HTTP 401"):
        await asyncio.wait_for(check(url, None, timeout=10), 20)
