"""Image or sensor window → input tensor. The converter calibrates with these functions and the daemon feeds
the model with them, so what the model saw at calibration time is, bit for bit, what it sees on the device."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edge_infer.manifest import ImageInputSpec, SensorInputSpec
from edge_infer.runtime import TensorInfo


def model_view(image: Image.Image, spec: ImageInputSpec) -> Image.Image:
    """A decoded image (see `edge_infer.gates.image.decode_image`) as the model sees it: its colour, its size.
    The quality gate measures this view, so "blurry" means blurry at the resolution the model works at.

    `stretch` resizes to the input size; `letterbox` keeps the aspect ratio and pads the rest with `pad`
    (centred); `centre-crop` keeps the aspect ratio and cuts the middle that fills the input."""
    image = image.convert("L" if spec.color == "L" else "RGB")
    size = (spec.width, spec.height)
    if image.size == size:
        return image
    if spec.resize == "stretch":
        return image.resize(size, Image.Resampling.BILINEAR)
    w, h = image.size
    if spec.resize == "centre-crop":
        scale = max(spec.width / w, spec.height / h)
        cw, ch = spec.width / scale, spec.height / scale
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        return image.resize(size, Image.Resampling.BILINEAR, box=box)
    scale = min(spec.width / w, spec.height / h)  # letterbox
    inner = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new(image.mode, size, spec.pad if image.mode == "L" else (spec.pad,) * 3)
    canvas.paste(image.resize(inner, Image.Resampling.BILINEAR),
                 ((spec.width - inner[0]) // 2, (spec.height - inner[1]) // 2))
    return canvas


def normalized_image(image: Image.Image, spec: ImageInputSpec) -> np.ndarray:
    """Convert colour, resize and normalise a decoded image: float32 array of shape (H, W, C)."""
    return normalized_view(model_view(image, spec), spec)


def normalized_view(view: Image.Image | np.ndarray, spec: ImageInputSpec) -> np.ndarray:
    """Normalise a `model_view` image (or its pixel array): float32 array of shape (H, W, C)."""
    pixels = np.asarray(view, dtype=np.float32)
    if spec.color == "L":
        pixels = pixels[..., np.newaxis]
    elif spec.color == "BGR":
        pixels = pixels[..., ::-1]
    if spec.mean is not None and spec.std is not None:
        return (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
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


def view_tensor(view: Image.Image | np.ndarray, spec: ImageInputSpec, tensor: TensorInfo) -> np.ndarray:
    """`image_tensor` for an image already in its `model_view`."""
    return to_input_tensor(normalized_view(view, spec), tensor)



def normalized_window(values: np.ndarray, spec: SensorInputSpec) -> np.ndarray:
    """A (window, channels) array of readings, normalised per channel: float32 (x − mean) / std."""
    x = np.asarray(values, dtype=np.float32)
    if x.shape != spec.shape:
        raise ValueError(f"window has shape {x.shape}, the model takes {spec.shape} (readings × channels)")
    return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def window_tensor(values: np.ndarray, spec: SensorInputSpec, tensor: TensorInfo) -> np.ndarray:
    """The full path from a window of readings to the tensor handed to the interpreter."""
    return to_input_tensor(normalized_window(values, spec), tensor)
