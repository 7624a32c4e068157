"""What the device needs to decide and to notice drift, measured on the evaluation set at conversion time:
recommended per-label confidence thresholds, and the drift reference (predicted-class frequencies and the
confidence histogram of the converted model; input-statistic histograms)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from converter.datasets import load_region
from converter.evaluate import Evaluation
from edge_infer.gates.quality import assess
from edge_infer.manifest import SensorInputSpec
from edge_infer.monitor import channel_means
from edge_infer.preprocess import model_view

CONFIDENCE_EDGES = [round(x, 2) for x in np.linspace(0.0, 1.0, 11)]
THRESHOLD_GRID = [round(x, 2) for x in np.arange(0.30, 1.0, 0.01)]


def recommended_thresholds(predictions: Sequence[str], confidences: np.ndarray, truth: Sequence[str],
                           labels: Sequence[str], precision: float, default: float,
                           min_support: int = 10) -> dict[str, float]:
    """Labels whose predictions at the `default` threshold are right less than `precision` of the time get a
    higher one: the lowest at which they reach it, on at least `min_support` predictions (at most 0.99).
    Thresholds are only ever raised: a label the default already serves gets no entry."""
    out: dict[str, float] = {}
    pred = np.asarray(predictions)
    right = pred == np.asarray(truth)
    for label in labels:
        mine = pred == label
        at_default = mine & (confidences >= default)
        if at_default.sum() < min_support or right[at_default].mean() >= precision:
            continue
        out[label] = 0.99
        for t in (t for t in THRESHOLD_GRID if t > default):
            kept = mine & (confidences >= t)
            if kept.sum() < min_support:
                break
            if right[kept].mean() >= precision:
                out[label] = float(t)
                break
    return out


def histogram(values: np.ndarray, edges: Sequence[float]) -> list[float]:
    """Fractions per bin (values outside the edges are clipped into the first/last bin)."""
    clipped = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=np.asarray(edges))
    return [round(float(c) / max(1, len(values)), 6) for c in counts]


def drift_reference(predictions: Sequence[str], confidences: np.ndarray, labels: Sequence[str],
                    inputs: dict[str, np.ndarray], uncertain_rate: float | None = None) -> dict[str, Any]:
    """Output statistics of the converted model on held-out data (classification: predicted-class frequencies,
    the confidence histogram, the uncertain rate at the recommended thresholds), and input-statistic histograms
    (bin edges at the deciles of the reference values, so every bin starts equally full)."""
    pred = list(predictions)
    doc: dict[str, Any] = {"samples": len(pred) or len(next(iter(inputs.values()), [])), "inputs": {}}
    if pred:
        doc["classes"] = {label: round(pred.count(label) / len(pred), 6) for label in labels}
        doc["confidence"] = {"edges": CONFIDENCE_EDGES, "fractions": histogram(confidences, CONFIDENCE_EDGES)}
    if uncertain_rate is not None:
        doc["uncertain_rate"] = round(uncertain_rate, 6)
    for name, values in inputs.items():
        edges = np.unique(np.percentile(values, np.linspace(0, 100, 11)))
        if len(edges) < 3:
            continue
        edges = [round(float(e), 6) for e in edges]
        doc["inputs"][name] = {"edges": edges, "fractions": histogram(values, edges)}
    return doc

def decision_reference(args: argparse.Namespace, evals: dict[str, Evaluation], examples: list[Any], spec: Any,
                        labels: list[str], docs: dict[str, dict[str, Any]], report: dict[str, Any]) -> None:
    """Per variant: recommended per-label thresholds (labelled eval) and the drift reference, into its manifest."""
    inputs: dict[str, np.ndarray] = {}
    if isinstance(spec, SensorInputSpec):
        windows = np.stack([ex.window for ex in examples])
        inputs = {f"{c}.mean": windows[:, :, i].mean(axis=1) for i, c in enumerate(spec.channels)}
        inputs |= {f"{c}.std": windows[:, :, i].std(axis=1) for i, c in enumerate(spec.channels)}
    else:
        views = [(img, model_view(img, spec)) for img in
                 (load_region(ex.path, spec) for ex in examples)]
        qualities = [assess(img, view) for img, view in views]
        inputs = {m: np.array([getattr(q, m) for q in qualities]) for m in ("brightness", "contrast", "sharpness")}
        if spec.channels == 3:  # colour casts: the per-channel means, as `channel_means` measures them live
            means = np.array([channel_means(np.asarray(view)) for _, view in views])
            inputs |= {f"mean.{c}": means[:, i] for i, c in enumerate("RGB")}
    report["thresholds"] = {}
    for mode, ev in evals.items():
        if args.task != "classification":  # inputs only: the output statistics the monitor follows are classes
            docs[mode].setdefault("reference", {})["drift"] = drift_reference([], np.zeros(0), [], inputs)
            continue
        confidences = ev.scores.max(axis=1)
        recommended: dict[str, float] = {}
        if ev.labelled:
            recommended = recommended_thresholds(ev.predictions, confidences, ev.labels, labels, args.precision,
                                                 args.threshold)
            docs[mode]["thresholds"] = {"default": args.threshold, "labels": recommended}
            report["thresholds"][mode] = recommended
        uncertain = float(np.mean([c < recommended.get(p, args.threshold)
                                   for p, c in zip(ev.predictions, confidences, strict=True)]))
        drift = drift_reference(ev.predictions, confidences, labels, inputs, uncertain)
        docs[mode].setdefault("reference", {})["drift"] = drift
