"""What the dashboard's and the alerts' PromQL reads, and what the services export.

Not a PromQL parser: metric names are the `duplex_*` identifiers of an expression (every metric
of ours has the prefix; `up` is Prometheus's own), and grouping labels those of its
`by (...)` clauses. promtool parses the alert rules for real (tests/integration/test_monitoring.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Series names a family of each type is exported as (prometheus_client's text format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
# Labels Prometheus gives a target scraped through the chart's PodMonitor (the Pod's component
# from its podTargetLabels), besides those in the samples.
TARGET_LABELS = frozenset(
    {"namespace", "pod", "container", "endpoint", "job", "instance", "app_kubernetes_io_component"}
)

_METRIC = re.compile(r"\b(duplex_[a-z0-9_]+)\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def exported(exposition: str) -> dict[str, set[str]]:
    """Every series name the exposition's families can have, with the labels seen on them."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        labels = {label for sample in family.samples for label in sample.labels}
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set()).update(labels)
    return names


def metrics_of(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip() for group in _BY.findall(expr) for label in group.split(",") if label.strip()
    }


def legend_labels(legend: str) -> set[str]:
    return set(_LEGEND.findall(legend))


def dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query of every panel, rows' panels included."""

    def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target


def unknown_references(expr: str, known: dict[str, set[str]]) -> list[str]:
    """What `expr` reads that `known` (name → labels) does not have: metrics, then labels."""
    problems = [f"no metric {name}" for name in sorted(metrics_of(expr) - set(known))]
    labelled = [known[name] for name in metrics_of(expr) if known.get(name)]
    if labelled:  # families with samples: their labels are known
        available = set().union(*labelled) | TARGET_LABELS | {"le"}
        problems += [f"no label {label}" for label in sorted(grouping_labels(expr) - available)]
    return problems
