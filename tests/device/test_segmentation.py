"""Segmentation postprocessing on a real picture: a class map drawn from a frame's own pixels (a held-out
detector frame of handwritten digits, thresholded: "ink" and background) goes through the task as a model's
output would — letterboxed into a square input, as scores or as class indices — and comes back with the
areas, mask and zone shares the frame itself gives. (The whole path with a trained segmentation model runs in
tests/converter/test_segmentation_end_to_end.py.)"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from edge_infer.decide import Thresholds
from edge_infer.manifest import ImageInputSpec, Manifest, OutputSpec
from edge_infer.preprocess import model_view, view_geometry
from edge_infer.runtime import TensorInfo
from edge_infer.tasks import Context, task_for
from edge_infer.tasks.segmentation import MASK_SIDE, run_lengths
from edge_infer.tasks.zones import Zone
from tests.conftest import REPO
from tests.helpers.schemas import validate

LABELS = ("background", "ink")
FRAME = REPO / "demo" / "detector" / "frames" / "frame-0000.png"


def frame() -> Image.Image:
    """A held-out detector frame (96 × 64, digits on a dark background), enlarged to a camera-like 384 × 256."""
    return Image.open(FRAME).convert("L").resize((384, 256), Image.Resampling.BILINEAR)


def manifest(activation: str, size: int = 64) -> Manifest:
    spec = ImageInputSpec(width=size, height=size, color="L", resize="letterbox")
    return Manifest("seg", "1", "segmentation", "0" * 64, 1, spec, LABELS, OutputSpec(activation=activation))


def truth_map(photo: Image.Image, m: Manifest) -> tuple[np.ndarray, float]:
    """What a perfect model outputs for the photo (the model view thresholded), and the true ink share of
    the source frame (thresholded at full resolution)."""
    threshold = 110
    view = np.asarray(model_view(photo, m.input))  # type: ignore[arg-type]
    source = np.asarray(photo)
    return (view > threshold).astype(np.int64), float((source > threshold).mean())


def run(m: Manifest, output: np.ndarray, tensor: TensorInfo, photo: Image.Image, zones=(), thresholds=None):
    g = view_geometry(photo.size, m.input)  # type: ignore[arg-type]
    ctx = Context(m, [tensor], thresholds or Thresholds(m, 0.5, {}), zones, 3, g)
    return task_for("segmentation").postprocess([output], ctx)


def test_class_indices_give_the_frames_own_ink_share_outside_the_letterbox() -> None:
    photo = frame()
    m = manifest("argmax")
    classes, share = truth_map(photo, m)
    tensor = TensorInfo(0, (1, 64, 64), np.dtype(np.int32), 0.0, 0)
    result = run(m, classes[None].astype(np.int32), tensor, photo)
    # the letterbox padding (background-coloured here) is outside the frame and does not dilute the shares
    # measured: 0.0963 against the frame's 0.0989; counting the padding would give 0.0647
    assert result.areas["ink"] == pytest.approx(share, abs=0.01)
    assert result.coverage == pytest.approx(share, abs=0.01)
    assert result.dominant == "ink" and result.frame == photo.size
    decoded = np.repeat([v for v, _ in result.mask["rle"]], [n for _, n in result.mask["rle"]])
    assert decoded.size == result.mask["width"] * result.mask["height"]
    assert max(result.mask["width"], result.mask["height"]) == MASK_SIDE
    assert result.mask["width"] / result.mask["height"] == pytest.approx(photo.width / photo.height, abs=0.05)
    assert decoded.mean() == pytest.approx(share, abs=0.01)  # the small mask is the same picture (0.094)
    validate("results", {"v": 1, "device_id": "d", "boot_id": "b", "seq": 1, "msg_id": "0" * 32,
                         "ts": "2026-01-01T00:00:00Z", "time_synced": True,
                         "model": {"name": "seg", "version": "1", "sha256": "0" * 64},
                         "input": {"id": "frame", "source": "test", "captured_at": "2026-01-01T00:00:00Z"},
                         "task": "segmentation", "result": result.to_dict(), "status": "ok", "path": "model",
                         "latency_ms": 1.0})


def test_quantized_scores_thresholds_and_zones() -> None:
    """uint8 probabilities as an int8 model gives them: the pixels whose top score is under the threshold
    are the uncertain share; the left half of the frame as a zone holds that half's ink share."""
    photo = frame()
    m = manifest("softmax")
    classes, _ = truth_map(photo, m)
    sure = np.where(classes[..., None] == np.arange(2), 230, 25).astype(np.uint8)
    unsure_rows = slice(0, 16)  # a band of the view where the model hesitates
    sure[unsure_rows] = np.where(classes[unsure_rows, :, None] == np.arange(2), 140, 115)
    tensor = TensorInfo(0, (1, 64, 64, 2), np.dtype(np.uint8), 1 / 255, 0)
    left = Zone("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)))
    result = run(m, sure[None], tensor, photo, zones=(left,), thresholds=Thresholds(m, 0.6, {}))
    g = view_geometry(photo.size, m.input)
    rows = (np.arange(64) + 0.5 - g.offset_y) / g.scale_y
    inside = (rows >= 0) & (rows < photo.height)
    expected = inside[unsure_rows].sum() / inside.sum()
    assert result.uncertain_fraction == pytest.approx(expected, abs=0.01)
    decision = task_for("segmentation").decide(result, Thresholds(m, 0.6, {}))
    assert decision.status == ("uncertain" if expected > 0.25 else "ok")
    truth_left = float((np.asarray(photo)[:, : photo.width // 2] > 110).mean())
    assert result.zones["left"]["ink"] == pytest.approx(truth_left, abs=0.01)  # 0.129 vs 0.133; whole: 0.099


def test_logits_are_softmaxed_and_agreement_compares_areas() -> None:
    photo = frame()
    m = manifest("logits")
    classes, _ = truth_map(photo, m)
    logits = np.where(classes[..., None] == np.arange(2), 3.0, -3.0).astype(np.float32)
    tensor = TensorInfo(0, (1, 64, 64, 2), np.dtype(np.float32), 0.0, 0)
    a = run(m, logits[None], tensor, photo)
    assert a.confidence == pytest.approx(1 / (1 + np.exp(-6)), abs=1e-4)
    shifted = np.roll(logits, 1, axis=1)  # the same picture one pixel over: the same answer
    assert task_for("segmentation").agrees(a, run(m, shifted[None], tensor, photo))
    empty = np.zeros_like(logits)
    empty[..., 0] = 5.0  # a model that sees no ink
    assert not task_for("segmentation").agrees(a, run(m, empty[None], tensor, photo))


def test_run_lengths_round_trip() -> None:
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (5, 7), (32, 32)]:
        grid = rng.integers(0, 3, size=shape)
        runs = run_lengths(grid)
        assert all(a[0] != b[0] for a, b in itertools.pairwise(runs))
        assert np.array_equal(np.repeat([v for v, _ in runs], [n for _, n in runs]).reshape(shape), grid)


def test_a_wrong_channel_count_is_refused() -> None:
    photo = frame()
    m = manifest("softmax")
    tensor = TensorInfo(0, (1, 64, 64, 3), np.dtype(np.float32), 0.0, 0)
    with pytest.raises(ValueError, match="3 channels for 2 labels"):
        run(m, np.zeros((1, 64, 64, 3), np.float32), tensor, photo)



def test_a_cropped_region_gives_its_own_shares_and_zones_in_frame_fractions() -> None:
    """`[model] crop` = the right half of the frame: the model sees only that half (letterboxed); the shares are
    the half's own ink share (its padding excluded), and a zone over the frame's right quarter — in fractions of
    the whole frame — holds that quarter's ink share."""
    import dataclasses

    from edge_infer.preprocess import region

    photo = frame()
    m = manifest("argmax")
    m = dataclasses.replace(m, input=dataclasses.replace(m.input, crop=(0.5, 0.0, 1.0, 1.0)))
    half = region(photo, m.input)  # type: ignore[arg-type]
    classes, _ = truth_map(half, m)
    tensor = TensorInfo(0, (1, 64, 64), np.dtype(np.int32), 0.0, 0)
    quarter = Zone("right quarter", ((0.75, 0), (1, 0), (1, 1), (0.75, 1)))
    g = view_geometry(half.size, m.input, half.info["source_scale"], half.info["crop_origin"],  # type: ignore[arg-type]
                      half.info["frame_size"])
    ctx = Context(m, [tensor], Thresholds(m, 0.5, {}), (quarter,), 3, g)
    result = task_for("segmentation").postprocess([classes[None].astype(np.int32)], ctx)
    pixels = np.asarray(photo) > 110
    assert result.areas["ink"] == pytest.approx(float(pixels[:, photo.width // 2:].mean()), abs=0.01)
    assert result.zones["right quarter"]["ink"] == pytest.approx(float(pixels[:, 3 * photo.width // 4:].mean()),
                                                                 abs=0.015)
    assert result.frame == photo.size
