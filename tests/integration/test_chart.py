"""The Helm chart and the plain manifests, checked with the real helm and a real kube-apiserver.

`helm lint` and `helm template` run the chart; every object it renders, and every object under
manifests/, is validated by the apiserver with a server-side dry run (schemas, defaulting,
admission), and what the operator and the orchestrator will read is parsed by their own
config models and command line.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import copy
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from duplex.cli import build_parser
from duplex.config import load_config
from duplex.kube import KubeApiError, KubeClient
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.voice_sessions import VoiceSessions
from duplex.ports import free_ports
from duplex.rpc.client import TtsClient
from duplex.rpc.security import ClientTls
from duplex.testing.apiserver import KubeApiServer, locate_binaries
from duplex.testing.kubelet import DevKubelet
from duplex_operator.config import GPU_RESOURCE, OperatorConfig, SecretKey
from duplex_operator.pods import own_account, worker_account, worker_pod

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "duplex"
MANIFESTS = ROOT / "manifests"
RELEASE = "duplex"
IMAGE = "duplex:0.1.0"

Obj = dict[str, Any]

# Value sets every object of which must pass the apiserver: the defaults, everything switched
# on, and an external Redis.
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "everything": [
        "workerPools.gpu.enabled=true",
        "livekit.enabled=true",
        "livekit.apiKey=devkey",
        "livekit.apiSecret=0123456789abcdef0123456789abcdef",
        "livekit.publicUrl=wss://livekit.example.com",
        "prometheus.annotations=false",
        "imagePullSecrets[0].name=registry",
        "operator.workerImageOverride=duplex-dev:dev",
        "orchestrator.config.default_model=kokoro-ja",
    ],
    "external-redis": ["redis.enabled=false", "redis.url=redis://redis.infra:6379/2"],
    "external-redis-secret": [
        "redis.enabled=false",
        "redis.existingSecret=infra-redis",
        "redis.caSecret=infra-redis-ca",
    ],
    "tls-and-policies-off": ["tls.enabled=false", "networkPolicy.enabled=false"],
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return locate_binaries(("helm",))["helm"]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def render(
    helm: Path,
    namespace: str,
    values: Sequence[str] = (),
    *,
    crds: bool = False,
    api_versions: Sequence[str] = (),
) -> list[Obj]:
    """`helm template`: `values` are --set's; `api_versions` APIs the cluster would serve."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    args += [arg for value in values for arg in ("--set", value)]
    args += [arg for api in api_versions for arg in ("--api-versions", api)]
    if crds:
        args.append("--include-crds")
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: Sequence[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def container(deployment: Obj) -> Obj:
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_file(objects: Sequence[Obj], kind: str, name: str, key: str, tmp_path: Path) -> Path:
    """The file a container sees where the ConfigMap or Secret `name` is mounted."""
    source = find(objects, kind, name)
    path = tmp_path / key
    path.write_text(source["data" if kind == "ConfigMap" else "stringData"][key])
    return path


def operator_config(
    objects: Sequence[Obj],
    namespace: str,
    tmp_path: Path,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> OperatorConfig:
    """What `duplex operator` loads in its Pod: the mounted file, then its environment."""
    main = container(find(objects, "Deployment", f"{RELEASE}-operator"))
    path = config_file(objects, "ConfigMap", f"{RELEASE}-operator", "operator.yaml", tmp_path)
    return load_config(
        OperatorConfig,
        path,
        env=pod_env(main, namespace, secrets_of(objects, secrets)),
        prefix="DUPLEX_OPERATOR_",
    )


def secret_ref(var: Obj) -> bool:
    return "secretKeyRef" in (var.get("valueFrom") or {})


def secrets_of(
    objects: Sequence[Obj], given: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, dict[str, str]]:
    """The rendered Secrets' values by name, and `given` ones (which exist in the cluster)."""
    found = {
        o["metadata"]["name"]: dict(o.get("stringData") or {})
        for o in objects
        if o["kind"] == "Secret"
    }
    return {**found, **{name: dict(data) for name, data in (given or {}).items()}}


# The kubelet's $(VAR) references in env values and arguments; $$ escapes one.
REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pod_env(
    main: Obj, namespace: str, secrets: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """A container's environment as the kubelet resolves it: downward API fields, Secret keys
    and $(VAR) references to variables defined before."""
    fields = {
        "metadata.namespace": namespace,
        "metadata.name": f"{RELEASE}-pod-0",
        "metadata.uid": "00000000-0000-0000-0000-000000000000",
    }
    env: dict[str, str] = {}
    for var in main.get("env", []):
        if "value" in var:
            env[var["name"]] = REFERENCE.sub(
                lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), var["value"]
            )
        elif secret_ref(var):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = (secrets or {})[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def redis_password(objects: Sequence[Obj]) -> str:
    password: str = find(objects, "Secret", f"{RELEASE}-redis")["stringData"]["password"]
    return password


# -- helm lint ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_is_clean(helm: Path, values: list[str]) -> None:
    sets = [arg for value in values for arg in ("--set", value)]
    result = run_helm(helm, "lint", str(CHART), "--strict", *sets)
    assert result.returncode == 0, result.stdout + result.stderr
    findings = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert findings == ["[INFO] Chart.yaml: icon is recommended"], result.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


# -- what the processes read ----------------------------------------------------------------


def test_operator_reads_its_namespace_redis_and_one_cpu_pool(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, "voice")
    config = operator_config(objects, "voice", tmp_path)

    assert config.namespace == "voice"
    redis = find(objects, "Service", f"{RELEASE}-redis")
    where = f"{RELEASE}-redis:{redis['spec']['ports'][0]['port']}/0"
    # The operator's own URL, password included, reaches it in its environment alone; its
    # workers' names the password, which their Pods get from the Secret.
    assert config.redis == f"redis://:{redis_password(objects)}@{where}"
    assert config.worker_redis == f"redis://:$(REDIS_PASSWORD)@{where}"
    assert config.worker_redis_password == SecretKey(name=f"{RELEASE}-redis", key="password")
    assert config.worker_redis_url is None
    assert config.worker_admin_token == SecretKey(name=f"{RELEASE}-worker-admin", key="token")
    assert config.worker_tls is not None and config.worker_tls.secret == f"{RELEASE}-worker-tls"
    assert config.worker_prefix == f"{RELEASE}-worker"
    [pool] = config.pools
    assert (pool.name, pool.gpu, pool.min_pods, pool.max_pods) == ("cpu", False, 1, 2)
    assert (pool.image, pool.image_pull_policy) == (IMAGE, "IfNotPresent")
    assert pool.labels == {"app.kubernetes.io/instance": RELEASE}
    assert pool.resources["requests"]["memory"] == "1536Mi"
    # Pool settings the values leave out keep the operator's defaults.
    assert (pool.port, pool.metrics_port) == (50051, 9100)


def test_operator_command_line_config_mount_and_liveness_agree(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, "voice")
    deployment = find(objects, "Deployment", f"{RELEASE}-operator")
    main = container(deployment)
    opts = build_parser().parse_args(main["args"])
    assert opts.command == "operator"
    [mount] = [m for m in main["volumeMounts"] if m["name"] == "config"]
    [volume] = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
    ]
    assert volume["configMap"]["name"] == f"{RELEASE}-operator"
    assert opts.config == Path(mount["mountPath"]) / "operator.yaml"

    config = operator_config(objects, "voice", tmp_path)
    assert config.liveness_endpoint is not None
    endpoint = re.fullmatch(r"http://0\.0\.0\.0:(\d+)(/\S+)", config.liveness_endpoint)
    assert endpoint is not None
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"healthz": int(endpoint[1]), "metrics": config.metrics_port}
    for probe in ("startupProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": endpoint[2], "port": "healthz"}
    # /metrics on every address of the Pod, where Prometheus finds it by annotation too.
    assert config.metrics_host == "0.0.0.0"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.metrics_port)
    # Replicas elect a leader: a rollout starts the new one before it stops the old one.
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["replicas"] == 1
    election = config.leader_election
    assert election.enabled and election.lease_name == f"{RELEASE}-operator"
    assert (election.lease_seconds, election.renew_seconds, election.retry_seconds) == (10, 7, 2)
    env = {e["name"]: e for e in main["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_operator_replicas_and_lease_timing_come_from_values(helm: Path, tmp_path: Path) -> None:
    values = ["operator.replicas=2", "operator.leaderElection.leaseSeconds=15"]
    objects = render(helm, "voice", values)
    assert find(objects, "Deployment", f"{RELEASE}-operator")["spec"]["replicas"] == 2
    assert operator_config(objects, "voice", tmp_path).leader_election.lease_seconds == 15


def test_operator_rbac_is_least_privilege(helm: Path) -> None:
    objects = render(helm, "voice")
    name = f"{RELEASE}-operator"
    account = find(objects, "Deployment", name)["spec"]["template"]["spec"]["serviceAccountName"]
    find(objects, "ServiceAccount", account)

    rules = {
        (group, resource, tuple(rule["verbs"]))
        for rule in find(objects, "Role", name)["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("duplex.dev", "ttsmodels", ("get", "list", "watch", "patch")),
        ("duplex.dev", "voicesessions", ("get", "list", "watch", "patch")),
        ("duplex.dev", "ttsmodels/status", ("get", "patch", "update")),
        ("duplex.dev", "voicesessions/status", ("get", "patch", "update")),
        ("", "pods", ("get", "list", "watch", "create", "patch", "delete")),
        # Each worker Pod's own account (never deleted by the operator: it goes with its Pod).
        ("", "serviceaccounts", ("create", "patch")),
        ("rbac.authorization.k8s.io", "roles", ("create", "patch")),
        ("rbac.authorization.k8s.io", "rolebindings", ("create", "patch")),
        ("", "events", ("create", "patch")),
        ("events.k8s.io", "events", ("create", "patch")),
        ("coordination.k8s.io", "leases", ("get", "create", "update")),
    }
    binding = find(objects, "RoleBinding", name)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "voice"}
    ]
    # Nothing cluster-wide: kopf's namespace and CRD scanning is off (duplex_operator.main).
    for values in VALUE_SETS.values():
        kinds = {o["kind"] for o in render(helm, "voice", values)}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_each_worker_pod_runs_as_an_account_of_its_own(helm: Path, tmp_path: Path) -> None:
    values = ["workerPools.gpu.enabled=true", "imagePullSecrets[0].name=registry"]
    objects = render(helm, "voice", values)
    config = operator_config(objects, "voice", tmp_path)
    # No account shared by the workers: the operator makes one per Pod.
    accounts = {"ServiceAccount", "Role", "RoleBinding"}
    assert not [o for o in objects if o["kind"] in accounts and "worker" in o["metadata"]["name"]]
    for pool in config.pools:
        name = config.worker_pod_names(pool)[0]
        pod = worker_pod(config, pool, name, [], {})
        assert pod["spec"]["serviceAccountName"] == name
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
        account, role, binding = worker_account(pod)
        assert (account["kind"], account["metadata"]["name"]) == ("ServiceAccount", name)
        assert role["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["pods"],
                "resourceNames": [name],
                "verbs": ["get", "list", "watch"],
            }
        ]
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": "voice"}
        ]
    # Which the operator may make, and nothing more about accounts.
    rules = find(objects, "Role", f"{RELEASE}-operator")["rules"]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted[("", "serviceaccounts")] == {"create", "patch"}
    assert granted[("rbac.authorization.k8s.io", "roles")] == {"create", "patch"}
    assert granted[("rbac.authorization.k8s.io", "rolebindings")] == {"create", "patch"}
    # A pool that names an account runs as it, and gets none made.
    objects = render(helm, "voice", ["workerPools.cpu.serviceAccountName=workers"])
    [pool] = operator_config(objects, "voice", tmp_path).pools
    pod = worker_pod(config, pool, "w-0", [], {})
    assert pod["spec"]["serviceAccountName"] == "workers" and not own_account(pod)


