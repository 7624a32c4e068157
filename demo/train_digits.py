"""Train the demo model: a small CNN on scikit-learn's handwritten digits (1,797 real 8×8 scans that ship
inside scikit-learn, so nothing is downloaded), then convert it with edge-convert.

    python demo/train_digits.py   # writes demo/digits-<mode>.tflite for every quantization mode (the demo runs
                                  # digits-int8-only.tflite), demo/digits-report.{json,md,png} and the
                                  # held-out images demo/digits/test/<label>/*.png

Needs the converter extra (TensorFlow, scikit-learn). The device side never runs this file.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
IMAGE_SIZE = 32  # the 8×8 scans are written as 32×32 PNGs (nearest-neighbour), as a camera crop would be
MODEL_SIZE = 16  # the model sees 16×16: the device resizes, exactly as the converter calibrated
SEED = 7


def write_digit_folders(root: Path, seed: int = SEED) -> tuple[Path, Path]:
    """Write the stratified 75/25 split as root/train/<digit>/*.png and root/test/<digit>/*.png."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(idx, test_size=0.25, random_state=seed, stratify=digits.target)
    for split, indices in (("train", train_idx), ("test", test_idx)):
        for i in indices:
            label = str(digits.target[i])
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
            image.save(folder / f"{i:04d}.png", optimize=True)
    return root / "train", root / "test"


def train_model(train_dir: Path, out: Path, epochs: int = 40, seed: int = SEED) -> Path:
    """Train on images read through edge_infer's preprocessing (the same tensors the device will compute)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from converter.datasets import calibration_tensors, list_examples
    from edge_infer.manifest import ImageInputSpec

    keras.utils.set_random_seed(seed)
    examples = list_examples(train_dir, "training")
    spec = ImageInputSpec(width=MODEL_SIZE, height=MODEL_SIZE, color="L")
    x = np.stack(list(calibration_tensors(examples, spec)))
    y = np.array([int(ex.label) for ex in examples])
    model = keras.Sequential(
        [
            keras.Input((MODEL_SIZE, MODEL_SIZE, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    model.save(out)
    return out


def write_demo_samples(test_dir: Path, out: Path, per_label: int = 2) -> None:
    """The demo's input folder: a few real held-out digits plus the bad files a real camera folder gets —
    a JPEG cut off mid-write, a zero-byte file, a stray text file, an out-of-focus and an unlit scan."""
    from PIL import ImageEnhance, ImageFilter

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for label_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for f in sorted(label_dir.glob("*.png"))[:per_label]:
            shutil.copy(f, out / f"digit-{f.stem}.png")
    image = Image.open(sorted((test_dir / "7").glob("*.png"))[0]).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    (out / "camera-glitch.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (out / "empty.png").write_bytes(b"")
    scan = Image.open(sorted((test_dir / "3").glob("*.png"))[0])
    scan.filter(ImageFilter.GaussianBlur(3)).save(out / "out-of-focus.png")
    ImageEnhance.Brightness(scan).enhance(0.08).save(out / "lights-off.png")
    (out / "notes.txt").write_text("this is not an image\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    from converter.cli import main as convert

    with tempfile.TemporaryDirectory(prefix="digits-") as tmp:
        train_dir, test_dir = write_digit_folders(Path(tmp))
        model = train_model(train_dir, Path(tmp) / "digits.keras", args.epochs)
        labels = Path(tmp) / "labels.txt"
        labels.write_text("\n".join(str(d) for d in range(10)) + "\n")
        shipped_test = args.out_dir / "digits" / "test"
        shutil.rmtree(shipped_test, ignore_errors=True)
        shutil.copytree(test_dir, shipped_test)
        write_demo_samples(shipped_test, args.out_dir / "samples")
        return convert([str(model), "--mode", "all", "--calibration", str(train_dir), "--eval", str(test_dir),
                        "--labels", str(labels), "--name", "digits", "--threshold", "0.6",
                        "--out", str(args.out_dir / "digits.tflite"),
                        "--report", str(args.out_dir / "digits-report.json")])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
