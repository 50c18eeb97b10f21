"""The `duplex` command: one entry point, one subcommand per role (see duplex.commands)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

import grpc

from duplex.commands import COMMANDS, Cli
from duplex.errors import DuplexError
from duplex.logs import FORMATS
from duplex.logs import configure as configure_logging

LOG_FORMAT_HELP = (
    "log lines as text (default) or json, with session and trace ids (or DUPLEX_LOG_FORMAT)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duplex", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=FORMATS, help=LOG_FORMAT_HELP)
    cli = Cli(parser.add_subparsers(dest="command", required=True))
    for name in COMMANDS:
        importlib.import_module(name).register(cli)
    for plugin in sorted(entry_points(group="duplex.commands"), key=lambda e: e.name):
        plugin.load()(cli)
    _everywhere(parser)
    return parser


def _everywhere(parser: argparse.ArgumentParser) -> None:
    """`--log-format` after any subcommand too (`duplex worker --log-format json`); there, it
    only overrides the top-level flag when given."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.add_argument(
                    "--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=LOG_FORMAT_HELP
                )
                _everywhere(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    log_format = opts.log_format or os.environ.get("DUPLEX_LOG_FORMAT") or "text"
    if log_format not in FORMATS:
        print(
            f"duplex: error: DUPLEX_LOG_FORMAT must be one of {', '.join(FORMATS)}", file=sys.stderr
        )
        return 2
    configure_logging(log_format, verbose=opts.verbose)
    # faster-whisper logs every utterance at INFO: too chatty for a live conversation.
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    # The LiveKit SDK logs every signalling connection at INFO.
    logging.getLogger("livekit").setLevel(logging.WARNING)
    try:
        code: int = opts.func(opts)
    except DuplexError as exc:
        print(f"duplex: error: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"duplex: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
