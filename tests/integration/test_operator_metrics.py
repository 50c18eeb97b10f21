"""The operator's /metrics tell whether it reconciles: a real `duplex operator` process against
a real kube-apiserver and Redis, scraped as Prometheus would."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from duplex.ports import free_ports
from duplex.testing.apiserver import KubeApiServer
from tests.conftest import RedisServer
from tests.kube_cluster import running_cluster


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_leader_reports_its_passes_and_when_the_last_one_ended(
    kube_apiserver: KubeApiServer, kube_namespace: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_ports(1)[0]
    async with running_cluster(
        kube_apiserver, kube_namespace, redis_server.url, tmp_path, metrics_port=port
    ) as cluster:
        await cluster.eventually(cluster.lease_holder, "a lease holder", 30)

        async def passes() -> dict[str, float] | None:
            try:
                metrics = await asyncio.to_thread(scrape, port)
            except OSError:
                return None  # not serving yet
            metrics["scraped at"] = time.time()
            ok = metrics.get("duplex_operator_reconcile_passes_total,result=ok", 0)
            return metrics if ok >= 3 and metrics["duplex_operator_leader"] == 1 else None

        metrics = await cluster.eventually(passes, "three reconcile passes", 30)
    # A pass runs every resync period (0.5 s here): the last one ended a moment ago.
    last = metrics["duplex_operator_last_reconcile_timestamp_seconds"]
    assert 0 <= metrics["scraped at"] - last < 3
    assert metrics["duplex_operator_reconcile_passes_total,result=failed"] == 0
    assert metrics["duplex_operator_reconcile_seconds_count"] >= 3
    assert metrics["duplex_operator_refused_writes_total"] == 0
