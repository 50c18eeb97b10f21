"""A throwaway redis-server on a free loopback port, without persistence.

For tests and benchmarks that need the real Redis that workers register in (Debian's
`redis-server`); a deployment points at its own Redis instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from duplex.ports import free_ports


class RedisServer:
    """A real redis-server on a free loopback port, without persistence."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_ports(1)[0]  # a given port: a restart of the same server
        self._dir = tempfile.TemporaryDirectory()
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._dir.cleanup()
