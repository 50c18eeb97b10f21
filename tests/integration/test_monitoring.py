"""The chart's dashboard, PodMonitor, alerts and `helm test` Pod, rendered by the real helm.

The alert rules are checked by promtool (built from its pinned Go module, like helm) and unit
tested with it: each alert fires on the series it is for and stays quiet on healthy ones.
That the dashboard and the alerts query metrics the services really export is checked against
running processes in test_observability.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from duplex.cli import build_parser
from duplex.testing.apiserver import locate_binaries
from duplex_operator.config import OperatorConfig
from duplex_operator.pods import worker_pod
from tests.promql import dashboard_targets, grouping_labels, legend_labels, metrics_of

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "duplex"
RELEASE = "duplex"
NAMESPACE = "voice"
PROMETHEUS_OPERATOR = [
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
]

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    return locate_binaries(("helm",))["helm"]


@pytest.fixture(scope="module")
def promtool() -> Path:
    return locate_binaries(("promtool",))["promtool"]


def render(helm: Path, values: Sequence[str] = (), apis: Sequence[str] = ()) -> list[Obj]:
    args = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += [arg for value in values for arg in ("--set", value)]
    args += [arg for api in apis for arg in ("--api-versions", api)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(objects: Sequence[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind}/{name}: {len(found)}"
    return found[0]


def kinds(objects: Sequence[Obj]) -> set[str]:
    return {o["kind"] for o in objects}


# -- what renders where ---------------------------------------------------------------------


def test_monitors_and_rules_render_only_where_the_prometheus_operator_is(helm: Path) -> None:
    plain = render(helm)
    assert not kinds(plain) & {"PodMonitor", "PrometheusRule", "ServiceMonitor"}
    only(plain, "ConfigMap", f"{RELEASE}-dashboard")
    with_crds = render(helm, apis=PROMETHEUS_OPERATOR)
    assert {"PodMonitor", "PrometheusRule"} <= kinds(with_crds)
    off = ["monitoring.podMonitor.enabled=false", "monitoring.rules.enabled=false"]
    off += ["monitoring.dashboard.enabled=false"]
    none = render(helm, off, PROMETHEUS_OPERATOR)
    assert not kinds(none) & {"PodMonitor", "PrometheusRule"}
    assert not [o for o in none if o["metadata"]["name"] == f"{RELEASE}-dashboard"]


def test_the_pod_monitor_scrapes_the_metrics_port_of_every_component(
    helm: Path, tmp_path: Path
) -> None:
    values = ["monitoring.podMonitor.labels.release=kube-prometheus-stack"]
    objects = render(helm, values, PROMETHEUS_OPERATOR)
    monitor = only(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert spec["podTargetLabels"] == ["app.kubernetes.io/component"]
    selector = spec["selector"]["matchLabels"].items()
    # The Pods it selects: the chart's Deployments and the worker Pods the operator makes.
    templates = {
        o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] == "Deployment"
    }
    pods = [templates[f"{RELEASE}-operator"], templates[f"{RELEASE}-orchestrator"]]
    configmap = only(objects, "ConfigMap", f"{RELEASE}-operator")
    settings = yaml.safe_load(configmap["data"]["operator.yaml"])
    config = OperatorConfig.model_validate({**settings, "redis": "redis://redis:6379/0"})
    pods += [
        worker_pod(config, pool, f"{RELEASE}-worker-{pool.name}-0", [], {}) for pool in config.pools
    ]
    for pod in pods:
        labels = pod["metadata"]["labels"]
        assert selector <= labels.items(), labels
        ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
        assert "metrics" in ports, labels


# -- the dashboard --------------------------------------------------------------------------


def dashboard(objects: Sequence[Obj]) -> dict[str, Any]:
    configmap = only(objects, "ConfigMap", f"{RELEASE}-dashboard")
    assert list(configmap["data"]) == ["duplex.json"]
    parsed: dict[str, Any] = json.loads(configmap["data"]["duplex.json"])
    return parsed


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar(helm: Path) -> None:
    values = ["monitoring.dashboard.annotations.grafana_folder=Voice"]
    objects = render(helm, values)
    configmap = only(objects, "ConfigMap", f"{RELEASE}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Voice"}
    source = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert dashboard(objects) == source


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return list(board["panels"])


def test_the_dashboard_is_well_formed(helm: Path) -> None:
    board = dashboard(render(helm))
    assert board["uid"] == "duplex-overview" and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    # Panels sit on Grafana's 24-column grid without overlapping.
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    for title, target in dashboard_targets(board):
        expr = target["expr"]
        names = metrics_of(expr)
        assert names, f"{title}: {expr}"
        # Every metric is read in the namespace the dashboard is set to.
        scoped = re.findall(r"duplex_[a-z0-9_]+\{[^}]*namespace=\"\$namespace\"[^}]*\}", expr)
        assert len(scoped) == len(re.findall(r"duplex_[a-z0-9_]+", expr)), f"{title}: {expr}"
        # A legend names labels the query keeps.
        if "by (" in expr:
            assert legend_labels(target["legendFormat"]) <= grouping_labels(expr), title


def test_the_dashboard_shows_what_an_operator_of_the_service_asks_for(helm: Path) -> None:
    board = dashboard(render(helm))
    read = {name for _, target in dashboard_targets(board) for name in metrics_of(target["expr"])}
    for metric in (
        "duplex_voice_to_voice_seconds_bucket",
        "duplex_worker_first_audio_seconds_bucket",
        "duplex_barge_in_seconds_bucket",
        "duplex_barge_ins_total",
        "duplex_worker_frame_lateness_seconds_bucket",
        "duplex_worker_underruns_total",
        "duplex_sessions",
        "duplex_worker_active_sessions",
        "duplex_worker_model_resident",
        "duplex_worker_model_loads_total",
        "duplex_worker_model_unloads_total",
        "duplex_operator_last_reconcile_timestamp_seconds",
    ):
        assert metric in read, metric
    by_title = {t: target["expr"] for t, target in dashboard_targets(board)}
    assert "model" in grouping_labels(by_title["First audio per model"])
    assert {"pod", "model"} <= grouping_labels(by_title["Resident models per Pod"])
    loads = [
        t["expr"]
        for title, t in dashboard_targets(board)
        if title.startswith("Loads and evictions")
    ]
    assert all("pod" in grouping_labels(expr) for expr in loads) and len(loads) == 2


# -- the alerts -----------------------------------------------------------------------------


def rules(helm: Path, values: Sequence[str] = ()) -> dict[str, Any]:
    rule = only(render(helm, values, PROMETHEUS_OPERATOR), "PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


def test_the_alert_rules_pass_promtool(helm: Path, promtool: Path, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules(helm)))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout
    # promtool can fail: a rule with a broken expression does not pass.
    broken = rules(helm)
    broken["groups"][0]["rules"][0]["expr"] = "sum by (le (rate(duplex_voice_to_voice_seconds[5m]))"
    path.write_text(yaml.safe_dump(broken))
    bad = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0


def annotations(spec: dict[str, Any], alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The alert's annotations with its labels filled in, as Prometheus expands them."""
    [rule] = [r for g in spec["groups"] for r in g["rules"] if r.get("alert") == alert]
    out = {}
    for key, text in rule["annotations"].items():
        out[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)
    return out


