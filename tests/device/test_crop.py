"""`[model] crop`: the model, the gate and the baseline see only a region of the frame (the classic "is the
gate open" camera); detection boxes still come back in the whole frame's pixels; a crop the frame cannot
hold is a `too_small` rejection; a crop that makes no sense is a one-line config error."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_infer.app.compose import serving
from edge_infer.bundle import load_bundle
from edge_infer.config import ConfigError, load_config
from edge_infer.model import Model, model_from_config, with_crop
from edge_infer.sources import Sample
from edge_infer.tasks.detection import iou
from tests.conftest import DIGITS_INT8, REPO, write_config

DETECTOR = REPO / "demo" / "digit-detector-yolo.tflite"
HELD_OUT = REPO / "demo" / "detector"
DIGITS = REPO / "demo" / "digits" / "test"


def _pipeline(tmp_path: Path, crop: str | None, bundle: Path = DIGITS_INT8, gate: str = ""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = write_config(tmp_path / "device.toml", bundle=bundle, source=tmp_path, state=tmp_path / "state",
                            port=1883)
    text = cfg_path.read_text()
    if crop is not None:
        text = text.replace("threads = 1\n", f"threads = 1\ncrop = {crop}\n", 1)
    cfg_path.write_text(text + gate)
    cfg = load_config(cfg_path)
    model = model_from_config(cfg.model)
    return serving(cfg, model, None).pipeline


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _digits(n: int) -> list[tuple[str, Image.Image]]:
    files = sorted(DIGITS.glob("*/*.png"))[:: max(1, len(sorted(DIGITS.glob("*/*.png"))) // n)][:n]
    return [(f.parent.name, Image.open(f).convert("L")) for f in files]


def test_the_model_sees_only_the_crop_and_decides_as_on_the_region_alone(tmp_path: Path) -> None:
    """Each held-out digit sits in the top-right quarter of a frame whose other quarters hold other digits:
    with `crop = [0.5, 0.0, 1.0, 0.5]` every result equals the model's result on the digit alone (another
    route: no crop, no canvas) and matches the ground truth as often; without the crop the distractors win."""
    digits = _digits(60)
    cropped = _pipeline(tmp_path / "a", "[0.5, 0.0, 1.0, 0.5]")
    whole = _pipeline(tmp_path / "b", None)
    alone = Model(load_bundle(DIGITS_INT8))
    agree = right_cropped = right_alone = right_whole = 0
    for i, (label, digit) in enumerate(digits):
        w, h = digit.size
        canvas = Image.new("L", (2 * w, 2 * h))
        canvas.paste(digit, (w, 0))
        for k, at in enumerate([(0, 0), (0, h), (w, h)]):  # distractors: other digits in the other quarters
            canvas.paste(digits[(i + 7 * (k + 1)) % len(digits)][1], at)
        sample = Sample("test", f"{i}.png", str(i), 0.0, _png(canvas))
        outcome = cropped.process(sample)
        assert outcome.verdict.ok, outcome.verdict
        expected = alone.classify(digit)
        agree += outcome.result.label == expected.label
        right_cropped += outcome.result.label == label
        right_alone += expected.label == label
        uncropped = whole.process(sample)
        right_whole += uncropped.verdict.ok and uncropped.result.label == label
    assert agree == len(digits)
    assert right_cropped == right_alone >= 0.85 * len(digits)
    assert right_whole <= 0.6 * len(digits), "the distractors should fool the model without the crop"


def test_the_gate_checks_the_region_not_the_frame(tmp_path: Path) -> None:
    """A well-lit digit in the corner of a black frame: rejected as underexposed as a whole frame, accepted
    when the crop is the digit's corner — the gate measured the region."""
    label, digit = _digits(1)[0]
    w, h = digit.size
    canvas = Image.new("L", (4 * w, 4 * h))
    canvas.paste(digit, (0, 3 * h))
    sample = Sample("test", "dark.png", "1", 0.0, _png(canvas))
    assert _pipeline(tmp_path / "a", None).process(sample).verdict.reason == "underexposed"
    outcome = _pipeline(tmp_path / "b", "[0.0, 0.75, 0.25, 1.0]").process(sample)
    assert outcome.verdict.ok and outcome.result.label == label


