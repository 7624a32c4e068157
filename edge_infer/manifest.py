"""The bundle manifest: what the device needs to run a model, validated with key paths in every error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_infer.crop import crop_problem
from edge_infer.gates.quality import validate_reference
from edge_infer.tasks.names import LABELLED, NAMES

FORMAT_NAME = "edge-infer-bundle"
FORMAT_VERSION = 1
TASKS = NAMES  # one module each in edge_infer/tasks/
LABELLED_TASKS = LABELLED
DETECTION_FORMATS = ("yolo", "ssd")
SSD_TENSORS = ("boxes", "classes", "scores", "count")
COLORS = ("L", "RGB", "BGR")
RESIZE_MODES = ("stretch", "letterbox", "centre-crop")
INPUT_KINDS = ("image", "sensor")
OUTPUT_ACTIVATIONS = ("softmax", "none", "logits", "argmax")  # argmax: segmentation class indices


class ManifestError(ValueError):
    """A manifest that does not describe something this version can run; the message names the key."""


@dataclass(frozen=True)
class ImageInputSpec:
    """How raw images become the model's input tensor (see `edge_infer.preprocess`)."""

    width: int
    height: int
    color: str = "RGB"
    resize: str = "stretch"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    mean: tuple[float, ...] | None = None  # when set (with std): x = (pixel - mean) / std, per channel
    std: tuple[float, ...] | None = None
    pad: int = 0  # letterbox fill level (0–255)
    crop: tuple[float, float, float, float] | None = None  # the region cut first (`crop_problem` says how)

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "width": self.width,
            "height": self.height,
            "color": self.color,
            "resize": self.resize,
            **({"pad": self.pad} if self.resize == "letterbox" else {}),
            **({"crop": list(self.crop)} if self.crop is not None else {}),
            "normalize": ({"mean": list(self.mean), "std": list(self.std or ())} if self.mean is not None
                          else {"scale": self.scale, "offset": self.offset}),
        }


@dataclass(frozen=True)
class SensorInputSpec:
    """How a stream of sensor readings becomes the model's input: windows of `window` readings of `channels`,
    a new window every `hop` readings, normalised per channel as (x − mean) / std (see `edge_infer.preprocess`).
    `low`/`high` are the channels' physical range (the gate rejects readings outside it)."""

    channels: tuple[str, ...]
    window: int
    hop: int
    sample_rate: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.window, len(self.channels))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": "sensor",
            "channels": list(self.channels),
            "window": self.window,
            "hop": self.hop,
            "sample_rate": self.sample_rate,
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
        }
        if self.low is not None and self.high is not None:
            doc["range"] = {"low": list(self.low), "high": list(self.high)}
        return doc


InputSpec = ImageInputSpec | SensorInputSpec


