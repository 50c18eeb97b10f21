"""Where the orchestrator's LiveKit credentials come from: flags, then its config file, then
LiveKit's usual environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplex.cli import build_parser
from duplex.commands.orchestrator import config_from as _orchestrator_config

FILE_SECRET = "f" * 48
ENV_SECRET = "e" * 48
FLAG_SECRET = "g" * 48


def config(tmp_path: Path, *flags: str) -> object:
    path = tmp_path / "o.yaml"
    path.write_text(
        f"livekit: {{url: 'ws://127.0.0.1:7880', api_key: filekey, api_secret: {FILE_SECRET}}}\n"
    )
    opts = build_parser().parse_args(["orchestrator", "--config", str(path), *flags])
    return _orchestrator_config(opts)


def test_the_config_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # E.g. exported for another LiveKit server, or set by a library in the same process.
    monkeypatch.setenv("LIVEKIT_API_KEY", "envkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", ENV_SECRET)
    livekit = config(tmp_path).livekit  # type: ignore[attr-defined]
    assert (livekit.api_key, livekit.api_secret) == ("filekey", FILE_SECRET)
    flagged = config(tmp_path, "--livekit-secret", FLAG_SECRET).livekit  # type: ignore[attr-defined]
    assert flagged.api_secret == FLAG_SECRET


def test_the_environment_fills_what_flags_and_file_leave_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEKIT_API_KEY", "envkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", ENV_SECRET)
    opts = build_parser().parse_args(["orchestrator", "--livekit-url", "ws://127.0.0.1:7880"])
    livekit = _orchestrator_config(opts).livekit  # type: ignore[attr-defined]
    assert (livekit.api_key, livekit.api_secret) == ("envkey", ENV_SECRET)
