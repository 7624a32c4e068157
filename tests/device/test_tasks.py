"""Task postprocessing: boxes back in source pixels after letterbox / crop, NMS, SSD outputs, zones, the
other tasks, and a plain .tflite run with configuration alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_infer.bundle import load_bundle
from edge_infer.decide import Debouncer, Thresholds
from edge_infer.manifest import ImageInputSpec, parse_output_spec
from edge_infer.model import Model, open_bundle
from edge_infer.preprocess import model_view, view_geometry
from edge_infer.runtime import TensorInfo
from edge_infer.tasks.detection import iou, nms
from edge_infer.tasks.zones import Zone
from tests.conftest import REPO

DETECTORS = {"yolo": REPO / "demo" / "digit-detector-yolo.tflite", "ssd": REPO / "demo" / "digit-detector-ssd.tflite"}
HELD_OUT = REPO / "demo" / "detector"


@pytest.mark.parametrize("resize", ["letterbox", "centre-crop", "stretch"])
@pytest.mark.parametrize("size", [(96, 64), (64, 96), (333, 101)])
def test_a_box_maps_back_to_where_it_was_in_the_source(resize: str, size: tuple[int, int]) -> None:
    """A bright square drawn in the source lands in the model view where `view_geometry` says, and
    `to_source` brings its model-view box back to the source box (within a model pixel's worth)."""
    spec = ImageInputSpec(width=48, height=48, color="L", resize=resize)
    w, h = size
    box = (w * 0.4, h * 0.35, w * 0.6, h * 0.65)
    pixels = np.zeros((h, w), np.uint8)
    pixels[round(box[1]):round(box[3]), round(box[0]):round(box[2])] = 255
    view = np.asarray(model_view(Image.fromarray(pixels), spec))
    ys, xs = np.nonzero(view > 127)
    g = view_geometry(size, spec)
    x0, y0 = g.to_source(np.array([xs.min()]), np.array([ys.min()]))
    x1, y1 = g.to_source(np.array([xs.max() + 1]), np.array([ys.max() + 1]))
    tolerance = 1.5 / min(g.scale_x, g.scale_y)
    assert np.allclose([x0[0], y0[0], x1[0], y1[0]], box, atol=tolerance)


def test_source_scale_undoes_reduced_jpeg_decoding() -> None:
    spec = ImageInputSpec(width=48, height=48, color="L", resize="letterbox")
    full = view_geometry((640, 480), spec)
    draft = view_geometry((160, 120), spec, source_scale=(4.0, 4.0))  # decoded at 1/4
    for g in (full, draft):
        assert g.width == 640 and g.height == 480
    pt = (np.array([10.0, 30.0]), np.array([20.0, 40.0]))
    assert np.allclose(full.to_source(*pt), draft.to_source(*pt))


boxes_strategy = st.lists(st.tuples(st.floats(0, 80), st.floats(0, 80), st.floats(1, 40), st.floats(1, 40),
                                    st.floats(0.01, 1), st.integers(0, 2)), min_size=0, max_size=40)


@settings(max_examples=200, deadline=None)
@given(boxes_strategy)
def test_nms_keeps_no_overlapping_pair_of_a_class_and_drops_only_what_a_better_box_covers(rows: list) -> None:
    b = np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows], np.float32).reshape(-1, 4)
    scores = np.array([r[4] for r in rows], np.float32)
    classes = np.array([r[5] for r in rows])
    kept = nms(b, scores, classes, 0.5, 1000)
    for i in kept:
        same = [j for j in kept if j != i and classes[j] == classes[i]]
        if same:
            assert (iou(b[i], b[same]) <= 0.5).all()
    for j in set(range(len(rows))) - set(kept.tolist()):
        better = [i for i in kept if classes[i] == classes[j] and scores[i] >= scores[j]]
        assert better and (iou(b[j], b[better]) > 0.5).any()


def _frames() -> list[dict]:
    return json.loads((HELD_OUT / "boxes.json").read_text())


