"""Reading output tensors: dequantization with each tensor's own scale and zero point, and softmax."""

from __future__ import annotations

import numpy as np

from edge_infer.runtime import TensorInfo


def dequantize(values: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Integer outputs to float with the tensor's quantization; float outputs pass through as float32."""
    if tensor.quantized and np.issubdtype(values.dtype, np.integer):
        return (values.astype(np.float32) - np.float32(tensor.zero_point)) * np.float32(tensor.scale)
    return values.astype(np.float32, copy=False)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(logits - np.max(logits, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)
