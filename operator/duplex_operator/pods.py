"""The worker Pod the operator creates for a pool, and the annotations that carry its model set."""

from __future__ import annotations

import copy
import json
from typing import Any

from duplex_operator.config import GPU_RESOURCE, OperatorConfig, WorkerPool
from duplex_operator.resources import (
    API_VERSION,
    COMPONENT_LABEL,
    MODEL_ADDED,
    MODEL_SET,
    MODEL_SPECS,
    POOL_LABEL,
    TtsModel,
)

GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

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
        MODEL_SET: ",".join(ids),
        MODEL_SPECS: json.dumps([m.entry for m in models], sort_keys=True),
        MODEL_ADDED: json.dumps({k: round(added[k], 3) for k in ids if k in added}, sort_keys=True),
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
    redis = config.worker_redis or config.redis
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # The operator owns placement and idle eviction; the worker only follows its set.
        {"name": "DUPLEX_TTL_SECONDS", "value": "0"},
        {"name": "DUPLEX_MAX_RESIDENT", "value": "64"},
        {"name": "DUPLEX_MAX_SESSIONS", "value": str(pool.max_sessions)},
        *pool.env,
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": config.worker_image or pool.image,
        "imagePullPolicy": pool.image_pull_policy,
        "args": [
            "worker",
            "--kube",
            "--host",
            "0.0.0.0",
            "--port",
            str(pool.port),
            "--advertise",
            f"$(POD_IP):{pool.port}",
            "--redis",
            redis,
            "--metrics-port",
            str(pool.metrics_port),
            *pool.args,
        ],
        "env": env,
        "ports": [
            {"name": "grpc", "containerPort": pool.port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": pool.metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": {"grpc": {"port": pool.port}, "periodSeconds": 5},
        "livenessProbe": {
            "grpc": {"port": pool.port},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if resources:
        container["resources"] = resources
    spec: dict[str, Any] = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 15,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if pool.service_account_name:
        spec["serviceAccountName"] = pool.service_account_name
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
