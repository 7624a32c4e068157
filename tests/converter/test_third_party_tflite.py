"""Models nobody here trained (#16): a `.tflite` made by TensorFlow's own converter outside edge-convert, carrying
standard TFLite Metadata (written by `tests.helpers.metadata_writer`: the flatbuffers Builder, TF's schema API),
runs on the device with no `[model.input]`, and `edge-convert wrap` makes a full bundle of it, keeping its
quantization; missing, wrong or damaged metadata is a one-line error naming what to add."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_infer.bundle import load_bundle
from edge_infer.config import load_config
from edge_infer.gates.decode import decode_image
from edge_infer.model import Model, model_from_config
from edge_infer.runtime import Engine
from tests.conftest import run_cli, write_config
from tests.converter.conftest import DigitsWorkspace
from tests.converter.contract_checks import edge_convert, last_line
from tests.helpers.metadata_writer import metadata_flatbuffer, with_metadata

LABELS = "\n".join(str(d) for d in range(10)).encode() + b"\n"


def pixels(files: list[Path]) -> np.ndarray:
    """The digits model's training input, by PIL alone: 16×16 grey, bilinear, divided by 255."""
    return np.stack([np.asarray(Image.open(f).convert("L").resize((16, 16), Image.BILINEAR), np.float32)[..., None]
                     / 255.0 for f in files])


