"""A local LiveKit server process on loopback, for tests and a demo without a cluster.

`livekit-server --dev` with our own API key, every port chosen free (signalling over HTTP/WS,
ICE over TCP and one UDP port), bound to 127.0.0.1 and advertising 127.0.0.1 so a browser or
SDK on this machine can reach it with no STUN server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from duplex.children import dying_with_parent
from duplex.ports import free_ports


def find_binary() -> Path | None:
    """`livekit-server` on PATH, else one built by tools/build-test-binaries.sh."""
    found = shutil.which("livekit-server")
    if found:
        return Path(found)
    cache = Path(os.environ.get("DUPLEX_CACHE") or Path.home() / ".cache" / "duplex") / "bin"
    built = sorted(cache.glob("livekit-server-v*"))
    return built[-1] if built else None


class LiveKitServer:
    """Start with `LiveKitServer(binary)`; `.url`, `.api_key`, `.api_secret`; `.stop()`."""

    def __init__(self, binary: Path, *, start_timeout: float = 30.0) -> None:
        self.api_key = "duplex"
        # LiveKit wants secrets of at least 32 characters.
        self.api_secret = secrets.token_hex(24)
        self.port, tcp_port, udp_port = free_ports(3)
        self._dir = tempfile.TemporaryDirectory(prefix="livekit-")
        config = {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"],
            "rtc": {
                "tcp_port": tcp_port,
                "udp_port": udp_port,
                "use_external_ip": False,
                "node_ip": "127.0.0.1",
            },
            "keys": {self.api_key: self.api_secret},
            "logging": {"level": "info"},
        }
        config_path = Path(self._dir.name) / "livekit.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = Path(self._dir.name) / "livekit.log"
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                dying_with_parent([str(binary), "--dev", "--config", str(config_path)], "KILL"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + start_timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"livekit-server did not start:\n{tail}")
            time.sleep(0.05)
        # The server has read its config and holds its log open: nothing of it need stay on
        # disk, so a parent killed without cleanup leaves no folder behind.
        self._dir.cleanup()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=0.5) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, while it starts (afterwards the file is gone)."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._dir.cleanup()
