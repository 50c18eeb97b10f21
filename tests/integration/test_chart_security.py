"""What the chart protects by default, checked on its rendering and on a real kube-apiserver.

No secret value is written anywhere but its Secret; Redis asks for a password that no command
line shows; NetworkPolicies select the Pods the chart and the operator really create; a
worker's account reads the worker Pods and nothing else; the certificates Job makes, keeps and
renews the TLS Secrets, which the project's gRPC TLS accepts; the grace periods fit shutdown.
NetworkPolicies are not enforced by this machine's network plugin (bridge): the cluster tests
can only check that the API server takes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from duplex.kube import KubeApiError, KubeClient
from duplex.rpc.client import TtsClient
from duplex.rpc.security import ClientTls
from duplex.testing.apiserver import KubeApiServer
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker
from duplex_operator.config import OperatorConfig
from duplex_operator.pods import worker_account, worker_pod
from tests.integration.test_chart import (
    CHART,
    RELEASE,
    VALUE_SETS,
    Obj,
    assert_accepted,
    container,
    find,
    make_certificates,
    operator_config,
    read_secret,
    render,
    service_account_token,
    token_kubeconfig,
    write_files,
)
from tests.integration.test_chart import helm as helm  # the fixture

ROOT = CHART.parents[1]


# -- nothing secret in clear ----------------------------------------------------------------

# Values that, set by a user, are secrets too (the LiveKit API secret).
SECRET_VALUES = {"livekit.apiSecret"}
# A URL's password in clear: not a $(VAR) reference for the kubelet to fill in.
CLEAR_PASSWORD = re.compile(r"[a-z]+://[^/@\s\"]*:(?!\$\()[^/@\s\"]+@")


def pods_of(objects: Sequence[Obj], config: OperatorConfig) -> list[Obj]:
    """Every Pod the release runs: its workloads' templates and the operator's worker Pods."""
    pods = [
        {"metadata": o["spec"]["template"]["metadata"], "spec": o["spec"]["template"]["spec"]}
        for o in objects
        if o["kind"] in {"Deployment", "Job"}
    ]
    pods += [
        worker_pod(config, pool, config.worker_pod_names(pool)[0], [], {}) for pool in config.pools
    ]
    return pods


@pytest.mark.parametrize(
    "values",
    [VALUE_SETS["defaults"], VALUE_SETS["everything"], VALUE_SETS["external-redis-secret"]],
    ids=["defaults", "everything", "external-redis-secret"],
)
def test_no_secret_is_written_anywhere_but_its_secret(
    helm: Path, tmp_path: Path, values: list[str]
) -> None:
    objects = render(helm, "voice", values)
    given = {"infra-redis": {"url": "rediss://duplex:infra-pass-123@redis.infra:6380/0"}}
    config = operator_config(objects, "voice", tmp_path, given)
    everything = [*objects, *pods_of(objects, config)]
    # The chart's generated Secrets (Redis password, API key, token secret, admin token) and
    # the secrets given in values.
    kept: dict[str, str] = {}
    for secret in (o for o in objects if o["kind"] == "Secret"):
        if secret["metadata"]["name"] == f"{RELEASE}-orchestrator":
            continue  # the orchestrator's settings: a Secret for an LLM's key, none here
        for value in (secret.get("stringData") or {}).values():
            kept[value] = secret["metadata"]["name"]
    for value in values:
        key, _, given_value = value.partition("=")
        if key in SECRET_VALUES:
            kept[given_value] = f"{RELEASE}-livekit"
    expected = {"orchestrator-auth", "worker-admin"}
    if "redis.enabled=false" not in values:
        expected.add("redis")
    assert {name.removeprefix(f"{RELEASE}-") for name in kept.values()} >= expected
    for obj in everything:
        text = json.dumps(obj)
        where = f"{obj.get('kind', 'Pod')}/{obj['metadata'].get('name')}"
        for value, home in kept.items():
            if obj.get("kind") == "Secret" and obj["metadata"]["name"] == home:
                continue
            assert value not in text, f"{where} carries a value of Secret {home}"
        assert not CLEAR_PASSWORD.search(text), f"{where} carries a URL with a password"
    # Every container gets its Redis URL from the environment, never from its arguments.
    for pod in pods_of(objects, config):
        for main in pod["spec"]["containers"]:
            assert "--redis" not in (main.get("args") or [])
            assert not any("redis://" in a for a in main.get("args") or [])


def test_redis_runs_with_a_password_that_no_command_line_shows(helm: Path, tmp_path: Path) -> None:
    """The chart's Redis container command, run here with Debian's redis-server and /bin/sh,
    in a network namespace of its own (it listens on every address, as in a Pod)."""
    main = container(find(render(helm, "voice"), "Deployment", f"{RELEASE}-redis"))
    assert [e["valueFrom"]["secretKeyRef"] for e in main["env"]] == [
        {"name": f"{RELEASE}-redis", "key": "password"}
    ] * 2
    password = secrets.token_hex(16)
    command = [*main["command"], *main["args"]]
    shell = 'ip link set lo up && exec "$@"'
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["unshare", "--net", "--map-root-user", "sh", "-c", shell, "sh", *command],
            env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": password},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def cli(*args: str, auth: str | None = None) -> str:
            env = {"PATH": os.environ["PATH"], **({"REDISCLI_AUTH": auth} if auth else {})}
            result = subprocess.run(
                ["nsenter", f"--target={server.pid}", "--user", "--net", "redis-cli", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            return result.stdout + result.stderr

        deadline = time.monotonic() + 10
        while "NOAUTH" not in cli("ping"):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        assert cli("ping", auth=password).strip() == "PONG"
        assert "WRONGPASS" in cli("ping", auth="guess")
        # The shell became redis-server (exec): its command line and the Pod spec's hold
        # no password; only its environment does, as the kubelet set it.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert cmdline.startswith("redis-server") and password not in cmdline
        assert password not in json.dumps(main)
    finally:
        server.terminate()
        server.wait(10)
    # A password that cannot go into a URL stops it with a reason.
    bad = subprocess.run(
        ["unshare", "--net", "--map-root-user", *command],
        env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": "has space"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert bad.returncode == 1 and "letters, digits or -._~" in bad.stderr


# -- NetworkPolicies ------------------------------------------------------------------------


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector's verdict on a Pod's labels (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values")
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def component(pod: Obj) -> str:
    labels: Mapping[str, str] = pod["metadata"]["labels"]
    name = labels["app.kubernetes.io/component"]
    return f"{name}/{labels['duplex.dev/pool']}" if "duplex.dev/pool" in labels else name


def port_names(pod: Obj) -> set[str]:
    return {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports") or []}


def selected(selector: Mapping[str, Any], pods: Sequence[Obj]) -> set[str]:
    return {component(p) for p in pods if selects(selector, p["metadata"]["labels"])}


def test_network_policies_select_the_pods_the_chart_and_the_operator_create(
    helm: Path, tmp_path: Path
) -> None:
    objects = render(helm, "voice", VALUE_SETS["everything"])
    config = operator_config(objects, "voice", tmp_path)
    pods = pods_of(objects, config)
    assert {component(p) for p in pods} == {
        "operator",
        "orchestrator",
        "redis",
        "livekit",
        "worker/cpu",
        "worker/gpu",
        "certificates",
        "uninstall",
    }
    policies = {
        o["metadata"]["name"].removeprefix(f"{RELEASE}-"): o["spec"]
        for o in objects
        if o["kind"] == "NetworkPolicy"
    }
    assert set(policies) == {"worker", "orchestrator", "operator", "redis"}
    for policy in policies.values():
        assert policy["policyTypes"] == ["Ingress"]  # what leaves a Pod is not restricted

    def rules(name: str) -> list[tuple[set[str] | None, set[str]]]:
        """Each ingress rule: the components it lets in (None: anyone) and its ports."""
        spec = policies[name]
        targets = [p for p in pods if selects(spec["podSelector"], p["metadata"]["labels"])]
        out: list[tuple[set[str] | None, set[str]]] = []
        for rule in spec.get("ingress") or []:
            ports = {p["port"] for p in rule.get("ports") or []}
            # A named port must be a port of every Pod the policy applies to.
            for target in targets:
                assert ports <= port_names(target), (name, component(target), ports)
            peers = rule.get("from")
            if peers is None:
                out.append((None, ports))
            elif peers == [{"podSelector": {}}]:
                out.append(({"namespace"}, ports))
            else:
                assert all(set(peer) == {"podSelector"} for peer in peers)
                out.append((set().union(*(selected(p["podSelector"], pods) for p in peers)), ports))
        return out

    assert selected(policies["worker"]["podSelector"], pods) == {"worker/cpu", "worker/gpu"}
    assert rules("worker") == [({"orchestrator"}, {"grpc"}), ({"namespace"}, {"metrics"})]
    assert selected(policies["redis"]["podSelector"], pods) == {"redis"}
    assert rules("redis") == [({"operator", "orchestrator", "worker/cpu", "worker/gpu"}, {"redis"})]
    assert selected(policies["orchestrator"]["podSelector"], pods) == {"orchestrator"}
    assert rules("orchestrator") == [
        (None, {"http"}),
        ({"namespace"}, {"metrics"}),
        ({"livekit"}, set()),  # the agent's WebRTC media, on ports of its choosing
    ]
    assert selected(policies["operator"]["podSelector"], pods) == {"operator"}
    # The operator's /metrics (whether it reconciles) alone; its probe comes from the kubelet.
    assert rules("operator") == [({"namespace"}, {"metrics"})]
    # Every /metrics port of an isolated Pod admits the scrapers.
    for name, spec in policies.items():
        scraped = any(
            {"port": "metrics", "protocol": "TCP"} in (rule.get("ports") or [])
            for rule in spec.get("ingress") or []
        )
        for pod in pods:
            if selects(spec["podSelector"], pod["metadata"]["labels"]):
                assert scraped or "metrics" not in port_names(pod), (name, component(pod))
    # The kubelet's probes come from the node, which policies let through: the plain-text
    # health port of TLS workers is in no rule.
    worker = next(p for p in pods if component(p) == "worker/cpu")
    assert {"grpc", "metrics", "health"} <= port_names(worker)

    # Who may scrape and who may talk are values; policies can be switched off.
    values = [
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
        "networkPolicy.orchestratorFrom[0].podSelector.matchLabels.role=frontend",
    ]
    policies = {
        o["metadata"]["name"]: o["spec"]
        for o in render(helm, "voice", values)
        if o["kind"] == "NetworkPolicy"
    }
    scrapers = [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    assert policies[f"{RELEASE}-worker"]["ingress"][1]["from"] == scrapers
    orchestrator = policies[f"{RELEASE}-orchestrator"]["ingress"]
    # ... and the release's own `helm test` Pod (tests/integration/test_monitoring.py).
    assert orchestrator[0]["from"][0] == {"podSelector": {"matchLabels": {"role": "frontend"}}}
    assert orchestrator[1]["from"] == scrapers
    off = render(helm, "voice", ["networkPolicy.enabled=false"])
    assert not [o for o in off if o["kind"] == "NetworkPolicy"]


# -- the workers' RBAC ----------------------------------------------------------------------


async def test_a_workers_account_reads_its_own_pod_and_no_other(
    helm: Path, kube_apiserver: KubeApiServer, kube: KubeClient, kube_namespace: str, tmp_path: Path
) -> None:
    ns, other_ns = kube_namespace, f"{kube_namespace}-other"
    config = operator_config(render(helm, ns), ns, tmp_path)
    own, sibling = config.worker_pod_names(config.pools[0])[:2]
    orchestrator = f"{RELEASE}-orchestrator-5d8f9-x2x4q"
    # The account the operator makes for a worker Pod of the chart's pool, named after it.
    account = own
    for obj in worker_account(worker_pod(config, config.pools[0], own, [], {})):
        await kube.create_object(obj, namespace=ns)
    await kube.create("/api/v1/namespaces", {"metadata": {"name": other_ns}})
    spec = {"containers": [{"name": "c", "image": "x"}]}
    for namespace, name in ((ns, own), (ns, sibling), (ns, orchestrator), (other_ns, own)):
        await kube.create(
            f"/api/v1/namespaces/{namespace}/pods", {"metadata": {"name": name}, "spec": spec}
        )
    token = await service_account_token(kube, ns, account)
    pods = f"/api/v1/namespaces/{ns}/pods"

    async def status(call: Any) -> int:
        try:
            await call
        except KubeApiError as exc:
            return exc.status
        return 200

    async with KubeClient.load(token_kubeconfig(kube_apiserver, token, tmp_path / "kc")) as worker:
        assert (await worker.get(f"{pods}/{own}"))["metadata"]["name"] == own
        listing = await worker.list(pods, field_selector=f"metadata.name={own}")
        assert [p["metadata"]["name"] for p in listing["items"]] == [own]
        # The watch a worker keeps on its Pod (duplex.worker.podwatch): the API server checks
        # its field selector's name against the Role's names.
        async with asyncio.timeout(10):
            async for event in worker.watch(pods, field_selector=f"metadata.name={own}"):
                assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", own)
                break
        assert await status(worker.get(f"{pods}/{orchestrator}")) == 403
        assert await status(worker.get(f"{pods}/{sibling}")) == 403  # another worker's Pod
        assert await status(worker.list(pods, field_selector=f"metadata.name={sibling}")) == 403
        assert await status(worker.list(pods)) == 403
        assert (
            await status(worker.list(pods, field_selector=f"metadata.name={orchestrator}")) == 403
        )
        assert await status(worker.get(f"/api/v1/namespaces/{other_ns}/pods/{own}")) == 403
        assert await status(worker.get(f"/api/v1/namespaces/{ns}/secrets/{account}")) == 403
        with pytest.raises(KubeApiError) as refused:
            async for _ in worker.watch(pods, field_selector=f"metadata.name={orchestrator}"):
                break
        assert refused.value.status == 403
    await kube.delete(f"/api/v1/namespaces/{other_ns}")


# -- TLS certificates -----------------------------------------------------------------------


def x509(cert: bytes, *args: str) -> str:
    result = subprocess.run(
        ["openssl", "x509", "-noout", *args], input=cert, capture_output=True, check=True
    )
    return result.stdout.decode()


def verifies(ca: bytes, cert: bytes, directory: Path) -> bool:
    write_files(directory, {"ca.pem": ca, "cert.pem": cert})
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(directory / "ca.pem"), str(directory / "cert.pem")],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


async def versions(kube: KubeClient, ns: str, names: Sequence[str]) -> dict[str, str]:
    return {
        n: (await kube.get(f"/api/v1/namespaces/{ns}/secrets/{n}"))["metadata"]["resourceVersion"]
        for n in names
    }


async def test_the_certificates_job_makes_keeps_and_renews_the_tls_secrets(
    helm: Path, kube_apiserver: KubeApiServer, kube: KubeClient, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    objects = render(helm, ns)
    names = [f"{RELEASE}-tls-ca", f"{RELEASE}-worker-tls", f"{RELEASE}-orchestrator-tls"]
    printed = await make_certificates(kube, kube_apiserver, objects, ns, tmp_path / "run1")
    assert printed.count("wrote Secret") == 3
    files = {n: await read_secret(kube, ns, n) for n in names}
    ca, server, client = (files[n] for n in names)
    for name in names:
        secret = await kube.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
        assert secret["type"] == "kubernetes.io/tls"
        assert set(files[name]) == {"tls.crt", "tls.key", "ca.crt"}
        assert files[name]["ca.crt"] == ca["tls.crt"]
    assert "CA:TRUE" in x509(ca["tls.crt"], "-ext", "basicConstraints")
    assert "DNS:duplex-worker" in x509(server["tls.crt"], "-ext", "subjectAltName")
    assert "TLS Web Server Authentication" in x509(server["tls.crt"], "-ext", "extendedKeyUsage")
    assert f"CN = {RELEASE}-orchestrator" in x509(client["tls.crt"], "-subject")
    assert "TLS Web Client Authentication" in x509(client["tls.crt"], "-ext", "extendedKeyUsage")
    assert verifies(ca["tls.crt"], server["tls.crt"], tmp_path / "v1")
    assert verifies(ca["tls.crt"], client["tls.crt"], tmp_path / "v2")

    # Its account may touch these three Secrets and no other.
    token = await service_account_token(kube, ns, f"{RELEASE}-certificates")
    async with KubeClient.load(token_kubeconfig(kube_apiserver, token, tmp_path / "kc")) as job:
        with pytest.raises(KubeApiError) as refused:
            await job.get(f"/api/v1/namespaces/{ns}/secrets/{RELEASE}-worker-admin")
        assert refused.value.status == 403

    # An upgrade keeps what is good: nothing is written.
    before = await versions(kube, ns, names)
    printed = await make_certificates(kube, kube_apiserver, objects, ns, tmp_path / "run2")
    assert "wrote" not in printed and await versions(kube, ns, names) == before

    # Certificates that end within renewDays are made anew, by the same CA.
    await make_certificates(kube, kube_apiserver, objects, ns, tmp_path / "run3", RENEW_DAYS="1000")
    after = await versions(kube, ns, names)
    assert after[names[0]] == before[names[0]]
    assert after[names[1]] != before[names[1]] and after[names[2]] != before[names[2]]
    renewed = await read_secret(kube, ns, names[1])
    assert renewed["tls.crt"] != server["tls.crt"] and renewed["ca.crt"] == ca["tls.crt"]

    # A CA that ends keeps its key: what it signed before stays valid under the new one.
    await make_certificates(
        kube, kube_apiserver, objects, ns, tmp_path / "run4", RENEW_DAYS="3700", DAYS="3800"
    )
    new_ca = await read_secret(kube, ns, names[0])
    assert new_ca["tls.crt"] != ca["tls.crt"]
    assert x509(new_ca["tls.crt"], "-pubkey") == x509(ca["tls.crt"], "-pubkey")
    assert verifies(new_ca["tls.crt"], server["tls.crt"], tmp_path / "v3")

    # A deleted Secret is made again.
    await kube.delete(f"/api/v1/namespaces/{ns}/secrets/{names[2]}")
    await make_certificates(kube, kube_apiserver, objects, ns, tmp_path / "run5")
    assert (await read_secret(kube, ns, names[2]))["ca.crt"] == new_ca["tls.crt"]

    # The project's gRPC TLS takes them: a worker with its Secret's files and the admin token,
    # the orchestrator with its own.
    write_files(tmp_path / "worker", await read_secret(kube, ns, names[1]))
    write_files(tmp_path / "orchestrator", await read_secret(kube, ns, names[2]))
    token = secrets.token_hex(16)
    config = WorkerConfig(
        name="tls-worker",
        port=0,
        default_model="tone",
        test_models=True,
        tls_cert=str(tmp_path / "worker" / "tls.crt"),
        tls_key=str(tmp_path / "worker" / "tls.key"),
        tls_client_ca=str(tmp_path / "worker" / "ca.crt"),
        admin_tokens=[token],
        health_port=0,
    )
    orchestrator = ClientTls(
        ca=str(tmp_path / "orchestrator" / "ca.crt"),
        cert=str(tmp_path / "orchestrator" / "tls.crt"),
        key=str(tmp_path / "orchestrator" / "tls.key"),
        server_name=f"{RELEASE}-worker",
    )
    async with Worker(config) as served:
        async with TtsClient(served.address, tls=orchestrator, admin_token=token) as client:
            assert await client.load_model("tone") >= 0
        async with TtsClient(served.address, tls=orchestrator) as no_token:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await no_token.load_model("tone")
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        bare = ClientTls(ca=orchestrator.ca, server_name=orchestrator.server_name)
        async with TtsClient(served.address, tls=bare) as stranger:
            with pytest.raises(grpc.aio.AioRpcError) as refused_tls:
                await stranger.list_models()
            assert refused_tls.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_sources_and_what_each_pod_mounts(helm: Path, tmp_path: Path) -> None:
    # Without cert-manager: the Job, a hook before everything else at install and upgrade.
    objects = render(helm, "voice")
    job = find(objects, "Job", f"{RELEASE}-certificates")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert (CHART / "files" / "certificates.py").read_text() == container(job)["args"][0]
    assert not [o for o in objects if o["apiVersion"].startswith("cert-manager.io/")]
    # With it (auto finds its API): Certificates instead, into Secrets of the same names.
    managed = render(helm, "voice", api_versions=["cert-manager.io/v1/Certificate"])
    assert not [o for o in managed if o["metadata"]["name"] == f"{RELEASE}-certificates"]
    certificates = {o["metadata"]["name"]: o["spec"] for o in managed if o["kind"] == "Certificate"}
    assert {c["secretName"] for c in certificates.values()} == {
        f"{RELEASE}-tls-ca",
        f"{RELEASE}-worker-tls",
        f"{RELEASE}-orchestrator-tls",
    }
    assert certificates[f"{RELEASE}-tls-ca"]["privateKey"]["rotationPolicy"] == "Never"
    assert certificates[f"{RELEASE}-worker-tls"]["dnsNames"] == [f"{RELEASE}-worker"]
    # Off: no certificates, plain-text workers probed on their gRPC port.
    plain = render(helm, "voice", ["tls.enabled=false"])
    assert not [o for o in plain if "certificates" in o["metadata"]["name"]]
    config = operator_config(plain, "voice", tmp_path)
    assert config.worker_tls is None
    pod = worker_pod(config, config.pools[0], f"{RELEASE}-worker-cpu-0", [], {})
    [main] = pod["spec"]["containers"]
    assert main["readinessProbe"]["grpc"]["port"] == 50051 and "--tls-cert" not in main["args"]

    # On: the worker serves mutual TLS with its Secret, health in plain text for the kubelet.
    config = operator_config(objects, "voice", tmp_path)
    pod = worker_pod(config, config.pools[0], f"{RELEASE}-worker-cpu-0", [], {})
    [main] = pod["spec"]["containers"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == f"{RELEASE}-worker-tls"
    [mount] = [m for m in main["volumeMounts"] if m["name"] == "tls"]
    args = main["args"]
    flags = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--tls")}
    assert flags == {
        "--tls-cert": f"{mount['mountPath']}/tls.crt",
        "--tls-key": f"{mount['mountPath']}/tls.key",
        "--tls-client-ca": f"{mount['mountPath']}/ca.crt",
    }
    health = int(args[args.index("--health-port") + 1])
    assert main["readinessProbe"]["grpc"]["port"] == main["livenessProbe"]["grpc"]["port"] == health
    admin = {e["name"]: e for e in main["env"]}["DUPLEX_ADMIN_TOKENS"]
    assert admin["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-worker-admin", "key": "token"}


# -- cert-manager's objects on a real API server --------------------------------------------


def cert_manager_crds() -> list[Obj]:
    """cert-manager's CRDs, from its Go module at the version tools/cert-manager pins."""
    gomod = (ROOT / "tools" / "cert-manager" / "go.mod").read_text()
    version = re.search(r"github\.com/cert-manager/cert-manager (v\S+)", gomod)
    assert version is not None
    cache = Path(os.environ.get("DUPLEX_CACHE", Path.home() / ".cache" / "duplex"))
    go = shutil.which("go")
    assert go is not None, "Go is needed to fetch cert-manager's CRDs (its module)"
    result = subprocess.run(
        [go, "mod", "download", "-json", f"github.com/cert-manager/cert-manager@{version[1]}"],
        env={**os.environ, "GOMODCACHE": str(cache / "gomodcache"), "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    crds = Path(json.loads(result.stdout)["Dir"]) / "deploy" / "crds"
    return [
        yaml.safe_load((crds / f"cert-manager.io_{kind}.yaml").read_text())
        for kind in ("issuers", "certificates")
    ]


async def test_cert_manager_objects_pass_a_server_dry_run(
    helm: Path, kube_apiserver: KubeApiServer, kube: KubeClient, kube_namespace: str
) -> None:
    for crd in cert_manager_crds():
        try:
            await kube.create_object(crd)
        except KubeApiError as exc:
            assert exc.status == 409  # an earlier test of this server made it
    managed = [
        o
        for o in render(helm, kube_namespace, ["tls.certificates=cert-manager"])
        if o["apiVersion"].startswith("cert-manager.io/")
    ]
    assert sorted(o["kind"] for o in managed) == ["Certificate"] * 3 + ["Issuer"] * 2
    for _ in range(50):  # a new CRD is served a moment after it is created
        try:
            await assert_accepted(kube_apiserver, managed, kube_namespace)
            break
        except (AssertionError, KubeApiError) as exc:
            last = exc
            await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"cert-manager objects refused: {last}")


# -- shutdown -------------------------------------------------------------------------------

# The orchestrator's promise on SIGTERM (conversations say goodbye in about 2 s) and the
# worker's (its gRPC server's grace, 1 s), each with a margin for a loaded node.
ORCHESTRATOR_EXIT_SECONDS = 5
WORKER_EXIT_SECONDS = 1
MARGIN_SECONDS = 5


def test_grace_periods_fit_the_shutdowns(helm: Path, tmp_path: Path) -> None:
    from duplex.orchestrator.server import SHUTDOWN_SECONDS

    assert SHUTDOWN_SECONDS < ORCHESTRATOR_EXIT_SECONDS
    objects = render(helm, "voice")
    spec = find(objects, "Deployment", f"{RELEASE}-orchestrator")["spec"]["template"]["spec"]
    [main] = spec["containers"]
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert (
        spec["terminationGracePeriodSeconds"]
        >= pre_stop + ORCHESTRATOR_EXIT_SECONDS + MARGIN_SECONDS
    )
    config = operator_config(objects, "voice", tmp_path)
    pod = worker_pod(config, config.pools[0], f"{RELEASE}-worker-cpu-0", [], {})
    assert pod["spec"]["terminationGracePeriodSeconds"] >= WORKER_EXIT_SECONDS + MARGIN_SECONDS
    assert "lifecycle" not in pod["spec"]["containers"][0]