@pytest.mark.parametrize("fmt", ["yolo", "ssd"])
def test_detector_finds_the_pasted_digits_in_source_coordinates(fmt: str) -> None:
    """60 held-out 96×64 frames (letterboxed into 48×48): boxes come back in frame pixels, where the digits
    were pasted; both output formats (raw grid + device NMS, and the TFLite post-process op) agree."""
    model = Model(load_bundle(DETECTORS[fmt]))
    found = total = extra = 0
    overlaps = []
    for frame in _frames():
        image = Image.open(HELD_OUT / "frames" / frame["file"])
        result = model.run(model.prepare(image), model.geometry(image))
        assert result.frame == (96, 64)
        predicted = [(b.label, np.array(b.box)) for b in result.boxes]
        total += len(frame["boxes"])
        used: set[int] = set()
        for truth in frame["boxes"]:
            scored = [(float(iou(np.array(truth["box"], float), p[None])[0]), i) for i, (label, p) in
                      enumerate(predicted) if label == truth["label"] and i not in used]
            best = max(scored, default=(0.0, -1))
            if best[0] >= 0.5:
                found += 1
                used.add(best[1])
                overlaps.append(best[0])
        extra += len(predicted) - len(used)
    assert found / total >= 0.85, f"{fmt}: recall {found}/{total}"
    assert extra / total <= 0.15, f"{fmt}: {extra} boxes matched nothing"
    assert np.mean(overlaps) >= 0.65


