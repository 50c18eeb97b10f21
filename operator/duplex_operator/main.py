"""`duplex operator`: kopf watches the resources, the elected leader reconciles them.

kopf supplies the watch streams (with their reconnects and resourceVersion bookkeeping), the
liveness probe and logging; it logs in with the credentials of our one Kubernetes client
(duplex.kube), so every kubeconfig that works for the client works for kopf's watches too, and
a renewed token reaches both. Each watch event only wakes the reconcile loop, which owns every
change and runs only while this replica holds the Lease (duplex_operator.leader): any number of
replicas may run, one acts. kopf's event handlers write nothing, so standbys write nothing
either. Everything runs in one TaskGroup and stops together on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from duplex import __version__
from duplex.kube import KubeClient
from duplex.modelset import COMPONENT_LABEL
from duplex_operator.config import OperatorConfig
from duplex_operator.leader import LeaderElector
from duplex_operator.metrics import MetricsServer, OperatorMetrics
from duplex_operator.reconciler import LeadershipLost, Reconciler
from duplex_operator.resources import GROUP, TTSMODELS, VERSION, VOICESESSIONS

log = logging.getLogger(__name__)


def build_registry(
    reconciler: Reconciler, client: KubeClient, elector: LeaderElector | None
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        # Called again by kopf on a 401 and when `expiration` passes: fresh credentials then.
        # A session of our making (kopf closes it): its TLS is the client's, server name too.
        creds = await client.credentials()
        headers = {"Authorization": creds.authorization} if creds.authorization else {}
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=creds.ssl_context()),
            headers=headers,
            proxy=creds.proxy,
        )
        return kopf.AiohttpSession(
            server=creds.server,
            default_namespace=reconciler.config.namespace,
            expiration=creds.expires,
            aiohttp_session=session,
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's own events are for handler failures; ours are posted by the reconciler.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        # No cluster-wide RBAC: the namespace is explicit and the CRDs exist before we start.
        settings.scanning.disabled = True

    @kopf.on.probe(registry=registry, id="leader")
    def leader(**_: Any) -> bool:
        return elector is None or elector.leading()

    def wake(**_: Any) -> None:
        reconciler.wake()

    kopf.on.event(GROUP, VERSION, TTSMODELS, registry=registry, id="wake")(wake)
    kopf.on.event(GROUP, VERSION, VOICESESSIONS, registry=registry, id="wake")(wake)
    kopf.on.event(
        "",
        "v1",
        "pods",
        registry=registry,
        id="wake",
        labels={"app.kubernetes.io/name": "duplex", COMPONENT_LABEL: "worker"},
    )(wake)
    return registry


def identity() -> str:
    """This replica in the Lease: its Pod's name, made unique per process."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


async def run(config: OperatorConfig, kubeconfig: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM (or until kopf stops)."""
    me = identity()
    client = KubeClient.load(kubeconfig, user_agent=f"duplex-operator/{__version__} ({me})")
    elector = (
        LeaderElector(client, config.namespace, me, config.leader_election)
        if config.leader_election.enabled
        else None
    )
    metrics = OperatorMetrics()
    metrics.follow_leadership(elector.leading if elector is not None else lambda: True)
    reconciler = Reconciler(
        config,
        client,
        instance=me,
        may_write=elector.leading if elector is not None else lambda: True,
        metrics=metrics,
    )
    registry = build_registry(reconciler, client, elector)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "duplex operator %s managing namespace %s (pools: %s)",
        me,
        config.namespace,
        ", ".join(p.name for p in config.pools),
    )

    async def term() -> None:
        # A new term starts from the cluster alone: nothing learnt in an earlier one is kept.
        reconciler.restart()
        reconciler.wake()
        try:
            await reconciler.run()
        except* LeadershipLost:
            log.warning("leadership lost in the middle of a pass; its remaining writes dropped")

    server = (
        MetricsServer(metrics, config.metrics_host, config.metrics_port)
        if config.metrics_port is not None
        else None
    )
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, server.port)
    try:
        async with asyncio.TaskGroup() as group:
            reconcile = group.create_task(
                elector.run(term) if elector is not None else reconciler.run(), name="reconcile"
            )
            watch = group.create_task(
                kopf.operator(
                    registry=registry,
                    namespaces=[config.namespace],
                    standalone=True,
                    stop_flag=stop,
                    liveness_endpoint=config.liveness_endpoint,
                ),
                name="kopf",
            )
            # kopf returns once it has stopped (on the stop flag); the reconciler goes with it.
            await asyncio.wait([watch], return_when=asyncio.FIRST_COMPLETED)
            reconcile.cancel()
    finally:
        if server is not None:
            await asyncio.to_thread(server.close)
        await reconciler.aclose()
        await client.aclose()
