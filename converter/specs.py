"""What `edge-convert` reads besides the model: labels, and the preprocessing spec (flags or a TOML file with an
`[input]` and an optional `[output]` table), checked against the model's input tensor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from converter.datasets import folder_labels
from converter.errors import ConvertError
from edge_infer.manifest import ImageInputSpec, ManifestError, SensorInputSpec, parse_image_spec, parse_sensor_spec
from edge_infer.runtime import Engine
from edge_infer.tflite_metadata import parse_labels


def say(msg: str) -> None:
    print(f"edge-convert: {msg}", file=sys.stderr, flush=True)


def read_labels(args: argparse.Namespace, wrapping: bool = False) -> list[str]:
    """`--labels` (one per line, or an index-prefixed labelmap: `0 person`); else the calibration folder names —
    not for a wrapped model, whose output order only its maker knows."""
    if args.labels:
        path = Path(args.labels)
        try:
            labels = [label for label in parse_labels(path.read_text(encoding="utf-8")) if label]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConvertError(f"{path}: cannot read labels file: {getattr(exc, 'strerror', None) or exc}") from None
        if not labels:
            raise ConvertError(f"{path}: labels file is empty")
        if len(set(labels)) != len(labels):
            raise ConvertError(f"{path}: labels file repeats a label")
        return labels
    if wrapping:
        raise ConvertError("no labels: the model's metadata has no labels file; pass --labels FILE (one label per "
                           "line in output order, or a labelmap with `0 name` lines)")
    if args.calibration:
        return folder_labels(Path(args.calibration))
    raise ConvertError("no labels: pass --labels FILE or a --calibration folder laid out by label")


def input_spec(args: argparse.Namespace, engine: Engine, table: dict[str, Any] | None = None) -> ImageInputSpec:
    """Input size from the model's input tensor; colour and resize mode from the spec file's [input] table or the
    flags. The normalisation is the spec's when it states one, else a placeholder: `converter.contract` decides."""
    table = table or {}
    shape = engine.inputs[0].shape
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise ConvertError(f"model input shape {tuple(shape)} is not an image batch (1, H, W, 1|3); for a sensor "
                           "model pass a --spec with kind = \"sensor\"")
    color = table.get("color") or args.color or ("L" if shape[3] == 1 else "RGB")
    if (color == "L") != (shape[3] == 1):
        raise ConvertError(f"colour {color} does not fit the model's {shape[3]}-channel input")
    for key, size in (("width", shape[2]), ("height", shape[1])):
        if key in table and table[key] != size:
            raise ConvertError(f"spec [input].{key} = {table[key]}, but the model's input is {size}")
    doc: dict[str, Any] = {"input": {
        "kind": "image", "width": shape[2], "height": shape[1], "color": color,
        "resize": table.get("resize", "stretch"), "pad": table.get("pad", 0),
        **({"crop": table["crop"]} if "crop" in table else {}),
        "normalize": ({"mean": table["mean"], "std": table.get("std")} if "mean" in table else
                      {"scale": table.get("scale", 1.0 / 255.0), "offset": table.get("offset", 0.0)}),
    }}
    try:
        return parse_image_spec(doc)
    except ManifestError as exc:
        raise ConvertError(f"{args.spec or 'flags'}: [input]: {exc}") from None


IMAGE_SPEC_KEYS = {"kind", "width", "height", "color", "resize", "pad", "crop", "scale", "offset", "mean", "std"}
SENSOR_SPEC_KEYS = {"kind", "channels", "window", "hop", "sample_rate", "mean", "std", "range_low", "range_high"}


def spec_table(path: Path) -> dict[str, Any]:
    """The [input] table of a preprocessing spec file, checked for its kind's keys."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConvertError(f"{path}: not a readable TOML spec: {exc}") from None
    table = doc.get("input")
    if not isinstance(table, dict) or table.get("kind") not in ("image", "sensor"):
        raise ConvertError(f"{path}: expected an [input] table with kind = \"image\" or \"sensor\"")
    unknown = set(table) - (IMAGE_SPEC_KEYS if table["kind"] == "image" else SENSOR_SPEC_KEYS)
    if unknown:
        raise ConvertError(f"{path}: [input]: unknown keys {sorted(unknown)} for kind = \"{table['kind']}\"")
    unknown = set(doc) - {"input", "output"}
    if unknown:
        raise ConvertError(f"{path}: unknown tables {sorted(unknown)} (a spec has [input] and optionally [output])")
    if not isinstance(doc.get("output", {}), dict):
        raise ConvertError(f"{path}: [output] must be a table")
    return table


def spec_output(path: Path) -> dict[str, Any]:
    """The optional [output] table of a spec file: how to read a detection, regression or raw model's outputs."""
    import tomllib

    return dict(tomllib.loads(path.read_text(encoding="utf-8")).get("output", {}))


def sensor_spec(path: Path) -> SensorInputSpec:
    """The preprocessing spec of a sensor model from a small TOML file (see the README: sensor models)."""
    table = spec_table(path)
    if table["kind"] != "sensor":
        raise ConvertError(f"{path}: expected kind = \"sensor\"")
    channels = table.get("channels") or []
    n = len(channels)
    manifest_input = {
        "kind": "sensor",
        "channels": channels,
        "window": table.get("window"),
        "hop": table.get("hop", table.get("window")),
        "sample_rate": table.get("sample_rate"),
        "normalize": {"mean": table.get("mean", [0.0] * n), "std": table.get("std", [1.0] * n)},
    }
    if "range_low" in table or "range_high" in table:
        manifest_input["range"] = {"low": table.get("range_low"), "high": table.get("range_high")}
    try:
        return parse_sensor_spec({"input": manifest_input})
    except ManifestError as exc:
        raise ConvertError(f"{path}: [input]: {exc}") from None


def check_sensor_shape(spec: SensorInputSpec, engine: Engine) -> SensorInputSpec:
    shape = engine.inputs[0].shape
    if tuple(shape) != (1, *spec.shape):
        raise ConvertError(f"model input shape {shape} does not fit the spec's {spec.window}-reading windows of "
                           f"{len(spec.channels)} channels (1, {spec.window}, {len(spec.channels)})")
    return spec


