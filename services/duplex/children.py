"""Child processes that die with the process that started them, even when it is SIGKILLed."""

from __future__ import annotations

import collections
import shutil
import threading
from typing import IO


def dying_with_parent(argv: list[str], signal: str = "TERM") -> list[str]:
    """argv, run so that the child gets `signal` when its parent dies, however it dies.

    `setpriv --pdeathsig` asks the kernel for the signal, then execs the program. Not a
    `preexec_fn`: that forces a real fork() of a multi-threaded process, and gRPC's fork
    handlers can abort the child before it ever reaches exec. The kernel sends the signal
    when the thread that started the child exits: start children from a thread that lives
    as long as they should (the main thread).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", signal, "--", *argv] if setpriv else argv


def drain(stream: IO[str], keep: int = 200) -> collections.deque[str]:
    """Read a child's output to its end on a thread of its own, keeping the last `keep` lines.

    A child whose pipe nobody reads blocks on its next write once the pipe's buffer (64 KiB)
    is full: its logging, and with it its event loop, would stop. Call this once the parent has
    read what it waited for (an address, a "ready" line); the stream is closed at its end.
    """
    lines: collections.deque[str] = collections.deque(maxlen=keep)

    def read() -> None:
        with stream:  # closed at the child's end of output
            for line in stream:
                lines.append(line)

    threading.Thread(target=read, name="child-output", daemon=True).start()
    return lines
