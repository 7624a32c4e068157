"""TensorFlow side of the converter: load a SavedModel, .keras or legacy .h5 file and convert it in one of the
post-training quantization modes:

- `float32`: no quantization (the reference every other mode is measured against);
- `float16`: weights stored as float16 (half the size, float compute);
- `dynamic`: dynamic-range quantization — int8 weights, activations quantized on the fly, no calibration;
- `int8`: full-integer quantization with float fallback for ops that have no int8 kernel (float I/O);
- `int8-only`: integer-only, including the model's input and output (uint8 or int8; pixels go in as they are);
- `int16x8`: int16 activations with int8 weights (more accurate than int8 where activations have a wide range).

Keras 3 models are exported to a SavedModel first and converted from it: `from_keras_model` is unreliable
with Keras 3 on TF 2.16+.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError

MODES = ("float32", "float16", "dynamic", "int8", "int8-only", "int16x8")
CALIBRATED = ("int8", "int8-only", "int16x8")
IO_TYPES = ("uint8", "int8")


def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise ConvertError(
            "TensorFlow is not installed: install the converter extra from your checkout "
            "(pip install '/path/to/edge-infer[convert]', or pip install -e '.[convert]' inside it)"
        ) from None
    tf.get_logger().setLevel("ERROR")
    return tf


def configure(converter: Any, tf: Any, mode: str, representative: Callable[[], Iterator[np.ndarray]] | None,
              io_type: str = "uint8") -> Any:
    """Set a TFLiteConverter up for `mode`."""
    if mode not in MODES:
        raise ConvertError(f"unknown mode '{mode}' (choose from: {', '.join(MODES)})")
    if mode == "float32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return converter
    if mode == "dynamic":
        return converter
    if representative is None:
        raise ConvertError(f"--mode {mode} needs calibration data (--calibration)")

    def dataset() -> Iterator[list[np.ndarray]]:
        for x in representative():
            yield [x[np.newaxis, ...].astype(np.float32)]

    converter.representative_dataset = dataset
    if mode == "int8-only":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        dtype = {"uint8": tf.uint8, "int8": tf.int8}[io_type]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    elif mode == "int16x8":
        ops = tf.lite.OpsSet
        converter.target_spec.supported_ops = [ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return converter


class ConversionWorker:
    """Quantized conversions in a child process, one after another: the TF converter leaks memory on every call,
    so they never run in the caller, and one child (one TensorFlow import) serves a whole run. A child that dies
    fails only the conversion it was doing; the next one starts a new child. Use as a context manager."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edge-convert-")
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: Any = None
        self._count = 0

    def __enter__(self) -> ConversionWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._stderr = open(Path(self._tmp.name) / f"stderr-{self._count}.txt", "w+")  # noqa: SIM115
            self._proc = subprocess.Popen([sys.executable, "-m", "converter.worker"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        return self._proc

    def convert(self, saved_model: Path, mode: str, calibration: np.ndarray | None, io_type: str) -> bytes:
        """`convert` in the child; `calibration` holds the representative tensors."""
        self._count += 1
        calib, out = Path(self._tmp.name) / f"calibration-{self._count}.npy", Path(self._tmp.name) / "model.tflite"
        if calibration is not None:
            np.save(calib, calibration)
        request = {"saved": str(saved_model), "mode": mode, "io_type": io_type, "out": str(out),
                   "calibration": str(calib) if calibration is not None else None}
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        except BrokenPipeError:
            answer = ""
        calib.unlink(missing_ok=True)
        if not answer:  # the child died (TensorFlow can abort or run out of memory on a model)
            proc.wait()
            self._stderr.seek(0)
            raise ConvertError(f"--mode {mode}: conversion process failed: {self._stderr.read().strip()[-300:]}")
        reply = json.loads(answer)
        if "error" in reply:
            raise ConvertError(reply["error"])
        return out.read_bytes()

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._stderr is not None:
            self._stderr.close()
        self._tmp.cleanup()


def convert(
    saved_model: Path,
    mode: str,
    representative: Callable[[], Iterator[np.ndarray]] | None = None,
    io_type: str = "uint8",
) -> bytes:
    """Convert a SavedModel in one `mode` (see the module docstring). Calibrated modes need `representative`,
    which yields float tensors exactly as the device computes them; `io_type` is `int8-only`'s I/O type."""
    tf = import_tensorflow()
    converter = configure(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)), tf, mode, representative,
                          io_type)
    try:
        return bytes(converter.convert())
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"{saved_model}: TFLite conversion failed: {str(exc).splitlines()[0]}") from None
