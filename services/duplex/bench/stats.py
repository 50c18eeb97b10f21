"""What every benchmark reports: each run a value or a failure, then n, failures and percentiles.

A run that did not see the event it measures is a failure with a reason, never a zero: a bench
that turns a missed event into a number cannot show that something broke.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0–100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Series:
    """The runs behind one figure: values of the runs that worked, reasons of those that did not."""

    name: str
    # How the table prints values: ms (from seconds), s, x (a plain ratio), %, n (a count).
    unit: str = "ms"
    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    def fail(self, reason: str) -> None:
        self.failures.append(reason)

    def extend(self, other: Series) -> None:
        self.values += other.values
        self.failures += other.failures

    @property
    def n(self) -> int:
        return len(self.values) + len(self.failures)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "n": self.n,
            "failures": len(self.failures),
            "p50": _finite(percentile(self.values, 50)),
            "p95": _finite(percentile(self.values, 95)),
            "max": max(self.values) if self.values else None,
            "why_failed": dict(Counter(self.failures)),
        }

    def row(self) -> list[str]:
        s = self.summary()
        return [
            self.name,
            self.unit,
            str(s["n"]),
            str(s["failures"]),
            *(fmt(s[k], self.unit) for k in ("p50", "p95", "max")),
        ]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "—"
    if unit == "ms":
        return f"{value * 1000:.1f}"
    if unit == "%":
        return f"{value * 100:.0f} %"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "n":
        return f"{value:.0f}"
    return f"{value:.2f}"


def series_table(series: Iterable[Series], title: str = "") -> str:
    """The printed table: one row per figure with n, failures, p50, p95 and max."""
    series = list(series)
    rows = [s.row() for s in series]
    head = table(["", "unit", "n", "failed", "p50", "p95", "max"], rows)
    note = "(failed runs are counted in n and left out of the percentiles)"
    return "\n".join(x for x in (title, head, note) if x)


def failure_lines(series: Iterable[Series]) -> list[str]:
    """One line per figure that had failures, with how many failed for what reason."""
    lines = []
    for s in series:
        if s.failures:
            reasons = ", ".join(f"{n} × {why}" for why, n in Counter(s.failures).most_common())
            lines.append(f"  {s.name}: {reasons}")
    return lines


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * 1000:.1f}"
