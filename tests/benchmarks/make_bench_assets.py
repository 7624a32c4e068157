"""Build the pipeline benchmark's inputs (converter environment: TensorFlow + scikit-learn):

- a MobileNetV2-shaped model (224×224×3, 1000 classes, random weights — the shape and op mix are what
  matter for speed), converted by `edge-convert` to a full-integer int8 bundle with uint8 I/O, calibrated on
  crops of real photographs;
- 640×480 camera-like JPEG frames cut from the two photographs scikit-learn ships (random crops, flips and
  exposure changes, so no two frames are alike);
- `bench.toml`, a device config pointing at both.

    .venvs/convert/bin/python tests/benchmarks/make_bench_assets.py --out .bench
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def write_frames(folder: Path, count: int, seed: int = 3) -> None:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427×640 each
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = rng.uniform(1.55, 2.2)  # upscale so a 640×480 crop fits, as a camera at another zoom would see
        big = photo.resize((int(photo.width * scale), int(photo.height * scale)), Image.Resampling.BILINEAR)
        x, y = rng.integers(0, big.width - 640), rng.integers(0, big.height - 480)
        frame = big.crop((x, y, x + 640, y + 480))
        if rng.random() < 0.5:
            frame = frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        frame = ImageEnhance.Brightness(frame).enhance(rng.uniform(0.7, 1.3))
        frame.save(folder / f"frame-{i:04d}.jpg", quality=85)


def make_model(path: Path) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None, classes=1000)
    model.save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".bench"))
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    out = args.out.resolve()
    write_frames(out / "frames", args.frames)
    calib = out / "calibration" / "class-0"  # calibration needs no true labels, only a label folder
    write_frames(calib, 100, seed=9)
    (out / "labels.txt").write_text("\n".join(f"class-{i}" for i in range(1000)) + "\n")
    bundle = out / "mobilenetv2-int8.tflite"
    from edge_infer.bundle import load_bundle

    if not bundle.exists() or load_bundle(bundle).manifest.image_quality_reference is None:
        from converter.cli import main as convert

        model = make_model(out / "mobilenetv2.keras")
        rc = convert([str(model), "--mode", "int8-only", "--calibration", str(out / "calibration"), "--labels",
                      str(out / "labels.txt"), "--calibration-samples", "100", "--name", "mobilenetv2-shaped",
                      "--out", str(bundle), "--scale", str(2 / 255), "--offset", "-1"])
        if rc:
            return rc
    (out / "bench.toml").write_text(
        f'# Pipeline benchmark: MobileNetV2-shaped int8 model on 640×480 JPEG frames\n'
        f'[device]\nid = "bench"\nstate_dir = "{out / "state"}"\n'
        f'[model]\nbundle = "{bundle}"\nthreads = 1\n'
        f'[source]\ntype = "directory"\npath = "{out / "frames"}"\n'
    )
    print(f"wrote {bundle}, {args.frames} frames and {out / 'bench.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
