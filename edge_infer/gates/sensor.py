"""The sensor window gate: NaN/inf, out of physical range, flatline (stuck sensor), spikes, sample gaps.

Limits come from the bundle: the physical range its manifest declares, and the per-channel statistics the
converter measured on the calibration windows (`reference_stats`); the device config can override each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_infer.gates import Verdict
from edge_infer.manifest import SensorInputSpec

if TYPE_CHECKING:
    from edge_infer.sections import GateConfig


def reference_stats(windows: Sequence[np.ndarray], channels: Sequence[str]) -> dict[str, Any]:
    """Per channel, over good calibration windows: value range, the 1st percentile of the window's standard
    deviation (how still a healthy sensor ever is) and the 99th percentile of its largest step between
    consecutive readings (how abrupt a healthy signal ever is)."""
    x = np.stack([np.asarray(w, dtype=np.float64) for w in windows])  # (n, window, channels)
    std = x.std(axis=1)
    step = np.abs(np.diff(x, axis=1)).max(axis=1)
    out: dict[str, Any] = {"samples": len(windows), "channels": {}}
    for i, name in enumerate(channels):
        out["channels"][name] = {
            "min": round(float(x[:, :, i].min()), 6),
            "max": round(float(x[:, :, i].max()), 6),
            "std_p01": round(float(np.percentile(std[:, i], 1)), 6),
            "step_p99": round(float(np.percentile(step[:, i], 99)), 6),
        }
    return out


@dataclass(frozen=True)
class SensorLimits:
    """Per-channel limits (None: that check is off for every channel)."""

    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    min_std: tuple[float, ...] | None = None
    max_step: tuple[float, ...] | None = None
    max_gap_factor: float | None = 2.0  # a gap longer than this many sample periods is a `sample_gap`
    source: str = "defaults"


def limits_for(spec: SensorInputSpec, reference: dict[str, Any] | None, overrides: dict[str, Any]) -> SensorLimits:
    """Range from the manifest (else the reference range widened by half its span), flatline below 5 % of the
    stillest healthy window, spikes above 4× the largest healthy step; then the config's overrides."""
    limits = SensorLimits(low=spec.low, high=spec.high, source="manifest" if spec.low else "defaults")
    channels = (reference or {}).get("channels", {})
    if all(name in channels for name in spec.channels) and channels:
        ref = [channels[name] for name in spec.channels]
        if limits.low is None:
            span = [r["max"] - r["min"] for r in ref]
            limits = replace(limits, low=tuple(r["min"] - s / 2 for r, s in zip(ref, span, strict=True)),
                             high=tuple(r["max"] + s / 2 for r, s in zip(ref, span, strict=True)))
        limits = replace(
            limits,
            min_std=tuple(r["std_p01"] * 0.05 for r in ref) if all(r["std_p01"] > 0 for r in ref) else None,
            max_step=tuple(r["step_p99"] * 4 for r in ref) if all(r["step_p99"] > 0 for r in ref) else None,
            source="manifest+reference" if spec.low is not None else "reference",
        )
    n = len(spec.channels)
    changes: dict[str, Any] = {}
    for key in ("low", "high", "min_std", "max_step"):
        value = overrides.get(key)
        if value is not None:
            changes[key] = tuple(float(v) for v in value) if isinstance(value, list | tuple) else (float(value),) * n
    if overrides.get("max_gap_factor") is not None:
        changes["max_gap_factor"] = float(overrides["max_gap_factor"]) or None
    if changes:
        limits = replace(limits, **changes, source=f"{limits.source}+config")
    return limits


class SensorGate:
    def __init__(self, spec: SensorInputSpec, limits: SensorLimits) -> None:
        self.spec = spec
        self.limits = limits
        self.channels = spec.channels

    def check(self, window: np.ndarray, times: np.ndarray | None = None) -> Verdict:
        """First failed check: non_finite, out_of_range, sample_gap, flatline, spike."""
        x = np.asarray(window, dtype=np.float64)
        if x.shape != self.spec.shape:
            return Verdict.reject("sample_gap", f"window has shape {x.shape}, expected {self.spec.shape}",
                                  metric="readings", value=float(x.shape[0] if x.ndim else 0),
                                  threshold=float(self.spec.window))
        finite = np.isfinite(x)
        if not finite.all():
            bad = (~finite).sum(axis=0)
            channel = int(np.argmax(bad))
            return self._reject("non_finite", channel, "share of NaN/inf readings",
                                float(bad[channel] / x.shape[0]), 0.0)
        lim = self.limits
        if lim.low is not None and lim.high is not None:
            below = x.min(axis=0) < np.asarray(lim.low)
            above = x.max(axis=0) > np.asarray(lim.high)
            if below.any():
                c = int(np.argmax(below))
                return self._reject("out_of_range", c, "minimum reading", float(x[:, c].min()), lim.low[c])
            if above.any():
                c = int(np.argmax(above))
                return self._reject("out_of_range", c, "maximum reading", float(x[:, c].max()), lim.high[c])
        if times is not None and len(times) > 1:
            steps = np.diff(np.asarray(times, dtype=np.float64))
            gap = float(np.max(steps)) if np.isfinite(steps).all() else math.inf
            allowed = lim.max_gap_factor / self.spec.sample_rate if lim.max_gap_factor else math.inf
            if gap > allowed or not float(np.min(steps)) > 0 or not math.isfinite(gap):
                return Verdict.reject(
                    "sample_gap",
                    f"readings {gap:.4g} s apart; at {self.spec.sample_rate:g} Hz at most {allowed:.4g} s is expected",
                    metric="max_gap_s", value=round(gap, 6), threshold=round(allowed, 6),
                )
        if lim.min_std is not None:
            std = x.std(axis=0)
            stuck = std < np.asarray(lim.min_std)
            if stuck.any():
                c = int(np.argmax(stuck))
                return self._reject("flatline", c, "standard deviation", float(std[c]), lim.min_std[c])
        if lim.max_step is not None:
            step = np.abs(np.diff(x, axis=0)).max(axis=0)
            spiking = step > np.asarray(lim.max_step)
            if spiking.any():
                c = int(np.argmax(step / np.asarray(lim.max_step)))
                return self._reject("spike", c, "largest step between readings", float(step[c]), lim.max_step[c])
        return Verdict(ok=True)

    def _reject(self, reason: str, channel: int, what: str, value: float, threshold: float) -> Verdict:
        name = self.channels[channel]
        return Verdict.reject(
            reason,
            f"channel {name}: {what} {value:.4g} vs limit {threshold:.4g} ({self.limits.source})",
            metric=f"{name}.{reason}",
            value=round(value, 6),
            threshold=round(float(threshold), 6),
            channel=name,
        )


def sensor_gate_from_config(gate: GateConfig, spec: SensorInputSpec, reference: dict[str, Any] | None) -> SensorGate:
    """The `[gate]` table's sensor keys (validated) and the bundle's reference → a `SensorGate`."""
    overrides = {"low": gate.range_low, "high": gate.range_high, "min_std": gate.min_std,
                 "max_step": gate.max_step, "max_gap_factor": gate.max_gap_factor}
    for key in ("low", "high", "min_std", "max_step"):
        value = overrides[key]
        if isinstance(value, list | tuple) and len(value) != len(spec.channels):
            raise ValueError(f"[gate].{key if key in ('min_std', 'max_step') else 'range_' + key}: "
                             f"{len(value)} values for {len(spec.channels)} channels {list(spec.channels)}")
    return SensorGate(spec, limits_for(spec, reference, overrides))
