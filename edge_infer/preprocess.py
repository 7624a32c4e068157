"""Image → input tensor. The converter calibrates with these functions and the daemon feeds the model with
them, so what the model saw at calibration time is, bit for bit, what it sees on the device."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from edge_infer.manifest import ImageInputSpec
from edge_infer.runtime import TensorInfo


def normalized_image(image: Image.Image, spec: ImageInputSpec) -> np.ndarray:
    """Orient, convert colour, resize and normalise a decoded image: float32 array of shape (H, W, C)."""
    image = ImageOps.exif_transpose(image)
    image = image.convert("L" if spec.color == "L" else "RGB")
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    if spec.color == "L":
        pixels = pixels[..., np.newaxis]
    elif spec.color == "BGR":
        pixels = pixels[..., ::-1]
    return pixels * np.float32(spec.scale) + np.float32(spec.offset)


def to_input_tensor(x: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Add the batch axis and cast to the model's input type, quantizing with the tensor's own params."""
    batch = x[np.newaxis, ...]
    if tensor.dtype == np.float32:
        return np.ascontiguousarray(batch, dtype=np.float32)
    if not tensor.quantized:
        raise ValueError(f"input tensor is {tensor.dtype.name} but carries no quantization parameters")
    info = np.iinfo(tensor.dtype)
    q = np.round(batch / np.float32(tensor.scale)) + tensor.zero_point
    return np.clip(q, info.min, info.max).astype(tensor.dtype)


def image_tensor(image: Image.Image, spec: ImageInputSpec, tensor: TensorInfo) -> np.ndarray:
    """The full path from a decoded image to the tensor handed to the interpreter."""
    return to_input_tensor(normalized_image(image, spec), tensor)
