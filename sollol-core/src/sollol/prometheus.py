"""A small reader for the Prometheus text format, enough to read backends' `/metrics`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import attrs

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


@attrs.frozen
class Sample:
    """One sample line."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Every sample in an exposition; comments and malformed lines are skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        samples.append(Sample(match["name"], labels, value))
    return samples


def metric_sum(samples: Iterable[Sample], *names: str) -> float | None:
    """The sum over all label sets of the first of `names` present, or None if none is."""
    samples = list(samples)
    for name in names:
        values = [s.value for s in samples if s.name == name and not math.isnan(s.value)]
        if values:
            return sum(values)
    return None


def metric_mean(samples: Iterable[Sample], *names: str) -> float | None:
    """The mean over all label sets of the first of `names` present, or None."""
    samples = list(samples)
    for name in names:
        values = [s.value for s in samples if s.name == name and not math.isnan(s.value)]
        if values:
            return sum(values) / len(values)
    return None
