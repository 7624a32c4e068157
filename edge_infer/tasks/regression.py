"""`task = "regression"`: named values, and which of them are outside their expected band.

Never uncertain (a regression has no confidence); two results agree when the same values are out of band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_infer.decide import Decision, Thresholds
from edge_infer.runtime import TensorInfo
from edge_infer.tasks import Context, Entity, caption, register
from edge_infer.tasks.outputs import dequantize


@dataclass(frozen=True)
class Regression:
    """Named values; those outside their band are listed (the band comes from the manifest or the config)."""

    values: dict[str, float]
    out_of_band: tuple[str, ...] = ()
    task: str = field(default="regression", init=False)
    confidence: float = field(default=1.0, init=False)

    @property
    def event_key(self) -> str:
        return "out_of_band" if self.out_of_band else "in_band"

    def to_dict(self) -> dict[str, Any]:
        return {"values": {k: round(v, 6) for k, v in self.values.items()}, "in_band": not self.out_of_band,
                "out_of_band": list(self.out_of_band)}


def regress(output: np.ndarray, tensor: TensorInfo, names: Sequence[str],
            band: dict[str, tuple[float, float]]) -> Regression:
    values = dequantize(output, tensor).reshape(-1)
    keys = list(names) if len(names) == len(values) else (
        ["value"] if len(values) == 1 else [f"value_{i}" for i in range(len(values))])
    doc = {k: float(v) for k, v in zip(keys, values, strict=True)}
    outside = tuple(k for k, (lo, hi) in band.items() if k in doc and not lo <= doc[k] <= hi)
    return Regression(doc, outside)



class RegressionTask:
    name = "regression"
    needs_geometry = False

    def postprocess(self, outputs: Sequence[np.ndarray], ctx: Context) -> Regression:
        out = ctx.manifest.output
        return regress(outputs[0], ctx.tensors[0], out.names, out.band)

    def decide(self, result: Regression, thresholds: Thresholds) -> Decision:
        return Decision(status="ok")

    def agrees(self, a: Regression, b: Regression) -> bool:
        return a.out_of_band == b.out_of_band

    def draw(self, result: Regression, canvas: Any, size: tuple[int, int], colour: tuple[int, int, int],
             status: str) -> None:
        values = ", ".join(f"{k} {v:.4g}" for k, v in list(result.values.items())[:4])
        caption(canvas, f"{values} ({'out of band' if result.out_of_band else 'in band'})", colour, size[0])

    def entities(self) -> list[Entity]:
        return [("sensor", "value", {"name": "Value", "state_class": "measurement",
                                     "value_template": "{{ (value_json.result['values'].values() | list)[0] }}"})]


@register("regression")
def make() -> RegressionTask:
    return RegressionTask()
