"""TFLite Model Metadata — what third-party `.tflite` files (TF Hub / Kaggle models, Model Maker, MediaPipe) carry
about their input and output — read with no extra package: a small, bounds-checked flatbuffer reader over the
fields of the two schemas that matter here.

- the TFLite model (`schema.fbs`): `Model.metadata` names a buffer `TFLITE_METADATA`;
- that buffer (`metadata_schema.fbs`, identifier `M001`): the first subgraph's first input tensor — its image
  colour space (`ImageProperties`) and normalisation (`NormalizationOptions`: x = (pixel − mean) / std on 0–255
  pixels); its first output tensor — its labels file (`TENSOR_AXIS_LABELS`) and a recommended score threshold
  (`ScoreThresholdingOptions`);
- the associated files themselves: a zip archive appended to the model, held to the bundle format's archive
  limits (`edge_infer.bundle.check_archive`) before any member is read.

Damaged or hostile metadata is a `MetadataError` with a one-line reason, never a crash.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field

from edge_infer.bundle import BundleError, check_archive

METADATA_NAME = "TFLITE_METADATA"
# Union tags and enum values from metadata_schema.fbs
IMAGE_PROPERTIES = 2
NORMALIZATION_OPTIONS, SCORE_THRESHOLDING_OPTIONS = 1, 3
TENSOR_AXIS_LABELS = 2
COLOR_SPACES = {1: "RGB", 2: "L"}


class MetadataError(ValueError):
    """The model's metadata cannot be read (the reason is one line)."""


@dataclass(frozen=True)
class ModelMetadata:
    """What the metadata says, for the first input and first output tensor (None: it does not say)."""

    name: str | None = None
    version: str | None = None
    author: str | None = None
    license: str | None = None
    input_is_image: bool = False
    color: str | None = None  # "RGB" | "L"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels_file: str | None = None
    labels: tuple[str, ...] | None = None
    score_threshold: float | None = None
    files: tuple[str, ...] = field(default_factory=tuple)  # names of the associated files packed in the model

    def normalization(self, channels: int) -> dict[str, list[float]]:
        """`{"mean", "std"}` per channel (one value in the metadata applies to every channel)."""
        if self.mean is None or self.std is None:
            raise MetadataError("the metadata has no NormalizationOptions")
        out = {}
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise MetadataError(f"NormalizationOptions {name} has {len(values)} values for a {channels}-channel "
                                    "input")
            out[name] = [float(v) for v in values] * (channels if len(values) == 1 else 1)
        return out

    def describe(self) -> dict[str, object]:
        """A JSON-able summary (for the manifest and the report)."""
        return {k: v for k, v in {
            "name": self.name, "version": self.version, "author": self.author, "license": self.license,
            "color": self.color, "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None, "labels_file": self.labels_file,
            "score_threshold": self.score_threshold,
        }.items() if v is not None}


class _Table:
    """One flatbuffer table: `buf[pos]` holds the signed offset back to its vtable."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - _unpack(buf, "<i", pos)
        self.vsize = _unpack(buf, "<H", self.vtable)

    def _at(self, slot: int) -> int | None:
        voff = 4 + 2 * slot
        if voff + 2 > self.vsize:
            return None
        off = _unpack(self.buf, "<H", self.vtable + voff)
        return self.pos + off if off else None

    def scalar(self, slot: int, fmt: str, default: float | int) -> float | int:
        at = self._at(slot)
        return default if at is None else _unpack(self.buf, fmt, at)

    def _target(self, slot: int) -> int | None:
        at = self._at(slot)
        return None if at is None else at + _unpack(self.buf, "<I", at)

    def string(self, slot: int) -> str | None:
        at = self._target(slot)
        if at is None:
            return None
        n = _unpack(self.buf, "<I", at)
        return _slice(self.buf, at + 4, n).decode("utf-8", "replace")

    def table(self, slot: int) -> _Table | None:
        at = self._target(slot)
        return None if at is None else _Table(self.buf, at)

    def _vector(self, slot: int, width: int) -> tuple[int, int]:
        at = self._target(slot)
        if at is None:
            return 0, 0
        n = _unpack(self.buf, "<I", at)
        _slice(self.buf, at + 4, n * width)  # bounds
        return at + 4, n

    def tables(self, slot: int) -> list[_Table]:
        start, n = self._vector(slot, 4)
        return [_Table(self.buf, start + 4 * i + _unpack(self.buf, "<I", start + 4 * i)) for i in range(n)]

    def floats(self, slot: int) -> tuple[float, ...]:
        start, n = self._vector(slot, 4)
        return struct.unpack_from(f"<{n}f", self.buf, start) if n else ()

    def raw(self, slot: int) -> bytes:
        start, n = self._vector(slot, 1)
        return self.buf[start:start + n]


def _unpack(buf: bytes, fmt: str, at: int) -> int:
    if at < 0 or at + struct.calcsize(fmt) > len(buf):
        raise MetadataError("flatbuffer offset out of range (damaged or not a TFLite model)")
    return struct.unpack_from(fmt, buf, at)[0]


def _slice(buf: bytes, at: int, n: int) -> bytes:
    if at < 0 or n < 0 or at + n > len(buf):
        raise MetadataError("flatbuffer data out of range (damaged or not a TFLite model)")
    return buf[at:at + n]


def metadata_buffer(model: bytes) -> bytes | None:
    """The `TFLITE_METADATA` buffer of a TFLite flatbuffer (None when the model has none)."""
    root = _Table(model, _unpack(model, "<I", 0))
    buffers = root.tables(4)  # Model.buffers
    for meta in root.tables(6):  # Model.metadata: {name, buffer}
        if meta.string(0) == METADATA_NAME:
            index = int(meta.scalar(1, "<I", 0))
            if index >= len(buffers):
                raise MetadataError(f"{METADATA_NAME} names buffer {index}, but the model has {len(buffers)}")
            buffer = buffers[index]
            data = buffer.raw(0)
            if not data:  # large models keep buffers outside the flatbuffer: Buffer.offset/size into the file
                offset, size = int(buffer.scalar(1, "<Q", 0)), int(buffer.scalar(2, "<Q", 0))
                data = _slice(model, offset, size)
            return data
    return None


def read_metadata(model: bytes) -> ModelMetadata | None:
    """The model's metadata (None when it carries none)."""
    try:
        data = metadata_buffer(model)
        if data is None:
            return None
        if len(data) < 8 or data[4:8] != b"M001":
            raise MetadataError(f"{METADATA_NAME} is not a metadata flatbuffer (no M001 identifier)")
        return _model_metadata(model, _Table(data, _unpack(data, "<I", 0)))
    except (struct.error, RecursionError, UnicodeDecodeError) as exc:
        raise MetadataError(f"damaged metadata: {exc}") from None


