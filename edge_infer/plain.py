"""A plain `.tflite` (no edge-infer manifest) made into an in-memory bundle: described by the device config's
`[model.input]` table (and optional `labels`, `task`, `[model.output]`), or — with no `[model.input]` — by the
standard TFLite Metadata third-party models carry (normalisation and colour of the input, the labels file, a
recommended score threshold; see `edge_infer.tflite_metadata`). A model that has neither is a one-line error
naming what to add."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edge_infer.bundle import Bundle, BundleError, build_manifest_doc
from edge_infer.delegates import EngineSettings
from edge_infer.manifest import Manifest, ManifestError, parse_manifest
from edge_infer.runtime import Engine, build_engine
from edge_infer.tflite_metadata import MetadataError, ModelMetadata, parse_labels, read_metadata

WHAT_TO_ADD = ("describe its input in the config's [model.input] table (e.g. normalize = { scale = 0.00392157, "
               "offset = 0.0 }), add NormalizationOptions to its TFLite Metadata, or make a bundle of it with "
               "`edge-convert wrap` (docs/converter.md)")


def parse_doc(path: Path | str, doc: dict[str, Any], where: str) -> Manifest:
    try:
        return parse_manifest(doc)
    except ManifestError as exc:
        raise BundleError(path, f"{where}: {exc}") from None


def labels_file(path: Path, name: str) -> tuple[str, ...]:
    """`[model].labels` given as a file: one label per line in output order, or a `0 name` labelmap."""
    try:
        labels = parse_labels(Path(name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"[model].labels: cannot read {name}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if not labels or not all(labels):
        raise BundleError(path, f"[model].labels: {name} has no labels, or an empty line among them")
    return labels


def plain_model(path: Path, overrides: dict[str, Any], settings: EngineSettings | None,
                fallback: bool = True) -> tuple[Bundle, Engine]:
    """The in-memory bundle of a plain model and the interpreter built to read its input shape."""
    data = path.read_bytes()
    try:
        metadata = read_metadata(data)
    except MetadataError as exc:
        metadata = None
        if "input" not in overrides:
            raise BundleError(path, f"its TFLite Metadata cannot be read ({exc}): {WHAT_TO_ADD}") from None
    if "input" not in overrides and (metadata is None or metadata.mean is None):
        what = "no manifest and no TFLite Metadata" if metadata is None else \
            "TFLite Metadata that does not say how to normalise its input"
        raise BundleError(path, f"a plain .tflite model with {what}: {WHAT_TO_ADD}")
    engine = build_engine(data, settings or EngineSettings(), fallback)
    if "input" in overrides:
        table, where = _config_input(path, dict(overrides["input"]), engine), "[model.input]"
        task, extra = overrides.get("task", "raw"), {}
        labels = overrides.get("labels", [])
    else:
        assert metadata is not None
        table, where = _metadata_input(path, metadata, engine), "the model's TFLite Metadata"
        labels = overrides.get("labels") or list(metadata.labels or [])
        task = overrides.get("task") or ("classification" if labels and _elements(engine) == len(labels) else "raw")
        extra = {"thresholds": {"default": metadata.score_threshold}} if metadata.score_threshold else {}
    doc = build_manifest_doc(data, name=path.stem, version=hashlib.sha256(data).hexdigest()[:8], task=task,
                             input=table, output=overrides.get("output", {}), labels=labels, **extra)
    return Bundle(path, data, parse_doc(path, doc, where)), engine


def _elements(engine: Engine) -> int:
    n = 1
    for dim in engine.outputs[0].shape:
        n *= int(dim)
    return n


def _config_input(path: Path, table: dict[str, Any], engine: Engine) -> dict[str, Any]:
    shape = engine.inputs[0].shape
    if table.get("kind", "image") == "image":
        if len(shape) != 4:
            raise BundleError(path, f"[model.input] kind = \"image\", but the model's input has shape {shape}")
        table.setdefault("height", shape[1])
        table.setdefault("width", shape[2])
        table.setdefault("color", "L" if shape[3] == 1 else "RGB")
    return {"kind": "image", **table}


def _metadata_input(path: Path, metadata: ModelMetadata, engine: Engine) -> dict[str, Any]:
    shape = tuple(engine.inputs[0].shape)
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise BundleError(path, f"its TFLite Metadata describes an input of shape {shape}, not an image batch "
                                "(1, H, W, 1|3): describe the input in the config's [model.input] table")
    color = metadata.color or ("L" if shape[3] == 1 else "RGB")
    if (color == "L") != (shape[3] == 1):
        raise BundleError(path, f"its TFLite Metadata says colour {color}, but the input has {shape[3]} channels: "
                                "fix the metadata or describe the input in [model.input]")
    try:
        normalize = metadata.normalization(shape[3])
    except MetadataError as exc:
        raise BundleError(path, f"{exc}: fix the metadata or describe the input in [model.input]") from None
    return {"kind": "image", "height": shape[1], "width": shape[2], "color": color, "normalize": normalize}
