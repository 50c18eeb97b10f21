"""Clients of a running orchestrator: `duplex talk`, `duplex check`, `duplex page-url`."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from duplex.commands import Cli, flags
from duplex.errors import DuplexError


def register(cli: Cli) -> None:
    talk = cli.sub.add_parser(
        "talk",
        help="talk to an orchestrator from the terminal",
        parents=[
            flags.client(
                "ws://127.0.0.1:8080/ws",
                "the orchestrator's API key or a session token (or DUPLEX_API_KEY)",
            )
        ],
    )
    talk.add_argument("--input", type=Path, help="speak this WAV instead of the microphone")
    talk.add_argument("--output", type=Path, help="write the reply audio to this WAV")
    talk.add_argument("--model", help="TTS model")
    talk.add_argument("--voice", help="TTS voice")
    talk.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a reply")
    talk.set_defaults(func=run_talk)

    check = cli.sub.add_parser(
        "check",
        help="check an orchestrator: its models, and one typed turn spoken back",
        parents=[flags.client("http://127.0.0.1:8080")],
    )
    check.add_argument("--model", help="speak with this model (default: a resident one)")
    check.add_argument("--text", help="what to type (default: a short greeting)")
    check.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole check")
    check.set_defaults(func=run_check)

    page = cli.sub.add_parser(
        "page-url",
        help="a link to the page with a fresh session token (servers with API keys)",
        parents=[flags.client("http://127.0.0.1:8080")],
    )
    page.set_defaults(func=run_page_url)


def run_talk(opts: argparse.Namespace) -> int:
    from duplex.clients.talk import run

    api_key = opts.api_key or os.environ.get("DUPLEX_API_KEY")
    return run(opts.url, opts.input, opts.output, opts.model, opts.voice, opts.timeout, api_key)


def run_check(opts: argparse.Namespace) -> int:
    from duplex.clients.check import QUESTION, run

    # The Secret's api-keys may list several keys, comma-separated: any one of them will do.
    key = opts.api_key or os.environ.get("DUPLEX_API_KEY") or ""
    api_key = key.split(",")[0].strip() or None
    return run(opts.url, api_key, opts.model, opts.text or QUESTION, opts.timeout)


def run_page_url(opts: argparse.Namespace) -> int:
    api_key = opts.api_key or os.environ.get("DUPLEX_API_KEY")
    if not api_key:
        raise DuplexError("give the orchestrator's API key: --api-key KEY (or DUPLEX_API_KEY)")
    print(asyncio.run(_page_url(opts.url, api_key)))
    return 0


async def _page_url(url: str, api_key: str) -> str:
    import aiohttp

    base = url.rstrip("/")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/api/session", headers={"Authorization": f"Bearer {api_key}"}) as resp,
    ):
        body = await resp.json(content_type=None)
        if resp.status != 200:
            message = (body or {}).get("error", {}).get("message", f"HTTP {resp.status}")
            raise DuplexError(f"{base} gave no session token: {message}")
        return f"{base}/?token={body['token']}"
