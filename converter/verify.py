"""The float32 bundle checked against the source model it came from, on the labelled eval set: the source model
is fed the same tensors the device computes (the chosen input contract), so its top-1 is what the model can do
with this input; a float32 bundle far below it, or near chance, is refused (exit 3) unless `--force`."""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.contract import near_chance
from converter.datasets import Example, calibration_tensors
from converter.errors import ConvertRefused
from converter.evaluate import Evaluation
from converter.source import SourceModel
from edge_infer.manifest import ImageInputSpec

MAX_DROP = 0.05  # float32 this many points (as a fraction) below the source model: the conversion broke it
BATCH = 64


def source_predictions(source: SourceModel, examples: list[Example], spec: ImageInputSpec,
                       labels: list[str]) -> list[str]:
    """The source model's top-1 label per example, fed in batches (a large eval set never sits in memory)."""
    out: list[str] = []
    tensors = calibration_tensors(examples, spec)
    while True:
        batch = [x for _, x in zip(range(BATCH), tensors, strict=False)]
        if not batch:
            return out
        scores = source.predict(np.stack(batch).astype(np.float32))
        out.extend(labels[i] for i in scores.reshape(len(batch), -1).argmax(axis=1))


def verify_source(source: SourceModel | None, examples: list[Example], spec: ImageInputSpec, labels: list[str],
                  float32: Evaluation, force: bool) -> dict[str, Any]:
    """Source-model top-1 and its agreement with the float32 bundle; refuses a bundle that lost the model, or
    one near chance. Without a source model (a wrapped .tflite) only the chance check applies."""
    if source is None:
        if near_chance(float32.accuracy, len(labels)) and not force:
            raise ConvertRefused(f"the model is near chance on the labelled eval set ({float32.accuracy * 100:.1f}% "
                                 "top-1): the labels or the input range may not fit it; pass --force to write it "
                                 "anyway")
        return {}
    predicted = source_predictions(source, examples, spec, labels)
    truth = [ex.label for ex in examples]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    agreement = float(np.mean([p == q for p, q in zip(predicted, float32.predictions, strict=True)]))
    doc = {"accuracy": round(accuracy, 6), "top1_agreement_float32": round(agreement, 6), "examples": len(truth)}
    if force:
        return doc
    numbers = (f"source model {accuracy * 100:.1f}% top-1, float32 bundle {float32.accuracy * 100:.1f}% "
               f"(agreement {agreement * 100:.1f}%)")
    if accuracy - float32.accuracy > MAX_DROP:
        raise ConvertRefused(f"the float32 bundle does not do what the source model does on the eval set: {numbers}"
                             "; pass --force to write it anyway")
    if near_chance(float32.accuracy, len(labels)):
        raise ConvertRefused(f"the float32 bundle is near chance on the labelled eval set ({numbers}): the labels "
                             "may not match the model's outputs or its training data; pass --force to write it anyway")
    return doc
