"""`edge-convert wrap model.tflite`: a TFLite model somebody else made (TF Hub / Kaggle, Model Maker, MediaPipe, an
Edge Impulse export) becomes a bundle, with no TensorFlow: its input contract from its TFLite Metadata (else the
flags / spec, else inferred from labelled images, as for a converted model), its labels from its metadata's labels
file (else `--labels`), its quantization kept as it is. The rest of the run — input reference, evaluation,
thresholds, drift reference, golden inputs, signing — is `converter.job`'s, exactly as for a converted model."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.contract import Contract
from converter.errors import ConvertError
from converter.specs import say
from edge_infer.bundle import MANIFEST_NAME, TFLITE_IDENTIFIER
from edge_infer.runtime import Engine, RuntimeUnavailable
from edge_infer.tflite_metadata import MetadataError, ModelMetadata, appended_archive, read_metadata


def read_model(path: Path) -> tuple[bytes, ModelMetadata | None]:
    """The model flatbuffer (any appended archive cut off) and its metadata; a bundle or a non-model is refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ConvertError(f"{path}: not a TFLite model (no TFL3 identifier)")
    try:
        start, members = appended_archive(data)
        metadata = read_metadata(data)
    except MetadataError as exc:
        raise ConvertError(f"{path}: {exc}; fix or strip the metadata, or pass --spec") from None
    if MANIFEST_NAME in members:
        raise ConvertError(f"{path}: already an edge-infer bundle (it has a {MANIFEST_NAME}); the device runs it "
                           "as it is")
    return data[:start], metadata


def load_engine(path: Path, model: bytes) -> Engine:
    try:
        return Engine(model)
    except RuntimeUnavailable as exc:
        raise ConvertError(f"{path}: the model does not load in this machine's TFLite runtime: "
                           f"{str(exc).split(' — ', 1)[-1][:300]}") from None


def quantization(engine: Engine) -> tuple[str, str]:
    """(mode, io_type) of a model as it is: integer input → int8-only; else float32 (weights may be smaller)."""
    dtype = engine.inputs[0].dtype
    if dtype in (np.uint8, np.int8):
        return "int8-only", np.dtype(dtype).name
    return "float32", "float32"


def metadata_contract(metadata: ModelMetadata | None, channels: int) -> Contract | None:
    """The input contract the metadata's NormalizationOptions state (None: they are absent)."""
    if metadata is None or metadata.mean is None:
        return None
    try:
        normalize = metadata.normalization(channels)
    except MetadataError as exc:
        raise ConvertError(f"the model's metadata: {exc}; fix the metadata or pass --spec") from None
    return Contract(normalize, "metadata", f"the model's TFLite Metadata states NormalizationOptions mean "
                                           f"{normalize['mean']}, std {normalize['std']}")


@dataclass(frozen=True)
class Wrapped:
    """A third-party model read for wrapping: the flatbuffer, its metadata, an interpreter, its quantization."""

    model: bytes
    metadata: ModelMetadata | None
    engine: Engine
    mode: str
    io_type: str

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.metadata.labels if self.metadata is not None else None

    @property
    def threshold(self) -> float | None:
        return self.metadata.score_threshold if self.metadata is not None else None


def wrap_plan(args: argparse.Namespace, path: Path) -> Wrapped:
    """Read the model to wrap and check the flags that cannot apply to it (no TensorFlow involved)."""
    if path.suffix != ".tflite" or path.is_dir():
        raise ConvertError(f"{path}: edge-convert wrap takes a .tflite model")
    for flag, value in (("--explain", args.explain), ("--auto-fallback", args.auto_fallback)):
        if value:
            raise ConvertError(f"{flag} needs the source model: a wrapped .tflite is kept as it is")
    model, metadata = read_model(path)
    engine = load_engine(path, model)
    mode, io_type = quantization(engine)
    if metadata is not None and metadata.labels is not None and args.labels is None:
        say(f"labels: {len(metadata.labels)} from the model's metadata ({metadata.labels_file})")
    args.mode, args.io_type = mode, io_type if io_type != "float32" else args.io_type
    say(f"wrapping {path} as it is ({mode}" + (f", {io_type} I/O" if mode == "int8-only" else "") + ")")
    return Wrapped(model, metadata, engine, mode, io_type)