@pytest.fixture(scope="module")
def third_party(digits: DigitsWorkspace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits model converted by TensorFlow directly (float32, and full-integer with uint8 I/O), each with
    metadata saying [0, 1] grey input (mean 0, std 255), its labels file and a score threshold of 0.4."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("third-party")
    keras_model = tf.keras.models.load_model(digits.model, compile=False)
    keras_model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    train = pixels(sorted(digits.train.glob("*/*.png"))[::4])
    out = {}
    for kind in ("float", "uint8"):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved"))
        if kind == "uint8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([x[None]] for x in train)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.uint8
        plain = converter.convert()
        (root / f"{kind}-plain.tflite").write_bytes(plain)
        meta = metadata_flatbuffer(mean=[0.0], std=[255.0], color_space=2, threshold=0.4)
        out[kind] = root / f"{kind}.tflite"
        out[kind].write_bytes(with_metadata(plain, meta, {"labels.txt": LABELS}))
        out[f"{kind}-plain"] = root / f"{kind}-plain.tflite"
    test_files = sorted(digits.test.glob("*/*.png"))
    source = keras_model.predict(pixels(test_files), verbose=0).argmax(axis=1)
    np.save(root / "source.npy", source)
    out["source"] = root / "source.npy"
    return out


def device_top1(model: Model, folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*/*.png"))
    return np.array([int(model.infer(model.prepare(decode_image(f.read_bytes()))).label) for f in files])


def config_for(tmp_path: Path, bundle: Path, extra: str = "") -> Path:
    cfg = write_config(tmp_path / "c.toml", bundle=bundle, source=tmp_path / "in", state=tmp_path / "state", port=1)
    if extra:
        cfg.write_text(cfg.read_text().replace("threads = 1\n", f"threads = 1\n{extra}\n"))
    return cfg


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_a_tflite_with_metadata_runs_on_the_device_with_no_input_config(
        kind: str, third_party: dict[str, Path], digits: DigitsWorkspace, tmp_path: Path) -> None:
    cfg = config_for(tmp_path, third_party[kind])
    checked = run_cli("check", "--config", str(cfg))
    assert "bundle   ok" in checked.stdout and "classification, 10 labels" in checked.stdout, checked.stdout
    model = model_from_config(load_config(cfg).model)
    assert model.manifest.labels == tuple(str(d) for d in range(10))
    assert model.thresholds.default == pytest.approx(0.4)
    device = device_top1(model, digits.test)
    agreement = float(np.mean(device == np.load(third_party["source"])))
    print(f"plain {kind} .tflite with metadata on the device: top-1 agreement with the Keras model {agreement:.4f}")
    assert agreement >= (0.99 if kind == "float" else 0.97)


def test_wrap_makes_a_full_bundle_and_keeps_the_quantization(
        third_party: dict[str, Path], digits: DigitsWorkspace, tmp_path: Path) -> None:
    out, report = tmp_path / "wrapped.tflite", tmp_path / "r.json"
    proc = edge_convert("wrap", third_party["uint8"], "--calibration", digits.train, "--eval", digits.test,
                        "--out", out, "--report", report)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(report.read_text())
    assert doc["input_contract"]["determined_by"] == "metadata" and doc["input_contract"]["range"] == "[0, 1]"
    bundle = load_bundle(out)
    manifest = bundle.manifest
    original = third_party["uint8"].read_bytes()  # the model as it came: its flatbuffer, then its labels zip
    assert original.startswith(bundle.model_bytes) and original[len(bundle.model_bytes):].startswith(b"PK")
    assert Engine(bundle.model_bytes).inputs[0].dtype == np.uint8
    assert manifest.labels == tuple(str(d) for d in range(10))
    assert manifest.raw["thresholds"]["default"] == pytest.approx(0.4)
    assert manifest.raw["reference"]["image_quality"] and manifest.raw["reference"]["drift"]
    with zipfile.ZipFile(out) as zf:
        assert len([n for n in zf.namelist() if n.startswith("golden/") and n.endswith(".png")]) == 16
    wrapped = device_top1(Model(bundle), digits.test)
    plain_model = device_top1(model_from_config(load_config(config_for(tmp_path, third_party["uint8"])).model),
                              digits.test)
    assert np.array_equal(wrapped, plain_model)  # same model, same preprocessing: the same answers
    assert doc["evaluation"]["variants"]["int8-only"]["accuracy"] == pytest.approx(
        np.mean(wrapped == np.array([int(f.parent.name) for f in sorted(digits.test.glob("*/*.png"))])), abs=1e-9)


def test_missing_or_wrong_metadata_is_a_one_line_error_naming_what_to_add(
        third_party: dict[str, Path], digits: DigitsWorkspace, tmp_path: Path) -> None:
    plain = third_party["float-plain"].read_bytes()
    cases = {
        "none.tflite": (plain, "[model.input]"),
        "no-norm.tflite": (with_metadata(plain, metadata_flatbuffer(mean=None, std=None, color_space=2),
                                         {"labels.txt": LABELS}), "does not say how to normalise"),
        "rgb.tflite": (with_metadata(plain, metadata_flatbuffer(mean=[0.0], std=[255.0], color_space=1),
                                     {"labels.txt": LABELS}), "colour RGB"),
        "three-means.tflite": (with_metadata(plain, metadata_flatbuffer(mean=[0, 0, 0], std=[255.0], color_space=2),
                                             {"labels.txt": LABELS}), "has 3 values"),
    }
    good = third_party["float"].read_bytes()
    damaged = bytearray(good)
    at = good.index(b"M001")  # the metadata flatbuffer: its root offset made to point far outside it
    damaged[at - 4:at] = (2**31 - 1).to_bytes(4, "little")
    cases["damaged.tflite"] = (bytes(damaged), "TFLite Metadata cannot be read")
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        proc = run_cli("check", "--config", str(config_for(tmp_path, tmp_path / name)))
        assert proc.returncode != 0, (name, proc.stdout)
        problem = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if name in line]
        assert len(problem) == 1 and expected in problem[0] and "[model.input]" in problem[0], (name, problem)
        assert "edge-convert wrap" in problem[0] or name not in ("none.tflite", "no-norm.tflite"), problem
    # no labels in the model and none given: never the folders' sorted names (only the model's maker knows the order)
    proc = edge_convert("wrap", tmp_path / "none.tflite", "--calibration", digits.train, "--eval", digits.test,
                        "--out", tmp_path / "w.tflite")
    assert proc.returncode == 2 and "no labels" in last_line(proc), proc.stderr[-1000:]
    proc = edge_convert("wrap", tmp_path / "damaged.tflite", "--out", tmp_path / "w.tflite")
    assert proc.returncode == 2 and "metadata" in last_line(proc), proc.stderr[-1000:]
    assert not (tmp_path / "w.tflite").exists()


def test_a_model_without_metadata_is_wrapped_from_flags_or_the_labelled_images(
        third_party: dict[str, Path], digits: DigitsWorkspace, tmp_path: Path) -> None:
    """No metadata: labels from a labelmap file (`0 zero` lines), the range inferred from the labelled eval set."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    labelmap = tmp_path / "labelmap.txt"
    labelmap.write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    renamed = tmp_path / "eval"
    for f in sorted(digits.test.glob("*/*.png")):
        (renamed / names[int(f.parent.name)]).mkdir(parents=True, exist_ok=True)
        (renamed / names[int(f.parent.name)] / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "w.tflite"
    proc = edge_convert("wrap", third_party["float-plain"], "--labels", labelmap, "--eval", renamed, "--out", out,
                        "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    contract = json.loads((tmp_path / "r.json").read_text())["input_contract"]
    assert (contract["determined_by"], contract["range"]) == ("inferred", "[0, 1]"), contract
    assert load_bundle(out).manifest.labels == tuple(names)
    # the device reads the same labelmap file for a plain model (`labels = "labelmap.txt"` in [model])
    cfg = config_for(tmp_path, third_party["float"], f'labels = "{labelmap}"')
    assert model_from_config(load_config(cfg).model).manifest.labels == tuple(names)


def _beside_noise(folder: Path, out: Path) -> Path:
    """Each labelled image on the right half of a frame twice as wide, the left half random texture."""
    rng = np.random.default_rng(5)
    for f in sorted(folder.glob("*/*.png")):
        digit = Image.open(f).convert("L")
        frame = Image.fromarray(rng.integers(0, 256, (digit.height, 2 * digit.width), dtype=np.uint8))
        frame.paste(digit, (digit.width, 0))
        (out / f.parent.name).mkdir(parents=True, exist_ok=True)
        frame.save(out / f.parent.name / f.name)
    return out


def test_a_spec_crop_is_calibrated_evaluated_and_kept_in_the_bundle(
        third_party: dict[str, Path], digits: DigitsWorkspace, tmp_path: Path) -> None:
    """The spec's `crop`: calibration, evaluation, the gate's reference and the golden inputs all see the right
    half only, the manifest keeps it, and the device then decides on the whole frames exactly as the plain model
    decides on the digits alone (another route: no crop, no frame)."""
    calibration = _beside_noise(digits.train, tmp_path / "cal")
    evaluation = _beside_noise(digits.test, tmp_path / "eval")
    spec = tmp_path / "spec.toml"
    spec.write_text('[input]\nkind = "image"\ncolor = "L"\ncrop = [0.5, 0.0, 1.0, 1.0]\nscale = 0.00392156862745098\n')
    out, report = tmp_path / "w.tflite", tmp_path / "r.json"
    (tmp_path / "labels.txt").write_bytes(LABELS)
    proc = edge_convert("wrap", third_party["float-plain"], "--spec", spec, "--labels", tmp_path / "labels.txt",
                        "--calibration", calibration, "--eval", evaluation, "--out", out, "--report", report)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = load_bundle(out)
    assert bundle.manifest.input.crop == (0.5, 0.0, 1.0, 1.0)
    on_frames = np.array([int(Model(bundle).classify(decode_image(f.read_bytes())).label)
                          for f in sorted(evaluation.glob("*/*.png"))])
    alone = device_top1(model_from_config(load_config(config_for(tmp_path, third_party["float"])).model), digits.test)
    assert np.array_equal(on_frames, alone)
    truth = np.array([int(f.parent.name) for f in sorted(digits.test.glob("*/*.png"))])
    doc = json.loads(report.read_text())
    assert doc["evaluation"]["variants"]["float32"]["accuracy"] == pytest.approx(np.mean(alone == truth), abs=1e-9)
    # the gate's reference describes the digits, not the noise beside them (whose mean level is 127)
    brightness = bundle.manifest.raw["reference"]["image_quality"]["brightness"]["p50"]
    means = [np.asarray(Image.open(f).convert("L").resize((16, 16), Image.BILINEAR), float).mean()
             for f in sorted(digits.train.glob("*/*.png"))]
    assert brightness == pytest.approx(float(np.median(means)), abs=3.0)
