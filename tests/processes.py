"""`duplex worker` and `duplex orchestrator` as real processes, for tests that need them so.

Each runs the installed CLI with its own environment and config, is ready once it prints its
address, and is stopped (by its PID) when the test is done. `rss_mib` reads its memory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

import yaml


class ServiceProcess:
    def __init__(
        self, args: list[str], ready: str, env: dict[str, str] | None = None, timeout: float = 90
    ) -> None:
        self.output: deque[str] = deque(maxlen=400)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duplex.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._ready = threading.Event()
        self.match: re.Match[str] | None = None
        self._pattern = re.compile(ready)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or self.match is None:
            self.stop()
            raise RuntimeError(f"{args[0]} did not start:\n" + "".join(self.output))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if self.match is None and (m := self._pattern.search(line)):
                self.match = m
                self._ready.set()
        self._ready.set()  # exited

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kib / 1024

    def log(self) -> str:
        return "".join(self.output)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def worker(name: str, model: str = "pico-en", **settings: Any) -> ServiceProcess:
    """`duplex worker` on a free port; settings become DUPLEX_<NAME> variables."""
    env = {f"DUPLEX_{k.upper()}": str(v) for k, v in settings.items()}
    args = ["worker", "--port", "0", "--name", name, "--default-model", model]
    return ServiceProcess(args, r"listening on (\S+)", env)


def orchestrator(tmp: Path, workers: list[str], **config: Any) -> ServiceProcess:
    """`duplex orchestrator` on a free port with a YAML config of `config`."""
    path = tmp / f"orchestrator-{len(list(tmp.glob('orchestrator-*')))}.yaml"
    path.write_text(yaml.safe_dump({"port": 0, "workers": workers, **config}))
    return ServiceProcess(["orchestrator", "--config", str(path)], r"on http://(\S+?)/")


def address(process: ServiceProcess) -> str:
    assert process.match is not None
    return process.match.group(1)
