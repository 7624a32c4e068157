"""The image quality gate on the device: pixel modes converted safely, metrics that move the right way, the
frozen-frame check, config overrides, and thousands of random inputs that each end in a verdict."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFilter

from edge_infer.bundle import load_bundle
from edge_infer.decide import Thresholds
from edge_infer.gates.decode import DecodeRejected, decode_image
from edge_infer.gates.quality import (
    DEFAULT_LIMITS,
    FrozenDetector,
    ImageGate,
    QualityLimits,
    check,
    gate_from_config,
    limits_from_reference,
    measure,
    native_noise,
)
from edge_infer.model import Model
from edge_infer.pipeline import Pipeline
from edge_infer.sections import GateConfig
from edge_infer.sources import Sample
from tests.conftest import DEMO, DIGITS_TEST, run_cli, write_config
from tests.helpers.broker import Mosquitto
from tests.helpers.subscriber import Subscriber

REASONS = {"empty_file", "not_an_image", "decode_error", "truncated", "too_large", "too_small", "unsupported_mode",
           "underexposed", "overexposed", "low_contrast", "blurry", "noisy", "frozen", "unreadable"}


def encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def digit() -> Image.Image:
    return Image.open(next((DIGITS_TEST / "4").glob("*.png")))


@pytest.mark.parametrize(
    ("make", "mode"),
    [
        (lambda d: d.convert("P"), "RGB"),  # a palette may hold colours: RGB, as `standardize` documents
        (lambda d: d.convert("RGB").convert("CMYK"), "RGB"),
        (lambda d: d.convert("1"), "L"),
        (lambda d: Image.fromarray(np.asarray(d).astype(np.uint16) * 257), "L"),  # 16-bit grey
        (lambda d: d.convert("RGBA"), "RGB"),
        (lambda d: d.convert("LA"), "L"),
    ],
)
def test_every_safe_mode_arrives_as_l_or_rgb_with_its_pixels(make, mode: str) -> None:
    source = digit()
    fmt = "TIFF" if make(source).mode == "CMYK" else "PNG"
    image = decode_image(encoded(make(source), fmt))
    assert image.mode == mode
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    original = np.asarray(source, dtype=np.int16)
    tolerance = 128 if make(source).mode == "1" else 3  # 1-bit keeps only the sign of each pixel
    assert np.abs(grey - original).mean() < tolerance


def test_16_bit_is_scaled_not_clipped() -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 … 65520
    image = decode_image(encoded(Image.fromarray(ramp)))
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255 and 100 < pixels.mean() < 160  # clipping would give ~255


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((200, 10, 10, 255), (0, 0, 8, 16))
    image = decode_image(encoded(rgba))
    assert image.mode == "RGB"
    assert image.getpixel((12, 8)) == (255, 255, 255) and image.getpixel((2, 8)) == (200, 10, 10)


def test_float_images_are_refused_as_unsupported() -> None:
    floats = Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), "F")
    with pytest.raises(DecodeRejected) as err:
        decode_image(encoded(floats, "TIFF"))
    assert err.value.verdict.reason == "unsupported_mode" and err.value.verdict.metrics["mode"] == "F"


def gray_photo() -> np.ndarray:
    """A real scan with texture at 64×64 (a digit, upscaled smoothly)."""
    return np.asarray(digit().resize((64, 64), Image.Resampling.BICUBIC))


def test_metrics_move_the_right_way_under_each_degradation() -> None:
    base = Image.fromarray(gray_photo())
    q = measure(np.asarray(base), native_noise(base))
    blurred = base.filter(ImageFilter.GaussianBlur(2))
    darker = base.point(lambda v: v // 4)
    flat = base.point(lambda v: 100 + v // 8)
    noisy = Image.fromarray(np.clip(np.asarray(base) + np.random.default_rng(0).normal(0, 30, (64, 64)), 0, 255)
                            .astype(np.uint8))
    assert measure(np.asarray(blurred), 0).sharpness < q.sharpness / 3
    assert measure(np.asarray(darker), 0).brightness < q.brightness / 3
    assert measure(np.asarray(darker), 0).dark_fraction > q.dark_fraction
    assert measure(np.asarray(flat), 0).contrast < q.contrast / 5
    assert native_noise(noisy) > 3 * max(q.noise, 1.0)


def test_without_reference_only_the_unmistakable_is_rejected() -> None:
    assert limits_from_reference(None) is DEFAULT_LIMITS
    black, white, grey = (np.full((32, 32), v, np.uint8) for v in (0, 255, 128))
    assert check(measure(black, 0), DEFAULT_LIMITS).reason == "underexposed"
    assert check(measure(white, 0), DEFAULT_LIMITS).reason == "overexposed"
    assert check(measure(grey, 0), DEFAULT_LIMITS).reason == "low_contrast"
    assert check(measure(gray_photo(), 0), DEFAULT_LIMITS).ok


def test_config_overrides_a_limit_or_turns_a_check_off() -> None:
    reference = load_bundle(DEMO / "digits-int8-only.tflite").manifest.image_quality_reference
    gate = gate_from_config(GateConfig(min_sharpness=10.0, max_noise=-1), reference)
    assert gate.limits.min_sharpness == 10.0 and gate.limits.max_noise is None
    assert gate.limits.source == "reference+config"
    assert gate.limits.min_brightness == limits_from_reference(reference).min_brightness


def test_frozen_frames_are_rejected_after_the_configured_run() -> None:
    detector = FrozenDetector(frames=3, max_diff=0.5)
    a = gray_photo()
    b = np.roll(a, 5, axis=1)
    verdicts = [detector.check(x).reason for x in (a, a, a, a, b, b, a)]
    assert verdicts == [None, None, "frozen", "frozen", None, None, None]


def test_region_of_interest_limits_what_is_measured() -> None:
    """Three quarters of the frame black, a real scan in the rest: an ROI on the scan passes, the frame not."""
    frame = np.zeros((64, 256), np.uint8)
    frame[:, 192:] = gray_photo()
    image = Image.fromarray(frame)
    limits = QualityLimits(max_dark_fraction=0.75, source="test")
    assert ImageGate(limits).check(image, image).reason == "underexposed"
    assert ImageGate(limits, roi=[0.75, 0.0, 1.0, 1.0]).check(image, image).ok


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=3, max_side=64)))
def test_any_greyscale_array_gets_a_verdict(pixels: np.ndarray) -> None:
    image = Image.fromarray(pixels)
    limits = limits_from_reference(load_bundle(DEMO / "digits-int8-only.tflite").manifest.image_quality_reference)
    verdict = ImageGate(limits, frozen_frames=2).check(image, image)
    assert verdict.ok or (verdict.reason in REASONS and verdict.detail)
    q = measure(pixels, native_noise(image))
    assert all(np.isfinite(v) and v >= 0 for v in q.to_dict().values())


BASE = encoded(digit().convert("RGB"), "JPEG", quality=90)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    bundle = load_bundle(DEMO / "digits-int8-only.tflite")
    limits_gate = gate_from_config(GateConfig(), bundle.manifest.image_quality_reference)
    return Pipeline(Model(bundle), Thresholds(bundle.manifest, None, {}), gate=limits_gate)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.binary(max_size=1024),
    st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255)), max_size=10).map(
        lambda flips: bytes(_flip(BASE, flips))),
))
def test_random_and_mutated_bytes_through_the_whole_front_half(pipeline: Pipeline, data: bytes) -> None:
    prepared = pipeline.prepare(Sample("fuzz", "x", "0", 0.0, data))
    if prepared.verdict.ok:
        assert prepared.tensor is not None and prepared.tensor.shape == (1, 16, 16, 1)
    else:
        assert prepared.verdict.reason in REASONS and prepared.verdict.detail and prepared.tensor is None


def _flip(base: bytes, flips: list[tuple[int, int]]) -> bytearray:
    data = bytearray(base)
    for pos, value in flips:
        data[pos] = value
    return data


def test_rejections_can_be_kept_for_review_and_left_unpublished(tmp_path: Path, broker: Mosquitto) -> None:
    """`publish_rejections = false`: rejected inputs are counted and checkpointed but not published, and seq
    stays gapless; `keep_rejected` keeps the newest N rejected files, by reason, with their metadata."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    for name in ("digit-0000.png", "digit-0003.png", "out-of-focus.png", "lights-off.png", "camera-glitch.jpg",
                 "empty.png"):
        (inbox / name).write_bytes((DEMO / "samples" / name).read_bytes())
    for i in range(4):
        (inbox / f"dark-{i}.png").write_bytes(encoded(digit().point(lambda v, i=i: v // (12 + i))))
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=inbox,
                       state=tmp_path / "s", port=broker.port)
    cfg.write_text(cfg.read_text() + "\n[gate]\npublish_rejections = false\nkeep_rejected = 3\n")
    sub = Subscriber(broker.port, "edge/test-pi/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) >= 2)
    assert "rejected=8" in proc.stderr
    assert sub.wait_for(lambda s: s.went_offline(), 30)  # everything the run published has arrived
    assert sub.of_kind("rejections") == []
    seqs = sorted(m.json()["seq"] for m in sub.of_kind("results"))
    assert seqs == [1, 2]
    db = sqlite3.connect(tmp_path / "s" / "outbox.db")
    assert db.execute("SELECT COUNT(*) FROM processed").fetchone()[0] == 10
    kept = sorted(p.parent.name for p in (tmp_path / "s" / "rejected").glob("*/*") if p.suffix != ".json")
    assert len(kept) == 3
    assert all((p.parent / (p.name + ".json")).exists() for p in (tmp_path / "s" / "rejected").glob("*/*")
               if p.suffix != ".json")
    # A second run processes nothing again: the rejections were checkpointed.
    again = run_cli("run", "--config", str(cfg), "--once")
    assert "skipped=10" in again.stderr, again.stderr
    sub.close()


def test_a_stuck_camera_is_caught_as_frozen_through_the_daemon(tmp_path: Path, broker: Mosquitto) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    scans = sorted((DIGITS_TEST / "6").glob("*.png"))
    for i in range(5):
        (inbox / f"frame-{i}.png").write_bytes(scans[0].read_bytes())  # the same frame five times
    (inbox / "frame-5.png").write_bytes(scans[1].read_bytes())  # the scene moves again
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=inbox,
                       state=tmp_path / "s", port=broker.port)
    cfg.write_text(cfg.read_text() + "\n[gate]\nfrozen_frames = 3\n")
    sub = Subscriber(broker.port, "edge/test-pi/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) + len(s.of_kind("rejections")) >= 6)
    frozen = sorted(m.json()["input"]["id"] for m in sub.of_kind("rejections") if m.json()["reason"] == "frozen")
    assert frozen == ["frame-2.png", "frame-3.png", "frame-4.png"]
    results = sorted(m.json()["input"]["id"] for m in sub.of_kind("results"))
    assert results == ["frame-0.png", "frame-1.png", "frame-5.png"]
    sub.close()


def test_reference_versions_old_bundles_keep_their_checks_and_an_unknown_version_is_refused() -> None:
    """A bundle converted before `focus` existed (no `version`) keeps the limits it always had and gets no focus
    check; one with `focus` gets it from its own 1st percentile; a version this device cannot read is refused
    when the manifest is read, and `[gate].min_focus` overrides either way."""
    from edge_infer.gates.quality import FOCUS_MARGIN, METRICS, REFERENCE_VERSION, validate_reference

    table = {m: {f"p{p:02d}": v for p in (1, 5, 50, 95, 99)} for m, v in
             [("brightness", 100.0), ("dark_fraction", 0.0), ("bright_fraction", 0.0), ("contrast", 40.0),
              ("sharpness", 500.0), ("noise", 3.0), ("focus", 1.2)]}
    assert set(table) == set(METRICS)
    old = {k: v for k, v in table.items() if k != "focus"}
    new = {"version": REFERENCE_VERSION, **table}
    assert validate_reference(old) is None and validate_reference(new) is None
    assert "'focus'" in validate_reference({"version": REFERENCE_VERSION, **old})
    assert "not a reference version" in validate_reference({**new, "version": 99})
    assert limits_from_reference(old).min_focus is None
    assert limits_from_reference(new).min_focus == pytest.approx(1.2 * FOCUS_MARGIN)
    assert limits_from_reference(old).min_sharpness == limits_from_reference(new).min_sharpness == 125.0
    assert gate_from_config(GateConfig(min_focus=0.5), old).limits.min_focus == 0.5
    assert gate_from_config(GateConfig(min_focus=-1), new).limits.min_focus is None
