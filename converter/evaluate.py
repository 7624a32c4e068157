"""Evaluate converted models with the device's own code path (decode → preprocess → runtime → classify)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from converter.datasets import Example, load_image
from edge_infer.bundle import Bundle
from edge_infer.pipeline import Classifier


@dataclass(frozen=True)
class Evaluation:
    predictions: list[str]
    labels: list[str]
    latency_ms: float
    runtime: str

    @property
    def accuracy(self) -> float:
        return sum(p == t for p, t in zip(self.predictions, self.labels, strict=True)) / len(self.labels)

    def agreement(self, other: Evaluation) -> float:
        return sum(a == b for a, b in zip(self.predictions, other.predictions, strict=True)) / len(self.labels)

    def per_class(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for label in sorted(set(self.labels)):
            idx = [i for i, t in enumerate(self.labels) if t == label]
            out[label] = sum(self.predictions[i] == label for i in idx) / len(idx)
        return out


def evaluate(bundle: Bundle, examples: list[Example], variant: str) -> Evaluation:
    classifier = Classifier(bundle, threads=1)
    predictions: list[str] = []
    spent = 0.0
    for ex in tqdm(examples, desc=f"evaluate {variant}", unit="input", file=sys.stderr, leave=False, disable=None):
        if ex.window is not None:
            tensor = classifier.window_tensor(ex.window)
        else:
            tensor = classifier.prepare(load_image(ex.path, classifier.draft_size))
        started = time.perf_counter()
        predictions.append(classifier.infer(tensor).label)
        spent += time.perf_counter() - started
    rt = classifier.engine.runtime
    return Evaluation(
        predictions=predictions,
        labels=[ex.label for ex in examples],
        latency_ms=spent / len(examples) * 1000.0,
        runtime=f"{rt.name} {rt.version}",
    )


def summarize(evaluation: Evaluation, size: int, reference: Evaluation | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "size_bytes": size,
        "accuracy": round(evaluation.accuracy, 6),
        "per_class_accuracy": {k: round(v, 6) for k, v in evaluation.per_class().items()},
        "latency_ms": round(evaluation.latency_ms, 4),
    }
    if reference is not None:
        doc["agreement_with_float32"] = round(evaluation.agreement(reference), 6)
        doc["accuracy_drop_points"] = round((reference.accuracy - evaluation.accuracy) * 100.0, 4)
    return doc
