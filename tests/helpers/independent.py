"""A second route to a bundle's accuracy, sharing no code with the converter's report or the device's model:
the manifest read with `zipfile` and `json`, preprocessing written here in numpy from the documented rules
(docs/bundle.md: stretch-resize, `x = pixel * scale + offset` or `(pixel - mean) / std`, then the input
tensor's own quantization), TensorFlow's TFLite interpreter (not ai-edge-litert or tflite-runtime), and the
ground truth from the eval folder's sub-folder names. Image classification bundles with `stretch` resize."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _manifest(bundle: Path) -> dict:
    with zipfile.ZipFile(bundle) as zf:
        return json.loads(zf.read("manifest.json"))


def _quantized(x: np.ndarray, detail: dict) -> np.ndarray:
    """`x` shaped and typed as the input tensor wants it, quantized with the tensor's own scale and zero point."""
    x = x.reshape(detail["shape"])
    if detail["dtype"] in (np.uint8, np.int8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _tensor(image: Image.Image, spec: dict, detail: dict) -> np.ndarray:
    assert spec.get("resize", "stretch") == "stretch", "this route implements the stretch resize only"
    image = image.convert("RGB" if spec["color"] in ("RGB", "BGR") else "L")
    pixels = np.asarray(image.resize((spec["width"], spec["height"]), Image.BILINEAR), dtype=np.float32)
    if spec["color"] == "BGR":
        pixels = pixels[..., ::-1]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    norm = spec.get("normalize", {})
    if "mean" in norm:
        x = (pixels - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    else:
        x = pixels * float(norm.get("scale", 1.0)) + float(norm.get("offset", 0.0))
    return _quantized(x, detail)


def _window_tensor(window: np.ndarray, spec: dict, detail: dict) -> np.ndarray:
    norm = spec.get("normalize", {})
    x = np.asarray(window, np.float32)
    if "mean" in norm:
        x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    return _quantized(x, detail)


def predict(bundle: Path, inputs: list[Path] | list[np.ndarray]) -> list[str]:
    """The top-1 label `bundle` gives each input (image files, or sensor windows as arrays)."""
    import tensorflow as tf

    doc = _manifest(bundle)
    interpreter = tf.lite.Interpreter(model_content=bundle.read_bytes()[: doc["model"]["size"]])
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    labels = list(doc["labels"])
    found = []
    for item in inputs:
        tensor = (_tensor(Image.open(item), doc["input"], inp) if isinstance(item, Path)
                  else _window_tensor(item, doc["input"], inp))
        interpreter.set_tensor(inp["index"], tensor)
        interpreter.invoke()
        found.append(labels[int(np.argmax(interpreter.get_tensor(out["index"]).reshape(-1)))])
    return found


def images(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]


def accuracy(bundle: Path, eval_dir: Path) -> float:
    """Top-1 accuracy of `bundle` on `eval_dir/<label>/<image>` by the route above."""
    files = images(eval_dir)
    assert files, f"no labelled images under {eval_dir}"
    return sum(p == f.parent.name for p, f in zip(predict(bundle, files), files, strict=True)) / len(files)