@dataclass(frozen=True)
class OutputSpec:
    """How the model's outputs read, per task (see `edge_infer.tasks`).

    classification: `activation` (softmax: the model outputs probabilities; logits/none: the device applies
    softmax). detection: `format` yolo (one raw grid output, rows of box + [objectness] + class scores, decoded
    and non-max-suppressed on the device) or ssd (the TFLite detection post-process op's boxes, classes,
    scores, count — `tensors` names their order when the output names do not); `box` cxcywh | xyxy and
    `coords` normalized | pixels (of the model input) for yolo; `score_floor`: candidates below it are
    ignored, candidates between it and their label's threshold make the frame uncertain. regression / raw:
    `names` of the values / output arrays; regression `band`: the expected range of each value."""

    activation: str = "softmax"
    format: str = "yolo"
    box: str = "cxcywh"
    coords: str = "normalized"
    objectness: bool | None = None  # yolo: None = has it when there are 5 + classes columns
    iou_threshold: float = 0.45
    max_detections: int = 100
    score_floor: float = 0.25
    tensors: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    band: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Everything in `manifest.json` the device acts on; `raw` keeps the full document (evaluation etc.)."""

    name: str
    version: str
    task: str
    model_sha256: str
    model_size: int
    input: InputSpec
    labels: tuple[str, ...]
    output: OutputSpec = field(default_factory=OutputSpec)
    default_threshold: float = 0.5
    label_thresholds: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sensor_reference(self) -> dict[str, Any] | None:
        """Per-channel statistics the converter measured on the calibration windows, if it recorded them."""
        ref = self.raw.get("reference", {})
        return ref.get("sensor") if isinstance(ref, dict) else None

    @property
    def image_quality_reference(self) -> dict[str, Any] | None:
        """Quality-metric percentiles the converter measured on the calibration images, if it recorded them."""
        ref = self.raw.get("reference", {})
        return ref.get("image_quality") if isinstance(ref, dict) else None

    @property
    def output_activation(self) -> str:
        return self.output.activation

    @property
    def drift_reference(self) -> dict[str, Any] | None:
        """Output and input statistics on held-out data, for the drift monitor, if the converter recorded them."""
        ref = self.raw.get("reference", {})
        return ref.get("drift") if isinstance(ref, dict) else None

    def threshold_for(self, label: str) -> float:
        return self.label_thresholds.get(label, self.default_threshold)


def _get(doc: dict[str, Any], path: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """Fetch a dotted key from a nested dict, checking its type; errors name the dotted key."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise ManifestError(f"missing key '{path}'")
        node = node[part]
    if isinstance(node, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ManifestError(f"'{path}': expected {_kind_name(kind)}, got a boolean")
    if not isinstance(node, kind):
        raise ManifestError(f"'{path}': expected {_kind_name(kind)}, got {type(node).__name__}")
    return node


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _choice(value: str, path: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ManifestError(f"'{path}': unsupported value '{value}' (supported: {', '.join(allowed)})")
    return value


def parse_image_spec(doc: dict[str, Any]) -> ImageInputSpec:
    """The `input` table of an image model (also how `edge-convert` validates a spec file)."""
    channels = 1 if _get(doc, "input.color", str, "RGB") == "L" else 3
    mean = std = None
    if _get(doc, "input.normalize.mean", list, None) is not None:
        mean = _numbers(doc, "input.normalize.mean", channels)
        std = _numbers(doc, "input.normalize.std", channels)
        if any(v <= 0 for v in std):
            raise ManifestError("'input.normalize.std': every channel's std must be positive")
    pad = _get(doc, "input.pad", int, 0)
    if not 0 <= pad <= 255:
        raise ManifestError("'input.pad': expected a level from 0 to 255")
    width = _get(doc, "input.width", int)
    height = _get(doc, "input.height", int)
    if width <= 0 or height <= 0:
        raise ManifestError("'input.width'/'input.height': expected positive integers")
    crop = _get(doc, "input.crop", list, None)
    if crop is not None and (problem := crop_problem(crop)):
        raise ManifestError(f"'input.crop': {problem}")
    return ImageInputSpec(
        width=width,
        height=height,
        color=_choice(_get(doc, "input.color", str), "input.color", COLORS),
        resize=_choice(_get(doc, "input.resize", str, "stretch"), "input.resize", RESIZE_MODES),
        scale=float(_get(doc, "input.normalize.scale", (int, float), 1.0 / 255.0)),
        offset=float(_get(doc, "input.normalize.offset", (int, float), 0.0)),
        mean=mean,
        std=std,
        pad=pad,
        crop=None if crop is None else tuple(crop),
    )


def _numbers(doc: dict[str, Any], path: str, n: int) -> tuple[float, ...]:
    values = _get(doc, path, list)
    if len(values) != n or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ManifestError(f"'{path}': expected a list of {n} numbers (one per channel)")
    return tuple(float(v) for v in values)


def parse_sensor_spec(doc: dict[str, Any]) -> SensorInputSpec:
    """The `input` table of a sensor model (also how `edge-convert` validates a spec file)."""
    channels = _get(doc, "input.channels", list)
    if not channels or not all(isinstance(c, str) and c for c in channels) or len(set(channels)) != len(channels):
        raise ManifestError("'input.channels': expected a non-empty list of unique channel names")
    window, hop = _get(doc, "input.window", int), _get(doc, "input.hop", int)
    if window < 2 or hop < 1:
        raise ManifestError("'input.window'/'input.hop': expected window ≥ 2 and hop ≥ 1 readings")
    rate = float(_get(doc, "input.sample_rate", (int, float)))
    if not rate > 0:
        raise ManifestError("'input.sample_rate': expected a positive number (readings per second)")
    n = len(channels)
    std = _numbers(doc, "input.normalize.std", n)
    if any(v <= 0 for v in std):
        raise ManifestError("'input.normalize.std': every channel's std must be positive")
    low = high = None
    if _get(doc, "input.range", dict, None) is not None:
        low, high = _numbers(doc, "input.range.low", n), _numbers(doc, "input.range.high", n)
        if any(lo >= hi for lo, hi in zip(low, high, strict=True)):
            raise ManifestError("'input.range': each channel's low must be below its high")
    return SensorInputSpec(tuple(channels), window, hop, rate, _numbers(doc, "input.normalize.mean", n), std,
                           low, high)


def parse_manifest(doc: Any) -> Manifest:
    """Validate a decoded manifest.json and return the typed view of it."""
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    fmt = _get(doc, "format", str)
    if fmt != FORMAT_NAME:
        raise ManifestError(f"'format' is '{fmt}', expected '{FORMAT_NAME}'")
    version = _get(doc, "format_version", int)
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"bundle format version {version} is newer than this edge-infer supports ({FORMAT_VERSION}); "
            "upgrade edge-infer"
        )
    if version < 1:
        raise ManifestError(f"'format_version': {version} is not a valid version")
    task = _choice(_get(doc, "task", str), "task", TASKS)
    sha = _get(doc, "model.sha256", str)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError("'model.sha256': expected 64 lowercase hex digits")
    size = _get(doc, "model.size", int)
    if size <= 0:
        raise ManifestError("'model.size': expected a positive integer")

    kind = _choice(_get(doc, "input.kind", str), "input.kind", INPUT_KINDS)
    spec = parse_image_spec(doc) if kind == "image" else parse_sensor_spec(doc)
    labels = _get(doc, "labels", list, ... if task in LABELLED_TASKS else [])
    if (task in LABELLED_TASKS and not labels) or not all(isinstance(x, str) and x for x in labels):
        raise ManifestError("'labels': expected a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise ManifestError("'labels': labels must be unique")
    default_threshold = float(_get(doc, "thresholds.default", (int, float), 0.5))
    per_label = _get(doc, "thresholds.labels", dict, {})
    for label, value in per_label.items():
        if label not in labels:
            raise ManifestError(f"'thresholds.labels.{label}': not one of the bundle's labels")
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ManifestError(f"'thresholds.labels.{label}': expected a number in [0, 1]")
    if not 0.0 <= default_threshold <= 1.0 and task != "anomaly":
        raise ManifestError("'thresholds.default': expected a number in [0, 1]")
    quality = _get(doc, "reference.image_quality", dict, None)
    if quality is not None and (problem := validate_reference(quality)):
        raise ManifestError(f"'reference.image_quality': {problem}")
    return Manifest(
        name=_get(doc, "name", str),
        version=_get(doc, "version", str),
        task=task,
        model_sha256=sha,
        model_size=size,
        input=spec,
        labels=tuple(labels),
        output=parse_output_spec(doc, task),
        default_threshold=default_threshold,
        label_thresholds={k: float(v) for k, v in per_label.items()},
        raw=doc,
    )


def parse_output_spec(doc: dict[str, Any], task: str) -> OutputSpec:
    """The `output` table: how to read the model's outputs for its task (also what a device config's
    `[model.output]` table is checked with)."""
    activation = _choice(_get(doc, "output.activation", str, "softmax"), "output.activation", OUTPUT_ACTIVATIONS)
    fmt = _choice(_get(doc, "output.format", str, "yolo"), "output.format", DETECTION_FORMATS)
    box = _choice(_get(doc, "output.box", str, "cxcywh"), "output.box", ("cxcywh", "xyxy"))
    coords = _choice(_get(doc, "output.coords", str, "normalized"), "output.coords", ("normalized", "pixels"))
    objectness = _get(doc, "output.objectness", bool, None)
    iou = float(_get(doc, "output.iou_threshold", (int, float), 0.45))
    floor = float(_get(doc, "output.score_floor", (int, float), 0.25))
    for name, value in (("iou_threshold", iou), ("score_floor", floor)):
        if not 0.0 <= value <= 1.0:
            raise ManifestError(f"'output.{name}': expected a number in [0, 1]")
    max_det = _get(doc, "output.max_detections", int, 100)
    if max_det < 1:
        raise ManifestError("'output.max_detections': expected a positive integer")
    tensors = tuple(_get(doc, "output.tensors", list, []))
    if tensors and sorted(tensors) != sorted(SSD_TENSORS):
        raise ManifestError(f"'output.tensors': expected the order of {', '.join(SSD_TENSORS)}")
    names = _get(doc, "output.names", list, [])
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ManifestError("'output.names': expected a list of unique non-empty strings")
    band: dict[str, tuple[float, float]] = {}
    for name, pair in _get(doc, "output.band", dict, {}).items():
        ok = isinstance(pair, list) and len(pair) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        if not ok or pair[0] > pair[1]:
            raise ManifestError(f"'output.band.{name}': expected [low, high] with low ≤ high")
        band[name] = (float(pair[0]), float(pair[1]))
    return OutputSpec(activation=activation, format=fmt, box=box, coords=coords, objectness=objectness,
                      iou_threshold=iou, max_detections=max_det, score_floor=floor, tensors=tensors,
                      names=tuple(names), band=band)
