"""The worker Pod the operator creates for a pool, and the annotations that carry its model set."""

from __future__ import annotations

import copy
from typing import Any

from duplex.modelset import (
    COMPONENT_LABEL,
    MODEL_ADDED,
    MODEL_SET,
    MODEL_SPECS,
    format_model_added,
    format_model_set,
    format_model_specs,
)
from duplex_operator.config import GPU_RESOURCE, OperatorConfig, SecretKey, WorkerPool
from duplex_operator.resources import (
    API_VERSION,
    POOL_LABEL,
    TtsModel,
)

GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# Where a Redis CA (OperatorConfig.worker_redis_ca_secret) is mounted, as in the chart's Pods.
REDIS_CA_DIR = "/etc/redis-ca"

# Worker Pods meet the `restricted` Pod Security Standard: the image's user is non-root and
# numeric (so the kubelet can check it), no privilege or capability is kept, and the root file
# system is read-only; Python's temporary files go to an emptyDir on /tmp.
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


def model_set_metadata(
    models: list[TtsModel], added: dict[str, float]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The model-set annotations and owner references of a Pod holding `models`.

    Each TTSModel placed on a Pod owns it (not as controller): when every model it holds is
    deleted, the garbage collector removes the Pod.
    """
    ids = [m.model_id for m in models]
    annotations = {
        MODEL_SET: format_model_set(ids),
        MODEL_SPECS: format_model_specs(m.entry for m in models),
        MODEL_ADDED: format_model_added(added, ids),
    }
    owners = [
        {
            "apiVersion": API_VERSION,
            "kind": "TTSModel",
            "name": m.name,
            "uid": m.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }
        for m in models
        if m.uid
    ]
    return annotations, owners


def _from_secret(name: str, ref: SecretKey) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def redis_env(config: OperatorConfig) -> list[dict[str, Any]]:
    """How a worker Pod gets its Redis URL: from the environment, never its arguments.

    A password comes from a Secret: the whole URL (worker_redis_url), or REDIS_PASSWORD, which
    the kubelet puts where the URL says $(REDIS_PASSWORD). The Pod's spec keeps the reference.
    """
    if config.worker_redis_url is not None:
        return [_from_secret("DUPLEX_REDIS", config.worker_redis_url)]
    env: list[dict[str, Any]] = []
    if config.worker_redis_password is not None:
        env.append(_from_secret("REDIS_PASSWORD", config.worker_redis_password))
    env.append({"name": "DUPLEX_REDIS", "value": config.worker_redis or config.redis})
    return env


def worker_pod(
    config: OperatorConfig,
    pool: WorkerPool,
    name: str,
    models: list[TtsModel],
    added: dict[str, float],
) -> dict[str, Any]:
    annotations, owners = model_set_metadata(models, added)
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(pool.metrics_port),
        "prometheus.io/path": "/metrics",
        **pool.annotations,
        **annotations,
    }
    labels = {
        **pool.labels,
        "app.kubernetes.io/name": "duplex",
        COMPONENT_LABEL: "worker",
        "app.kubernetes.io/managed-by": "duplex-operator",
        POOL_LABEL: pool.name,
    }
    resources: dict[str, Any] = {k: dict(v) for k, v in pool.resources.items()}
    tolerations = list(pool.tolerations)
    if pool.gpu:
        # One GPU per worker; extended resources are set in limits (requests default to them).
        resources.setdefault("limits", {})[GPU_RESOURCE] = 1
        if not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            tolerations.append(GPU_TOLERATION)
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *redis_env(config),
        # The operator owns placement and idle eviction; the worker only follows its set.
        {"name": "DUPLEX_TTL_SECONDS", "value": "0"},
        {"name": "DUPLEX_MAX_RESIDENT", "value": "64"},
        {"name": "DUPLEX_MAX_SESSIONS", "value": str(pool.max_sessions)},
    ]
    if config.worker_admin_token is not None:
        env.append(_from_secret("DUPLEX_ADMIN_TOKENS", config.worker_admin_token))
    env += pool.env
    args = [
        "worker",
        "--kube",
        "--host",
        "0.0.0.0",
        "--port",
        str(pool.port),
        "--advertise",
        f"$(POD_IP):{pool.port}",
        "--metrics-port",
        str(pool.metrics_port),
    ]
    ports = [
        {"name": "grpc", "containerPort": pool.port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": pool.metrics_port, "protocol": "TCP"},
    ]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if config.worker_redis_ca_secret is not None:
        mounts.append({"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": True})
        volumes.append(
            {"name": "redis-ca", "secret": {"secretName": config.worker_redis_ca_secret}}
        )
    probe_port = pool.port
    tls = config.worker_tls
    if tls is not None:
        # Mutual TLS: clients need a certificate from the CA in ca.crt. The kubelet's gRPC
        # probes cannot present one, so health is also served in plain text on its own port.
        args += [
            "--tls-cert",
            f"{tls.mount_path}/tls.crt",
            "--tls-key",
            f"{tls.mount_path}/tls.key",
            "--tls-client-ca",
            f"{tls.mount_path}/ca.crt",
            "--health-port",
            str(pool.health_port),
        ]
        ports.append({"name": "health", "containerPort": pool.health_port, "protocol": "TCP"})
        mounts.append({"name": "tls", "mountPath": tls.mount_path, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": tls.secret}})
        probe_port = pool.health_port
    container: dict[str, Any] = {
        "name": "worker",
        "image": config.worker_image or pool.image,
        "imagePullPolicy": pool.image_pull_policy,
        "args": [*args, *pool.args],
        "env": env,
        "ports": ports,
        "readinessProbe": {"grpc": {"port": probe_port}, "periodSeconds": 5},
        "livenessProbe": {
            "grpc": {"port": probe_port},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": mounts,
    }
    if resources:
        container["resources"] = resources
    spec: dict[str, Any] = {
        "restartPolicy": "Always",
        # A worker stops within about a second of SIGTERM (its clients move to other workers
        # mid-sentence); the rest is margin.
        "terminationGracePeriodSeconds": 15,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": volumes,
    }
    spec["serviceAccountName"] = pool.service_account_name or name
    if pool.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in pool.image_pull_secrets]
    if pool.node_selector:
        spec["nodeSelector"] = dict(pool.node_selector)
    if tolerations:
        spec["tolerations"] = tolerations
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": config.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if owners:
        metadata["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def own_account(pod: dict[str, Any]) -> bool:
    """Whether `pod` runs as an account of its own (see `worker_account`)."""
    return bool(pod["spec"].get("serviceAccountName") == pod["metadata"]["name"])


def worker_account(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """A worker Pod's own account: a ServiceAccount, and a Role and RoleBinding that let it
    get and watch its Pod alone (its model set is an annotation there), all named after the
    Pod. The ServiceAccount must exist before the Pod; the owner reference to the Pod, which
    deletes all three with it, is added once the Pod exists (`owned_by`)."""
    meta = pod["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    common = {"name": name, "namespace": namespace, "labels": dict(meta["labels"])}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": dict(common),
            "automountServiceAccountToken": True,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": dict(common),
            # The worker's watch names its Pod with a metadata.name field selector, which the
            # API server checks against resourceNames for list and watch too.
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "resourceNames": [name],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": dict(common),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def owned_by(pod: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that makes an object the Pod's (deleted with it by the garbage collector)."""
    reference = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod["metadata"]["name"],
        "uid": pod["metadata"]["uid"],
    }
    return {"metadata": {"ownerReferences": [reference]}}
