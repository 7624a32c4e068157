"""Labelled image folders (`root/<label>/*.png|jpg`) read through the device's own decode and preprocess
code — the single source of truth that makes calibration and serving identical."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from converter.errors import ConvertError
from edge_infer.gates.image import DecodeRejected, decode_image
from edge_infer.gates.quality import assess, reference_stats
from edge_infer.manifest import ImageInputSpec
from edge_infer.preprocess import model_view, normalized_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Example:
    path: Path
    label: str


def folder_labels(root: Path) -> list[str]:
    """Sub-folder names of a dataset root, sorted: the label order when no labels file is given."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_examples(root: Path, what: str) -> list[Example]:
    """Every image under `root/<label>/`, sorted by label then file name."""
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


def calibration_tensors(examples: list[Example], spec: ImageInputSpec) -> Iterator[np.ndarray]:
    """The exact float tensors (H, W, C) the device computes from these files."""
    for ex in examples:
        yield normalized_image(load_image(ex.path, (spec.width, spec.height)), spec)


def quality_reference(examples: list[Example], spec: ImageInputSpec) -> dict[str, object]:
    """What good input looks like to the device's quality gate: its metrics' percentiles over these images,
    measured by the gate's own code on the same decoded view (`reference.image_quality` in the manifest)."""
    qualities = []
    for ex in examples:
        image = load_image(ex.path, (spec.width, spec.height))
        qualities.append(assess(image, model_view(image, spec)))
    return reference_stats(qualities)
