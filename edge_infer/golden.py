"""Golden inputs: a few real inputs shipped inside a bundle with what the model gave on them when it was built.

The converter runs the bundle through this module's `golden_outputs` (the device's own decode, preprocessing
and postprocessing) and stores the inputs and the outputs; before a new model is promoted on a device, the
canary runs the same function there and compares. A model that loads but computes something else on this
device — a runtime that treats an op differently, a corrupt or mismatched model, a wrong preprocessing
override — fails here instead of in production.

Archive members: `golden/index.json` (inputs, true labels, expected top-1, tolerances), `golden/expected.npy`
(every input's outputs, dequantized and concatenated), the inputs themselves (`golden/NNN.<ext>` image files
as they were given, or `golden/windows.npy` for sensor windows).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_infer.model import Model
from edge_infer.pipeline import tensor_for
from edge_infer.preprocess import ViewGeometry
from edge_infer.sources import Sample
from edge_infer.tasks import TaskResult
from edge_infer.tasks.classification import Classification
from edge_infer.tasks.outputs import dequantize

INDEX_NAME = "golden/index.json"
EXPECTED_NAME = "golden/expected.npy"
WINDOWS_NAME = "golden/windows.npy"
DEFAULT_MIN_AGREEMENT = 0.9
RELATIVE_TOLERANCE = 0.05  # of the expected outputs' range, for tasks compared by value


@dataclass(frozen=True)
class GoldenInput:
    name: str  # archive member (images) or "window N" (sensor)
    data: bytes | None = None
    window: np.ndarray | None = field(default=None, repr=False)
    label: str = ""  # the true label, when the data set had one


@dataclass(frozen=True)
class GoldenSet:
    inputs: list[GoldenInput]
    expected: np.ndarray  # (N, D) dequantized outputs
    top1: list[str]  # classification: the expected label per input ("" otherwise)
    atol: float
    min_agreement: float

    def __len__(self) -> int:
        return len(self.inputs)


def _input(model: Model, item: GoldenInput) -> tuple[np.ndarray, ViewGeometry | None]:
    prepared = tensor_for(model, Sample("golden", item.name, "", 0.0, item.data, window=item.window))
    assert prepared is not None, f"golden input {item.name} holds neither bytes nor a window"
    return prepared


def golden_outputs(model: Model, inputs: list[GoldenInput]) -> tuple[list[TaskResult], np.ndarray, list[float]]:
    """Run `model` on the inputs exactly as the device does: results, dequantized outputs (N, D) and each
    input's inference time in ms (invoke and postprocessing, as the pipeline's inference stage)."""
    results: list[TaskResult] = []
    rows: list[np.ndarray] = []
    times: list[float] = []
    for item in inputs:
        tensor, geometry = _input(model, item)
        started = time.perf_counter()
        outputs = model.engine.run(tensor)
        results.append(model.postprocess(outputs, geometry))
        times.append((time.perf_counter() - started) * 1000.0)
        rows.append(np.concatenate([dequantize(o, t).astype(np.float32).ravel()
                                    for o, t in zip(outputs, model.engine.outputs, strict=True)]))
    return results, np.stack(rows) if rows else np.zeros((0, 0), np.float32), times


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def build_golden(model: Model, inputs: list[GoldenInput], min_agreement: float = DEFAULT_MIN_AGREEMENT
                 ) -> dict[str, bytes]:
    """The archive members for a golden set, with `model`'s own results as the expectation."""
    if not inputs:
        raise ValueError("a golden set needs at least one input")
    results, expected, _ = golden_outputs(model, inputs)
    span = float(np.ptp(expected)) if expected.size else 0.0
    members: dict[str, bytes] = {EXPECTED_NAME: _npy(expected)}
    entries = []
    for item, result in zip(inputs, results, strict=True):
        entry: dict[str, Any] = {"label": item.label}
        if isinstance(result, Classification):
            entry["top1"] = result.label
        if item.data is not None:
            entry["file"] = item.name
            members[item.name] = item.data
        entries.append(entry)
    if inputs[0].window is not None:
        members[WINDOWS_NAME] = _npy(np.stack([np.asarray(i.window, np.float32) for i in inputs]))
    index = {"version": 1, "task": model.task, "inputs": entries, "min_agreement": min_agreement,
             "atol": max(RELATIVE_TOLERANCE * span, 1e-6)}
    members[INDEX_NAME] = json.dumps(index, indent=2).encode() + b"\n"
    return members


