"""The transports the orchestrator serves.

A new transport is a module with a `transport(services)` factory that returns a
`duplex.orchestrator.transport.Transport`, whose clients each get an `Output` and a
`Conversation`; and one line here, naming the module and when it is on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.session import Services
from duplex.orchestrator.transport import Transport

TRANSPORTS: tuple[tuple[str, Callable[[OrchestratorConfig], bool]], ...] = (
    ("duplex.orchestrator.websocket", lambda config: True),
    ("duplex.orchestrator.livekit_agent", lambda c: c.livekit is not None and c.livekit.agent),
)


def configured(services: Services) -> list[Transport]:
    """The transports `services.config` turns on; a module is imported only when it is on, so
    that a transport's SDK is needed only by those who use it."""
    out: list[Transport] = []
    for module, enabled in TRANSPORTS:
        if enabled(services.config):
            factory = importlib.import_module(module).transport
            out.append(factory(services))
    return out
