"""Read OpenTelemetry metric data in tests: points by instrument name and attributes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

Key = tuple[tuple[str, Any], ...]


def points(data: MetricsData | None, name: str | None = None) -> Iterator[tuple[str, Any]]:
    """(instrument name, data point) for every point in the data, or for one instrument."""
    if data is None:
        return
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if name is None or metric.name == name:
                    for point in metric.data.data_points:
                        yield metric.name, point


def sums(data: MetricsData | None, name: str) -> dict[Key, float]:
    """Values of one counter keyed by its sorted attribute items (zeros left out)."""
    out: dict[Key, float] = {}
    for _, point in points(data, name):
        if point.value:
            key = tuple(sorted(point.attributes.items()))
            out[key] = out.get(key, 0) + point.value
    return out


def key(**attributes: Any) -> Key:
    return tuple(sorted(attributes.items()))