def _model_metadata(model: bytes, root: _Table) -> ModelMetadata:
    subgraphs = root.tables(3)
    inputs = subgraphs[0].tables(2) if subgraphs else []
    outputs = subgraphs[0].tables(3) if subgraphs else []
    image, color, mean, std = False, None, None, None
    if inputs:
        content = inputs[0].table(3)
        if content is not None and content.scalar(0, "<B", 0) == IMAGE_PROPERTIES:
            image = True
            props = content.table(1)
            color = COLOR_SPACES.get(int(props.scalar(0, "<b", 0))) if props is not None else None
        mean, std = _normalization(inputs[0])
    labels_file, threshold = None, None
    if outputs:
        labels_file = next((f.string(0) for f in outputs[0].tables(6)
                            if f.scalar(2, "<b", 0) == TENSOR_AXIS_LABELS and f.string(0)), None)
        for unit in outputs[0].tables(4):
            options = unit.table(1)
            if unit.scalar(0, "<B", 0) == SCORE_THRESHOLDING_OPTIONS and options is not None:
                threshold = round(float(options.scalar(0, "<f", 0.0)), 6)
    _, files = appended_archive(model)
    labels = read_labels_member(model, labels_file) if labels_file and labels_file in files else None
    return ModelMetadata(root.string(0), root.string(2), root.string(4), root.string(5), image, color, mean, std,
                         labels_file, labels, threshold, tuple(files))


def _normalization(tensor: _Table) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    for unit in tensor.tables(4):
        options = unit.table(1)
        if unit.scalar(0, "<B", 0) == NORMALIZATION_OPTIONS and options is not None:
            mean, std = options.floats(0), options.floats(1)
            if not mean or not std:
                raise MetadataError("NormalizationOptions without mean or std")
            if any(s <= 0 for s in std):
                raise MetadataError(f"NormalizationOptions std {list(std)}: every value must be positive")
            return mean, std
    return None, None


def appended_archive(model: bytes) -> tuple[int, list[str]]:
    """Where the zip archive appended to the model starts (`len(model)` when there is none) and its members'
    names; an archive over the bundle format's limits is a `MetadataError`."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            check_archive(zf, "the model's archive")
            infos = zf.infolist()
    except BundleError as exc:
        raise MetadataError(exc.problem) from None
    except (zipfile.BadZipFile, OSError, EOFError):
        return len(model), []
    return min((info.header_offset for info in infos), default=len(model)), [info.filename for info in infos]


def read_labels_member(model: bytes, name: str) -> tuple[str, ...]:
    """A labels file packed in the model (see `appended_archive`): one label per line, in output order."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            text = zf.read(name).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise MetadataError(f"labels file {name} cannot be read from the model: {exc}") from None
    return parse_labels(text)


def parse_labels(text: str) -> tuple[str, ...]:
    """Labels in output order: one per line, or an index-prefixed labelmap (`0 person`, `1: bicycle`; gaps are
    filled with the index). Trailing blank lines are ignored."""
    lines = text.rstrip("\n").splitlines()
    entries = [line.strip().split(maxsplit=1) for line in lines if line.strip()]
    indexed = entries and all(len(e) == 2 and e[0].rstrip(":").isdigit() for e in entries)
    if not indexed:
        return tuple(line.strip() for line in lines)
    by_index = {int(e[0].rstrip(":")): e[1].strip() for e in entries}
    return tuple(by_index.get(i, str(i)) for i in range(max(by_index) + 1))
