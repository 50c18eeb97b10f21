"""Flags more than one subcommand takes, as parent parsers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

PLOT_HELP = "also draw the distributions into this picture, e.g. bench.png (pip install matplotlib)"


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def config_file(what: str = "YAML config file") -> argparse.ArgumentParser:
    parser = _parent()
    parser.add_argument("--config", type=Path, help=what)
    return parser


def listen(
    port_help: str, *, host: str | None = None, port: int | None = None
) -> argparse.ArgumentParser:
    """Where a server listens; unset flags leave it to the config file and environment."""
    parser = _parent()
    parser.add_argument("--host", default=host, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=port_help)
    return parser


def access() -> argparse.ArgumentParser:
    """Who a conversation server lets in."""
    parser = _parent()
    parser.add_argument(
        "--api-key",
        action="append",
        help="require this key (Bearer) or a session token for /ws and /api/* (repeatable; "
        "or DUPLEX_API_KEYS)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="serve a non-loopback address without keys"
    )
    parser.add_argument(
        "--allow-origin", action="append", help="a browser origin allowed besides our own"
    )
    return parser


def livekit_credentials() -> argparse.ArgumentParser:
    parser = _parent()
    parser.add_argument("--livekit-key", help="LiveKit API key (or LIVEKIT_API_KEY)")
    parser.add_argument("--livekit-secret", help="LiveKit API secret (or LIVEKIT_API_SECRET)")
    return parser


def client(url: str, key_help: str = "its API key (or DUPLEX_API_KEY)") -> argparse.ArgumentParser:
    """A client of a running orchestrator."""
    parser = _parent()
    parser.add_argument("--url", default=url, help="the orchestrator")
    parser.add_argument("--api-key", help=key_help)
    return parser


def results() -> argparse.ArgumentParser:
    """Where a bench writes its figures besides the terminal."""
    parser = _parent()
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--plot", type=Path, help=PLOT_HELP)
    return parser


def split(values: Sequence[str] | None) -> list[str] | None:
    """Repeatable, comma-separated values as one list (None when none were given)."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]
