"""Turn a classification into a decision: `ok` when its confidence clears the label's threshold, else
`uncertain`. Thresholds come from the device config, defaulting to the bundle's recommendations."""

from __future__ import annotations

from dataclasses import dataclass

from edge_infer.manifest import Manifest
from edge_infer.postprocess import Classification


@dataclass(frozen=True)
class Decision:
    status: str  # "ok" | "uncertain"
    threshold: float


class Thresholds:
    def __init__(self, manifest: Manifest, default: float | None, per_label: dict[str, float]) -> None:
        self._manifest = manifest
        self._default = default
        self._per_label = per_label

    def for_label(self, label: str) -> float:
        if label in self._per_label:
            return self._per_label[label]
        if label in self._manifest.label_thresholds or self._default is None:
            return self._manifest.threshold_for(label)
        return self._default


def decide(result: Classification, thresholds: Thresholds) -> Decision:
    threshold = thresholds.for_label(result.label)
    return Decision(status="ok" if result.confidence >= threshold else "uncertain", threshold=threshold)
