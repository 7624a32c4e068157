"""Raw model outputs → task results. Dequantization always uses the output tensor's own scale/zero point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_infer.runtime import TensorInfo


@dataclass(frozen=True)
class Classification:
    label: str
    confidence: float
    top_k: list[tuple[str, float]]

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "top_k": [{"label": lab, "score": round(score, 6)} for lab, score in self.top_k],
        }


def dequantize(values: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Integer outputs to float with the tensor's quantization; float outputs pass through as float32."""
    if tensor.quantized and np.issubdtype(values.dtype, np.integer):
        return (values.astype(np.float32) - np.float32(tensor.zero_point)) * np.float32(tensor.scale)
    return values.astype(np.float32, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - np.max(logits))
    return shifted / np.sum(shifted)


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
