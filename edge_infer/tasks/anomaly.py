"""`task = "anomaly"`: one score, anomalous at or above the threshold (any scale: `[model].threshold`).

Never uncertain; two results agree when both are anomalous or both normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_infer.decide import Decision, Thresholds
from edge_infer.runtime import TensorInfo
from edge_infer.tasks import Context, Entity, caption, register
from edge_infer.tasks.outputs import dequantize


@dataclass(frozen=True)
class AnomalyScore:
    """A score and whether it reaches the anomaly threshold."""

    score: float
    threshold: float
    task: str = field(default="anomaly", init=False)
    confidence: float = field(default=1.0, init=False)

    @property
    def anomalous(self) -> bool:
        return self.score >= self.threshold

    @property
    def event_key(self) -> str:
        return "anomalous" if self.anomalous else "normal"

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "anomalous": self.anomalous}


def anomaly(output: np.ndarray, tensor: TensorInfo, threshold: float) -> AnomalyScore:
    values = dequantize(output, tensor).reshape(-1)
    if values.size != 1:
        raise ValueError(f"an anomaly model outputs one score, this one {values.size} values")
    return AnomalyScore(float(values[0]), threshold)



class AnomalyTask:
    name = "anomaly"
    needs_geometry = False

    def postprocess(self, outputs: Sequence[np.ndarray], ctx: Context) -> AnomalyScore:
        return anomaly(outputs[0], ctx.tensors[0], ctx.thresholds.default)

    def decide(self, result: AnomalyScore, thresholds: Thresholds) -> Decision:
        return Decision(status="ok")

    def agrees(self, a: AnomalyScore, b: AnomalyScore) -> bool:
        return a.anomalous == b.anomalous

    def draw(self, result: AnomalyScore, canvas: Any, size: tuple[int, int], colour: tuple[int, int, int],
             status: str) -> None:
        caption(canvas, f"score {result.score:.4g} ({'anomalous' if result.anomalous else 'normal'})", colour,
                size[0])

    def entities(self) -> list[Entity]:
        return [("binary_sensor", "anomaly", {"name": "Anomaly", "device_class": "problem",
                                              "value_template": "{{ 'ON' if value_json.result.anomalous "
                                                                "else 'OFF' }}"}),
                ("sensor", "anomaly_score", {"name": "Anomaly score", "state_class": "measurement",
                                             "value_template": "{{ value_json.result.score }}"})]


@register("anomaly")
def make() -> AnomalyTask:
    return AnomalyTask()
