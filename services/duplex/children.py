"""Child processes that die with the process that started them, even when it is SIGKILLed."""

from __future__ import annotations

import shutil


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
