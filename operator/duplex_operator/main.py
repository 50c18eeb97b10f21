"""`duplex operator`: kopf watches the resources, the reconciler acts on them.

kopf supplies the watch streams (with their reconnects and resourceVersion bookkeeping), the
liveness probe and logging; each event only wakes the one reconcile loop, which owns every
change. Both run in one TaskGroup and stop together on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import kopf

from duplex.kube import KubeClient, KubeConfig
from duplex_operator.config import OperatorConfig
from duplex_operator.reconciler import Reconciler
from duplex_operator.resources import COMPONENT_LABEL, GROUP, TTSMODELS, VERSION, VOICESESSIONS

log = logging.getLogger(__name__)


def build_registry(reconciler: Reconciler, kube: KubeConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The same credentials our client uses, so kopf and the reconciler see one cluster.
        return kopf.ConnectionInfo(
            server=kube.server,
            ca_path=str(kube.ca_file) if kube.ca_file else None,
            insecure=kube.insecure,
            scheme="Bearer" if kube.bearer() else None,
            token=kube.bearer(),
            certificate_path=str(kube.cert_file) if kube.cert_file else None,
            private_key_path=str(kube.key_file) if kube.key_file else None,
            default_namespace=reconciler.config.namespace,
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's own events are for handler failures; ours are posted by the reconciler.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        # No cluster-wide RBAC: the namespace is explicit and the CRDs exist before we start.
        settings.scanning.disabled = True

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


async def run(config: OperatorConfig, kubeconfig: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM (or until kopf stops)."""
    kube = KubeConfig.load(kubeconfig)
    client = KubeClient(kube)
    reconciler = Reconciler(config, client)
    registry = build_registry(reconciler, kube)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "duplex operator managing namespace %s (pools: %s)",
        config.namespace,
        ", ".join(p.name for p in config.pools),
    )
    try:
        async with asyncio.TaskGroup() as group:
            reconcile = group.create_task(reconciler.run(), name="reconcile")
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
        await reconciler.aclose()
        await client.aclose()
