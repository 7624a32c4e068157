"""The accuracy budget: a model engineered to quantize badly is refused, with the numbers; one that
quantizes well passes; `--mode all` compares every mode and keeps only the variants within budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.converter.conftest import DigitsWorkspace
from tests.converter.test_convert_to_device import edge_convert


@pytest.fixture(scope="module")
def badly_quantizing(digits: DigitsWorkspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model with one channel of its first convolution scaled up 10,000× (and the next layer's
    weights for it scaled down to match): the float model computes exactly the same function, but that one
    channel stretches the layer's activation range so that int8 has no resolution left for the others."""
    import keras

    model = keras.models.load_model(digits.model)
    conv1, conv2 = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    kernel, bias = conv1.get_weights()
    kernel[..., 0] *= 1e4
    bias[0] *= 1e4
    conv1.set_weights([kernel, bias])
    kernel2, bias2 = conv2.get_weights()
    kernel2[:, :, 0, :] /= 1e4
    conv2.set_weights([kernel2, bias2])
    x = np.random.default_rng(0).random((8, 16, 16, 1)).astype(np.float32)
    original = keras.models.load_model(digits.model)
    assert np.allclose(model.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-4)
    out = tmp_path_factory.mktemp("bad") / "wide-range.keras"
    model.save(out)
    return out


def test_a_model_that_quantizes_badly_trips_the_budget(
    digits: DigitsWorkspace, badly_quantizing: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "bad.tflite", tmp_path / "bad.json"
    proc = edge_convert(str(badly_quantizing), "--mode", "int8-only", "--calibration", str(digits.train),
                        "--eval", str(digits.test), "--labels", str(digits.labels), "--out", str(out),
                        "--report", str(report), "--max-accuracy-drop", "1.0")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not out.exists()  # refused: nothing a user could copy to a device by mistake
    doc = json.loads(report.read_text())
    drop = doc["evaluation"]["variants"]["int8-only"]["accuracy_drop_points"]
    assert drop > 1.0 and "int8-only" in doc["over_budget"]
    assert "refused int8-only: top-1" in proc.stderr and "over the budget of 1" in proc.stderr
    assert "✗ refused" in proc.stdout and (tmp_path / "bad.md").exists()
    print(f"\nwide-range model: int8-only loses {drop:.1f} points (budget 1.0) → refused, exit 3")


def test_every_mode_compared_and_only_those_within_budget_written(
    digits: DigitsWorkspace, badly_quantizing: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.tflite"
    proc = edge_convert(str(badly_quantizing), "--mode", "all", "--calibration", str(digits.train),
                        "--calibration-samples", "100", "--eval", str(digits.test), "--labels", str(digits.labels),
                        "--out", str(out), "--report", str(tmp_path / "m.json"), "--max-accuracy-drop", "1.0")
    doc = json.loads((tmp_path / "m.json").read_text())
    variants = doc["evaluation"]["variants"]
    assert set(variants) == {"float32", "float16", "dynamic", "int8", "int8-only", "int16x8"}
    over = set(doc["over_budget"])
    assert "int8-only" in over and "float32" not in over
    assert proc.returncode == 3
    for mode in variants:
        path = tmp_path / f"m-{mode}.tflite"
        assert path.exists() == (mode not in over), mode
        if mode not in over:
            assert variants[mode]["accuracy_drop_points" if mode != "float32" else "accuracy"] is not None
    assert (tmp_path / "m.md").read_text().count("|") > 50 and (tmp_path / "m.png").stat().st_size > 5000


def test_auto_fallback_keeps_the_worst_layers_in_float_until_the_budget_is_met(
    digits: DigitsWorkspace, badly_quantizing: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "fixed.tflite", tmp_path / "fixed.json"
    proc = edge_convert(str(badly_quantizing), "--mode", "int8", "--calibration", str(digits.train),
                        "--calibration-samples", "100", "--eval", str(digits.test), "--labels", str(digits.labels),
                        "--out", str(out), "--report", str(report), "--max-accuracy-drop", "1.0", "--auto-fallback")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(report.read_text())
    fallback = doc["fallback"]
    assert fallback["within_budget"] and fallback["layers_kept_in_float"]
    steps = fallback["steps"]
    assert steps[0]["accuracy_drop_points"] > 1.0 and steps[-1]["accuracy_drop_points"] <= 1.0
    assert [s["kept_in_float"] for s in steps] == fallback["layers_kept_in_float"]
    # the worst layer by RMSE/scale is tried first, as the per-layer table ranks it
    assert steps[0]["kept_in_float"] == doc["layer_errors"][0]["tensor"]
    assert doc["evaluation"]["variants"]["int8"]["accuracy_drop_points"] <= 1.0
    assert out.exists() and "auto-fallback:" in proc.stderr and "kept in float" in proc.stderr
    # an independent check of the written bundle: another runtime, preprocessing and ground truth of its own
    from tests.helpers import independent

    measured = independent.accuracy(out, digits.test)
    assert measured == pytest.approx(doc["evaluation"]["variants"]["int8"]["accuracy"], abs=0.01), measured
    print(f"\nauto-fallback: {len(steps)} step(s), kept in float: "
          f"{[t.split(';')[0] for t in fallback['layers_kept_in_float']]}")


def test_auto_fallback_is_refused_for_integer_only_models(digits: DigitsWorkspace, tmp_path: Path) -> None:
    proc = edge_convert(str(digits.model), "--mode", "int8-only", "--calibration", str(digits.train),
                        "--eval", str(digits.test), "--labels", str(digits.labels), "--out",
                        str(tmp_path / "x.tflite"), "--max-accuracy-drop", "1", "--auto-fallback")
    assert proc.returncode == 2 and "use --mode int8" in proc.stderr
