"""`task = "raw"`: every output array, dequantized, by name — any model runs with configuration alone.

Never uncertain; two results agree when they have the same outputs (running without failing is what a
shadow run proves here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_infer.decide import Decision, Thresholds
from edge_infer.runtime import TensorInfo
from edge_infer.tasks import Context, Entity, register
from edge_infer.tasks.outputs import dequantize


@dataclass(frozen=True)
class RawOutputs:
    """Every output, dequantized, by name: any model runs with configuration alone."""

    arrays: dict[str, np.ndarray]
    task: str = field(default="raw", init=False)
    confidence: float = field(default=1.0, init=False)

    @property
    def event_key(self) -> str:
        return "raw"

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": {name: {"shape": list(a.shape), "values": np.round(a.astype(np.float64), 6).ravel().tolist()}
                            for name, a in self.arrays.items()}}


def raw(outputs: Sequence[np.ndarray], tensors: Sequence[TensorInfo], names: Sequence[str]) -> RawOutputs:
    keys = list(names) if len(names) == len(outputs) else [t.name or f"output_{i}" for i, t in enumerate(tensors)]
    if len(set(keys)) != len(keys):
        keys = [f"output_{i}" for i in range(len(outputs))]
    return RawOutputs({k: dequantize(o, t) for k, o, t in zip(keys, outputs, tensors, strict=True)})



class RawTask:
    name = "raw"
    needs_geometry = False

    def postprocess(self, outputs: Sequence[np.ndarray], ctx: Context) -> RawOutputs:
        return raw(outputs, ctx.tensors, ctx.manifest.output.names)

    def decide(self, result: RawOutputs, thresholds: Thresholds) -> Decision:
        return Decision(status="ok")

    def agrees(self, a: RawOutputs, b: RawOutputs) -> bool:
        return set(a.arrays) == set(b.arrays)

    def draw(self, result: RawOutputs, canvas: Any, size: tuple[int, int], colour: tuple[int, int, int],
             status: str) -> None:
        return  # raw outputs have no picture form

    def entities(self) -> list[Entity]:
        return [("sensor", "last_result", {"name": "Last result", "value_template": "{{ value_json.ts }}",
                                           "device_class": "timestamp"})]


@register("raw")
def make() -> RawTask:
    return RawTask()
