"""Free loopback ports for the local servers that tests, benchmarks and the demo start."""

from __future__ import annotations

import socket


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all held open together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()
