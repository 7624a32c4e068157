"""Quality gates: decide whether an input is fit for the model, and say why not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """`ok` or a rejection with a stable `reason` code, a human `detail` and the metrics behind it."""

    ok: bool
    reason: str | None = None
    detail: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def reject(cls, reason: str, detail: str, **metrics: Any) -> Verdict:
        return cls(ok=False, reason=reason, detail=detail, metrics=metrics)
