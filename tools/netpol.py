#!/usr/bin/env python3
"""NetworkPolicies for the local cluster, whose bridge network plugin does not enforce them.

The policy engines clusters use (Calico, Cilium, kube-network-policies) need kernel parts this
machine cannot load (eBPF programs, or nftables' queue expression), so `tools/cluster` runs
this instead, in the cluster's network namespace: it watches Namespaces, Pods and
NetworkPolicies through the API server and keeps one nftables table that admits, for every Pod
a policy isolates, only what the policies allow, as the NetworkPolicy API defines it
(networking.k8s.io/v1: ingress and egress; podSelector, namespaceSelector and ipBlock peers;
numeric and named ports, port ranges). Connections are judged by their first packet, before
kube-proxy masquerades Service traffic; the node's own root processes (the kubelet's probes,
the tests) are let through, as node-local traffic is on real clusters.

Standard library only. Credentials as a Pod has them: KUBERNETES_SERVICE_HOST/PORT and
/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}.

    python3 tools/netpol.py            run until killed
    python3 tools/netpol.py --once     print the nftables script for the cluster as it is
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TABLE = "duplex-netpol"
ACCOUNT = "/run/secrets/kubernetes.io/serviceaccount"
KINDS = {
    "namespaces": "/api/v1/namespaces",
    "pods": "/api/v1/pods",
    "networkpolicies": "/apis/networking.k8s.io/v1/networkpolicies",
}

Obj = dict[str, Any]


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} netpol: {message}", file=sys.stderr, flush=True)


# -- the API server ---------------------------------------------------------------------------


class Api:
    def __init__(self) -> None:
        self.host = os.environ["KUBERNETES_SERVICE_HOST"]
        self.port = int(os.environ["KUBERNETES_SERVICE_PORT"])
        self.tls = ssl.create_default_context(cafile=f"{ACCOUNT}/ca.crt")

    def _connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.tls, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        token = Path(ACCOUNT, "token").read_text().strip()  # re-read: the token rotates
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def list(self, path: str) -> Obj:
        conn = self._connect(30)
        try:
            conn.request("GET", path, headers=self._headers())
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise OSError(f"GET {path}: {response.status} {body[:200]!r}")
            result: Obj = json.loads(body)
            return result
        finally:
            conn.close()

    def watch(self, path: str, version: str) -> Iterator[Obj]:
        conn = self._connect(None)
        try:
            query = f"?watch=1&resourceVersion={version}&allowWatchBookmarks=true"
            conn.request("GET", path + query, headers=self._headers())
            response = conn.getresponse()
            if response.status != 200:
                raise OSError(f"watch {path}: {response.status}")
            while line := response.readline():
                yield json.loads(line)
        finally:
            conn.close()


class State:
    """What the watches have seen, by kind and namespace/name; `changed` wakes the writer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self.synced: set[str] = set()
        self.changed = threading.Event()

    def follow(self, api: Api, kind: str) -> None:
        path = KINDS[kind]
        while True:
            try:
                listed = api.list(path)
                with self.lock:
                    self.objects[kind] = {key(o): o for o in listed["items"]}
                    self.synced.add(kind)
                self.changed.set()
                version = listed["metadata"]["resourceVersion"]
                for event in api.watch(path, version):
                    kind_of = event.get("type")
                    obj = event.get("object") or {}
                    if kind_of == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if kind_of == "BOOKMARK":
                        continue
                    with self.lock:
                        if kind_of == "DELETED":
                            self.objects[kind].pop(key(obj), None)
                        else:
                            self.objects[kind][key(obj)] = obj
                    self.changed.set()
            except (OSError, ValueError, KeyError) as exc:
                log(f"watching {kind}: {exc}; again in 1 s")
                time.sleep(1)

    def snapshot(self) -> dict[str, list[Obj]] | None:
        with self.lock:
            if self.synced != set(KINDS):
                return None
            return {kind: list(objs.values()) for kind, objs in self.objects.items()}


def key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


# -- the policies -----------------------------------------------------------------------------


def matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions; an empty one selects everything."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expression in selector.get("matchExpressions") or []:
        k, op, values = expression["key"], expression["operator"], expression.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and k in labels and labels[k] in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def pod_ip(pod: Obj) -> str | None:
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed") or pod["spec"].get("hostNetwork"):
        return None
    ip = status.get("podIP")
    return ip if ip and ":" not in ip else None  # the cluster is IPv4 only


def named_ports(pod: Obj) -> dict[str, tuple[str, int]]:
    ports = {}
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name"):
                ports[port["name"]] = (port.get("protocol", "TCP"), port["containerPort"])
    return ports


def peers_of(
    rule_peers: list[Obj] | None, namespace: str, pods: list[Obj], namespaces: dict[str, Obj]
) -> list[str] | None:
    """Addresses (CIDRs) the peers of a rule name; None: any address (no peers given)."""
    if not rule_peers:
        return None
    out: list[str] = []
    for peer in rule_peers:
        if "ipBlock" in peer:
            block = ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
            if not isinstance(block, ipaddress.IPv4Network):
                continue  # the cluster is IPv4 only
            parts = [block]
            for excepted in peer["ipBlock"].get("except") or []:
                ex = ipaddress.ip_network(excepted, strict=False)
                if isinstance(ex, ipaddress.IPv4Network):
                    parts = [q for p in parts for q in (_without(p, ex))]
            out += [str(p) for p in parts]
            continue
        pod_selector = peer.get("podSelector")
        ns_selector = peer.get("namespaceSelector")
        for pod in pods:
            ns = pod["metadata"]["namespace"]
            if ns_selector is None:
                if ns != namespace:
                    continue
            else:
                labels = (namespaces.get(ns, {}).get("metadata") or {}).get("labels") or {}
                if not matches(ns_selector, labels):
                    continue
            if pod_selector is not None and not matches(
                pod_selector, pod["metadata"].get("labels") or {}
            ):
                continue
            if (ip := pod_ip(pod)) is not None:
                out.append(f"{ip}/32")
    return out


