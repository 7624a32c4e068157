"""Drift: do the live inputs and predictions still look like the data the model was converted on?

Over a sliding window of the last `window` accepted inputs, each statistic the bundle's `reference.drift`
describes is compared with its reference histogram by the population stability index,
PSI = Σ (live − ref) · ln(live / ref) over the reference bins (≈ 0.1: a shift worth a look; ≥ 0.25: a real
one). Statistics: input brightness, contrast and sharpness (per-channel means and standard deviations for
sensor windows), predicted-class frequencies, the confidence histogram and the uncertain rate.

A statistic goes into alarm when its PSI reaches `alarm` and leaves it only when it falls to `clear`
(hysteresis), and only state changes are reported, so a drifting stream raises one event, not one per frame.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge_infer.sections import DriftConfig

EPSILON = 1e-4  # a floor for empty bins (PSI divides by them)


def channel_means(pixels: np.ndarray) -> tuple[float, float, float]:
    """Mean level of each channel of an RGB model view (a colour cast moves them apart)."""
    flat = pixels.reshape(-1, 3)
    sums = flat.sum(axis=0, dtype=np.uint64) if flat.dtype == np.uint8 else flat.sum(axis=0)
    return tuple(float(v) / len(flat) for v in sums)  # type: ignore[return-value]


def psi(reference: Sequence[float], live: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins (each normalised here)."""
    ref = np.maximum(np.asarray(reference, dtype=np.float64), 0.0)
    cur = np.maximum(np.asarray(live, dtype=np.float64), 0.0)
    ref = np.maximum(ref / max(ref.sum(), 1e-12), EPSILON)
    cur = np.maximum(cur / max(cur.sum(), 1e-12), EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def bin_fractions(values: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Fractions of `values` per bin; values outside the edges count in the first / last bin (as the converter
    built the reference)."""
    clipped = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=np.asarray(edges, dtype=np.float64))
    return counts / max(1, len(values))


@dataclass(frozen=True)
class Statistic:
    """One monitored statistic: numeric values binned at `edges`, or categories with reference fractions."""

    name: str
    kind: str  # "input" | "output"
    reference: tuple[float, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def live(self, values: Sequence[Any]) -> np.ndarray:
        if self.edges:
            return bin_fractions(values, self.edges)
        counts = {c: 0 for c in self.categories}
        for v in values:
            if v in counts:
                counts[v] += 1
        return np.asarray([counts[c] for c in self.categories], dtype=np.float64) / max(1, len(values))

    def summary(self, values: Sequence[Any]) -> dict[str, Any]:
        """What moved, in the statistic's own units: means for numbers, the largest shifts for categories."""
        if self.edges:
            centres = [(a + b) / 2 for a, b in zip(self.edges, self.edges[1:], strict=False)]
            ref_mean = float(np.dot(self.reference, centres) / max(sum(self.reference), 1e-12))
            return {"reference_mean": round(ref_mean, 4), "live_mean": round(float(np.mean(values)), 4)}
        live = self.live(values)
        shifts = sorted(zip(self.categories, self.reference, live, strict=True), key=lambda t: -abs(t[2] - t[1]))
        return {"largest_shifts": [{"value": c, "reference": round(r, 4), "live": round(float(x), 4)}
                                   for c, r, x in shifts[:3]]}


@dataclass(frozen=True)
class DriftChange:
    """A statistic entered (`drift_detected`) or left (`drift_cleared`) the alarm state."""

    event: str
    statistic: str
    psi: float
    details: dict[str, Any]


def statistics_from_reference(reference: dict[str, Any] | None, uncertain_threshold: float | None) -> list[Statistic]:
    """The statistics a `reference.drift` document supports (nothing when the bundle has none)."""
    if not reference:
        return []
    stats: list[Statistic] = []
    for name, hist in sorted(reference.get("inputs", {}).items()):
        if len(hist.get("edges", [])) >= 3:
            stats.append(Statistic(name, "input", tuple(hist["fractions"]), tuple(hist["edges"])))
    classes = reference.get("classes") or {}
    if classes:
        stats.append(Statistic("predicted_class", "output", tuple(classes.values()),
                               categories=tuple(classes)))
    confidence = reference.get("confidence")
    if confidence:
        stats.append(Statistic("confidence", "output", tuple(confidence["fractions"]), tuple(confidence["edges"])))
        rate = reference.get("uncertain_rate")
        if rate is None and uncertain_threshold is not None:
            rate = _rate_below(confidence["edges"], confidence["fractions"], uncertain_threshold)
        if rate is not None:
            stats.append(Statistic("uncertain_rate", "output", (1.0 - rate, rate), categories=("ok", "uncertain")))
    return stats


def _rate_below(edges: Sequence[float], fractions: Sequence[float], threshold: float) -> float:
    """The share of reference confidences below `threshold`, interpolated within its bin."""
    total = 0.0
    for lo, hi, f in zip(edges, edges[1:], fractions, strict=False):
        if hi <= threshold:
            total += f
        elif lo < threshold:
            total += f * (threshold - lo) / (hi - lo)
    return total


def monitor_from_config(drift: DriftConfig, reference: dict[str, Any] | None,
                        uncertain_threshold: float | None) -> DriftMonitor:
    """The `[drift]` table and a bundle's `reference.drift` → a monitor (one with nothing to follow when off)."""
    stats = statistics_from_reference(reference, uncertain_threshold) if drift.enabled else []
    return DriftMonitor(stats, drift.window, drift.every, drift.alarm, drift.clear)


class DriftMonitor:
    """Feed it every accepted input's statistics and result; it reports alarm state changes."""

    def __init__(self, statistics: Sequence[Statistic], window: int = 500, every: int = 50, alarm: float = 0.25,
                 clear: float = 0.1) -> None:
        self.statistics = list(statistics)
        self.window = window
        self.every = every
        self.alarm = alarm
        self.clear = clear
        self.min_samples = max(20, window // 2)
        self._values: dict[str, deque[Any]] = {s.name: deque(maxlen=window) for s in self.statistics}
        self.scores: dict[str, float] = {}
        self.alarmed: set[str] = set()
        self.seen = 0
        self.changes = 0

    @property
    def enabled(self) -> bool:
        return bool(self.statistics)

    def observe(self, stats: dict[str, float], label: str | None = None, confidence: float | None = None,
                uncertain: bool | None = None) -> list[DriftChange]:
        """One accepted input: its input statistics, and (classification) its label, confidence and status."""
        values: dict[str, Any] = dict(stats)
        if label is not None:
            values["predicted_class"] = label
        if confidence is not None:
            values["confidence"] = confidence
        if uncertain is not None:
            values["uncertain_rate"] = "uncertain" if uncertain else "ok"
        for name, window in self._values.items():
            value = values.get(name)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                window.append(value)
        self.seen += 1
        if self.seen % self.every:
            return []
        return self.evaluate()

    def evaluate(self) -> list[DriftChange]:
        """Score every statistic with enough samples; report the ones whose alarm state changed."""
        changes = []
        for stat in self.statistics:
            values = self._values[stat.name]
            if len(values) < self.min_samples:
                continue
            score = psi(stat.reference, stat.live(values))
            self.scores[stat.name] = score
            if stat.name not in self.alarmed and score >= self.alarm:
                self.alarmed.add(stat.name)
                changes.append(self._change("drift_detected", stat, score, values))
            elif stat.name in self.alarmed and score <= self.clear:
                self.alarmed.discard(stat.name)
                changes.append(self._change("drift_cleared", stat, score, values))
        self.changes += len(changes)
        return changes

    def _change(self, event: str, stat: Statistic, score: float, values: deque[Any]) -> DriftChange:
        details = {"statistic": stat.name, "kind": stat.kind, "psi": round(score, 4),
                   "level": self.alarm if event == "drift_detected" else self.clear, "window": len(values),
                   "inputs_seen": self.seen, **stat.summary(values)}
        return DriftChange(event, stat.name, score, details)

    def to_dict(self) -> dict[str, Any]:
        """Drift state and scores (for health)."""
        return {"state": "drift" if self.alarmed else ("ok" if self.scores else "warming_up"),
                "alarmed": sorted(self.alarmed), "scores": {k: round(v, 4) for k, v in sorted(self.scores.items())},
                "window": self.window, "alarm": self.alarm, "clear": self.clear}