def test_detection_boxes_come_back_in_the_whole_frame(tmp_path: Path) -> None:
    """The held-out detector frames (ground-truth boxes from the generator) pasted into a larger camera frame
    at an offset: with a crop in pixels around them, the boxes come back in the camera frame's pixels —
    where the digits are, by the ground truth shifted by the offset — with the recall the detector has."""
    frames = json.loads((HELD_OUT / "boxes.json").read_text())[:30]
    ox, oy = 150, 100
    pipeline = _pipeline(tmp_path, f"[{ox}, {oy}, {ox + 96}, {oy + 64}]", bundle=DETECTOR)
    rng = np.random.default_rng(3)
    found = total = 0
    for n, frame in enumerate(frames):
        inner = Image.open(HELD_OUT / "frames" / frame["file"]).convert("RGB")
        camera = Image.fromarray(rng.integers(60, 200, (300, 400, 3), dtype=np.uint8))
        camera.paste(inner, (ox, oy))
        outcome = pipeline.process(Sample("test", f"{n}.png", str(n), 0.0, _png(camera)))
        assert outcome.verdict.ok, outcome.verdict
        assert outcome.result.frame == (400, 300)
        for truth in frame["boxes"]:
            total += 1
            shifted = np.array(truth["box"], float) + np.array([ox, oy, ox, oy], float)
            found += any(b.label == truth["label"] and iou(shifted, np.array(b.box)[None])[0] >= 0.5
                         for b in outcome.result.boxes)
    assert found / total >= 0.85, f"recall {found}/{total}"


def test_a_frame_that_cannot_hold_the_crop_is_rejected_with_a_reason(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, "[600, 400, 700, 470]")
    outcome = pipeline.process(Sample("test", "small.png", "1", 0.0, _png(Image.new("L", (320, 240), 128))))
    assert outcome.verdict.reason == "too_small"
    assert "320x240 frame does not contain the crop [600, 400, 700, 470]" in outcome.verdict.detail


def test_a_jpeg_decoded_at_reduced_scale_is_cropped_where_the_full_decode_would_be(tmp_path: Path) -> None:
    """A 640×480 camera JPEG is draft-decoded (the crop keeps it at least the model's size); the tensor is
    within JPEG-scaling noise of the tensor made from the full decode cropped by hand."""
    from edge_infer.preprocess import image_tensor

    label, digit = _digits(5)[3]
    camera = Image.new("L", (640, 480), 40)
    camera.paste(digit.resize((160, 160)), (320, 0))
    buf = io.BytesIO()
    camera.save(buf, "JPEG", quality=95)
    bundle = with_crop(load_bundle(DIGITS_INT8), (0.5, 0.0, 0.75, 1 / 3))
    model = Model(bundle)
    assert model.draft_size == (64, 48)  # the 16×16 input ÷ the crop's share of each side
    pipeline = _pipeline(tmp_path, "[0.5, 0.0, 0.75, 0.3333333]")
    measured = pipeline.measure(Sample("test", "cam.jpg", "1", 0.0, buf.getvalue()))
    by_hand = Image.open(io.BytesIO(buf.getvalue())).convert("L").crop((320, 0, 480, 160))
    expected = image_tensor(by_hand, bundle.manifest.input, model.engine.inputs[0]).astype(float)
    assert measured.image.size != by_hand.size  # it really was decoded at reduced scale
    assert np.abs(measured.tensor.astype(float) - expected).mean() <= 8.0  # of 255: a misplaced crop is ~50
    assert pipeline.process(Sample("test", "cam.jpg", "1", 0.0, buf.getvalue())).result.label == label


@pytest.mark.parametrize(("crop", "message"), [
    ("[0, 0, 1, 1]", "smaller than 8×8; write fractions of the frame with a decimal point"),
    ("[0.5, 0.0, 0.25, 1.0]", "x0 < x1 and y0 < y1"),
    ("[0.0, 0.0, 320, 0.5]", "mixes pixels and fractions"),
    ("[0.1, 0.2]", "expected [x0, y0, x1, y1]"),
    ('"top-left"', "expected a list"),
])
def test_a_crop_that_makes_no_sense_is_one_line(tmp_path: Path, crop: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _pipeline(tmp_path, crop)
    text = str(caught.value)
    assert "[model].crop" in text or "crop" in text
    assert message in text and "\n" not in text


def test_a_crop_for_a_sensor_model_is_refused(tmp_path: Path) -> None:
    from edge_infer.bundle import BundleError

    sensor = REPO / "demo" / "vibration-int8-only.tflite"
    with pytest.raises(BundleError, match=re.escape("[model].crop is for image models")):
        with_crop(load_bundle(sensor), (0.0, 0.0, 0.5, 0.5))