def test_orchestrator_command_line_service_and_probes(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, "voice", ["orchestrator.config.language=de"])
    name = f"{RELEASE}-orchestrator"
    deployment = find(objects, "Deployment", name)
    main = container(deployment)
    opts = build_parser().parse_args(main["args"])
    assert opts.command == "orchestrator"
    assert (opts.host, opts.port, opts.redis) == ("0.0.0.0", 8080, None)
    [mount] = [m for m in main["volumeMounts"] if m["name"] == "config"]
    [volume] = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
    ]
    assert volume["secret"]["secretName"] == name
    assert opts.config == Path(mount["mountPath"]) / "orchestrator.yaml"
    env = pod_env(main, "voice", secrets_of(objects))
    config = load_config(
        OrchestratorConfig,
        config_file(objects, "Secret", name, "orchestrator.yaml", tmp_path),
        env=env,
        overrides={"host": opts.host, "port": opts.port},
    )
    # Redis and the workers' admin token come from Secrets, through the environment.
    assert config.redis == f"redis://:{redis_password(objects)}@{RELEASE}-redis:6379/0"
    admin = find(objects, "Secret", f"{RELEASE}-worker-admin")["stringData"]["token"]
    assert config.admin_token == admin and len(admin) >= 32
    # Mutual TLS to the workers, whose certificate names their prefix.
    tls = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}["tls"]
    [tls_volume] = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    ]
    assert tls_volume["secret"]["secretName"] == f"{name}-tls"
    assert config.tts_tls == ClientTls(
        ca=f"{tls}/ca.crt",
        cert=f"{tls}/tls.crt",
        key=f"{tls}/tls.key",
        server_name=f"{RELEASE}-worker",
    )
    assert (config.language, config.port) == ("de", 8080)

    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": 8080, "metrics": 9090} and opts.metrics_port == 9090
    service = find(objects, "Service", name)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # Not ready without workers, but alive: /healthz answers 503 until a worker registers.
    # Both live on the metrics port, which the Service does not expose.
    assert main["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090"
    assert annotations["prometheus.io/path"] == "/metrics"
    # Secure by default: an API key generated into a Secret, handed over in the environment.
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if secret_ref(e)}
    auth = find(objects, "Secret", f"{name}-auth")
    assert env["DUPLEX_API_KEYS"] == {"name": f"{name}-auth", "key": "api-keys"}
    assert env["DUPLEX_TOKEN_SECRET"] == {"name": f"{name}-auth", "key": "token-secret"}
    assert len(auth["stringData"]["api-keys"]) >= 32 and not opts.insecure
    assert "DUPLEX_API_KEYS" not in str(find(objects, "Secret", name))


