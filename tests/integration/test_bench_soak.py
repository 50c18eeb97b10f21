"""`duplex bench soak` end to end, briefly: it talks, counts and reports what it saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_short_soak_reports_frames_replies_and_memory(tmp_path: Path) -> None:
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "duplex.cli", "bench", "soak"),
            *("--sessions", "2", "--minutes", "0.5"),
            *("--json", str(out), "--plot", str(plot)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    minutes = json.loads(out.read_text())["soak"]
    first = minutes["1"]
    assert first["frames"] > 500, first  # two conversations' replies for half a minute
    assert (first["lost"], first["errors"]) == (0, []), first
    assert first["v2v"]["n"] >= 2 and first["v2v"]["failures"] == 0, first
    assert first["rss_mib"] and first["rss_mib"] > 50, first
    assert "lost" in result.stdout and "RSS" in result.stdout, result.stdout
    assert plot.stat().st_size > 10_000
