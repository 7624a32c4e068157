"""Every quantization mode on a MobileNetV2-shaped model (random weights: the op mix is what matters) and on
the sensor model: each converts, runs under LiteRT (the evaluation) and under tflite-runtime 2.14 (the
`--target-python` check) — or, for `dynamic` when TensorFlow wrote op versions tflite-runtime 2.14 predates,
is refused by the target check — and the report's agreement matches an independent evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.converter.test_convert_to_device import edge_convert
from tests.converter.test_target import ARMV7L, target_python
from tests.helpers import independent

MODES = {"float32", "float16", "dynamic", "int8", "int8-only", "int16x8"}


def check_target_runs(doc: dict, returncode: int, unloadable: set[str] = frozenset()) -> None:
    """Each variant either ran under tflite-runtime 2.14 or was refused as needing a newer runtime (only
    `dynamic` may be: TF 2.21 writes some of its ops in versions 2.14 predates); `unloadable` variants must
    be refused, cleanly, as not loading at all."""
    refused = doc.get("refused", {})
    assert set(refused) <= {"dynamic"} | unloadable and unloadable <= set(refused)
    assert returncode == (3 if refused else 0)
    for mode in unloadable:
        assert refused[mode].startswith("the converted model does not load")
    variants = doc["target"]["variants"]
    assert set(variants) == MODES - unloadable
    for mode, verdict in variants.items():
        if mode in refused:
            assert "needs a TFLite runtime" in refused[mode]
        else:
            assert verdict["ran_on"] == "tflite_runtime 2.14.0", (mode, verdict)


def test_mobilenetv2_shaped_model_in_every_mode(tmp_path: Path) -> None:
    import keras
    from sklearn.datasets import load_sample_images

    keras.utils.set_random_seed(1)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    model.save(tmp_path / "mnv2.keras")
    rng = np.random.default_rng(2)
    calib, evalset = tmp_path / "calib" / "c0", tmp_path / "eval"
    calib.mkdir(parents=True)
    evalset.mkdir()
    for i, photo in enumerate(load_sample_images().images * 16):  # 20 calibration crops, 12 to evaluate on
        y, x = rng.integers(0, 427 - 200), rng.integers(0, 640 - 200)
        crop = Image.fromarray(photo[y:y + 200, x:x + 200])
        crop.save((calib if i < 20 else evalset) / f"{i:03d}.jpg", quality=90)
    (tmp_path / "labels.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    args = [str(tmp_path / "mnv2.keras"), "--mode", "all", "--calibration", str(tmp_path / "calib"),
            "--calibration-samples", "20", "--eval", str(evalset), "--labels", str(tmp_path / "labels.txt"),
            "--out", str(tmp_path / "m.tflite"), "--report", str(tmp_path / "r.json"), "--scale", str(2 / 255),
            "--offset", "-1", "--target", str(ARMV7L)]
    args += ["--target-python", target_python()]
    proc = edge_convert(*args)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    ev = doc["evaluation"]
    # random weights drive int16x8's depthwise convolutions into an integer-overflow check at load time: the
    # converter must report that variant as not loading (not crash), and carry on with the others
    unloadable = {"int16x8"}
    assert not ev["labelled"] and set(ev["variants"]) == MODES - unloadable
    assert "DEPTHWISE_CONV_2D" in doc["variants"]["int16x8"]["error"]
    check_target_runs(doc, proc.returncode, unloadable)
    # each variant's agreement with float32, measured again by another route: TensorFlow's interpreter and numpy
    # preprocessing from the manifest (tests/helpers/independent.py), against what the report claims
    files = independent.images(evalset)
    reference = independent.predict(tmp_path / "m-float32.tflite", files)
    for mode in MODES - {"float32"} - unloadable:
        assert "accuracy" not in ev["variants"][mode]
        if mode in doc.get("refused", {}):
            continue  # not written
        predicted = independent.predict(tmp_path / f"m-{mode}.tflite", files)
        agreement = sum(a == b for a, b in zip(predicted, reference, strict=True)) / len(files)
        assert agreement == pytest.approx(ev["variants"][mode]["agreement_with_float32"], abs=0.05), mode
