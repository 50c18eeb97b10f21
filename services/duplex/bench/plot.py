"""A bench's figures as a picture: each figure's runs as a box over its points, one panel per
unit (latencies in ms, ratios, counts), failed runs counted in the label.

matplotlib is the `plot` extra, imported only when `--plot FILE.png` asks for a picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from duplex.bench.stats import Series
from duplex.errors import DuplexError

_AXIS = {"ms": "milliseconds", "s": "seconds", "x": "ratio", "%": "percent", "n": "count"}
_SCALE = {"ms": 1000.0, "%": 100.0}


def require_matplotlib() -> None:
    """Fail before a bench runs for minutes, not after, when the picture cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise DuplexError(
            f"--plot needs matplotlib: pip install 'duplex-voice[plot]' ({exc})"
        ) from None


def plot_series(path: Path, title: str, series: Sequence[Series]) -> None:
    """Write the distributions of `series` to `path` (PNG, or any format matplotlib knows by
    the file's suffix)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    if not series:
        raise DuplexError("nothing to plot: the bench measured no figure")
    units = list(dict.fromkeys(s.unit for s in series))
    rows = [[s for s in series if s.unit == unit] for unit in units]
    heights = [max(1.2, 0.45 * len(row) + 0.8) for row in rows]
    fig, axes = plt.subplots(
        len(rows),
        1,
        figsize=(10, sum(heights) + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    rng = np.random.default_rng(0)  # the same jitter every time: pictures diff cleanly
    for ax, unit, row in zip(axes[:, 0], units, rows, strict=True):
        scale = _SCALE.get(unit, 1.0)
        data = [np.asarray(s.values, dtype=float) * scale for s in row]
        positions = np.arange(len(row))[::-1]
        filled = [(d, p) for d, p in zip(data, positions, strict=True) if d.size]
        if filled:
            ax.boxplot(
                [d for d, _ in filled],
                positions=[p for _, p in filled],
                orientation="horizontal",
                widths=0.6,
                showfliers=False,
                medianprops={"color": "black"},
            )
        for values, pos in filled:
            jitter = rng.uniform(-0.18, 0.18, values.size)
            ax.scatter(values, pos + jitter, s=9, alpha=0.55, color="tab:blue", zorder=3)
        for s, pos in zip(row, positions, strict=True):
            if not s.values:
                why = ", ".join(dict.fromkeys(s.failures)) or "no runs"
                ax.annotate(
                    f"no value: {why}",
                    (0.01, pos),
                    xycoords=("axes fraction", "data"),
                    va="center",
                    color="tab:red",
                )
        ax.set_yticks(positions, [_label(s) for s in row])
        ax.set_ylim(-0.7, len(row) - 0.3)
        ax.set_xlabel(_AXIS.get(unit, unit))
        ax.grid(axis="x", alpha=0.3)
        if filled and min(float(d.min()) for d, _ in filled) >= 0:
            ax.set_xlim(left=0)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(s: Series) -> str:
    failed = f", {len(s.failures)} failed" if s.failures else ""
    return f"{s.name}\n(n={s.n}{failed})"
