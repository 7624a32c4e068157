"""Recommended per-label thresholds and the drift reference, measured at conversion time."""

from __future__ import annotations

import numpy as np

from converter.calibrate_decisions import drift_reference, histogram, recommended_thresholds
from edge_infer.bundle import load_bundle
from tests.conftest import DEMO


def test_a_label_the_model_gets_wrong_when_unsure_gets_a_higher_threshold() -> None:
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.choice(["cat", "dog"], n).tolist()
    confidences = rng.uniform(0.5, 1.0, n)
    predictions = list(truth)
    for i in range(n):  # "dog" predictions below 0.8 are wrong half of the time
        if truth[i] == "cat" and confidences[i] < 0.8 and rng.random() < 0.5:
            predictions[i] = "dog"
    out = recommended_thresholds(predictions, confidences, truth, ["cat", "dog"], precision=0.97, default=0.5)
    assert "cat" not in out  # always right: the default serves it
    assert 0.78 <= out["dog"] <= 0.85


def test_histograms_and_drift_reference_shapes() -> None:
    assert histogram(np.array([0.05, 0.15, 0.95, 1.0, 2.0]), [0.0, 0.5, 1.0]) == [0.4, 0.6]
    ref = drift_reference(["a", "b", "a", "a"], np.array([0.9, 0.6, 0.99, 0.7]), ["a", "b", "c"],
                          {"brightness": np.linspace(10, 200, 50)})
    assert ref["classes"] == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert abs(sum(ref["confidence"]["fractions"]) - 1) < 1e-6
    assert len(ref["inputs"]["brightness"]["edges"]) == 11


def test_the_demo_bundle_carries_its_thresholds_and_drift_reference() -> None:
    manifest = load_bundle(DEMO / "digits-int8-only.tflite").manifest
    drift = manifest.raw["reference"]["drift"]
    assert drift["samples"] == 450 and set(drift["classes"]) == set(manifest.labels)
    assert {"brightness", "contrast", "sharpness"} <= set(drift["inputs"])
    report = __import__("json").loads((DEMO / "digits-report.json").read_text())
    assert manifest.label_thresholds == report["thresholds"]["int8-only"]  # what the report says is what ships
    assert all(manifest.default_threshold < t <= 0.99 for t in manifest.label_thresholds.values())
