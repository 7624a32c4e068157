"""A bundle bound to an interpreter: a decoded image (or sensor window) in, a task result out.

`Model` is also what the converter evaluates bundles with, so a reported accuracy is the accuracy of the code
that runs on the device. `open_model` also runs a plain `.tflite` nobody here built: the device config's
`[model.input]` (and optional `[model.output]`, `labels`, `task`) or the model's TFLite Metadata stand in for the
manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image

from edge_infer.bundle import Bundle, BundleError, load_bundle
from edge_infer.decide import Decision, Thresholds
from edge_infer.delegates import EngineSettings
from edge_infer.manifest import ImageInputSpec, SensorInputSpec
from edge_infer.plain import labels_file, parse_doc, plain_model
from edge_infer.preprocess import (
    ViewGeometry,
    draft_size,
    image_tensor,
    model_view,
    region,
    view_geometry,
    view_tensor,
    window_tensor,
)
from edge_infer.runtime import Engine, build_engine
from edge_infer.tasks import Context, Task, TaskResult, task_for
from edge_infer.tasks.classification import Classification
from edge_infer.tasks.zones import Zone, zones_from_config
from edge_infer.variants import pick

if TYPE_CHECKING:
    from edge_infer.sections import ModelConfig


class Ran(NamedTuple):
    """A task result and what made it (`Engine.ran_on`: the model variant and its delegate)."""

    result: TaskResult
    ran_on: dict[str, str]


@dataclass(frozen=True)
class Rules:
    """What the device config sets on a model's outputs: thresholds, zones, how many top labels. Never changed:
    a reload or `set-threshold` builds new rules and a new `Model` around the same interpreter."""

    thresholds: Thresholds
    zones: tuple[Zone, ...] = ()
    top_k: int = 3


class Model:
    """One interpreter and the rules on its outputs (not thread-safe: `run` from one thread; the `*_tensor`
    helpers from any). Its rules are fixed: `with_rules` returns another `Model` sharing the interpreter."""

    def __init__(self, bundle: Bundle, settings: EngineSettings | None = None, top_k: int = 3,
                 engine: Engine | None = None, zones: Sequence[Zone] = (),
                 thresholds: Thresholds | None = None) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.engine = engine or engine_for(bundle, settings or EngineSettings(), fallback=False)
        self.rules = Rules(thresholds or Thresholds(self.manifest, None, {}), tuple(zones), top_k)
        self.task_impl: Task = task_for(self.manifest.task)
        spec = self.manifest.input
        if isinstance(spec, SensorInputSpec):
            expected = (1, *spec.shape)
            described = f"{spec.window}-reading window of {len(spec.channels)} channels"
        else:
            expected = (1, spec.height, spec.width, spec.channels)
            described = f"{spec.width}x{spec.height} {spec.color}"
        if self.engine.inputs[0].shape != expected:
            raise BundleError(
                bundle.path,
                f"model input shape {self.engine.inputs[0].shape} does not match the manifest's "
                f"{described} input {expected}",
            )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise AttributeError(f"Model.{name} is fixed: build another (with_rules for new rules)")
        super().__setattr__(name, value)

    def with_rules(self, **changes: Any) -> Model:
        """This model with some rules replaced (`thresholds`, `zones`, `top_k`), on the same interpreter."""
        rules = replace(self.rules, **changes)
        return Model(self.bundle, top_k=rules.top_k, engine=self.engine, zones=rules.zones,
                     thresholds=rules.thresholds)

    def on_engine(self, engine: Engine) -> Model:
        """This model (bundle and rules) on another interpreter of the same model (see `Engine.twin`)."""
        return Model(self.bundle, top_k=self.top_k, engine=engine, zones=self.zones, thresholds=self.thresholds)

    @property
    def thresholds(self) -> Thresholds:
        return self.rules.thresholds

    @property
    def zones(self) -> tuple[Zone, ...]:
        return self.rules.zones

    @property
    def top_k(self) -> int:
        return self.rules.top_k

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def info(self) -> dict[str, str]:
        """Name, version and sha256: how every message and event names this model."""
        m = self.manifest
        return {"name": m.name, "version": m.version, "sha256": m.model_sha256}

    @property
    def kind(self) -> str:
        return "sensor" if isinstance(self.manifest.input, SensorInputSpec) else "image"

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """What JPEG draft decoding may reduce a frame to (see `decode_image`)."""
        spec = self.manifest.input
        return draft_size(spec) if isinstance(spec, ImageInputSpec) else None

    def window_tensor(self, window: np.ndarray) -> np.ndarray:
        """Sensor window → input tensor (thread-safe)."""
        assert isinstance(self.manifest.input, SensorInputSpec)
        return window_tensor(window, self.manifest.input, self.engine.inputs[0])

    def region(self, frame: Image.Image) -> Image.Image:
        """The part of a decoded frame this model works on (its input's `crop`, else the frame); ValueError
        when the frame does not contain the crop. `view`, `view_tensor` and `geometry` take the region;
        `prepare`, `input_for` and `classify` take the whole frame."""
        return region(frame, self.manifest.input)  # type: ignore[arg-type]

    def prepare(self, frame: Image.Image) -> np.ndarray:
        """Decoded frame → input tensor (thread-safe: touches no interpreter state)."""
        return image_tensor(self.region(frame), self.manifest.input, self.engine.inputs[0])  # type: ignore[arg-type]

    def view(self, image: Image.Image) -> Image.Image:
        """The region at the model's size and colour (what the quality gate measures)."""
        return model_view(image, self.manifest.input)  # type: ignore[arg-type]

    def view_tensor(self, view: Image.Image | np.ndarray) -> np.ndarray:
        return view_tensor(view, self.manifest.input, self.engine.inputs[0])  # type: ignore[arg-type]

    def input_for(self, frame: Image.Image) -> tuple[np.ndarray, ViewGeometry | None]:
        """A decoded frame → its input tensor and, for detection, where the frame lands in it (thread-safe)."""
        image = self.region(frame)
        tensor = image_tensor(image, self.manifest.input, self.engine.inputs[0])  # type: ignore[arg-type]
        return tensor, self.geometry(image) if self.task_impl.needs_geometry else None

    def geometry(self, image: Image.Image) -> ViewGeometry | None:
        """Where the region lands in the model input, and where the region lies in the frame (detection undoes
        both); None for sensor models."""
        if not isinstance(self.manifest.input, ImageInputSpec):
            return None
        info = image.info
        return view_geometry(image.size, self.manifest.input, info.get("source_scale", (1.0, 1.0)),
                             info.get("crop_origin", (0.0, 0.0)), info.get("frame_size"))

    def run(self, tensor: np.ndarray, geometry: ViewGeometry | None = None) -> TaskResult:
        """Input tensor → the task's result (call from one thread: the interpreter is not thread-safe)."""
        return self.postprocess(self.engine.run(tensor), geometry)

    def ran(self, tensor: np.ndarray, geometry: ViewGeometry | None = None) -> Ran:
        """`run`, saying which variant and delegate made the result (an accelerator may fail during this very
        call, and the CPU answer)."""
        outputs = self.engine.run(tensor)
        return Ran(self.postprocess(outputs, geometry), self.engine.ran_on)

    def postprocess(self, outputs: Sequence[np.ndarray], geometry: ViewGeometry | None = None) -> TaskResult:
        """The interpreter's outputs → the task's result."""
        rules = self.rules
        ctx = Context(self.manifest, self.engine.outputs, rules.thresholds, rules.zones, rules.top_k, geometry)
        return self.task_impl.postprocess(outputs, ctx)

    def decide(self, result: TaskResult) -> Decision:
        """`ok` or `uncertain` under this model's thresholds, before any fallback."""
        return self.task_impl.decide(result, self.thresholds)

    def infer(self, tensor: np.ndarray) -> Classification:
        """`run` for a classification model (what the converter's evaluation uses)."""
        result = self.run(tensor)
        assert isinstance(result, Classification), f"{self.task} model: use run()"
        return result

    def classify(self, image: Image.Image) -> Classification:
        return self.infer(self.prepare(image))


MODEL_OVERRIDES = ("task", "output", "labels")


def open_bundle(path: Path | str, overrides: dict[str, Any] | None = None, settings: EngineSettings | None = None,
                fallback: bool = True) -> tuple[Bundle, Engine | None]:
    """Load a bundle, applying the device config's `[model]` overrides (task, output, labels). A plain
    `.tflite` (no manifest) is described by `input` among them or by its own TFLite Metadata (`edge_infer.plain`);
    the interpreter built to read it is returned for reuse."""
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, {}, [], ())}
    if isinstance(overrides.get("labels"), str):  # a labels file: one per line, or a `0 name` labelmap
        overrides["labels"] = list(labels_file(Path(path), overrides["labels"]))
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        if "no manifest archive" not in exc.problem and "archive has no manifest" not in exc.problem:
            raise
        return plain_model(Path(path), overrides, settings, fallback)
    if "input" in overrides:
        raise BundleError(path, "[model.input] is for plain .tflite models; this bundle's manifest already says "
                                "how to preprocess")
    if not any(k in overrides for k in MODEL_OVERRIDES):
        return bundle, None
    doc = dict(bundle.manifest.raw)
    doc.update({k: overrides[k] for k in MODEL_OVERRIDES if k in overrides})
    if "output" in overrides:
        doc["output"] = {**bundle.manifest.raw.get("output", {}), **overrides["output"]}
    return replace(bundle, manifest=parse_doc(path, doc, "[model] overrides")), None


