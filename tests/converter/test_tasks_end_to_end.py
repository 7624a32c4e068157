"""Every task, built during the test run and served by the daemon over MQTT:

- a digit detector (YOLO-style grid, and the same network ending in TFLite's detection post-process op)
  trained on held-out-free frames, with boxes checked against where the digits were pasted;
- a regression model with a band, the same bundle run as an anomaly score by configuration;
- a plain .tflite nobody here converted, run as `raw` with configuration alone;
- uncertain inputs kept by the daemon, exported, and read back by edge-convert as calibration and eval data.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from edge_infer.bundle import load_bundle
from edge_infer.tasks.detection import iou
from tests.conftest import DEMO, run_cli, write_config
from tests.converter.conftest import DigitsWorkspace, demo_script
from tests.converter.test_convert_to_device import edge_convert
from tests.helpers.broker import Mosquitto
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber


def serve(tmp_path: Path, name: str, bundle: Path, inputs: Path, broker: Mosquitto, extra: str = "",
          sections: str = "") -> list[dict]:
    """Run the daemon once over a folder; return the schema-valid results it published."""
    cfg = write_config(tmp_path / f"{name}.toml", bundle=bundle, source=inputs, state=tmp_path / name,
                       port=broker.port, device_id=name)
    text = cfg.read_text()
    if extra:  # extra [model] keys go right under the bundle line
        text = text.replace(f'bundle = "{bundle}"\n', f'bundle = "{bundle}"\n{extra}\n')
    cfg.write_text(text + sections)
    count = sum(1 for p in inputs.iterdir() if p.is_file())
    sub = Subscriber(broker.port, f"edge/{name}/results")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sub.wait_for(lambda s: len(s.of_kind("results")) >= count, timeout=20), proc.stdout
    docs = sorted((m.json() for m in sub.of_kind("results")), key=lambda d: d["input"]["id"])
    for doc in docs:
        validate("results", doc)
    return docs


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train the demo's detector (fewer frames and epochs), convert it both ways with edge-convert."""
    td = demo_script("train_detector")
    root = tmp_path_factory.mktemp("detector")
    model = td.train(root / "detector.keras", frames=2000, epochs=15)
    td.write_frames(root / "calibration", 100, "train", 1)
    truth = td.write_frames(root / "frames", 40, "test", 2)
    (root / "boxes.json").write_text(json.dumps(truth))
    labels = root / "labels.txt"
    labels.write_text("\n".join(str(d) for d in range(10)) + "\n")
    (root / "yolo.toml").write_text(td.SPEC)
    (root / "ssd.toml").write_text(td.SPEC.split("[output]")[0] + '[output]\nformat = "ssd"\nscore_floor = 0.2\n')
    saved = td.ssd_saved_model(model, root / "ssd")
    out = {"root": root}
    for fmt, source, mode in (("yolo", model, "int8-only"), ("ssd", saved, "float32")):
        out[fmt] = root / f"{fmt}.tflite"
        proc = edge_convert(str(source), "--task", "detection", "--mode", mode, "--spec", str(root / f"{fmt}.toml"),
                            "--calibration", str(root / "calibration"), "--eval", str(root / "frames"),
                            "--labels", str(labels), "--out", str(out[fmt]))
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _matches(docs: list[dict], truth: list[dict]) -> tuple[int, int, list[float]]:
    found = total = 0
    overlaps: list[float] = []
    by_file = {d["input"]["id"]: d for d in docs}
    for frame in truth:
        boxes = by_file[frame["file"]]["result"]["detections"]
        total += len(frame["boxes"])
        for t in frame["boxes"]:
            same = [np.array(b["box"]) for b in boxes if b["label"] == t["label"]]
            best = max((float(iou(np.array(t["box"], float), b[None])[0]) for b in same), default=0.0)
            found += best >= 0.5
            overlaps += [best] if best >= 0.5 else []
    return found, total, overlaps


def test_detections_come_back_in_source_pixels_where_the_digits_were(detector, tmp_path: Path,
                                                                    broker: Mosquitto) -> None:
    truth = json.loads((detector["root"] / "boxes.json").read_text())
    results = {}
    for fmt in ("yolo", "ssd"):
        assert load_bundle(detector[fmt]).manifest.task == "detection"
        docs = serve(tmp_path, fmt, detector[fmt], detector["root"] / "frames", broker)
        assert all(d["task"] == "detection" and d["result"]["frame"] == {"width": 96, "height": 64} for d in docs)
        found, total, overlaps = _matches(docs, truth)
        assert found / total >= 0.6, f"{fmt}: {found}/{total} boxes found"
        assert np.mean(overlaps) >= 0.6
        results[fmt] = {d["input"]["id"]: d["result"]["counts"] for d in docs}
    agree = sum(results["yolo"][k] == results["ssd"][k] for k in results["yolo"])
    assert agree >= 0.8 * len(truth), "the op and the device's own NMS find the same digits"


