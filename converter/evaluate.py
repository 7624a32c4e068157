"""Evaluate converted models with the device's own code path (decode → preprocess → runtime → classify; for the
other tasks, the dequantized outputs against float32's)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from converter.datasets import Example, load_region
from converter.errors import ConvertError
from edge_infer.bundle import Bundle
from edge_infer.manifest import ManifestError, parse_manifest
from edge_infer.model import Model
from edge_infer.tasks.outputs import dequantize


@dataclass(frozen=True)
class Evaluation:
    predictions: list[str]
    labels: list[str]  # true labels ("" when the eval set is unlabelled)
    latency_ms: float
    runtime: str
    scores: np.ndarray  # (N, classes): the probabilities the device computes, in label order
    label_names: tuple[str, ...] = ()
    task: str = "classification"

    def pixel_agreement(self, other: Evaluation) -> float:
        """Segmentation: the share of pixels whose top class is the same in both (outputs are per-pixel scores,
        one channel per label)."""
        n = len(self.label_names)
        mine, theirs = self.scores.reshape(-1, n).argmax(axis=1), other.scores.reshape(-1, n).argmax(axis=1)
        return float(np.mean(mine == theirs))

    @property
    def labelled(self) -> bool:
        return all(self.labels)

    @property
    def accuracy(self) -> float:
        return sum(p == t for p, t in zip(self.predictions, self.labels, strict=True)) / len(self.labels)

    def top_k_accuracy(self, k: int) -> float:
        index = {name: i for i, name in enumerate(self.label_names)}
        top = np.argsort(-self.scores, axis=1, kind="stable")[:, :k]
        return float(np.mean([index[t] in row for t, row in zip(self.labels, top, strict=True)]))

    def confusion(self) -> list[list[int]]:
        """Rows: true label, columns: predicted label, in label order."""
        index = {name: i for i, name in enumerate(self.label_names)}
        matrix = np.zeros((len(index), len(index)), dtype=int)
        for t, p in zip(self.labels, self.predictions, strict=True):
            matrix[index[t], index[p]] += 1
        return matrix.tolist()

    def agreement(self, other: Evaluation) -> float:
        return sum(a == b for a, b in zip(self.predictions, other.predictions, strict=True)) / len(self.labels)

    def per_class(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for label in sorted(set(self.labels)):
            idx = [i for i, t in enumerate(self.labels) if t == label]
            out[label] = sum(self.predictions[i] == label for i in idx) / len(idx)
        return out


def evaluate(bundle: Bundle, examples: list[Example], variant: str) -> Evaluation:
    model = Model(bundle, top_k=len(bundle.manifest.labels))
    names = bundle.manifest.labels
    index = {name: i for i, name in enumerate(names)}
    predictions: list[str] = []
    scores = np.zeros((len(examples), len(names)), dtype=np.float32)
    spent = 0.0
    classification = bundle.manifest.task == "classification"
    rows: list[np.ndarray] = []
    for ex in tqdm(examples, desc=f"evaluate {variant}", unit="input", file=sys.stderr, leave=False, disable=None):
        if ex.window is not None:
            tensor = model.window_tensor(ex.window)
        else:
            tensor = model.view_tensor(model.view(load_region(ex.path, model.manifest.input)))  # type: ignore[arg-type]
        started = time.perf_counter()
        if not classification:  # other tasks: compare the dequantized outputs themselves with float32
            outputs = model.engine.run(tensor)
            spent += time.perf_counter() - started
            ssd = bundle.manifest.task == "detection" and bundle.manifest.output.format == "ssd"
            rows.append(np.zeros(0, np.float32) if ssd else  # after NMS, slots do not line up between variants
                        np.concatenate([dequantize(o, t).ravel() for o, t in zip(outputs, model.engine.outputs,
                                                                                 strict=True)]))
            predictions.append("")
            continue
        result = model.infer(tensor)
        spent += time.perf_counter() - started
        predictions.append(result.label)
        for name, score in result.top_k:
            scores[len(predictions) - 1, index[name]] = score
    if not classification:
        scores = np.stack(rows)
    rt = model.engine.runtime
    return Evaluation(
        predictions=predictions,
        labels=[ex.label for ex in examples],
        latency_ms=spent / len(examples) * 1000.0,
        runtime=f"{rt.name} {rt.version}",
        scores=scores,
        label_names=names,
        task=bundle.manifest.task,
    )


def summarize(evaluation: Evaluation, size: int, reference: Evaluation | None, labels: list[str]) -> dict[str, Any]:
    """A variant's line in the report: accuracy (top-1, top-3, per class, confusion) when labelled; always
    latency, and against float32 the agreement and the output error (max |Δ|, RMSE of the probabilities)."""
    doc: dict[str, Any] = {"size_bytes": size, "latency_ms": round(evaluation.latency_ms, 4)}
    if evaluation.labelled:
        doc["accuracy"] = round(evaluation.accuracy, 6)
        doc["top3_accuracy"] = round(evaluation.top_k_accuracy(min(3, len(labels))), 6)
        doc["per_class_accuracy"] = {k: round(v, 6) for k, v in evaluation.per_class().items()}
        if len(labels) <= 50:
            doc["confusion"] = evaluation.confusion()
    if reference is not None and evaluation.scores.size:
        if any(evaluation.predictions):
            doc["agreement_with_float32"] = round(evaluation.agreement(reference), 6)
        elif evaluation.task == "segmentation" and evaluation.scores.shape[1] % max(len(labels), 1) == 0:
            doc["agreement_with_float32"] = round(evaluation.pixel_agreement(reference), 6)  # per pixel
        diff = evaluation.scores - reference.scores
        doc["output_max_abs_error"] = round(float(np.abs(diff).max()), 6)
        doc["output_rmse"] = round(float(np.sqrt(np.mean(diff**2))), 6)
        if evaluation.labelled:
            doc["accuracy_drop_points"] = round((reference.accuracy - evaluation.accuracy) * 100.0, 4)
    return doc


def in_memory_bundle(out: Path, model_bytes: bytes, doc: dict[str, Any]) -> Bundle:
    """A bundle that exists only in memory (model bytes + manifest), to evaluate a variant before writing it."""
    try:
        return Bundle(path=out, model_bytes=model_bytes, manifest=parse_manifest(doc))
    except ManifestError as exc:
        raise ConvertError(f"invalid manifest: {exc}") from None


def over_budget(report: dict[str, Any], budget: float | None) -> dict[str, str]:
    """Variants whose top-1 accuracy drop exceeds `--max-accuracy-drop`, with the numbers."""
    if budget is None:
        return {}
    evaluation = report.get("evaluation", {})
    if not evaluation.get("labelled"):
        raise ConvertError("--max-accuracy-drop needs a labelled --eval set (<dir>/<label>/...)")
    out = {}
    base = next(iter(evaluation["variants"].values()))["accuracy"] * 100  # float32 (the first variant)
    for mode, ev in evaluation["variants"].items():
        drop = ev.get("accuracy_drop_points", 0.0)
        if drop > budget:
            out[mode] = (f"top-1 {base:.2f}% → {ev['accuracy'] * 100:.2f}%, a drop of {drop:.2f} points, over the "
                         f"budget of {budget:g}")
    return out