def with_crop(bundle: Bundle, crop: Sequence[float]) -> Bundle:
    """The bundle with `[model] crop` in place of its input's own (image models only)."""
    spec = bundle.manifest.input
    if not isinstance(spec, ImageInputSpec):
        raise BundleError(bundle.path, "[model].crop is for image models; this one reads sensor windows")
    return replace(bundle, manifest=replace(bundle.manifest, input=replace(spec, crop=tuple(crop))))


def threshold_problem(task: str, threshold: float | None) -> str | None:
    """Why `[model].threshold` does not fit the task (only anomaly scores have a scale of their own)."""
    if threshold is not None and threshold > 1.0 and task != "anomaly":
        return f"[model].threshold = {threshold}: a {task} threshold is a confidence from 0 to 1"
    return None


def engine_for(bundle: Bundle, settings: EngineSettings, fallback: bool = True) -> Engine:
    """An interpreter on the bundle's variant for the configured delegate (else its own model); with `fallback`,
    on the CPU model while the accelerator cannot load, take the model or answer (`engine.fallback_from`)."""
    variant = pick(bundle.variants, settings.delegate)
    if variant is None:
        return build_engine(bundle.model_bytes, settings, fallback)
    return build_engine(variant.model_bytes, settings, fallback, variant.name, bundle.model_bytes)


