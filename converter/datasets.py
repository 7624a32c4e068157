"""Labelled image folders (`root/<label>/*.png|jpg`) read through the device's own decode and preprocess
code — the single source of truth that makes calibration and serving identical."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from converter.errors import ConvertError
from edge_infer.gates import sensor as sensor_gate
from edge_infer.gates.decode import DecodeRejected, decode_image
from edge_infer.gates.quality import assess, reference_stats
from edge_infer.manifest import ImageInputSpec, SensorInputSpec
from edge_infer.preprocess import draft_size, model_view, normalized_image, normalized_window, region
from edge_infer.sources.readings import ReadingParser, Windower

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Example:
    """One labelled input: an image file, or a sensor window (readings × channels) from an .npz or .csv."""

    path: Path
    label: str
    window: np.ndarray | None = field(default=None, compare=False, repr=False)


def folder_labels(root: Path) -> list[str]:
    """Sub-folder names of a dataset root, sorted: the label order when no labels file is given."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_examples(root: Path, what: str) -> list[Example]:
    """Every image under `root/<label>/`, sorted by label then file name; or, unlabelled (label ""), every
    image directly in `root` when it has no label folders."""
    if not root.exists():
        raise ConvertError(f"{root}: {what} folder not found")
    if not root.is_dir():
        raise ConvertError(f"{root}: {what} must be a folder laid out as <root>/<label>/<image>")
    examples = [
        Example(path, label)
        for label in folder_labels(root)
        for path in sorted((root / label).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not examples and not folder_labels(root):
        examples = [Example(path, "") for path in sorted(root.iterdir())
                    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not examples:
        raise ConvertError(f"{root}: {what} folder holds no images (expected <root>/<label>/*.png|jpg)")
    return examples


def stratified_sample(examples: list[Example], limit: int) -> list[Example]:
    """Deterministic, label-balanced subset: round-robin over labels in file-name order."""
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    queues = [iter(v) for _, v in sorted(by_label.items())]
    chosen: list[Example] = []
    while queues and len(chosen) < limit:
        for q in list(queues):
            ex = next(q, None)
            if ex is None:
                queues.remove(q)
            elif len(chosen) < limit:
                chosen.append(ex)
    return chosen


def load_image(path: Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode a dataset image with the device's decode gate (and the same JPEG draft scaling the device uses
    for this model's input size); a bad file is a one-line error."""
    try:
        return decode_image(path.read_bytes(), draft_size=draft_size)
    except DecodeRejected as rejected:
        raise ConvertError(f"{path}: {rejected.verdict.reason}: {rejected.verdict.detail}") from None
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read: {exc.strerror}") from None


def load_region(path: Path, spec: ImageInputSpec) -> Image.Image:
    """`load_image` as the device decodes a frame for this input, then the part the model works on (its
    `crop`, else the whole image) — what the gate, the view and the tensor are made from."""
    image = load_image(path, draft_size(spec))
    try:
        return region(image, spec)
    except ValueError as exc:
        raise ConvertError(f"{path}: {exc}") from None


def calibration_tensors(examples: list[Example], spec: ImageInputSpec) -> Iterator[np.ndarray]:
    """The exact float tensors (H, W, C) the device computes from these files."""
    for ex in examples:
        yield normalized_image(load_region(ex.path, spec), spec)


def quality_reference(examples: list[Example], spec: ImageInputSpec) -> dict[str, object]:
    """What good input looks like to the device's quality gate: its metrics' percentiles over these images,
    measured by the gate's own code on the same decoded view (`reference.image_quality` in the manifest)."""
    qualities = []
    for ex in examples:
        image = load_region(ex.path, spec)
        qualities.append(assess(image, model_view(image, spec)))
    return reference_stats(qualities)


def list_windows(path: Path, spec: SensorInputSpec, labels: list[str] | None, what: str) -> list[Example]:
    """Sensor windows from `.npz` (arrays `x`: N × window × channels, `y`: N labels or label indices) or `.csv`
    (readings with the model's channel columns and a `label` column; windows are cut with the model's window
    and hop inside each run of one label, by the device's own parser and windower)."""
    if not path.exists():
        raise ConvertError(f"{path}: {what} file not found")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                x, y = data["x"], data.get("y")
        except (KeyError, ValueError, OSError) as exc:
            raise ConvertError(f"{path}: not a readable .npz with an 'x' array: {exc}") from None
        if x.ndim != 3 or x.shape[1:] != spec.shape:
            raise ConvertError(f"{path}: 'x' has shape {x.shape}; the model takes (N, {spec.window}, "
                               f"{len(spec.channels)}) windows")
        if y is None:
            names = ["unlabelled"] * len(x)
        elif np.issubdtype(y.dtype, np.integer):
            if labels is None or y.min() < 0 or y.max() >= len(labels):
                raise ConvertError(f"{path}: 'y' holds label indices outside the {len(labels or [])} labels")
            names = [labels[int(i)] for i in y]
        else:
            names = [str(v) for v in y]
        examples = [Example(path, name, w.astype(np.float64)) for name, w in zip(names, x, strict=True)]
    elif path.suffix.lower() == ".csv":
        examples = _csv_windows(path, spec)
    else:
        raise ConvertError(f"{path}: {what} for a sensor model must be a .npz or .csv file")
    if not examples:
        raise ConvertError(f"{path}: {what} holds no complete {spec.window}-reading windows")
    return examples


def _csv_windows(path: Path, spec: SensorInputSpec) -> list[Example]:
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path}: not a readable CSV file: {exc}") from None
    header = [c.strip() for c in rows[0]] if rows else []
    if "label" not in header:
        raise ConvertError(f"{path}: expected a header line with the channels {list(spec.channels)} and 'label'")
    missing = [c for c in spec.channels if c not in header]
    if missing:
        raise ConvertError(f"{path}: header lacks the model's channels {missing}")
    parser = ReadingParser(spec.channels, "csv", header)
    at = header.index("label")
    examples: list[Example] = []
    current, windower = None, None
    for fields in rows[1:]:
        if len(fields) != len(header):
            continue
        label = fields[at].strip()
        if label != current:
            current, windower = label, Windower(spec.window, spec.hop, len(spec.channels))
        reading = parser.fields(fields)
        if reading is None or windower is None:
            continue
        done = windower.push(0.0, reading[1])
        if done is not None:
            examples.append(Example(path, label, done[1]))
    return examples


def window_tensors(examples: list[Example], spec: SensorInputSpec) -> Iterator[np.ndarray]:
    """The exact float tensors (window, channels) the device computes from these windows."""
    for ex in examples:
        assert ex.window is not None
        yield normalized_window(ex.window, spec)


def sensor_reference(examples: list[Example], spec: SensorInputSpec) -> dict[str, object]:
    """Per-channel statistics of healthy windows for the device's sensor gate (`reference.sensor`)."""
    return sensor_gate.reference_stats([ex.window for ex in examples if ex.window is not None], spec.channels)