def test_orchestrator_serves_livekit_rooms_when_it_has_a_public_url(helm: Path) -> None:
    from duplex.commands.orchestrator import config_from as _orchestrator_config

    base = ["livekit.enabled=true", "livekit.existingSecret=lk-keys"]
    # Without a URL browsers can reach, the server runs but the orchestrator stays on /ws.
    plain = container(find(render(helm, "voice", base), "Deployment", f"{RELEASE}-orchestrator"))
    assert not any(a.startswith("--livekit") for a in plain["args"])
    objects = render(helm, "voice", [*base, "livekit.publicUrl=wss://lk.example.com"])
    main = container(find(objects, "Deployment", f"{RELEASE}-orchestrator"))
    opts = build_parser().parse_args(main["args"])
    assert opts.livekit_url == "wss://lk.example.com"
    # The agent reaches the server through its Service, which the chart names so.
    service = find(objects, "Service", f"{RELEASE}-livekit")
    port = service["spec"]["ports"][0]["port"]
    assert opts.livekit_agent_url == f"ws://{RELEASE}-livekit:{port}"
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if secret_ref(e)}
    assert keys["LIVEKIT_API_KEY"] == {"name": "lk-keys", "key": "api-key"}
    assert keys["LIVEKIT_API_SECRET"] == {"name": "lk-keys", "key": "api-secret"}
    opts.config = None
    env = {"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        config = _orchestrator_config(opts)
    livekit = config.livekit  # type: ignore[attr-defined]
    assert (livekit.url, livekit.agent_url, livekit.api_key) == (
        "wss://lk.example.com",
        f"ws://{RELEASE}-livekit:{port}",
        "k",
    )


def test_gpu_pool_renders_with_its_toleration_and_node_selector(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, "voice", ["workerPools.gpu.enabled=true"])
    pools = {p.name: p for p in operator_config(objects, "voice", tmp_path).pools}
    assert sorted(pools) == ["cpu", "gpu"]
    gpu = pools["gpu"]
    # GPU pools run the image with CUDA inference (the Dockerfile's gpu target).
    assert gpu.gpu and gpu.image == f"{IMAGE}-gpu" and pools["cpu"].image == IMAGE
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in gpu.tolerations
    assert gpu.node_selector == {"nvidia.com/gpu.present": "true"}
    assert not pools["cpu"].gpu and pools["cpu"].tolerations == []


@pytest.mark.parametrize(
    ("values", "image"),
    [
        (["image.tag=1.2.3"], "duplex:1.2.3-gpu"),
        (["image.gpuTag=1.2.3-cuda12"], "duplex:1.2.3-cuda12"),
        (
            ["workerPools.gpu.image=registry.example.com/voice:gpu"],
            "registry.example.com/voice:gpu",
        ),
    ],
)
def test_the_gpu_pools_image_follows_the_values(
    helm: Path, tmp_path: Path, values: list[str], image: str
) -> None:
    objects = render(helm, "voice", ["workerPools.gpu.enabled=true", *values])
    pools = {p.name: p for p in operator_config(objects, "voice", tmp_path).pools}
    assert pools["gpu"].image == image


def test_disabled_gpu_pool_is_not_rendered(helm: Path, tmp_path: Path) -> None:
    pools = operator_config(render(helm, "voice"), "voice", tmp_path).pools
    assert [p.name for p in pools] == ["cpu"]


def test_prometheus_annotations_can_be_turned_off(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, "voice", ["prometheus.annotations=false"])
    orchestrator = find(objects, "Deployment", f"{RELEASE}-orchestrator")
    annotations = orchestrator["spec"]["template"]["metadata"]["annotations"]
    assert not any(key.startswith("prometheus.io/") for key in annotations)
    config = operator_config(objects, "voice", tmp_path)
    [pool] = config.pools
    pod = worker_pod(config, pool, "duplex-worker-cpu-0", [], {})
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "false"


def test_external_redis_replaces_the_bundled_one(helm: Path, tmp_path: Path) -> None:
    url = "redis://redis.infra:6379/2"
    objects = render(helm, "voice", ["redis.enabled=false", f"redis.url={url}"])
    assert not [o for o in objects if o["metadata"]["name"] == f"{RELEASE}-redis"]
    config = operator_config(objects, "voice", tmp_path)
    assert (config.redis, config.worker_redis, config.worker_redis_url) == (url, url, None)
    main = container(find(objects, "Deployment", f"{RELEASE}-orchestrator"))
    assert pod_env(main, "voice", secrets_of(objects))["DUPLEX_REDIS"] == url


def test_external_redis_with_a_password_comes_from_its_secret(helm: Path, tmp_path: Path) -> None:
    url = "rediss://duplex:s3cret@redis.infra:6380/2"
    values = ["redis.enabled=false", "redis.existingSecret=infra-redis"]
    objects = render(helm, "voice", values)
    given = {"infra-redis": {"url": url}}
    config = operator_config(objects, "voice", tmp_path, given)
    assert config.redis == url
    assert config.worker_redis_url == SecretKey(name="infra-redis", key="url")
    pod = worker_pod(config, config.pools[0], f"{RELEASE}-worker-cpu-0", [], {})
    [worker] = pod["spec"]["containers"]
    assert {
        "name": "DUPLEX_REDIS",
        "valueFrom": {"secretKeyRef": config.worker_redis_url.model_dump()},
    } in worker["env"]
    main = container(find(objects, "Deployment", f"{RELEASE}-orchestrator"))
    assert pod_env(main, "voice", secrets_of(objects, given))["DUPLEX_REDIS"] == url
    assert "s3cret" not in yaml.safe_dump_all(objects) + json.dumps(pod)


def test_a_private_redis_ca_reaches_every_client_of_redis(helm: Path, tmp_path: Path) -> None:
    values = ["redis.enabled=false", "redis.existingSecret=infra-redis", "redis.caSecret=infra-ca"]
    objects = render(helm, "voice", values)
    config = operator_config(objects, "voice", tmp_path, {"infra-redis": {"url": "rediss://r"}})
    worker = worker_pod(config, config.pools[0], f"{RELEASE}-worker-cpu-0", [], {})
    specs = {
        "operator": find(objects, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"],
        "orchestrator": find(objects, "Deployment", f"{RELEASE}-orchestrator")["spec"]["template"][
            "spec"
        ],
        "worker": worker["spec"],
    }
    for who, spec in specs.items():
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["redis-ca"]["secret"] == {"secretName": "infra-ca"}, who
        [main] = spec["containers"]
        mounts = {m["name"]: m for m in main["volumeMounts"]}
        assert mounts["redis-ca"] == {
            "name": "redis-ca",
            "mountPath": "/etc/redis-ca",
            "readOnly": True,
        }, who
    # Without one, nothing is mounted.
    objects = render(helm, "voice", values[:2])
    config = operator_config(objects, "voice", tmp_path, {"infra-redis": {"url": "rediss://r"}})
    worker = worker_pod(config, config.pools[0], f"{RELEASE}-worker-cpu-0", [], {})
    assert "redis-ca" not in {v["name"] for v in worker["spec"]["volumes"]}


def test_worker_image_override_reaches_the_operator_environment(helm: Path) -> None:
    objects = render(helm, "voice", ["operator.workerImageOverride=duplex-dev:dev"])
    main = container(find(objects, "Deployment", f"{RELEASE}-operator"))
    assert {"name": "DUPLEX_OPERATOR_WORKER_IMAGE", "value": "duplex-dev:dev"} in main["env"]
    # Without the override the pools' own images stand.
    default = container(find(render(helm, "voice"), "Deployment", f"{RELEASE}-operator"))
    names = [e["name"] for e in default["env"]]
    assert "DUPLEX_OPERATOR_WORKER_IMAGE" not in names and "DUPLEX_OPERATOR_REDIS" in names


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["redis.enabled=false"],
            "redis.url or redis.existingSecret is required when redis.enabled is false",
        ),
        (
            ["redis.enabled=false", "redis.url=redis://:pw@redis.infra:6379/0"],
            "redis.url carries credentials",
        ),
        (
            ["tls.lifetime.renewDays=730"],
            "tls.lifetime.renewDays (730) must be less than tls.lifetime.days",
        ),
        (["tls.certificates=vault"], "tls.certificates must be one of"),
        (["livekit.enabled=true"], "livekit.apiKey (or livekit.existingSecret) is required"),
        (["workerPools.cpu.minPods=3"], "workerPools.cpu: minPods (3) is more than maxPods (2)"),
        (["workerPools.cpu.minPodz=1"], "Additional property minPodz is not allowed"),
        (["workerPools.Big.minPods=1"], 'Property name of "Big" does not match'),
    ],
    ids=[
        "redis-url",
        "redis-credentials",
        "tls-renewal",
        "tls-source",
        "livekit-secret",
        "pool-sizes",
        "pool-key",
        "pool-name",
    ],
)
def test_bad_values_fail_the_render_with_a_reason(
    helm: Path, values: list[str], message: str
) -> None:
    args = [arg for value in values for arg in ("--set", value)]
    result = run_helm(helm, "template", RELEASE, str(CHART), *args)
    assert result.returncode != 0
    assert message in result.stderr


