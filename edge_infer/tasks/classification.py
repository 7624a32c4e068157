"""`task = "classification"`: one (1, N) score vector → the top label, its confidence and the top k.

Uncertain when the top label's confidence is below that label's threshold; two results agree when their top
labels are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_infer.decide import Decision, Thresholds
from edge_infer.runtime import TensorInfo
from edge_infer.tasks import Context, Entity, caption, register
from edge_infer.tasks.outputs import dequantize, softmax


@dataclass(frozen=True)
class Classification:
    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    task: str = field(default="classification", init=False)

    @property
    def event_key(self) -> str:
        return self.label

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "top_k": [{"label": lab, "score": round(score, 6)} for lab, score in self.top_k],
        }


def classify(
    output: np.ndarray, tensor: TensorInfo, labels: tuple[str, ...], activation: str, top_k: int
) -> Classification:
    """Top-k labels with scores from a (1, N) classification output."""
    scores = dequantize(output, tensor).reshape(-1)
    if scores.shape[0] != len(labels):
        raise ValueError(f"model produced {scores.shape[0]} scores for {len(labels)} labels")
    if activation in ("none", "logits"):
        scores = softmax(scores)
    k = max(1, min(top_k, len(labels)))
    order = np.argsort(-scores, kind="stable")[:k]
    ranked = [(labels[i], float(scores[i])) for i in order]
    return Classification(label=ranked[0][0], confidence=ranked[0][1], top_k=ranked)



class ClassificationTask:
    name = "classification"
    needs_geometry = False

    def postprocess(self, outputs: Sequence[np.ndarray], ctx: Context) -> Classification:
        m = ctx.manifest
        return classify(outputs[0], ctx.tensors[0], m.labels, m.output.activation, ctx.top_k)

    def decide(self, result: Classification, thresholds: Thresholds) -> Decision:
        threshold = thresholds.for_label(result.label)
        return Decision(status="ok" if result.confidence >= threshold else "uncertain", threshold=threshold)

    def agrees(self, a: Classification, b: Classification) -> bool:
        return a.label == b.label

    def draw(self, result: Classification, canvas: Any, size: tuple[int, int], colour: tuple[int, int, int],
             status: str) -> None:
        caption(canvas, f"{result.label} {result.confidence:.2f} ({status})", colour, size[0])

    def entities(self) -> list[Entity]:
        return [
            ("sensor", "label", {"name": "Label", "icon": "mdi:label-outline",
                                 "value_template": "{{ value_json.result.label }}"}),
            ("sensor", "confidence", {"name": "Confidence", "unit_of_measurement": "%", "state_class": "measurement",
                                      "value_template": "{{ (value_json.result.confidence * 100) | round(1) }}"}),
            ("binary_sensor", "uncertain", {"name": "Uncertain", "icon": "mdi:help-circle-outline",
                                            "value_template": "{{ 'ON' if value_json.status == 'uncertain' "
                                                              "else 'OFF' }}"}),
        ]


@register("classification")
def make() -> ClassificationTask:
    return ClassificationTask()
