"""The quality gate on real photographs (scikit-learn's two sample photos) and their degraded versions.

A small 224×224 RGB model is converted by `edge-convert` with the photos as calibration data, so the bundle
carries the reference statistics the gate derives its limits from; the daemon then serves a folder of clean
frames and degraded copies of them to a real mosquitto. Every degraded frame must come back on `/rejections`
with the reason its degradation deserves, every clean frame on `/results`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from edge_infer.bundle import load_bundle
from edge_infer.gates.quality import METRICS, limits_from_reference
from tests.conftest import REPO, run_cli, write_config
from tests.helpers.broker import Mosquitto
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber


def photos() -> dict[str, Image.Image]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return {Path(name).stem: Image.fromarray(img) for name, img in zip(data.filenames, data.images, strict=True)}


def frame(photo: Image.Image, scale: float, fx: float, fy: float, mirror: bool = False) -> Image.Image:
    """A 640×480 camera-like frame: a crop of the photo at `scale`, positioned by fractions fx, fy."""
    w, h = photo.size
    cw, ch = int(w * scale), int(h * scale)
    x, y = int((w - cw) * fx), int((h - ch) * fy)
    out = photo.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.Resampling.BILINEAR)
    return ImageOps.mirror(out) if mirror else out


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _noisy(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


# degradation → (how it is made, the reason the gate must give)
DEGRADATIONS = {
    "blur": (lambda im, i: im.filter(ImageFilter.GaussianBlur(3)), "blurry"),
    "dark": (lambda im, i: ImageEnhance.Brightness(im).enhance(0.12), "underexposed"),
    "overexposed": (lambda im, i: im.point(lambda v: min(255, 4 * v + 120)), "overexposed"),
    "flat": (lambda im, i: ImageEnhance.Contrast(im).enhance(0.12), "low_contrast"),
    "noise": (lambda im, i: _noisy(im, 40.0, i), "noisy"),
}


@pytest.fixture(scope="module")
def photo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 224×224 RGB classifier (china vs flower) converted with the photos as calibration data."""
    import keras

    root = tmp_path_factory.mktemp("photos")
    calib = root / "calib"
    for name, photo in photos().items():
        (calib / name).mkdir(parents=True)
        for i, (fx, fy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]):
            for mirror in (False, True):
                (calib / name / f"{i}{'m' if mirror else ''}.jpg").write_bytes(jpeg(frame(photo, 0.75, fx, fy, mirror)))
        (calib / name / "full.jpg").write_bytes(jpeg(frame(photo, 1.0, 0, 0)))
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((224, 224, 3)),
        keras.layers.Conv2D(8, 3, strides=4, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.save(root / "photos.keras")
    out = root / "photos.tflite"
    proc = subprocess.run(
        [sys.executable, "-m", "converter.cli", str(root / "photos.keras"), "--mode", "int8", "--calibration",
         str(calib), "--out", str(out), "--report", str(root / "report.json"), "--threshold", "0.0"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input quality reference on 22 calibration images" in proc.stderr
    return out


def test_the_bundle_carries_reference_statistics_measured_on_the_calibration_photos(photo_bundle: Path) -> None:
    reference = load_bundle(photo_bundle).manifest.image_quality_reference
    assert reference is not None and reference["samples"] == 22
    for metric in METRICS:
        p = reference[metric]
        assert p["p01"] <= p["p05"] <= p["p50"] <= p["p95"] <= p["p99"]
    limits = limits_from_reference(reference)
    assert limits.source == "reference"
    assert 0 < limits.min_brightness < reference["brightness"]["p01"]
    assert limits.min_sharpness == pytest.approx(reference["sharpness"]["p01"] / 4)


def test_every_degradation_is_rejected_with_its_reason_and_every_clean_frame_passes(
    photo_bundle: Path, tmp_path: Path, broker: Mosquitto
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    expected: dict[str, str | None] = {}
    # Held-out clean frames: crops at a scale and positions the calibration never saw.
    positions = [(0.2, 0.3), (0.8, 0.1), (0.4, 0.9), (0.6, 0.5)]
    i = 0
    for name, photo in photos().items():
        for fx, fy in positions:
            clean = frame(photo, 0.6, fx, fy)
            stem = f"{name}-{fx}-{fy}"
            (inbox / f"{stem}-clean.jpg").write_bytes(jpeg(clean))
            expected[f"{stem}-clean.jpg"] = None
            for degradation, (make, reason) in DEGRADATIONS.items():
                (inbox / f"{stem}-{degradation}.jpg").write_bytes(jpeg(make(clean, i)))
                expected[f"{stem}-{degradation}.jpg"] = reason
                i += 1
            data = jpeg(clean)
            (inbox / f"{stem}-truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
            expected[f"{stem}-truncated.jpg"] = "truncated"

    cfg = write_config(tmp_path / "c.toml", bundle=photo_bundle, source=inbox, state=tmp_path / "s",
                       port=broker.port)
    sub = Subscriber(broker.port, "edge/test-pi/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert "limits=reference" in proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) + len(s.of_kind("rejections")) >= len(expected))
    got: dict[str, str | None] = {m.json()["input"]["id"]: None for m in sub.of_kind("results")}
    for m in sub.of_kind("rejections"):
        doc = m.json()
        validate("rejections", doc)
        got[doc["input"]["id"]] = doc["reason"]
        if doc["reason"] != "truncated":  # quality rejections carry the metric, its value and the threshold
            assert doc["metrics"]["metric"] in METRICS
            assert isinstance(doc["metrics"]["value"], float) and isinstance(doc["metrics"]["threshold"], float)
    sub.close()
    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k, "missing") != v}
    assert not wrong, f"(got, expected): {wrong}"
    counts = Counter(v or "accepted" for v in got.values())
    print(f"\nquality gate on {len(expected)} photo frames: {dict(sorted(counts.items()))}")
    (tmp_path / "counts.json").write_text(json.dumps(counts))
