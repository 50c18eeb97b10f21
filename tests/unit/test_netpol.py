"""The local cluster's NetworkPolicy rules (tools/netpol.py), rendered from scripted objects:
what the NetworkPolicy API admits is accepted, the rest of an isolated Pod's traffic dropped."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def netpol() -> ModuleType:
    spec = importlib.util.spec_from_file_location("netpol", ROOT / "tools" / "netpol.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["netpol"] = module
    spec.loader.exec_module(module)
    return module


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def pod(
    name: str, namespace: str, ip: str, ports: dict[str, int] | None = None, **labels: str
) -> dict[str, Any]:
    container = {
        "name": "main",
        "ports": [{"name": n, "containerPort": p} for n, p in (ports or {}).items()],
    }
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [container]},
        "status": {"phase": "Running", "podIP": ip},
    }


def policy(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def chains(script: str) -> dict[str, list[str]]:
    """The rules of each chain, as lines."""
    out: dict[str, list[str]] = {}
    current = None
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("chain "):
            current = line.split()[1]
            out[current] = []
        elif current and line and line != "}":
            out[current].append(line)
    return out


STATE = {
    "namespaces": [ns("voice", team="a"), ns("other", team="b")],
    "pods": [
        pod("redis", "voice", "10.0.0.2", {"redis": 6379}, component="redis"),
        pod("worker", "voice", "10.0.0.3", {"grpc": 50051, "metrics": 9100}, component="worker"),
        pod("orchestrator", "voice", "10.0.0.4", component="orchestrator"),
        pod("stranger", "voice", "10.0.0.5", app="stranger"),
        pod("monitor", "other", "10.0.0.6", app="prometheus"),
        {
            **pod("done", "voice", "10.0.0.7", component="orchestrator"),
            "status": {"phase": "Succeeded", "podIP": "10.0.0.7"},
        },
    ],
    "networkpolicies": [
        policy(
            "redis",
            "voice",
            {
                "podSelector": {"matchLabels": {"component": "redis"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "podSelector": {
                                    "matchExpressions": [
                                        {
                                            "key": "component",
                                            "operator": "In",
                                            "values": ["worker", "orchestrator"],
                                        }
                                    ]
                                }
                            }
                        ],
                        "ports": [{"port": "redis", "protocol": "TCP"}],
                    }
                ],
            },
        ),
        policy(
            "worker",
            "voice",
            {
                "podSelector": {"matchLabels": {"component": "worker"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"component": "orchestrator"}}}],
                        "ports": [{"port": "grpc"}],
                    },
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}],
                        "ports": [{"port": "metrics"}],
                    },
                    {"ports": [{"port": "missing"}]},  # a name the Pod does not have: nothing
                ],
            },
        ),
    ],
}


def test_isolated_pods_admit_what_their_policies_allow_and_drop_the_rest(
    netpol: ModuleType,
) -> None:
    rules = chains(netpol.render(STATE))
    main = rules.pop("postrouting")
    assert main[:3] == [
        "type filter hook postrouting priority srcnat - 5; policy accept;",
        "ct state established,related accept",
        "meta skuid 0 accept",
    ]
    # Only the Pods a policy selects are isolated, and only for ingress.
    assert main[3:] == ["ip daddr 10.0.0.2 jump in-10-0-0-2", "ip daddr 10.0.0.3 jump in-10-0-0-3"]
    # Redis: from the worker and the live orchestrator, on its named port; nothing else.
    assert rules["in-10-0-0-2"] == [
        "ip saddr { 10.0.0.3/32, 10.0.0.4/32 } tcp dport 6379 accept",
        "ip saddr 10.0.0.2 ip daddr 10.0.0.2 accept",
        "drop",
    ]
    # The worker: gRPC from the orchestrator; metrics from the Pods of namespaces labelled b.
    assert rules["in-10-0-0-3"] == [
        "ip saddr { 10.0.0.4/32 } tcp dport 50051 accept",
        "ip saddr { 10.0.0.6/32 } tcp dport 9100 accept",
        "ip saddr 10.0.0.3 ip daddr 10.0.0.3 accept",
        "drop",
    ]


def test_egress_ip_blocks_and_open_rules(netpol: ModuleType) -> None:
    state = {
        **STATE,
        "networkpolicies": [
            policy(
                "out",
                "voice",
                {
                    "podSelector": {"matchLabels": {"app": "stranger"}},
                    "egress": [
                        {
                            "to": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.0/25"]}}],
                            "ports": [
                                {"port": 53, "protocol": "UDP"},
                                {"port": 8000, "endPort": 8080},
                            ],
                        }
                    ],
                },
            ),
            # An empty rule admits everything; no rules at all admit nothing.
            policy(
                "open",
                "voice",
                {"podSelector": {"matchLabels": {"component": "orchestrator"}}, "ingress": [{}]},
            ),
            policy("closed", "other", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        ],
    }
    rules = chains(netpol.render(state))
    assert rules["out-10-0-0-5"][:2] == [
        "ip daddr { 10.0.0.128/25 } udp dport 53 accept",
        "ip daddr { 10.0.0.128/25 } tcp dport 8000-8080 accept",
    ]
    assert rules["in-10-0-0-4"][0] == "accept"
    assert rules["in-10-0-0-6"] == ["ip saddr 10.0.0.6 ip daddr 10.0.0.6 accept", "drop"]
    # Without policyTypes, a policy isolates for ingress always (and for egress when it has
    # egress rules): the stranger now takes no connection at all.
    assert rules["in-10-0-0-5"] == ["ip saddr 10.0.0.5 ip daddr 10.0.0.5 accept", "drop"]