def test_regression_band_and_the_same_bundle_as_an_anomaly_score(tmp_path: Path, broker: Mosquitto) -> None:
    """A real Keras model (ink level of a digit scan: the mean of its pixels), converted with --task regression
    and a band; darkened scans fall out of the band; `task = "anomaly"` in the config turns it into a score."""
    import keras

    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")])
    model.save(tmp_path / "ink.keras")
    digits = sorted((DEMO / "digits" / "test").glob("*/*.png"))[::15]
    calibration, inputs = tmp_path / "cal", tmp_path / "in"
    calibration.mkdir()
    inputs.mkdir()
    for i, path in enumerate(digits):
        (calibration / f"{i}.png").write_bytes(path.read_bytes())
        image = Image.open(path)
        if i % 2:
            image = ImageEnhance.Brightness(image).enhance(0.3)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        (inputs / f"{i:02d}.png").write_bytes(buf.getvalue())
    spec = tmp_path / "spec.toml"
    # a regression model with no labels: nothing but the spec can say its input range (edge-convert asks)
    spec.write_text('[input]\nkind = "image"\ncolor = "L"\nscale = 0.00392156862745098\n\n'
                    '[output]\nnames = ["ink"]\nband = { ink = [0.12, 1.0] }\n')
    bundle = tmp_path / "ink.tflite"
    proc = edge_convert(str(tmp_path / "ink.keras"), "--task", "regression", "--mode", "int8-only", "--spec",
                        str(spec), "--calibration", str(calibration), "--out", str(bundle))
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_gate = "\n[gate]\nquality = false\n"  # the dark scans are the point here, not a reason to refuse them
    docs = serve(tmp_path, "ink", bundle, inputs, broker, sections=no_gate)
    assert len(docs) == len(digits)
    for doc in docs:
        dark = int(doc["input"]["id"][:2]) % 2 == 1
        assert doc["result"]["in_band"] is not dark, doc["result"]
    anomalies = serve(tmp_path, "ink-anomaly", bundle, inputs, broker, 'task = "anomaly"\nthreshold = 0.12', no_gate)
    for doc in anomalies:  # high ink is "anomalous" here: the threshold splits bright from dark
        dark = int(doc["input"]["id"][:2]) % 2 == 1
        assert doc["task"] == "anomaly" and doc["result"]["anomalous"] is not dark


def test_a_plain_tflite_nobody_converted_runs_as_raw_with_configuration_alone(tmp_path: Path,
                                                                              broker: Mosquitto) -> None:
    """Two outputs, integer-quantized by TensorFlow's own converter (not edge-convert), no manifest: the config
    says how to preprocess; the published arrays match TensorFlow's float outputs within quantization error."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, [keras.layers.Dense(3, name="embedding")(x), keras.layers.Dense(1, name="score")(x)])
    files = sorted((DEMO / "digits" / "test").glob("*/*.png"))[::45]
    tensors = [np.asarray(Image.open(f).convert("L").resize((16, 16), Image.Resampling.BILINEAR),
                          np.float32)[None, :, :, None] / 255.0 for f in files]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([t] for t in tensors)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    plain = tmp_path / "someone-elses.tflite"
    plain.write_bytes(converter.convert())
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, f in enumerate(files):
        (inputs / f"{i:02d}.png").write_bytes(f.read_bytes())
    docs = serve(tmp_path, "raw", plain, inputs, broker,
                 'task = "raw"\ninput = { kind = "image", color = "L", normalize = { scale = 0.00392156862745098 } }')
    assert len(docs) == len(files)
    for doc, tensor in zip(docs, tensors, strict=True):
        expected = [np.asarray(o).ravel() for o in model(tensor)]
        got = {k: np.asarray(v["values"]) for k, v in doc["result"]["outputs"].items()}
        assert doc["task"] == "raw" and len(got) == 2
        for want in expected:
            match = [g for g in got.values() if g.shape == want.shape]
            assert match and np.allclose(match[0], want, atol=0.05 + 0.05 * np.abs(want).max()), (got, want)


def test_captured_uncertain_inputs_round_trip_through_edge_convert(digits: DigitsWorkspace, tmp_path: Path,
                                                                  broker: Mosquitto) -> None:
    """The tiny demo model defers what it is unsure of; `edge-infer export` lays it out by label; edge-convert
    takes the export as calibration and evaluation data."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(digits.test.glob("*/*.png")):
        (inputs / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-tiny.tflite", source=inputs, state=tmp_path / "s",
                       port=broker.port)
    cfg.write_text(cfg.read_text() + '\n[decide]\nfallback = "defer"\nkeep_uncertain = 40\n')
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr[-2000:]
    export = tmp_path / "export"
    proc = run_cli("export", "uncertain", "--config", str(cfg), "--to", str(export))
    assert proc.returncode == 0 and "exported 40 uncertain inputs" in proc.stdout, proc.stdout + proc.stderr
    labels = sorted(p.name for p in export.iterdir())
    (tmp_path / "labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
    proc = edge_convert(str(digits.model), "--mode", "int8-only", "--calibration", str(export), "--eval", str(export),
                        "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "again.tflite"),
                        "--report", str(tmp_path / "again.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "again.json").read_text())
    assert report["evaluation"]["examples"] == 40 and labels
