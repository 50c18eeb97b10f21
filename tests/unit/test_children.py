"""A child's output read to its end once the parent has what it waited for."""

from __future__ import annotations

import subprocess
import sys
import time

from duplex.children import drain

CHATTY = "print('ready', flush=True)\nfor i in range(20000): print(f'log line {i:05d}', flush=True)"
LAST = ["log line 19997\n", "log line 19998\n", "log line 19999\n"]


def test_a_drained_child_is_never_blocked_by_its_own_output() -> None:
    # 20,000 lines after "ready" are about 300 KiB: far beyond a pipe's buffer. Unread, the
    # child would block on a write and never exit.
    proc = subprocess.Popen(
        [sys.executable, "-c", CHATTY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    lines = drain(proc.stdout, keep=3)
    assert proc.wait(timeout=30) == 0
    # What it said last is kept, for a message when a child misbehaves.
    deadline = time.monotonic() + 10
    while list(lines) != LAST and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(lines) == LAST
