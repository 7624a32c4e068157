"""Train a small digit *detector*: scikit-learn's handwritten digits pasted at known places on 96×64 frames,
seen by the model through a letterbox into 48×48, with a YOLO-style head (a 6×6 grid; per cell: centre, size,
objectness, 10 class scores, decoded inside the model). Then convert it with edge-convert, twice:

- `digit-detector-yolo.tflite`: the raw grid; the device decodes boxes and runs non-max suppression.
- `digit-detector-ssd.tflite`: the same network ending in TFLite's detection post-process op (boxes, classes,
  scores, count), as SSD models from the TensorFlow Object Detection API do. Float32: quantized, its box
  encoding's LOG op is version 2, which tflite-runtime 2.14 cannot run.

    python demo/train_detector.py   # writes both bundles, their reports and demo/detector/ (held-out frames and
                                    # their true boxes, boxes.json)

Needs the converter extra (TensorFlow, scikit-learn). The device side never runs this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
FRAME = (96, 64)  # source frames (w, h): wider than tall, so the model's letterbox pads top and bottom
MODEL = 48  # the model sees 48×48
GRID = 6  # 8-pixel cells
CLASSES = 10
SEED = 11
SPEC = f"""# The detector's preprocessing and outputs (edge-convert --spec)
[input]
kind = "image"
color = "L"
resize = "letterbox"
pad = 0
scale = {1 / 255}

