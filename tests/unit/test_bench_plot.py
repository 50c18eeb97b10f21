"""`--plot FILE.png`: a bench's figures drawn as distributions, one panel per unit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from duplex.bench.plot import plot_series
from duplex.bench.stats import Series
from duplex.errors import DuplexError


def figures() -> list[Series]:
    rng = np.random.default_rng(1)
    v2v = Series("voice-to-voice", values=list(rng.normal(0.45, 0.05, 40)))
    v2v.fail("no reply")
    barge = Series("barge-in", values=list(rng.normal(0.12, 0.02, 40)))
    rtf = Series("piper-joe: RTF", unit="x", values=list(rng.normal(0.2, 0.02, 20)))
    lost = Series("lost frames", unit="n")  # all runs failed: a label, no box
    lost.fail("the server went away")
    return [v2v, barge, rtf, lost]


def test_the_picture_has_a_panel_per_unit_and_every_figure(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "bench.png"
    plot_series(path, "duplex bench conversation", figures())
    pixels = image.imread(str(path))
    height, width = pixels.shape[:2]
    assert width == 1100  # 10 in at 110 dpi
    # Three panels of 2, 1 and 1 rows stack up taller than one panel would be.
    assert height > 500
    # Something was drawn: more than a blank canvas of one colour.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 50


def test_a_bench_that_measured_nothing_has_no_picture(tmp_path: Path) -> None:
    with pytest.raises(DuplexError, match="nothing to plot"):
        plot_series(tmp_path / "x.png", "empty", [])
    assert not (tmp_path / "x.png").exists()