def engine_settings(model_cfg: ModelConfig) -> EngineSettings:
    """`[model]`'s threads, runtime, delegate, delegate options and accelerator deadline as one settings object."""
    return EngineSettings(model_cfg.threads, model_cfg.runtime, model_cfg.delegate, dict(model_cfg.delegate_options),
                          model_cfg.accelerator_timeout)


def model_from_config(model_cfg: ModelConfig, bundle_path: str | None = None,
                      threshold: float | None = None) -> Model:
    """The device config's `[model]` → a ready `Model` (its thresholds from the config, defaulting to the
    bundle's). `bundle_path` loads another bundle with the same runtime settings and `threshold` (the escalation
    model)."""
    overrides = {k: getattr(model_cfg, k) for k in (*MODEL_OVERRIDES, "input")} if bundle_path is None else {}
    settings = engine_settings(model_cfg)
    bundle, engine = open_bundle(bundle_path or model_cfg.bundle, overrides, settings, model_cfg.delegate_fallback)
    if engine is None:
        engine = engine_for(bundle, settings, model_cfg.delegate_fallback)
    per_label: dict[str, float] = {}
    if bundle_path is None and model_cfg.crop is not None:
        bundle = with_crop(bundle, model_cfg.crop)
    if bundle_path is None:
        threshold, per_label = model_cfg.threshold, dict(model_cfg.thresholds)
        if problem := threshold_problem(bundle.manifest.task, threshold):
            raise BundleError(bundle.path, problem)
    return Model(bundle, settings, model_cfg.top_k, engine, zones_from_config(model_cfg.zones),
                 Thresholds(bundle.manifest, threshold, per_label))


def describe(model: Model) -> str:
    """One line: name, version, task, labels, input."""
    m = model.manifest
    spec = m.input
    shape = (f"{spec.window}×{len(spec.channels)} sensor window" if isinstance(spec, SensorInputSpec)
             else f"{spec.width}x{spec.height} {spec.color} ({spec.resize})")
    labels = f", {len(m.labels)} labels" if m.labels else ""
    return f"{m.name} {m.version}, {m.task}{labels}, input {shape}, model {m.model_size} bytes, " \
           f"sha256 {m.model_sha256[:12]}…"