# -- the apiserver accepts every object -----------------------------------------------------


async def dry_run(client: KubeClient, obj: Obj, namespace: str) -> Obj:
    """Create `obj` with dryRun=All; one that exists already (the CRDs) is replaced instead."""
    try:
        return await client.create_object(obj, namespace=namespace, dry_run=True)
    except KubeApiError as exc:
        if exc.status != 409:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {exc}") from exc
    meta = obj["metadata"]
    path = await client.object_path(
        obj["apiVersion"], obj["kind"], meta.get("namespace") or namespace, meta["name"]
    )
    current = await client.get(path)
    replacement = copy.deepcopy(obj)
    replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    return await client.request("PUT", path, replacement, params={"dryRun": "All"})


async def assert_accepted(api: KubeApiServer, objects: Sequence[Obj], namespace: str) -> list[Obj]:
    async with KubeClient.load(api.kubeconfig) as client:
        accepted = [await dry_run(client, obj, namespace) for obj in objects]
    for sent, answer in zip(objects, accepted, strict=True):
        assert (answer["kind"], answer["metadata"]["name"]) == (
            sent["kind"],
            sent["metadata"]["name"],
        )
    return accepted


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
async def test_every_rendered_object_passes_a_server_dry_run(
    helm: Path, kube_apiserver: KubeApiServer, kube_namespace: str, values: list[str]
) -> None:
    objects = render(helm, kube_namespace, values, crds=True)
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "Deployment", "Role", "ConfigMap"} <= kinds
    accepted = await assert_accepted(kube_apiserver, objects, kube_namespace)
    # The CRDs are the only cluster-scoped objects; everything else lives in the namespace.
    for answer in accepted:
        if answer["kind"] != "CustomResourceDefinition":
            assert answer["metadata"]["namespace"] == kube_namespace