def read_golden(members: dict[str, bytes]) -> GoldenSet | None:
    """The golden set among a bundle's archive members; None when it has none. Raises ValueError if damaged."""
    if INDEX_NAME not in members:
        return None
    try:
        index = json.loads(members[INDEX_NAME])
        expected = np.load(io.BytesIO(members[EXPECTED_NAME]), allow_pickle=False)
        windows = (np.load(io.BytesIO(members[WINDOWS_NAME]), allow_pickle=False) if WINDOWS_NAME in members
                   else None)
        inputs = []
        for i, entry in enumerate(index["inputs"]):
            if windows is not None:
                inputs.append(GoldenInput(f"window {i}", window=windows[i], label=entry.get("label", "")))
            else:
                inputs.append(GoldenInput(entry["file"], data=members[entry["file"]], label=entry.get("label", "")))
        top1 = [str(e.get("top1", "")) for e in index["inputs"]]
        if len(expected) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(expected)} expected outputs")
        return GoldenSet(inputs, expected, top1, float(index["atol"]), float(index["min_agreement"]))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"golden set is damaged: {exc}") from None


@dataclass(frozen=True)
class CanaryReport:
    passed: bool
    reason: str  # why it failed ("" when it passed)
    agreement: float
    matched: int
    total: int
    accuracy: float | None  # against the true labels, when the golden inputs have them
    latency_ms: float  # median per-input inference time on this device
    budget_ms: float | None
    mismatches: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **({"reason": self.reason} if self.reason else {}),
                "agreement": round(self.agreement, 4), "matched": self.matched, "total": self.total,
                **({"accuracy": round(self.accuracy, 4)} if self.accuracy is not None else {}),
                "latency_ms": round(self.latency_ms, 3),
                **({"budget_ms": round(self.budget_ms, 3)} if self.budget_ms is not None else {}),
                "mismatches": self.mismatches[:5]}


def canary(model: Model, golden: GoldenSet, min_agreement: float | None = None,
           budget_ms: float | None = None) -> CanaryReport:
    """Run the golden inputs through `model` on this device and compare with the shipped expectations;
    pass when at least `min_agreement` of them match (default: the bundle's own) and the median inference
    time is within `budget_ms` (when given)."""
    floor = golden.min_agreement if min_agreement is None else min_agreement
    results, outputs, times = golden_outputs(model, golden.inputs)
    if len(times) > 1:
        times = times[1:]  # the first invoke pays one-off allocation
    latency = float(np.median(times)) if times else 0.0
    mismatches: list[dict[str, Any]] = []
    matched = 0
    for i, (item, result) in enumerate(zip(golden.inputs, results, strict=True)):
        if golden.top1[i]:
            ok = isinstance(result, Classification) and result.label == golden.top1[i]
            got: Any = result.label if isinstance(result, Classification) else result.task
            want: Any = golden.top1[i]
        else:
            same_shape = outputs.shape[1:] == golden.expected.shape[1:]
            diff = float(np.max(np.abs(outputs[i] - golden.expected[i]))) if same_shape else float("inf")
            ok = diff <= golden.atol
            got, want = f"max difference {diff:.4g}", f"≤ {golden.atol:.4g}"
        matched += ok
        if not ok:
            mismatches.append({"input": item.name, "expected": want, "got": got})
    total = len(golden.inputs)
    agreement = matched / total if total else 0.0
    labelled = [(r, i.label) for r, i in zip(results, golden.inputs, strict=True) if i.label]
    accuracy = (sum(isinstance(r, Classification) and r.label == lab for r, lab in labelled) / len(labelled)
                if labelled and golden.top1[0] else None)
    reason = ""
    if agreement < floor:
        reason = f"{matched} of {total} golden inputs match the shipped expectations (needs {floor:.0%})"
    elif budget_ms is not None and latency > budget_ms:
        reason = f"inference takes {latency:.2f} ms per input, over the budget of {budget_ms:.2f} ms"
    return CanaryReport(not reason, reason, agreement, matched, total, accuracy, latency, budget_ms, mismatches)