def expect(spec: dict[str, Any], alert: str, at: str, *firing: dict[str, str]) -> Obj:
    """An alert_rule_test: at `at`, `alert` fires once for each label set in `firing`."""
    [rule] = [r for g in spec["groups"] for r in g["rules"] if r.get("alert") == alert]
    return {
        "alertname": alert,
        "eval_time": at,
        "exp_alerts": [
            {
                "exp_labels": {**labels, **rule["labels"]},
                "exp_annotations": annotations(spec, alert, labels),
            }
            for labels in firing
        ],
    }


def buckets(metric: str, labels: str, counts: dict[str, str]) -> list[Obj]:
    """Histogram bucket series: counts maps each `le` to its promtool values notation."""
    return [
        {"series": f'{metric}_bucket{{{labels},le="{le}"}}', "values": values}
        for le, values in counts.items()
    ]


def test_each_alert_fires_on_what_it_is_for_and_not_otherwise(
    helm: Path, promtool: Path, tmp_path: Path
) -> None:
    spec = rules(helm)
    ns = f'namespace="{NAMESPACE}"'
    worker = {"namespace": NAMESPACE, "pod": f"{RELEASE}-worker-cpu-0"}
    w = f'{ns},pod="{worker["pod"]}"'
    slow = buckets(  # every reply starts between 2 and 5 s: p95 ≈ 4.9 s
        "duplex_voice_to_voice_seconds",
        ns,
        {"1": "0+0x40", "2": "0+0x40", "5": "0+10x40", "+Inf": "0+10x40"},
    )
    late = buckets(  # frames 50-100 ms late: p99 ≈ 0.1 s
        "duplex_worker_frame_lateness_seconds",
        w,
        {"0.05": "0+0x40", "0.1": "0+50x40", "+Inf": "0+50x40"},
    )
    quick = buckets(  # another namespace's replies start within 1 s: nothing fires for them
        "duplex_voice_to_voice_seconds",
        'namespace="other"',
        {"1": "0+10x40", "2": "0+10x40", "5": "0+10x40", "+Inf": "0+10x40"},
    )
    up = 'up{%s,app_kubernetes_io_component="worker",pod="%s"}'
    series = [
        *slow,
        *late,
        *quick,
        {"series": f'duplex_worker_underruns_total{{{w},cause="starved"}}', "values": "0+60x40"},
        {"series": up % (ns, f"{RELEASE}-worker-cpu-0"), "values": "1x5 0x35"},
        {"series": up % (ns, f"{RELEASE}-worker-cpu-1"), "values": "1x40"},
        # kokoro-ja fails to load at 5 min (the series appears), and again at 30 min.
        {
            "series": f'duplex_worker_model_loads_total{{{w},model="kokoro-ja",result="error"}}',
            "values": "_x5 1x24 2x10",
        },
        {
            "series": f'duplex_worker_model_loads_total{{{w},model="pico-en",result="ok"}}',
            "values": "1x40",
        },
        # The operator's last pass: current every minute for 10 minutes, then never again.
        {
            "series": f'duplex_operator_last_reconcile_timestamp_seconds{{{ns},pod="op-0"}}',
            "values": "0+60x10 600x30",
        },
        {  # a standby replica, which never reconciles
            "series": f'duplex_operator_last_reconcile_timestamp_seconds{{{ns},pod="op-1"}}',
            "values": "0x40",
        },
    ]
    model_failed = {**worker, "model": "kokoro-ja"}
    down = {**worker, "app_kubernetes_io_component": "worker"}
    tests = [
        {
            "name": "a namespace in trouble",
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                expect(spec, "DuplexVoiceToVoiceSlow", "5m"),  # not yet for 10 minutes
                expect(spec, "DuplexVoiceToVoiceSlow", "20m", {"namespace": NAMESPACE}),
                expect(spec, "DuplexFrameLateness", "20m", worker),
                expect(spec, "DuplexUnderruns", "20m", worker),
                expect(spec, "DuplexWorkerDown", "4m"),
                expect(spec, "DuplexWorkerDown", "12m", down),
                expect(spec, "DuplexModelLoadFailures", "3m"),
                expect(spec, "DuplexModelLoadFailures", "7m", model_failed),  # its first failure
                expect(spec, "DuplexModelLoadFailures", "25m"),  # 15 minutes later: quiet
                expect(spec, "DuplexModelLoadFailures", "33m", model_failed),  # failed again
                expect(spec, "DuplexOperatorNotReconciling", "9m"),
                expect(spec, "DuplexOperatorNotReconciling", "25m", {"namespace": NAMESPACE}),
            ],
        },
        {
            "name": "an operator whose metrics are gone",
            "interval": "1m",
            "input_series": [{"series": 'up{namespace="other"}', "values": "1x20"}],
            "alert_rule_test": [
                expect(spec, "DuplexOperatorNotReconciling", "3m"),
                expect(spec, "DuplexOperatorNotReconciling", "10m", {"namespace": NAMESPACE}),
            ],
        },
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [str(promtool), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_thresholds_come_from_values(helm: Path) -> None:
    values = ["monitoring.rules.voiceToVoiceP95Seconds=1.2", "monitoring.rules.for=3m"]
    values += ["monitoring.rules.labels.team=voice"]
    rule = only(render(helm, values, PROMETHEUS_OPERATOR), "PrometheusRule")
    assert rule["metadata"]["labels"]["team"] == "voice"
    [slow] = [
        r
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r["alert"] == "DuplexVoiceToVoiceSlow"
    ]
    assert slow["expr"].rstrip().endswith("> 1.2") and slow["for"] == "3m"


# -- traces and logs ------------------------------------------------------------------------


def env_of(container: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def deployment_container(objects: Sequence[Obj], name: str) -> Obj:
    [main] = only(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return dict(main)


def test_traces_and_json_logs_are_switched_on_from_values(helm: Path) -> None:
    plain = render(helm)
    for name in ("operator", "orchestrator"):
        env = env_of(deployment_container(plain, f"{RELEASE}-{name}"))
        assert "DUPLEX_LOG_FORMAT" not in env and "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    endpoint = "http://otel-collector.monitoring:4318"
    objects = render(helm, ["logFormat=json", f"monitoring.otlpEndpoint={endpoint}"])
    orchestrator = env_of(deployment_container(objects, f"{RELEASE}-orchestrator"))
    assert orchestrator["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
    assert orchestrator["OTEL_SERVICE_NAME"] == f"{RELEASE}-orchestrator"
    assert orchestrator["DUPLEX_LOG_FORMAT"] == "json"
    assert (
        env_of(deployment_container(objects, f"{RELEASE}-operator"))["DUPLEX_LOG_FORMAT"] == "json"
    )
    # The workers get it through their pool, next to the pool's own variables.
    values = ["logFormat=json", "workerPools.cpu.env[0].name=X", "workerPools.cpu.env[0].value=v1"]
    settings = yaml.safe_load(
        only(render(helm, values), "ConfigMap", f"{RELEASE}-operator")["data"]["operator.yaml"]
    )
    [pool] = settings["pools"]
    assert pool["env"] == [
        {"name": "X", "value": "v1"},
        {"name": "DUPLEX_LOG_FORMAT", "value": "json"},
    ]


# -- helm test ------------------------------------------------------------------------------


def helm_test_pod(objects: Sequence[Obj]) -> Obj:
    [pod] = [o for o in objects if o["kind"] == "Pod"]
    return pod


def test_helm_test_checks_the_orchestrator_with_its_api_key(helm: Path) -> None:
    objects = render(helm)
    pod = helm_test_pod(objects)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    [main] = spec["containers"]
    opts = build_parser().parse_args(main["args"])
    assert opts.command == "check"
    service = only(objects, "Service", f"{RELEASE}-orchestrator")
    assert opts.url == f"http://{RELEASE}-orchestrator:{service['spec']['ports'][0]['port']}"
    [key] = main["env"]
    assert key["name"] == "DUPLEX_API_KEY"
    assert key["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-orchestrator-auth",
        "key": "api-keys",
    }
    # The restricted Pod Security Standard, as every Pod of the chart.
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    # An orchestrator without keys: the test has none to send.
    open_pod = helm_test_pod(render(helm, ["orchestrator.auth.insecure=true"]))
    assert "env" not in open_pod["spec"]["containers"][0]


def test_a_narrowed_orchestrator_policy_still_admits_the_test_pod(helm: Path) -> None:
    values = ["networkPolicy.orchestratorFrom[0].namespaceSelector.matchLabels.team=web"]
    objects = render(helm, values)
    policy = only(objects, "NetworkPolicy", f"{RELEASE}-orchestrator")
    [http] = [
        r for r in policy["spec"]["ingress"] if {"port": "http", "protocol": "TCP"} in r["ports"]
    ]
    labels = helm_test_pod(objects)["metadata"]["labels"].items()
    selectors = [p["podSelector"]["matchLabels"] for p in http["from"] if "podSelector" in p]
    assert any(selector.items() <= labels for selector in selectors), http["from"]
    # ... and no other Pod of the release by that rule (the test's component is its own).
    assert all(s.get("app.kubernetes.io/component") == "test" for s in selectors)
