"""The `duplex` subcommands: one module each, plus the flags they share.

Each module has `register(cli)`, which adds its parsers to `cli.sub` (or to `cli.bench`) with
the shared flag groups of `duplex.commands.flags` as parents, and sets a handler that wires the
parts together. Packages outside `duplex` (the operator) add their commands through the
`duplex.commands` entry point group.
"""

from __future__ import annotations

import argparse
from functools import cached_property


class Cli:
    """Where subcommands register: `sub` for `duplex NAME`, `bench` for `duplex bench NAME`."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.sub = sub

    @cached_property
    def bench(self) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        # Made by its first user, so that `duplex --help` lists it in the order registered.
        parser = self.sub.add_parser("bench", help="measure latency and timing")
        return parser.add_subparsers(dest="bench", required=True)


# In the order `duplex --help` lists them.
COMMANDS = (
    "duplex.commands.worker",
    "duplex.commands.say",
    "duplex.commands.orchestrator",
    "duplex.commands.demo",
    "duplex.commands.clients",
    "duplex.commands.bench",
)