async def test_worker_pods_of_both_pools_pass_a_server_dry_run(
    helm: Path, kube_apiserver: KubeApiServer, kube_namespace: str, tmp_path: Path
) -> None:
    objects = render(helm, kube_namespace, ["workerPools.gpu.enabled=true"])
    config = operator_config(objects, kube_namespace, tmp_path)
    pods = [
        worker_pod(config, pool, f"{config.worker_prefix}-{pool.name}-0", [], {})
        for pool in config.pools
    ]
    cpu, gpu = await assert_accepted(kube_apiserver, pods, kube_namespace)
    assert cpu["spec"]["serviceAccountName"] == cpu["metadata"]["name"]
    [gpu_container] = gpu["spec"]["containers"]
    assert gpu_container["resources"]["limits"][GPU_RESOURCE] == "1"
    assert gpu["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == GPU_RESOURCE for t in gpu["spec"]["tolerations"])


# -- manifests/ ----------------------------------------------------------------------------


def manifest_objects() -> list[Obj]:
    return [
        doc
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def without_helm_bookkeeping(obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata")):
        if meta is None:
            continue
        meta.pop("namespace", None)
        labels = meta.get("labels", {})
        labels.pop("helm.sh/chart", None)
        labels.pop("app.kubernetes.io/managed-by", None)
        annotations = meta.get("annotations", {})
        annotations.pop("checksum/config", None)
        if "annotations" in meta and not annotations:
            del meta["annotations"]
    return obj


# Secrets the chart generates (random values, kept across upgrades): plain manifests cannot
# make them; manifests/ says how to create each before applying it.
GENERATED_SECRETS = ("orchestrator-auth", "redis", "worker-admin")
HOOK_ANNOTATIONS = ("helm.sh/hook", "helm.sh/hook-weight", "helm.sh/hook-delete-policy")


def as_plain_manifest(obj: Obj, namespace: str) -> Obj | None:
    """What manifests/ holds of a rendered object, if anything.

    Helm's hooks run at install, upgrade or uninstall only, not in a plain apply; but the Job
    that makes the TLS certificates (and its account) is applied as a plain object there.
    """
    meta = obj["metadata"]
    if obj["kind"] == "Secret" and meta["name"] in {
        f"{namespace}-{name}" for name in GENERATED_SECRETS
    }:
        return None
    annotations = meta.get("annotations", {})
    if "helm.sh/hook" in annotations:
        if meta["labels"]["app.kubernetes.io/component"] != "certificates":
            return None
        obj = copy.deepcopy(obj)
        for key in HOOK_ANNOTATIONS:
            obj["metadata"]["annotations"].pop(key, None)
    return without_helm_bookkeeping(obj)


def test_manifests_are_the_charts_default_rendering(helm: Path) -> None:
    namespace = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["namespace"]
    rendered = {
        (o["kind"], o["metadata"]["name"]): plain
        for o in render(helm, namespace)
        if (plain := as_plain_manifest(o, namespace)) is not None
    }
    plain = {
        (o["kind"], o["metadata"]["name"]): o
        for o in manifest_objects()
        if o["kind"] != "Namespace"
    }
    assert sorted(plain) == sorted(rendered)
    for key, obj in plain.items():
        assert obj == rendered[key], f"manifests/ and the chart differ in {key[0]}/{key[1]}"
    # Each Secret the Pods need but the files cannot make is explained where it is needed.
    comments = "\n".join(p.read_text() for p in MANIFESTS.glob("*.yaml"))
    for name in GENERATED_SECRETS:
        assert f"create secret generic {namespace}-{name}" in comments, name


async def test_every_manifest_passes_a_server_dry_run(
    kube_apiserver: KubeApiServer, kube_namespace: str
) -> None:
    crds = [
        doc
        for path in sorted((MANIFESTS / "crds").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    objects = [*crds, *manifest_objects()]
    assert len(objects) >= 15
    await assert_accepted(kube_apiserver, objects, kube_namespace)


# -- the Tiltfile -------------------------------------------------------------------------


def tilt_value(node: ast.expr, names: dict[str, str]) -> Any:
    """The value of a Tiltfile expression built from strings, names, lists and `+`."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return tilt_value(node.left, names) + tilt_value(node.right, names)
    if isinstance(node, ast.List):
        return [tilt_value(item, names) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {
            tilt_value(k, names): tilt_value(v, names)
            for k, v in zip(node.keys, node.values, strict=True)
            if k is not None
        }
    raise AssertionError(f"unexpected expression in the Tiltfile: {ast.dump(node)}")


def tilt_calls(tree: ast.Module, function: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == function
    ]


def test_tiltfile_names_what_the_chart_renders(helm: Path) -> None:
    tree = ast.parse((ROOT / "Tiltfile").read_text())
    names = {"NAMESPACE": "tilt"}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            [target] = node.targets
            assert isinstance(target, ast.Name) and isinstance(node.value.value, str)
            names[target.id] = node.value.value
    [build] = tilt_calls(tree, "docker_build")
    image = tilt_value(build.args[0], names)
    [chart] = tilt_calls(tree, "helm")
    helm_args = {k.arg: tilt_value(k.value, names) for k in chart.keywords}
    assert tilt_value(chart.args[0], names) == "charts/duplex"
    assert helm_args["name"] == RELEASE
    objects = render(helm, "tilt", helm_args["set"], crds=True)
    rendered = {f"{o['metadata']['name']}:{o['kind']}".lower() for o in objects}

    for call in tilt_calls(tree, "k8s_resource"):
        workload = tilt_value(call.args[0], names)
        assert f"{workload}:deployment" in rendered
        for keyword in call.keywords:
            if keyword.arg == "objects":
                assert set(tilt_value(keyword.value, names)) <= rendered

    # Tilt rewrites container images and env values that name the image it built.
    operator = container(find(objects, "Deployment", f"{RELEASE}-operator"))
    assert operator["image"].split(":")[0] == image
    env = pod_env(operator, "tilt", secrets_of(objects))
    assert env["DUPLEX_OPERATOR_WORKER_IMAGE"].split(":")[0] == image
    for sync in tilt_calls(tree, "sync"):
        source, target = (tilt_value(arg, names) for arg in sync.args)
        assert (ROOT / source).is_dir() and target == f"/tmp/app/{source}"


# -- the chart's RBAC is enough for the real processes --------------------------------------


class OperatorProcess:
    """`duplex operator` as its Pod would run it: the Pod's arguments, environment and file."""

    def __init__(self, args: list[str], env: dict[str, str], kubeconfig: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "duplex.cli", *args, "--kubeconfig", str(kubeconfig)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def token_kubeconfig(api: KubeApiServer, token: str, path: Path) -> Path:
    config = yaml.safe_load(api.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


async def service_account_token(client: KubeClient, namespace: str, account: str) -> str:
    answer = await client.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    return str(answer["status"]["token"])


class PasswordRedis:
    """redis-server on a free loopback port that asks for a password, which it reads as the
    chart's Redis does: as configuration on its standard input."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.port = free_ports(1)[0]
        command = ["redis-server", "-", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"requirepass {password}\n".encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"-NOAUTH"):
                        break
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "no redis"
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def make_certificates(
    admin: KubeClient,
    api: KubeApiServer,
    objects: Sequence[Obj],
    namespace: str,
    directory: Path,
    **env: str,
) -> str:
    """Run the chart's certificates Job here, as its Pod would run it: its script, environment
    and service account (the hook's RBAC), against `api`. Returns what it printed."""
    hooks = [o for o in objects if o["metadata"]["name"] == f"{RELEASE}-certificates"]
    for obj in hooks:
        if obj["kind"] != "Job":
            with contextlib.suppress(KubeApiError):  # there from an earlier run
                await admin.create_object(obj, namespace=namespace)
    main = container(find(hooks, "Job", f"{RELEASE}-certificates"))
    account = directory / "account"
    account.mkdir(parents=True, exist_ok=True)
    token = await service_account_token(admin, namespace, f"{RELEASE}-certificates")
    (account / "token").write_text(token)
    (account / "ca.crt").write_bytes(api.ca_file.read_bytes())
    server = urllib.parse.urlsplit(api.url)
    pod = {
        **{e["name"]: e["value"] for e in main["env"]},
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
        "SERVICE_ACCOUNT_DIR": str(account),
        **env,
    }
    assert main["command"] == ["python", "-c"]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", main["args"][0]],
        env={"PATH": os.environ["PATH"], "TMPDIR": str(directory), **pod},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def read_secret(client: KubeClient, namespace: str, name: str) -> dict[str, bytes]:
    secret = await client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in files.items():
        (directory / key).write_bytes(value)


async def client_tls(client: KubeClient, namespace: str, directory: Path) -> ClientTls:
    """The orchestrator's TLS settings for the workers, with its Secret's files."""
    write_files(directory, await read_secret(client, namespace, f"{RELEASE}-orchestrator-tls"))
    return ClientTls(
        ca=str(directory / "ca.crt"),
        cert=str(directory / "tls.crt"),
        key=str(directory / "tls.key"),
        server_name=f"{RELEASE}-worker",
    )


def resident(model: Obj) -> bool:
    conditions = (model.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Resident" and c["status"] == "True" for c in conditions)


def http_status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return int(response.status)


def denials(logs: Sequence[Path]) -> list[str]:
    return [
        f"{log.name}: {line}"
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        # A 403 from the apiserver always says Forbidden (kopf: APIForbiddenError).
        if "forbidden" in line.lower()
    ]


# kopf's cluster-wide scanning, which the operator turns off: a request for the namespace list
# or for CRDs, or kopf's warning that it may not make one.
CLUSTER_SCAN = re.compile(
    r"/api/v1/namespaces(?![/\w-])|customresourcedefinitions|Not enough permissions"
)


def cluster_scans(log: Path) -> list[str]:
    return [
        line for line in log.read_text(errors="replace").splitlines() if CLUSTER_SCAN.search(line)
    ]


async def test_operator_and_worker_need_no_more_than_the_charts_rbac(
    helm: Path,
    kube_apiserver: KubeApiServer,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    """The operator and a worker, each with its ServiceAccount's token, make a model Resident;
    Redis asks for a password, which reaches both from a Secret; the worker serves mutual TLS
    with the certificates the chart's Job made."""
    ns = kube_namespace
    redis = PasswordRedis(secrets.token_hex(16))
    objects = render(helm, ns, ["redis.enabled=false", "redis.existingSecret=external-redis"])
    given = {"external-redis": {"url": redis.url}}
    rbac = [o for o in objects if o["kind"] in {"ServiceAccount", "Role", "RoleBinding"}]
    config = operator_config(objects, ns, tmp_path, given)
    [pool] = config.pools
    assert pool.service_account_name is None  # each worker Pod gets an account of its own
    main = container(find(objects, "Deployment", f"{RELEASE}-operator"))
    opts = build_parser().parse_args(main["args"])
    config_path = config_file(
        objects, "ConfigMap", f"{RELEASE}-operator", opts.config.name, tmp_path
    )
    args = [arg if arg != str(opts.config) else str(config_path) for arg in main["args"]]
    # The chart's 0.0.0.0:8081 could be taken on this machine; the probe is checked here too.
    liveness = f"http://127.0.0.1:{free_ports(1)[0]}/healthz"
    env = {
        **pod_env(main, ns, secrets_of(objects, given)),
        "DUPLEX_OPERATOR_LIVENESS_ENDPOINT": liveness,
    }

    async with KubeClient.load(kube_apiserver.kubeconfig) as admin:
        for obj in rbac:
            await admin.create_object(obj, namespace=ns)
        # What exists before the Pods start: the Secrets a user or the chart made.
        await admin.create_object(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "external-redis"},
                "stringData": given["external-redis"],
            },
            namespace=ns,
        )
        await admin.create_object(find(objects, "Secret", f"{RELEASE}-worker-admin"), namespace=ns)
        await make_certificates(admin, kube_apiserver, objects, ns, tmp_path / "certificates")
        operator_token = await service_account_token(admin, ns, f"{RELEASE}-operator")
        operator_kubeconfig = token_kubeconfig(
            kube_apiserver, operator_token, tmp_path / "operator.kubeconfig"
        )

        async def account_kubeconfig(account: str) -> Path:
            # What a kubelet mounts into the Pod: a token of the Pod's own account.
            token = await service_account_token(admin, ns, account)
            return token_kubeconfig(kube_apiserver, token, tmp_path / f"{account}.kubeconfig")

        kubelet = DevKubelet(
            admin, ns, account_kubeconfig, tmp_path / "pods", env={"PYTHONUNBUFFERED": "1"}
        )
        operator = OperatorProcess(args, env, operator_kubeconfig, tmp_path / "operator.log")
        try:
            await kubelet.start()
            model = {
                "apiVersion": "duplex.dev/v1alpha1",
                "kind": "TTSModel",
                "metadata": {"name": "pico-en"},
                "spec": {"modelId": "pico-en", "family": "pico", "minResident": 1},
            }
            await admin.create_object(model, namespace=ns)
            path = f"/apis/duplex.dev/v1alpha1/namespaces/{ns}/ttsmodels/pico-en"
            deadline = time.monotonic() + 90
            while not resident(await admin.get(path)):
                if operator.proc.poll() is not None or time.monotonic() > deadline:
                    logs = [operator.log, *(tmp_path / "pods").glob("*.log")]
                    tails = "\n".join(
                        f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in logs
                    )
                    raise AssertionError(f"pico-en did not become Resident\n{tails}")
                await asyncio.sleep(0.3)
            name = f"{config.worker_prefix}-cpu-0"
            assert kubelet.started == [name]
            # The worker read its model set as the account the operator made for its Pod alone,
            # which goes with the Pod.
            pod = await admin.get(f"/api/v1/namespaces/{ns}/pods/{name}")
            assert pod["spec"]["serviceAccountName"] == name
            owner = {"apiVersion": "v1", "kind": "Pod", "name": name}
            owner["uid"] = pod["metadata"]["uid"]
            rbac_path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
            for path in (
                f"/api/v1/namespaces/{ns}/serviceaccounts/{name}",
                f"{rbac_path}/roles/{name}",
                f"{rbac_path}/rolebindings/{name}",
            ):
                assert (await admin.get(path))["metadata"]["ownerReferences"] == [owner], path
            assert await asyncio.to_thread(http_status, liveness) == 200
            # The periodic pass alone would get here; kopf's watches had to wake it too, so
            # they started without waiting on a namespace or CRD listing.
            assert "Handler 'wake' succeeded" in operator.log.read_text(errors="replace")
            # The worker serves mutual TLS: the orchestrator's certificate gets in, no
            # certificate does not.
            address = f"127.0.0.1:{kubelet.pods[name].port}"
            tls = await client_tls(admin, ns, tmp_path / "orchestrator-tls")
            async with TtsClient(address, tls=tls) as client:
                models = {m.model_id: m for m in await client.list_models()}
            assert models["pico-en"].is_loaded
            async with TtsClient(
                address, tls=ClientTls(ca=tls.ca, server_name=tls.server_name)
            ) as bare:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await bare.list_models()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await asyncio.to_thread(operator.stop)
            await kubelet.aclose()
            redis.stop()
    logs = [operator.log, *(tmp_path / "pods").glob("*.log")]
    assert len(logs) == 2
    assert denials(logs) == []
    assert cluster_scans(operator.log) == []
    text = "\n".join(log.read_text(errors="replace") for log in logs)
    assert redis.password not in text


# -- Kubernetes mode of the orchestrator ---------------------------------------------------


def test_orchestrator_claims_models_with_voice_sessions_as_its_own_account(
    helm: Path, tmp_path: Path
) -> None:
    name = f"{RELEASE}-orchestrator"
    objects = render(helm, "voice")
    deployment = find(objects, "Deployment", name)
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == name
    assert "automountServiceAccountToken" not in spec
    find(objects, "ServiceAccount", name)
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container(deployment)["env"]
        if "fieldRef" in (e.get("valueFrom") or {})
    }
    assert fields == {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid"}
    path = config_file(objects, "Secret", name, "orchestrator.yaml", tmp_path)
    config = load_config(OrchestratorConfig, path, env={})
    assert config.kube is not None
    assert (config.kube.namespace, config.kube.max_duration_seconds) == ("voice", 86400)
    assert find(objects, "Role", name)["rules"] == [
        {
            "apiGroups": ["duplex.dev"],
            "resources": ["voicesessions"],
            "verbs": ["get", "list", "watch", "create", "delete"],
        }
    ]
    binding = find(objects, "RoleBinding", name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "voice"}]

    # Off: no account, no token in the Pod, and the router's own loading as before.
    plain = render(helm, "voice", ["orchestrator.kube.enabled=false"])
    assert not [
        o
        for o in plain
        if o["kind"] in {"Role", "ServiceAccount"} and o["metadata"]["name"] == name
    ]
    plain_spec = find(plain, "Deployment", name)["spec"]["template"]["spec"]
    assert plain_spec["automountServiceAccountToken"] is False
    path = config_file(plain, "Secret", name, "orchestrator.yaml", tmp_path)
    assert load_config(OrchestratorConfig, path, env={}).kube is None


async def test_the_orchestrators_account_may_claim_and_release_voice_sessions_only(
    helm: Path, kube_apiserver: KubeApiServer, kube: KubeClient, kube_namespace: str, tmp_path: Path
) -> None:
    ns, name = kube_namespace, f"{RELEASE}-orchestrator"
    objects = render(helm, ns)
    for obj in objects:
        if (
            obj["kind"] in {"ServiceAccount", "Role", "RoleBinding"}
            and obj["metadata"]["name"] == name
        ):
            await kube.create_object(obj, namespace=ns)
    token = await service_account_token(kube, ns, name)
    kubeconfig = token_kubeconfig(kube_apiserver, token, tmp_path / "orchestrator.kubeconfig")
    pod = await kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {"metadata": {"name": "orch-0"}, "spec": {"containers": [{"name": "o", "image": "x"}]}},
    )
    sessions = VoiceSessions(KubeClient.load(kubeconfig), ns, "orch-0", pod["metadata"]["uid"])
    try:
        await sessions.start()
        claim = await sessions.claim("piper-joe", "en", "room")
        status = f"/apis/duplex.dev/v1alpha1/namespaces/{ns}/voicesessions/{claim.name}/status"
        denied = await sessions.client.request_raw(
            "PATCH",
            status,
            {"status": {"phase": "Active", "worker": "w"}},
            content_type="application/merge-patch+json",
        )
        assert denied.status == 403  # Active is the operator's to say
        await sessions.release(claim)
    finally:
        await sessions.aclose()
    listing = await kube.list(f"/apis/duplex.dev/v1alpha1/namespaces/{ns}/voicesessions")
    assert listing["items"] == []


async def test_the_helm_test_pod_is_admitted_where_restricted_is_enforced(
    helm: Path, kube_apiserver: KubeApiServer, kube: KubeClient
) -> None:
    namespace = f"r-{secrets.token_hex(3)}"
    enforce = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    await kube.create("/api/v1/namespaces", {"metadata": {"name": namespace, "labels": enforce}})
    try:
        [pod] = [o for o in render(helm, namespace) if o["kind"] == "Pod"]
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        await assert_accepted(kube_apiserver, [pod], namespace)
        # The namespace does enforce it: the same Pod without its security context is refused.
        loose = copy.deepcopy(pod)
        del loose["spec"]["securityContext"], loose["spec"]["containers"][0]["securityContext"]
        with pytest.raises(AssertionError, match="violates PodSecurity"):
            await assert_accepted(kube_apiserver, [loose], namespace)
    finally:
        await kube.delete(f"/api/v1/namespaces/{namespace}")