[output]
format = "yolo"
box = "cxcywh"
coords = "normalized"
iou_threshold = 0.4
score_floor = 0.2
"""


def digit_images(split: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The 8×8 scans (0–255) of one half of a stratified split of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(idx, test_size=0.3, random_state=seed, stratify=digits.target)
    chosen = train_idx if split == "train" else test_idx
    return np.round(digits.images[chosen] * (255.0 / 16.0)).astype(np.uint8), digits.target[chosen]


def make_frame(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray) -> tuple[Image.Image, list[dict]]:
    """A dark frame with 1–3 digits (16–26 px, not overlapping) and their true boxes in frame pixels."""
    frame = Image.fromarray(rng.integers(0, 24, size=(FRAME[1], FRAME[0]), dtype=np.uint8), mode="L")
    boxes: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            size = int(rng.integers(16, 27))
            x, y = int(rng.integers(0, FRAME[0] - size)), int(rng.integers(0, FRAME[1] - size))
            box = (x, y, x + size, y + size)
            if all(box[2] <= b["box"][0] or box[0] >= b["box"][2] or box[3] <= b["box"][1] or box[1] >= b["box"][3]
                   for b in boxes):
                i = int(rng.integers(0, len(images)))
                digit = Image.fromarray(images[i], mode="L").resize((size, size), Image.Resampling.BILINEAR)
                frame.paste(digit, (x, y), Image.fromarray((images[i] > 0).astype(np.uint8) * 255, mode="L").resize(
                    (size, size), Image.Resampling.NEAREST))
                boxes.append({"label": str(labels[i]), "box": list(box)})
                break
    return frame, boxes


def targets(boxes: list[dict], spec: Any) -> np.ndarray:
    """Per grid cell: objectness, centre and size (fractions of the model input) and the one-hot class."""
    from edge_infer.preprocess import view_geometry

    g = view_geometry(FRAME, spec)
    y = np.zeros((GRID * GRID, 5 + CLASSES), np.float32)
    for b in boxes:
        x0, y0, x1, y1 = b["box"]
        mx0, my0 = x0 * g.scale_x + g.offset_x, y0 * g.scale_y + g.offset_y
        mx1, my1 = x1 * g.scale_x + g.offset_x, y1 * g.scale_y + g.offset_y
        cx, cy, w, h = (mx0 + mx1) / 2 / MODEL, (my0 + my1) / 2 / MODEL, (mx1 - mx0) / MODEL, (my1 - my0) / MODEL
        cell = min(int(cy * GRID), GRID - 1) * GRID + min(int(cx * GRID), GRID - 1)
        y[cell, :5] = (cx, cy, w, h, 1.0)
        y[cell, 5 + int(b["label"])] = 1.0
    return y


def build_model() -> Any:
    """Conv backbone → 6×6 grid → decoded rows (cx, cy, w, h, objectness, class probabilities): (1, 36, 15)."""
    import keras
    from keras import layers, ops

    inputs = keras.Input((MODEL, MODEL, 1))
    x = inputs
    for filters in (16, 32, 48):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    raw = layers.Conv2D(5 + CLASSES, 1)(x)
    raw = layers.Reshape((GRID * GRID, 5 + CLASSES))(raw)
    cols, rows = np.meshgrid(np.arange(GRID), np.arange(GRID))
    offsets = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)[np.newaxis]  # (1, 36, 2)
    centre = (ops.sigmoid(raw[..., 0:2]) + offsets) / GRID
    size = ops.sigmoid(raw[..., 2:4])
    objectness = ops.sigmoid(raw[..., 4:5])
    classes = ops.softmax(raw[..., 5:], axis=-1)
    return keras.Model(inputs, ops.concatenate([centre, size, objectness, classes], axis=-1))


def detection_loss(y_true: Any, y_pred: Any) -> Any:
    from keras import ops

    obj = y_true[..., 4]
    eps = 1e-6
    p = ops.clip(y_pred[..., 4], eps, 1 - eps)
    obj_loss = -ops.mean(obj * ops.log(p) * 5.0 + (1 - obj) * ops.log(1 - p))
    box_loss = ops.sum(obj[..., None] * ops.square(y_true[..., :4] - y_pred[..., :4])) * 20.0
    cls_loss = -ops.sum(obj[..., None] * y_true[..., 5:] * ops.log(ops.clip(y_pred[..., 5:], eps, 1.0)))
    n = ops.maximum(ops.sum(obj), 1.0)
    return obj_loss + (box_loss + cls_loss) / n


def write_frames(root: Path, count: int, split: str, seed: int) -> list[dict]:
    """`count` frames as root/frame-NNNN.png with their true boxes; returns [{file, boxes}]."""
    images, labels = digit_images(split)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth = []
    for i in range(count):
        frame, boxes = make_frame(rng, images, labels)
        name = f"frame-{i:04d}.png"
        frame.save(root / name)
        truth.append({"file": name, "boxes": boxes})
    return truth


def train(out: Path, frames: int = 3000, epochs: int = 25, seed: int = SEED) -> Path:
    """Train on frames seen through edge_infer's letterbox preprocessing; save a .keras model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from edge_infer.manifest import ImageInputSpec
    from edge_infer.preprocess import normalized_image

    keras.utils.set_random_seed(seed)
    spec = ImageInputSpec(width=MODEL, height=MODEL, color="L", resize="letterbox", pad=0)
    images, labels = digit_images("train")
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(frames):
        frame, boxes = make_frame(rng, images, labels)
        xs.append(normalized_image(frame, spec))
        ys.append(targets(boxes, spec))
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=detection_loss)
    model.fit(np.stack(xs), np.stack(ys), epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    model.save(out)
    return out


def ssd_saved_model(keras_path: Path, out: Path, score_floor: float = 0.2, iou: float = 0.4) -> Path:
    """The trained network ending in TFLite's detection post-process op: boxes are encoded against one anchor
    per grid cell (the op decodes them with scales 10, 10, 5, 5), class scores are objectness × class
    probability after a background column."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = keras.models.load_model(keras_path, custom_objects={"detection_loss": detection_loss})
    # weights as constants: TFLite's calibrator cannot run resource variables
    network = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec([1, MODEL, MODEL, 1], tf.float32)))
    cols, rows = np.meshgrid(np.arange(GRID), np.arange(GRID))
    anchors = np.stack([(rows.ravel() + 0.5) / GRID, (cols.ravel() + 0.5) / GRID,
                        np.full(GRID * GRID, 1 / GRID), np.full(GRID * GRID, 1 / GRID)], 1).astype(np.float32)
    signature = " ".join([
        'name: "TFLite_Detection_PostProcess"',
        'attr { key: "max_detections" value { i: 10 } }',
        'attr { key: "max_classes_per_detection" value { i: 1 } }',
        'attr { key: "use_regular_nms" value { b: false } }',
        f'attr {{ key: "nms_score_threshold" value {{ f: {score_floor} }} }}',
        f'attr {{ key: "nms_iou_threshold" value {{ f: {iou} }} }}',
        'attr { key: "y_scale" value { f: 10.0 } }',
        'attr { key: "x_scale" value { f: 10.0 } }',
        'attr { key: "h_scale" value { f: 5.0 } }',
        'attr { key: "w_scale" value { f: 5.0 } }',
        f'attr {{ key: "num_classes" value {{ i: {CLASSES} }} }}',
    ])

    @tf.function(experimental_implements=signature)
    def post_process(box_encodings: Any, class_predictions: Any, anchor_boxes: Any) -> Any:
        boxes = tf.constant(0.0, dtype=tf.float32, name="boxes")
        scores = tf.constant(0.0, dtype=tf.float32, name="scores")
        classes = tf.constant(0.0, dtype=tf.float32, name="classes")
        count = tf.constant(0.0, dtype=tf.float32, name="num_detections")
        return boxes, classes, scores, count

    class Detector(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchors = tf.constant(anchors)

        @tf.function(input_signature=[tf.TensorSpec([1, MODEL, MODEL, 1], tf.float32)])
        def serve(self, x: Any) -> Any:
            rows = network(x)[0]
            cy, cx = rows[..., 1], rows[..., 0]
            h, w = tf.maximum(rows[..., 3], 1e-3), tf.maximum(rows[..., 2], 1e-3)
            a = self.anchors
            encodings = tf.stack([(cy - a[:, 0]) / a[:, 2] * 10.0, (cx - a[:, 1]) / a[:, 3] * 10.0,
                                  tf.math.log(h / a[:, 2]) * 5.0, tf.math.log(w / a[:, 3]) * 5.0], axis=-1)
            scores = rows[..., 4:5] * rows[..., 5:]
            scores = tf.concat([1.0 - rows[..., 4:5], scores], axis=-1)
            return post_process(encodings, scores, self.anchors)

    detector = Detector()
    tf.saved_model.save(detector, str(out), signatures={"serving_default": detector.serve})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args(argv)
    from converter.cli import main as convert

    out = args.out_dir
    with tempfile.TemporaryDirectory(prefix="detector-") as tmp:
        keras_path = train(Path(tmp) / "detector.keras", args.frames, args.epochs)
        calibration = Path(tmp) / "calibration"
        write_frames(calibration, 200, "train", SEED + 1)
        held_out = out / "detector"
        truth = write_frames(held_out / "frames", 60, "test", SEED + 2)
        (held_out / "boxes.json").write_text(json.dumps(truth, indent=1) + "\n")
        spec = Path(tmp) / "spec.toml"
        spec.write_text(SPEC)
        (out / "detector-spec.toml").write_text(SPEC)
        labels = Path(tmp) / "labels.txt"
        labels.write_text("\n".join(str(d) for d in range(CLASSES)) + "\n")
        common = ["--task", "detection", "--calibration", str(calibration), "--eval", str(held_out / "frames"),
                  "--labels", str(labels), "--spec", str(spec), "--threshold", "0.5"]
        rc = convert([str(keras_path), *common, "--mode", "int8-only", "--name", "digit-detector-yolo",
                      "--out", str(out / "digit-detector-yolo.tflite"),
                      "--report", str(out / "digit-detector-yolo-report.json")])
        saved = ssd_saved_model(keras_path, Path(tmp) / "ssd")
        ssd_spec = Path(tmp) / "ssd-spec.toml"
        ssd_spec.write_text(SPEC.split("[output]")[0] + '[output]\nformat = "ssd"\nscore_floor = 0.2\n')
        common[common.index(str(spec))] = str(ssd_spec)
        rc |= convert([str(saved), *common, "--mode", "float32", "--name", "digit-detector-ssd",
                       "--out", str(out / "digit-detector-ssd.tflite")])
        return rc


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
