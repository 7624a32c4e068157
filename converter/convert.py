"""TensorFlow side of the converter: load a SavedModel or .keras file, convert to float32 or full-integer int8.

Keras 3 models are exported to a SavedModel first and converted from it: `from_keras_model` is unreliable
with Keras 3 on TF 2.16+.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError

MODES = ("float32", "int8")
IO_TYPES = ("uint8", "int8")


def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise ConvertError(
            "TensorFlow is not installed: install the converter extra (pip install 'edge-infer[convert]')"
        ) from None
    tf.get_logger().setLevel("ERROR")
    return tf


@contextmanager
def saved_model_dir(model_path: Path) -> Iterator[Path]:
    """A SavedModel directory for `model_path`, exporting a .keras/.h5 file to a temporary one."""
    if not model_path.exists():
        raise ConvertError(f"{model_path}: model not found")
    if model_path.is_dir():
        if not (model_path / "saved_model.pb").exists():
            raise ConvertError(f"{model_path}: not a SavedModel directory (no saved_model.pb)")
        yield model_path
        return
    if model_path.suffix not in (".keras", ".h5"):
        raise ConvertError(f"{model_path}: expected a SavedModel directory, a .keras or a .h5 file")
    tf = import_tensorflow()
    try:
        model = tf.keras.models.load_model(model_path, compile=False)
    except Exception as exc:
        raise ConvertError(f"{model_path}: cannot load Keras model: {str(exc).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        out = Path(tmp) / "saved_model"
        model.export(str(out), format="tf_saved_model", verbose=False)
        yield out


def convert(
    saved_model: Path,
    mode: str,
    representative: Callable[[], Iterator[np.ndarray]] | None = None,
    io_type: str = "uint8",
) -> bytes:
    """Convert a SavedModel. `int8` is full-integer quantization with integer I/O (`io_type`); its
    representative dataset yields float tensors of shape (H, W, C) exactly as the device computes them."""
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode == "int8":
        if representative is None:
            raise ConvertError("int8 conversion needs calibration data (--calibration DIR)")

        def dataset() -> Iterator[list[np.ndarray]]:
            for x in representative():
                yield [x[np.newaxis, ...].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        dtype = {"uint8": tf.uint8, "int8": tf.int8}[io_type]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    elif mode != "float32":
        raise ConvertError(f"unknown mode '{mode}' (choose from: {', '.join(MODES)})")
    try:
        return bytes(converter.convert())
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"{saved_model}: TFLite conversion failed: {str(exc).splitlines()[0]}") from None
