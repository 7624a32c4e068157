"""Semantic segmentation through the task seam, end to end.

A small fully-convolutional network is trained in the test run on frames of handwritten digits (scikit-learn's
scans pasted on a noisy background — the demo detector's frames) to label every pixel `background` or `digit`
(the ink of a pasted digit; the background's own noise is not ink). edge-convert makes an int8 bundle with
`--task segmentation`; the daemon serves it in-process; each result's areas are checked against the ground
truth the frames were drawn with, and against a second route that shares no code with the device:
TensorFlow's interpreter on preprocessing written in numpy (tests/helpers/independent.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_infer.app.daemon import Daemon
from edge_infer.bundle import load_bundle
from edge_infer.config import load_config
from edge_infer.sinks.memory import MemorySink
from edge_infer.sources.memory import ListSource, sample_of
from tests.conftest import write_config
from tests.converter.conftest import demo_script
from tests.converter.test_convert_to_device import edge_convert
from tests.helpers.broker import free_port
from tests.helpers.independent import _manifest, _tensor
from tests.helpers.schemas import validate

LABELS = ("background", "digit")
W, H = 48, 32  # the model sees the 96 × 64 frames at half size (stretch: no padding)
SPEC = f"""[input]
kind = "image"
color = "L"
resize = "stretch"
scale = {1 / 255}

[output]
activation = "softmax"
"""


def truth_map(frame: Image.Image, boxes: list[dict]) -> np.ndarray:
    """Per source pixel: 1 where a pasted digit's ink is, else 0."""
    pixels = np.asarray(frame)
    out = np.zeros(pixels.shape, np.int64)
    for b in boxes:
        x0, y0, x1, y1 = b["box"]
        out[y0:y1, x0:x1][pixels[y0:y1, x0:x1] > 40] = 1
    return out


def areas(classes: np.ndarray) -> np.ndarray:
    return np.bincount(classes.ravel(), minlength=len(LABELS)) / classes.size


def frames(td, count: int, split: str, seed: int) -> list[tuple[Image.Image, np.ndarray]]:
    images, labels = td.digit_images(split)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        frame, boxes = td.make_frame(rng, images, labels)
        out.append((frame, truth_map(frame, boxes)))
    return out


def train(td, out: Path) -> Path:
    import keras

    from edge_infer.manifest import parse_image_spec
    from edge_infer.preprocess import normalized_image

    keras.utils.set_random_seed(5)
    spec = parse_image_spec({"input": {"kind": "image", "width": W, "height": H, "color": "L", "resize": "stretch",
                                       "normalize": {"scale": 1 / 255, "offset": 0.0}}})
    xs, ys = [], []
    for frame, truth in frames(td, 600, "train", 1):
        xs.append(normalized_image(frame, spec))
        small = np.asarray(Image.fromarray(truth.astype(np.uint8)).resize((W, H), Image.Resampling.NEAREST))
        ys.append(np.eye(len(LABELS), dtype=np.float32)[small])
    inputs = keras.Input((H, W, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    for rate in (2, 4):
        x = keras.layers.Conv2D(32, 3, padding="same", dilation_rate=rate, activation="relu")(x)
    outputs = keras.layers.Conv2D(len(LABELS), 1, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    model.fit(np.stack(xs), np.stack(ys), epochs=8, batch_size=32, verbose=0)
    model.save(out)
    return out


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> dict:
    td = demo_script("train_detector")
    root = tmp_path_factory.mktemp("segmenter")
    model = train(td, root / "segmenter.keras")
    for name, count, split, seed in (("calibration", 100, "train", 2), ("frames", 40, "test", 3)):
        (root / name).mkdir()
        for i, (frame, _) in enumerate(frames(td, count, split, seed)):
            frame.save(root / name / f"frame-{i:04d}.png")
    held_out = {f"frame-{i:04d}.png": truth for i, (_, truth) in enumerate(frames(td, 40, "test", 3))}
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (root / "spec.toml").write_text(SPEC)
    bundle = root / "segmenter.tflite"
    proc = edge_convert(str(model), "--task", "segmentation", "--mode", "int8-only", "--spec", str(root / "spec.toml"),
                        "--calibration", str(root / "calibration"), "--eval", str(root / "frames"),
                        "--labels", str(root / "labels.txt"), "--out", str(bundle),
                        "--report", str(root / "report.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "bundle": bundle, "truth": held_out, "report": json.loads((root / "report.json").read_text())}


def serve(segmenter: dict, tmp_path: Path) -> dict[str, dict]:
    """The daemon, in-process, on the 40 held-out frames; the schema-valid results by input."""
    (tmp_path / "in").mkdir()
    cfg = write_config(tmp_path / "c.toml", bundle=segmenter["bundle"], source=tmp_path / "in",
                       state=tmp_path / "s", port=free_port())
    files = sorted((segmenter["root"] / "frames").glob("*.png"))
    sinks: list[MemorySink] = []
    daemon = Daemon(load_config(cfg), source=ListSource([sample_of(p.name, p.read_bytes()) for p in files]),
                    sink=lambda opener: sinks.append(MemorySink(opener)) or sinks[0])
    daemon.run(once=True)
    docs = [json.loads(p) for p in sinks[0].of_kind("results")]
    for doc in docs:
        validate("results", doc)
    return {d["input"]["id"]: d for d in docs}


def independent_areas(bundle: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """Each frame's class shares by TensorFlow's interpreter on numpy preprocessing (no edge_infer code)."""
    import tensorflow as tf

    doc = _manifest(bundle)
    interpreter = tf.lite.Interpreter(model_content=bundle.read_bytes()[: doc["model"]["size"]])
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    found = {}
    for path in files:
        interpreter.set_tensor(inp["index"], _tensor(Image.open(path), doc["input"], inp))
        interpreter.invoke()
        found[path.name] = areas(interpreter.get_tensor(out["index"])[0].argmax(axis=-1))
    return found


def test_segmentation_areas_match_the_truth_and_a_second_route(segmenter: dict, tmp_path: Path) -> None:
    manifest = load_bundle(segmenter["bundle"]).manifest
    assert manifest.task == "segmentation" and manifest.labels == LABELS
    variants = segmenter["report"]["evaluation"]["variants"]
    assert variants["int8-only"]["agreement_with_float32"] >= 0.95  # per pixel, the honest cost of int8
    results = serve(segmenter, tmp_path)
    assert set(results) == set(segmenter["truth"])
    files = sorted((segmenter["root"] / "frames").glob("*.png"))
    second = independent_areas(segmenter["bundle"], files)
    ink_errors, route_gaps = [], []
    for name, doc in results.items():
        result = doc["result"]
        got = np.array([result["areas"].get(label, 0.0) for label in LABELS])
        want = areas(segmenter["truth"][name])
        ink_errors.append(abs(result["coverage"] - want[1]))
        route_gaps.append(float(np.abs(got - second[name]).max()))
        assert result["dominant"] == ("digit" if got[1] else "background")
    assert max(route_gaps) <= 0.01, route_gaps  # the device and the second route read the same model the same way
    assert np.mean(ink_errors) <= 0.02, ink_errors  # the digits' share of the frame, against the ground truth
    assert max(ink_errors) <= 0.06, ink_errors
