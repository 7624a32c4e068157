"""Third-party-style `.tflite` files for the tests: TFLite Model Metadata built with the `flatbuffers` library's
own Builder from metadata_schema.fbs (field slots as the schema declares them), put into the model as the
`TFLITE_METADATA` buffer with TensorFlow's own TFLite schema object API, and the labels file appended as a zip —
what tflite-support's MetadataPopulator does. Shares no code with `edge_infer.tflite_metadata`, which reads it."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import flatbuffers
import numpy as np


def _floats(b: flatbuffers.Builder, values: Sequence[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _offsets(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _table(b: flatbuffers.Builder, slots: int, fields: dict[int, tuple[str, object]]) -> int:
    """A table from {slot: (kind, value)}: kind 'off' (table/string/vector offset), 'u8', 'i8' or 'f32'."""
    b.StartObject(slots)
    for slot, (kind, value) in sorted(fields.items()):
        {"off": b.PrependUOffsetTRelativeSlot, "u8": b.PrependUint8Slot, "i8": b.PrependInt8Slot,
         "f32": b.PrependFloat32Slot}[kind](slot, value, 0)
    return b.EndObject()


def metadata_flatbuffer(*, mean: Sequence[float] | None, std: Sequence[float] | None, color_space: int = 1,
                        image: bool = True, labels_file: str | None = "labels.txt",
                        threshold: float | None = None, name: str = "third-party model") -> bytes:
    """A ModelMetadata flatbuffer (identifier M001): one subgraph, one input tensor (ImageProperties with
    `color_space` 1 RGB / 2 GRAYSCALE, or FeatureProperties; NormalizationOptions when `mean` is given), one output
    tensor (a TENSOR_AXIS_LABELS file; ScoreThresholdingOptions when `threshold` is given)."""
    b = flatbuffers.Builder(1024)
    in_units = []
    if mean is not None:
        norm = _table(b, 2, {0: ("off", _floats(b, mean)), 1: ("off", _floats(b, std or []))})
        in_units.append(_table(b, 2, {0: ("u8", 1), 1: ("off", norm)}))
    props = _table(b, 2, {0: ("i8", color_space)}) if image else _table(b, 0, {})
    content = _table(b, 3, {0: ("u8", 2 if image else 1), 1: ("off", props)})
    in_name = b.CreateString("image" if image else "features")
    in_fields = {0: ("off", in_name), 3: ("off", content)}
    if in_units:
        in_fields[4] = ("off", _offsets(b, in_units))
    input_md = _table(b, 7, in_fields)
    out_fields: dict[int, tuple[str, object]] = {0: ("off", b.CreateString("probability"))}
    if labels_file is not None:
        file_name, desc = b.CreateString(labels_file), b.CreateString("Labels for the categories")
        label_file = _table(b, 4, {0: ("off", file_name), 1: ("off", desc), 2: ("i8", 2)})
        out_fields[6] = ("off", _offsets(b, [label_file]))
    if threshold is not None:
        thresholding = _table(b, 1, {0: ("f32", threshold)})
        out_fields[4] = ("off", _offsets(b, [_table(b, 2, {0: ("u8", 3), 1: ("off", thresholding)})]))
    output_md = _table(b, 7, out_fields)
    subgraph = _table(b, 6, {2: ("off", _offsets(b, [input_md])), 3: ("off", _offsets(b, [output_md]))})
    root = _table(b, 8, {0: ("off", b.CreateString(name)), 2: ("off", b.CreateString("v1")),
                         3: ("off", _offsets(b, [subgraph])), 7: ("off", b.CreateString("1.0.0"))})
    b.Finish(root, file_identifier=b"M001")
    return bytes(b.Output())


def with_metadata(model: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """`model` with `metadata` as its TFLITE_METADATA buffer and `files` zipped onto its end."""
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(tree.buffers) - 1
    tree.metadata = [*(tree.metadata or []), entry]
    b = flatbuffers.Builder(len(model) + len(metadata) + 1024)
    b.Finish(tree.Pack(b), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(b.Output()))
    if files:
        with zipfile.ZipFile(out, "a") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    return out.getvalue()