def _without(
    block: ipaddress.IPv4Network, ex: ipaddress.IPv4Network
) -> list[ipaddress.IPv4Network]:
    if ex.subnet_of(block):
        return list(block.address_exclude(ex))
    return [] if block.subnet_of(ex) else [block]


def ports_of(rule_ports: list[Obj] | None, pod: Obj | None) -> list[tuple[str, str]] | None:
    """(protocol, port or range) pairs a rule allows (named ports: `pod`'s); None: every port."""
    if not rule_ports:
        return None
    named = named_ports(pod) if pod is not None else {}
    out = []
    for port in rule_ports:
        protocol = port.get("protocol", "TCP")
        value = port.get("port")
        if value is None:
            out.append((protocol, ""))  # every port of that protocol
        elif isinstance(value, str) and not value.isdigit():
            if value in named and named[value][0] == protocol:
                out.append((protocol, str(named[value][1])))
            # a name the Pod does not have allows nothing on it
        elif port.get("endPort"):
            out.append((protocol, f"{value}-{port['endPort']}"))
        else:
            out.append((protocol, str(value)))
    return out


def render(state: dict[str, list[Obj]]) -> str:
    """The nftables script: per isolated Pod and direction, its allowed flows, then a drop."""
    namespaces = {n["metadata"]["name"]: n for n in state["namespaces"]}
    pods = [p for p in state["pods"] if pod_ip(p) is not None]
    policies = state["networkpolicies"]
    ingress: dict[str, list[str]] = {}  # pod IP -> rules (allowed flows into it)
    egress: dict[str, list[str]] = {}
    for policy in policies:
        ns, spec = policy["metadata"]["namespace"], policy["spec"]
        selected = [
            p
            for p in pods
            if p["metadata"]["namespace"] == ns
            and matches(spec.get("podSelector"), p["metadata"].get("labels") or {})
        ]
        types = spec.get("policyTypes") or (
            ["Ingress", "Egress"] if spec.get("egress") is not None else ["Ingress"]
        )
        for direction, rules, into, peer_key, other in (
            ("Ingress", spec.get("ingress"), ingress, "from", "saddr"),
            ("Egress", spec.get("egress"), egress, "to", "daddr"),
        ):
            if direction not in types:
                continue
            for pod in selected:  # isolated, whether or not a rule admits anything
                into.setdefault(str(pod_ip(pod)), [])
            for rule in rules or []:
                peers = peers_of(rule.get(peer_key), ns, pods, namespaces)
                if peers == []:
                    continue  # peers that match nothing allow nothing
                match = f"ip {other} {{ {', '.join(peers)} }} " if peers is not None else ""
                for pod in selected:
                    # A named port is the Pod's own on ingress; on egress it would name ports
                    # of each destination Pod, which this does not resolve (it allows nothing).
                    ports = ports_of(rule.get("ports"), pod if direction == "Ingress" else None)
                    allowed = into[str(pod_ip(pod))]
                    if ports is None:
                        allowed.append(f"{match}accept")
                    for protocol, port in ports or []:
                        proto = protocol.lower()
                        dport = f"{proto} dport {port} " if port else f"meta l4proto {proto} "
                        allowed.append(f"{match}{dport}accept")
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain postrouting {",
        # Before kube-proxy's masquerade (srcnat, 100): the Pods' own addresses are still there.
        "    type filter hook postrouting priority srcnat - 5; policy accept;",
        "    ct state established,related accept",
        "    meta skuid 0 accept",
    ]
    for ip in sorted(ingress):
        lines.append(f"    ip daddr {ip} jump in-{ip.replace('.', '-')}")
    for ip in sorted(egress):
        lines.append(f"    ip saddr {ip} jump out-{ip.replace('.', '-')}")
    lines.append("  }")
    for prefix, table in (("in", ingress), ("out", egress)):
        for ip, rules in sorted(table.items()):
            lines.append(f"  chain {prefix}-{ip.replace('.', '-')} {{")
            lines += [f"    {rule}" for rule in rules]
            # An isolated Pod talks to itself, whatever the policies.
            lines.append(f"    ip saddr {ip} ip daddr {ip} accept")
            lines.append("    drop")
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)


def main() -> int:
    api = Api()
    state = State()
    if sys.argv[1:] == ["--once"]:
        print(render({kind: api.list(path)["items"] for kind, path in KINDS.items()}), end="")
        return 0
    for kind in KINDS:
        threading.Thread(target=state.follow, args=(api, kind), daemon=True).start()
    applied = None
    while True:
        state.changed.wait()
        state.changed.clear()
        snapshot = state.snapshot()
        if snapshot is None:
            continue
        script = render(snapshot)
        if script != applied:
            try:
                apply(script)
            except subprocess.CalledProcessError as exc:
                log(f"nft refused the rules: {exc.stderr.strip()}")
                time.sleep(1)
                state.changed.set()
                continue
            applied = script
            isolated = script.count("  chain ") - 1
            log(f"rules for {isolated} isolated Pod directions applied")


if __name__ == "__main__":
    sys.exit(main())
