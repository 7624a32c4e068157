"""Explain and repair an integer quantization: per-layer error from TensorFlow's QuantizationDebugger, and
`--auto-fallback`, which keeps the worst layers in float one at a time until the accuracy budget is met.

Per-layer error is the debugger's RMSE of each quantized op output against the float model, divided by the
output's quantization scale — how many quantization steps the layer is off, comparable across layers.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.convert import configure, import_tensorflow
from converter.evaluate import Evaluation, evaluate, in_memory_bundle, summarize
from converter.specs import say
from edge_infer.bundle import model_digest


@dataclass(frozen=True)
class LayerError:
    op: str
    tensor: str
    rmse_per_scale: float

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "tensor": self.tensor, "rmse_per_scale": round(self.rmse_per_scale, 4)}


def _dataset(tensors: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen() -> Iterator[list[np.ndarray]]:
        for x in tensors:
            yield [x[np.newaxis, ...].astype(np.float32)]

    return gen


def _debugger(saved_model: Path, tensors: np.ndarray, denylist: list[str]) -> Any:
    tf = import_tensorflow()
    converter = configure(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)), tf, "int8",
                          lambda: iter(tensors))
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist or None)
    return tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=_dataset(tensors),
                                                     debug_options=options)


def layer_errors(saved_model: Path, tensors: np.ndarray) -> list[LayerError]:
    """Every quantized layer's error, worst first."""
    debugger = _debugger(saved_model, tensors, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the debugger uses tf.lite.Interpreter, which warns it is deprecated
        debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"] or 0)
        mse = float(row["mean_squared_error"] or 0)
        if scale > 0 and math.isfinite(mse):
            rows.append(LayerError(row["op_name"], row["tensor_name"], math.sqrt(mse) / scale))
    return sorted(rows, key=lambda r: -r.rmse_per_scale)


def with_float_layers(saved_model: Path, tensors: np.ndarray, denylist: list[str]) -> bytes:
    """The `int8` (float-fallback) model with the `denylist` layers (tensor names) kept in float."""
    return bytes(_debugger(saved_model, tensors, denylist).get_nondebug_quantized_model())


def auto_fallback(saved: Path, tensors: np.ndarray, errors: list[Any], examples: list[Any], baseline: Evaluation,
                   out: Path, doc: dict[str, Any], budget: float, report: dict[str, Any]) -> bytes | None:
    """Keep the worst layers of the `int8` variant in float, one more per step, until the top-1 drop is within
    budget. Records every step in the report; returns the repaired model, or None when nothing was enough."""
    kept: list[str] = []
    steps = []
    for layer in errors:
        kept.append(layer.tensor)
        data = with_float_layers(saved, tensors, kept)
        trial = dict(doc, model={**doc["model"], "sha256": model_digest(data), "size": len(data)})
        ev = evaluate(in_memory_bundle(out, data, trial), examples, f"int8 + {len(kept)} float layer(s)")
        drop = (baseline.accuracy - ev.accuracy) * 100.0
        steps.append({"kept_in_float": layer.tensor, "op": layer.op, "accuracy": round(ev.accuracy, 6),
                      "accuracy_drop_points": round(drop, 4), "size_bytes": len(data)})
        say(f"auto-fallback step {len(kept)}: {layer.op} {layer.tensor.split(';')[0]} in float → top-1 "
             f"{ev.accuracy * 100:.2f}% (drop {drop:.2f} points)")
        if drop <= budget:
            summary = summarize(ev, len(data), baseline, report["labels"])
            report["evaluation"]["variants"]["int8"] = summary
            report["variants"]["int8"] = {"size_bytes": len(data)}
            report["fallback"] = {"within_budget": True, "layers_kept_in_float": kept, "steps": steps}
            say(f"auto-fallback: {len(kept)} layer(s) kept in float — within the budget of {budget:g} points")
            return data
    report["fallback"] = {"within_budget": False, "layers_kept_in_float": kept, "steps": steps}
    say("auto-fallback: no combination of float layers met the budget")
    return None
