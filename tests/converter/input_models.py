"""Models built the ways real users build them, each expecting its own input range, trained during the test run on
scikit-learn's digits (written as PNG folders at the model's input size, so no resize is involved):

- `rescaling`: the Keras tutorial way — `Rescaling(1/255)` first, so the model takes raw 0–255 pixels;
- `normalization`: an adapted `Normalization` layer first, adapted on (and trained with) [0, 1] input;
- `minus1`: no preprocessing layer at all, trained on [-1, 1] input;
- `mobilenet`: Keras' MobileNetV3Small (weights=None, built-in preprocessing: Rescaling to [-1, 1]) nested in a
  Sequential with a new head — the transfer-learning layout — on raw 0–255 RGB pixels.

`expected_input` is how each was trained: the test's own route to what the source model should see."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

TRAINED_ON = {"rescaling": "[0, 255]", "normalization": "[0, 1]", "minus1": "[-1, 1]", "mobilenet": "[0, 255]"}


def write_folders(root: Path, size: int, color: str) -> None:
    """train/ and test/ (<label>/<n>.png, 75/25 stratified) and labels.txt under `root`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train, test = train_test_split(np.arange(len(digits.target)), test_size=0.25, random_state=0,
                                   stratify=digits.target)
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
            image = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BILINEAR)
            image.convert(color).save(folder / f"{i:04d}.png")
    (root / "labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")


def read_folder(folder: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(files, raw 0–255 pixels (N, H, W, C) float32, integer labels), by PIL alone."""
    files = sorted(folder.glob("*/*.png"))
    pixels = [np.asarray(Image.open(f), np.float32) for f in files]
    x = np.stack([p[..., np.newaxis] if p.ndim == 2 else p for p in pixels])
    return files, x, np.array([int(f.parent.name) for f in files])


def expected_input(kind: str, raw: np.ndarray) -> np.ndarray:
    """The input each model was trained on, from raw pixels."""
    return {"[0, 255]": raw, "[0, 1]": raw / 255.0, "[-1, 1]": raw / 127.5 - 1.0}[TRAINED_ON[kind]]


def build(kind: str, root: Path) -> Path:
    """Write the folders and train the `kind` model; returns root/model.keras."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    size, color = (32, "RGB") if kind == "mobilenet" else (16, "L")
    write_folders(root, size, color)
    _, raw, y = read_folder(root / "train")
    x = expected_input(kind, raw)
    keras.utils.set_random_seed(0)
    body = [keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
            keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax")]
    inputs = keras.Input(x.shape[1:])
    if kind == "rescaling":
        model = keras.Sequential([inputs, keras.layers.Rescaling(1 / 255), *body])
    elif kind == "normalization":
        norm = keras.layers.Normalization()
        norm.adapt(x)
        model = keras.Sequential([inputs, norm, *body])
    elif kind == "minus1":
        model = keras.Sequential([inputs, *body])
    else:
        backbone = keras.applications.MobileNetV3Small(input_shape=x.shape[1:], weights=None, include_top=False,
                                                       pooling="avg", include_preprocessing=True, minimalistic=True)
        for layer in backbone.layers:  # a short training run: let batch-norm statistics follow it
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        model = keras.Sequential([inputs, backbone, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(3e-3 if kind == "mobilenet" else 1e-3),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=4 if kind == "mobilenet" else 12, batch_size=64 if kind == "mobilenet" else 32,
              verbose=0)
    model.save(root / "model.keras")
    return root / "model.keras"
