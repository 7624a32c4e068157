"""`edge-convert` never guesses the input range (#16): tutorial-style models (Rescaling first, an adapted
Normalization first) and a plain model trained on [-1, 1] convert with no normalisation flag to bundles that do on
the device what the source model does; flags that contradict the model, labels that do not fit it and data that
cannot say are refused with the fix, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.converter.contract_checks import convert_without_flags, device_top1, edge_convert, last_line, source_top1
from tests.converter.input_models import TRAINED_ON, build

HOW = {"rescaling": "model layer", "normalization": "model layer", "minus1": "inferred"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    roots = {}
    for kind in HOW:
        roots[kind] = tmp_path_factory.mktemp(kind)
        build(kind, roots[kind])
    return roots


@pytest.mark.parametrize("kind", list(HOW))
def test_a_model_converts_with_no_flag_to_a_bundle_that_does_what_the_source_model_does(
        kind: str, models: dict[str, Path], tmp_path: Path) -> None:
    root = models[kind]
    # the tutorial model takes the default mode (int8-only); the others float32 — the range is the point here,
    # and MobileNetV3's test quantizes too
    mode = ["--calibration-samples", "100"] if kind == "rescaling" else ["--mode", "float32"]
    proc, report = convert_without_flags(root, tmp_path / "m.tflite", *mode)
    assert proc.returncode == 0, proc.stderr[-2000:]
    contract = report["input_contract"]
    assert (contract["range"], contract["determined_by"]) == (TRAINED_ON[kind], HOW[kind]), contract
    assert f"(stretch), {TRAINED_ON[kind]} — " in proc.stderr  # the contract line on stderr
    source, truth = source_top1(kind, root)
    device = device_top1(tmp_path / "m.tflite", root)
    agreement = float(np.mean(source == device))
    print(f"{kind}: {contract['detail']}; source top-1 {np.mean(source == truth):.4f}, {report['mode']} bundle on "
          f"the device {np.mean(device == truth):.4f}, agreement {agreement:.4f}")
    assert agreement >= 0.99
    assert report["evaluation"]["source"]["accuracy"] == pytest.approx(np.mean(source == truth), abs=1e-6)
    assert np.mean(source == truth) > 0.9  # the model learnt something: agreement is not between two guessers


def test_the_tutorial_trap_is_an_error_naming_the_fix(models: dict[str, Path], tmp_path: Path) -> None:
    """The issue's case: a Rescaling(1/255) model given --scale 1/255 on top of it."""
    root, out = models["rescaling"], tmp_path / "m.tflite"
    proc = edge_convert(root / "model.keras", "--scale", 1 / 255, "--calibration", root / "train", "--eval",
                        root / "test", "--labels", root / "labels.txt", "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Rescaling(scale=0.00392157" in last_line(proc) and "drop them" in last_line(proc)
    assert not out.exists()


def test_a_range_the_eval_set_contradicts_is_refused_with_the_range_that_fits(
        models: dict[str, Path], tmp_path: Path) -> None:
    root, out = models["minus1"], tmp_path / "m.tflite"
    proc, _ = convert_without_flags(root, out, "--scale", str(1 / 255))
    assert proc.returncode == 3, proc.stderr[-2000:]
    line = last_line(proc)
    assert line.startswith("edge-convert: refused:") and "--scale 0.00784314 --offset -1" in line, line
    assert not out.exists()
    forced, _ = convert_without_flags(root, out, "--scale", str(1 / 255), "--force", "--mode", "float32")
    assert forced.returncode == 0 and out.exists()  # --force writes what was asked for


def test_labels_that_do_not_fit_the_outputs_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    """The eval folders are named 0–9, the labels file lists them in another order: every range is near chance."""
    root, out = models["rescaling"], tmp_path / "m.tflite"
    shuffled = tmp_path / "labels.txt"
    shuffled.write_text("\n".join(str(d) for d in (3, 7, 0, 9, 1, 5, 8, 2, 6, 4)) + "\n")
    proc = edge_convert(root / "model.keras", "--calibration", root / "train", "--eval", root / "test", "--labels",
                        shuffled, "--out", out)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "labels" in last_line(proc) and "chance" in last_line(proc)
    assert not out.exists()
    shuffled.write_text("\n".join(str(d) for d in range(9)) + "\n")  # nine labels for ten outputs
    nine = tmp_path / "nine"
    for f in sorted((root / "test").glob("[0-8]/*.png"))[::5]:
        (nine / f.parent.name).mkdir(parents=True, exist_ok=True)
        (nine / f.parent.name / f.name).write_bytes(f.read_bytes())
    proc = edge_convert(root / "model.keras", "--calibration", nine, "--labels", shuffled, "--out", out)
    assert proc.returncode == 2 and "model has 10 outputs but 9 labels" in last_line(proc), proc.stderr[-1000:]
    assert not out.exists()


def test_with_nothing_to_tell_the_range_it_is_asked_for(models: dict[str, Path], tmp_path: Path) -> None:
    """No preprocessing layer, no labelled images (an unlabelled calibration folder, no eval): ask, don't guess."""
    root, out = models["minus1"], tmp_path / "m.tflite"
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for f in sorted((root / "train").glob("*/*.png"))[:40]:
        (unlabelled / f"{f.parent.name}-{f.name}").write_bytes(f.read_bytes())
    proc = edge_convert(root / "model.keras", "--calibration", unlabelled, "--labels", root / "labels.txt",
                        "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot tell which input range" in last_line(proc) and "--scale" in last_line(proc)
    assert not out.exists()


def test_data_and_models_of_the_wrong_kind_are_one_line_errors(models: dict[str, Path], tmp_path: Path) -> None:
    """Sensor data for an image model; a model whose input is not an image, converted as one."""
    import keras

    root, out = models["minus1"], tmp_path / "m.tflite"
    csv = tmp_path / "readings.csv"
    csv.write_text("label,x,y,z\nidle,0.1,0.2,0.3\n")
    proc = edge_convert(root / "model.keras", "--calibration", csv, "--labels", root / "labels.txt", "--out", out)
    assert proc.returncode == 2 and "must be a folder" in last_line(proc), proc.stderr[-2000:]
    vector = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    vector.save(tmp_path / "vector.keras")
    proc = edge_convert(tmp_path / "vector.keras", "--calibration", root / "train", "--labels", root / "labels.txt",
                        "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is not an image batch" in last_line(proc) and 'kind = "sensor"' in last_line(proc)
    assert not out.exists()


def test_a_caffe_style_model_is_inferred_with_bgr_and_mean_subtraction(tmp_path: Path) -> None:
    """Keras applications without built-in preprocessing (ResNet50, VGG) expect `preprocess_input`'s "caffe" input:
    BGR, ImageNet mean subtracted. A colour classifier that reads its channels in that order (no training: the
    channel with the largest mean-subtracted value wins) is only right on BGR input; the conversion infers it."""
    import keras

    model = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax", kernel_initializer="identity",
                                                 bias_initializer="zeros")])
    model.save(tmp_path / "colour.keras")
    labels = ["blue", "green", "red"]  # output order = the model's channel order, B G R
    rng = np.random.default_rng(7)
    for split in ("train", "test"):
        for i in range(60):
            name = labels[i % 3]
            rgb = rng.integers(0, 60, 3)
            rgb["rgb".index(name[0])] = rng.integers(190, 256)
            pixels = np.clip(rgb + rng.normal(0, 8, (24, 24, 3)), 0, 255).astype(np.uint8)
            (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "RGB").save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    proc = edge_convert(tmp_path / "colour.keras", "--mode", "float32", "--calibration", tmp_path / "train", "--eval",
                        tmp_path / "test", "--labels", tmp_path / "labels.txt", "--out", tmp_path / "c.tflite",
                        "--report", tmp_path / "r.json", "--golden", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input_contract"]["range"] == "caffe (BGR, mean-subtracted)", report["input_contract"]
    assert report["input"]["color"] == "BGR"
    assert report["evaluation"]["variants"]["float32"]["accuracy"] == 1.0