def test_zones_and_per_label_thresholds() -> None:
    model = Model(load_bundle(DETECTORS["yolo"]), zones=[Zone("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)))])
    frame = _frames()[0]
    image = Image.open(HELD_OUT / "frames" / frame["file"])
    result = model.run(model.prepare(image), model.geometry(image))
    for b in result.boxes:
        assert ("left" in b.zones) == ((b.box[0] + b.box[2]) / 2 < 48)
    label = result.boxes[0].label
    strict_model = model.with_rules(thresholds=Thresholds(model.manifest, None, {label: 1.0}))
    strict = strict_model.run(model.prepare(image), model.geometry(image))
    assert label not in {b.label for b in strict.boxes}
    assert strict.candidates_below_threshold >= 1  # … and the frame is uncertain


def test_yolo_rows_decode_with_the_tensors_own_quantization() -> None:
    """A hand-made quantized (1, 2, 7) grid: 2 classes with objectness; cxcywh normalised."""
    from edge_infer.manifest import parse_manifest
    from edge_infer.preprocess import ViewGeometry
    from edge_infer.tasks.detection import detect

    doc = json.loads(json.dumps(load_bundle(DETECTORS["yolo"]).manifest.raw))
    doc["labels"], doc["thresholds"] = ["a", "b"], {"default": 0.5}
    manifest = parse_manifest(doc)
    rows = np.array([[[0.5, 0.5, 0.25, 0.5, 0.9, 0.1, 0.9], [0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.1]]], np.float32)
    tensor = TensorInfo(0, rows.shape, np.dtype(np.uint8), 1 / 255, 0)
    q = np.round(rows * 255).astype(np.uint8)
    geometry = ViewGeometry(0.5, 0.5, 0.0, 12.0, 96, 64)  # 96×64 letterboxed into 48×48
    result = detect([q], [tensor], manifest, geometry, Thresholds(manifest, None, {}))
    assert [b.label for b in result.boxes] == ["b"]
    assert np.allclose(result.boxes[0].box, [36, 0, 60, 48], atol=1.0)  # y clipped at the frame's top
    assert result.candidates_below_threshold == 0  # row 2 scores 0.09: under the 0.25 floor


def test_debounce_needs_n_of_m_and_ignores_one_noisy_frame() -> None:
    d = Debouncer(3, 5)
    states = [d.update(k) for k in ["a", "a", "b", "a", None, "b", "b", "a", "b"]]
    assert [s.value for s in states] == [None, None, None, "a", "a", "a", "b", "b", "b"]
    assert [s.changed for s in states].count(True) == 2


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["b", None]), st.integers(0, 59), st.integers(2, 5))
def test_a_single_outlier_never_flips_a_steady_state(outlier: str | None, at: int, n: int) -> None:
    d = Debouncer(n, n + 2)
    for _ in range(n + 2):
        d.update("a")
    stream = ["a"] * 60
    stream[at] = outlier
    assert all(d.update(k).value == "a" for k in stream)


def test_a_plain_tflite_runs_as_raw_with_configuration_alone(tmp_path: Path) -> None:
    """The demo digits model stripped of its manifest: `[model.input]` describes its preprocessing, the task is
    raw, and the outputs come back dequantized by the tensor's own scale/zero point — equal to the bundle's."""
    bundle = load_bundle(REPO / "demo" / "digits-int8-only.tflite")
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(bundle.model_bytes)
    raw_bundle, engine = open_bundle(plain, {"input": {"color": "L", "normalize": {"scale": 1 / 255}}})
    model = Model(raw_bundle, engine=engine)
    assert model.task == "raw" and raw_bundle.manifest.input.width == 16
    image = Image.open(next((REPO / "demo" / "digits" / "test" / "4").glob("*.png")))
    outputs = model.run(model.prepare(image)).arrays
    (_name, values), = outputs.items()
    scores = Model(bundle).classify(image)
    assert values.shape == (1, 10) and int(np.argmax(values)) == int(scores.label)
    assert float(values.max()) == pytest.approx(scores.confidence, abs=1e-6)


def test_output_spec_defaults_match_the_manifest_documentation() -> None:
    """What `parse_output_spec` applies to a manifest that leaves `output` out, against the defaults the
    documentation's task table states (read from docs/decisions.md, not from the code)."""
    row = next(line for line in (REPO / "docs" / "decisions.md").read_text().splitlines()
               if line.startswith("| `detection` |"))
    documented = {k: float(v) for k, v in re.findall(r"`(iou_threshold|score_floor|max_detections)` \(([\d.]+)\)", row)}
    spec = parse_output_spec({}, "detection")
    applied = {"iou_threshold": spec.iou_threshold, "score_floor": spec.score_floor,
               "max_detections": float(spec.max_detections)}
    assert len(documented) == 3 and applied == documented
    assert spec.format == "yolo" and "`format` (`yolo` or `ssd`)" in row


def test_each_task_draws_its_own_result_on_the_snapshot() -> None:
    """`snapshot` asks the result's task to draw: a detector's boxes land where the boxes are, the other tasks
    write a caption across the top, raw outputs leave the picture as it was."""
    import io

    from edge_infer.decide import Decision
    from edge_infer.snapshot import annotate
    from edge_infer.tasks.anomaly import AnomalyScore
    from edge_infer.tasks.raw import RawOutputs
    from edge_infer.tasks.regression import Regression
    from edge_infer.tasks.segmentation import Segmentation

    model = Model(load_bundle(DETECTORS["yolo"]))
    frame = Image.open(HELD_OUT / "frames" / _frames()[0]["file"]).convert("RGB")
    detections = model.run(model.prepare(frame), model.geometry(frame))
    results = {
        "detection": detections,
        "regression": Regression({"temperature": 21.5}),
        "anomaly": AnomalyScore(0.8, 0.5),
        "segmentation": Segmentation({"sky": 0.6}, "sky", 0.6, 0.9, 0.0, {}),
        "raw": RawOutputs({"y": np.zeros(3)}),
    }
    plain = np.asarray(Image.open(io.BytesIO(annotate(frame, results["raw"], Decision("ok"))[0])), np.float32)
    for task, result in results.items():
        jpeg, size = annotate(frame, result, Decision("ok"))
        drawn = np.abs(np.asarray(Image.open(io.BytesIO(jpeg)), np.float32) - plain).max(axis=2) > 60
        assert size == frame.size
        if task == "raw":
            assert not drawn.any()
        elif task == "detection":
            near = np.zeros_like(drawn)  # each box's outline and its label, a few pixels of JPEG ringing around
            for box in detections.boxes:
                x0, y0, x1, y1 = (round(v) for v in box.box)
                near[max(y0 - 4, 0):y1 + 5, max(x0 - 4, 0):x1 + 5] = True
                near[max(y0 - 4, 0):y0 + 16, max(x0 - 4, 0):x0 + 8 * len(box.label) + 40] = True
            assert detections.boxes and drawn.any() and not (drawn & ~near).any()
        else:
            assert drawn[:15].any() and not drawn[16:].any(), task  # the caption band, nothing else
