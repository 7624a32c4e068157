"""Turn a task result into a decision a downstream system can rely on.

- Thresholds per label come from the device config, defaulting to the bundle's recommendations.
- What makes a result `uncertain` is its task's rule (`edge_infer.tasks`): a classification below its label's
  threshold, a detection frame with candidates between the score floor and their label's threshold, a
  segmentation with too much of the frame below threshold; regression, anomaly and raw results are always `ok`.
- An uncertain result takes the configured fallback: `publish` (marked uncertain), `suppress` (counted, not
  published), `defer` (kept for review, not published) or `escalate` (a second, larger model decides; if it is
  unsure too, `escalate_fallback` applies). Every result says which model produced it (`path`).
- `Debouncer`: for event-style outputs, a state changes only when N of the last M frames agree.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from edge_infer.manifest import Manifest

FALLBACKS = ("publish", "suppress", "defer", "escalate")


@dataclass(frozen=True)
class Decision:
    status: str  # "ok" | "uncertain"
    threshold: float | None = None
    path: str = "model"  # "model" | "escalated": which model's result this is
    action: str = "publish"  # "publish" | "suppress" | "defer"
    fallback: str | None = None  # the fallback an uncertain result took

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"status": self.status, "path": self.path}
        if self.threshold is not None:
            doc["threshold"] = self.threshold
        if self.fallback is not None:
            doc["fallback"] = self.fallback
        return doc


class Thresholds:
    """Per-label thresholds: config per label, else the bundle's per-label recommendation, else the config's
    default, else the bundle's default."""

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

    @property
    def default(self) -> float:
        return self._manifest.default_threshold if self._default is None else self._default


def with_fallback(decision: Decision, fallback: str, path: str = "model") -> Decision:
    """The decision with the action its fallback prescribes (escalation is the caller's: it needs a model)."""
    if decision.status == "ok":
        return Decision("ok", decision.threshold, path)
    action = fallback if fallback in ("suppress", "defer") else "publish"
    return Decision("uncertain", decision.threshold, path, action, fallback)


@dataclass(frozen=True)
class DebouncedState:
    value: str | None  # the stable state (None until N of M frames first agree)
    changed: bool  # this frame switched it
    votes: int  # frames in the window agreeing with the stable state

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "changed": self.changed, "votes": self.votes}


class Debouncer:
    """N of M: the stable state becomes K once K is the key of at least `n` of the last `m` frames (an
    uncertain frame votes for nothing), so one noisy frame does not flap a downstream automation."""

    def __init__(self, n: int, m: int) -> None:
        if not 1 <= n <= m:
            raise ValueError(f"debounce needs 1 ≤ N ≤ M, got N={n}, M={m}")
        self.n = n
        self._window: deque[str | None] = deque(maxlen=m)
        self.state: str | None = None

    def update(self, key: str | None) -> DebouncedState:
        self._window.append(key)
        counts = Counter(k for k in self._window if k is not None)
        changed = False
        if counts:
            best, votes = counts.most_common(1)[0]
            if best != self.state and votes >= self.n:
                self.state, changed = best, True
        return DebouncedState(self.state, changed, counts.get(self.state, 0) if self.state is not None else 0)
