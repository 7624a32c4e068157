"""Image or sensor window → input tensor. The converter calibrates with these functions and the daemon feeds
the model with them, so what the model saw at calibration time is, bit for bit, what it sees on the device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edge_infer.crop import crop_box
from edge_infer.manifest import ImageInputSpec, SensorInputSpec
from edge_infer.runtime import TensorInfo


@dataclass(frozen=True)
class ViewGeometry:
    """Where a frame lands in the model's input: model pixel = source pixel × scale + offset (per axis).
    `source_scale` maps decoded pixels to the original frame's (a JPEG decoded at reduced scale)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int  # source frame size, in original pixels
    height: int
    origin_x: float = 0.0  # where the region the model saw starts in the source frame (`[model] crop`)
    origin_y: float = 0.0
    region_width: int = 0  # the region's size in original pixels (0: the whole frame)
    region_height: int = 0

    def to_source(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-input pixel coordinates → source-frame pixel coordinates (clipped to the frame)."""
        return (np.clip((x - self.offset_x) / self.scale_x + self.origin_x, 0, self.width),
                np.clip((y - self.offset_y) / self.scale_y + self.origin_y, 0, self.height))


def region(image: Image.Image, spec: ImageInputSpec) -> Image.Image:
    """The part of a decoded frame the model works on: the whole frame, or its `crop` — which then carries
    where it lies in the frame (`crop_origin`, original pixels) and the frame's size (`frame_size`), for
    `view_geometry`. Everything downstream (the gate, the view, the tensor, the baseline) sees only the region."""
    if spec.crop is None:
        return image
    scale = image.info.get("source_scale", (1.0, 1.0))
    box = crop_box(image.size, spec.crop, scale)
    cut = image.crop(box)
    cut.info.update(source_scale=scale, crop_origin=(box[0] * scale[0], box[1] * scale[1]),
                    frame_size=(round(image.width * scale[0]), round(image.height * scale[1])))
    return cut


def draft_size(spec: ImageInputSpec) -> tuple[int, int] | None:
    """What JPEG draft decoding may reduce a frame to for this model (see `decode_image`): its input size, or
    what keeps a fractional crop at least that large; None (full decode) for a crop in pixels."""
    if spec.crop is None:
        return spec.width, spec.height
    if all(isinstance(v, int) for v in spec.crop):
        return None
    x0, y0, x1, y1 = spec.crop
    return round(spec.width / (x1 - x0)), round(spec.height / (y1 - y0))


def view_geometry(size: tuple[int, int], spec: ImageInputSpec, source_scale: tuple[float, float] = (1.0, 1.0),
                  origin: tuple[float, float] = (0.0, 0.0), frame_size: tuple[int, int] | None = None) -> ViewGeometry:
    """The placement `model_view` gives a decoded frame (or `region`) of `size` (w, h): the single source of
    truth for both the resize and undoing it (detection boxes in source coordinates). A region says where it
    lies in the frame (`origin`, original pixels) and the frame's size."""
    w, h = size
    sx, sy = source_scale
    if spec.resize == "stretch" or (w, h) == (spec.width, spec.height):
        kx, ky, ox, oy = spec.width / w, spec.height / h, 0.0, 0.0
    elif spec.resize == "centre-crop":
        k = max(spec.width / w, spec.height / h)
        kx = ky = k
        ox, oy = -(w - spec.width / k) / 2 * k, -(h - spec.height / k) / 2 * k
    else:  # letterbox: the inner size is rounded to whole pixels, so each axis has its exact scale
        k = min(spec.width / w, spec.height / h)
        inner_w, inner_h = max(1, round(w * k)), max(1, round(h * k))
        kx, ky = inner_w / w, inner_h / h
        ox, oy = float((spec.width - inner_w) // 2), float((spec.height - inner_h) // 2)
    rw, rh = round(w * sx), round(h * sy)
    fw, fh = frame_size or (rw, rh)
    return ViewGeometry(kx / sx, ky / sy, ox, oy, fw, fh, *origin, rw, rh)


def model_view(image: Image.Image, spec: ImageInputSpec) -> Image.Image:
    """A decoded image (see `edge_infer.gates.decode.decode_image`) as the model sees it: its colour, its size.
    The quality gate measures this view, so "blurry" means blurry at the resolution the model works at.

    `stretch` resizes to the input size; `letterbox` keeps the aspect ratio and pads the rest with `pad`
    (centred); `centre-crop` keeps the aspect ratio and cuts the middle that fills the input
    (`view_geometry` says where the frame lands)."""
    image = image.convert("L" if spec.color == "L" else "RGB")
    size = (spec.width, spec.height)
    if image.size == size:
        return image
    if spec.resize == "stretch":
        return image.resize(size, Image.Resampling.BILINEAR)
    g = view_geometry(image.size, spec)
    if spec.resize == "centre-crop":
        box = (-g.offset_x / g.scale_x, -g.offset_y / g.scale_y, (spec.width - g.offset_x) / g.scale_x,
               (spec.height - g.offset_y) / g.scale_y)
        return image.resize(size, Image.Resampling.BILINEAR, box=box)
    inner = (round(image.width * g.scale_x), round(image.height * g.scale_y))
    canvas = Image.new(image.mode, size, spec.pad if image.mode == "L" else (spec.pad,) * 3)
    canvas.paste(image.resize(inner, Image.Resampling.BILINEAR), (int(g.offset_x), int(g.offset_y)))
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
