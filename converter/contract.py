"""The input contract: which pixel range the model expects, and how `edge-convert` knows it.

Never a silent default. In order: the spec file's or the flags' normalisation (`--scale/--offset`, `mean/std`);
the model's own first layer (`Rescaling` — also inside Keras applications with built-in preprocessing — means raw
0–255 pixels; an adapted `Normalization` tells the range it was adapted on by its mean); else, with a labelled
set, the usual conventions tried on the float32 model and the best one taken, with the numbers; else a one-line
error naming the flags. A labelled eval set also checks a given or model-read contract: one that scores near
chance, or far below another convention, is refused (exit 3) unless `--force`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.datasets import Example, load_region, stratified_sample
from converter.errors import ConvertError, ConvertRefused
from edge_infer.manifest import ImageInputSpec
from edge_infer.preprocess import model_view, normalized_view, to_input_tensor
from edge_infer.runtime import Engine

IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
CONVENTIONS: dict[str, dict[str, Any]] = {
    "[0, 1]": {"scale": 1 / 255, "offset": 0.0},
    "[-1, 1]": {"scale": 2 / 255, "offset": -1.0},
    "[0, 255]": {"scale": 1.0, "offset": 0.0},
    "ImageNet mean/std": IMAGENET,
    # Keras applications' "caffe" preprocess_input (ResNet50, VGG): BGR, ImageNet mean subtracted, not scaled
    "caffe (BGR, mean-subtracted)": {"mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0], "color": "BGR"},
}
FLAGS = {
    "[0, 1]": "--scale 0.00392157",
    "[-1, 1]": "--scale 0.00784314 --offset -1",
    "[0, 255]": "--scale 1",
    "ImageNet mean/std": "a --spec with mean = [123.675, 116.28, 103.53] and std = [58.395, 57.12, 57.375]",
    "caffe (BGR, mean-subtracted)": "--color BGR and a --spec with mean = [103.939, 116.779, 123.68], std = [1, 1, 1]",
}
ASK = ("pass --scale/--offset (x = pixel × scale + offset: --scale 0.00392157 for [0, 1], --scale 0.00784314 "
       "--offset -1 for [-1, 1], --scale 1 for [0, 255]) or a --spec file with mean/std")
SAMPLE = 200  # labelled images the conventions are tried on
TYPICAL_PIXEL_MEAN = np.full(3, 115.0)  # when there are no images to measure: a photograph's usual mean pixel
WORSE_BY = 0.15  # a given contract this far below another convention's top-1 is refused


@dataclass(frozen=True)
class Contract:
    """The chosen normalisation (`{"scale", "offset"}` or `{"mean", "std"}` on 0–255 pixels), how it was
    determined (`spec`, `flags`, `model layer`, `metadata`, `inferred`) and the evidence."""

    normalize: dict[str, Any]
    determined_by: str
    detail: str
    top1: dict[str, float] = field(default_factory=dict)  # convention → top-1 on the labelled sample

    @property
    def range(self) -> str:
        return range_name(self.normalize)

    def to_dict(self) -> dict[str, Any]:
        doc = {"range": self.range, "normalize": self.normalize, "determined_by": self.determined_by,
               "detail": self.detail}
        if self.top1:
            doc["top1_by_range"] = {k: round(v, 4) for k, v in self.top1.items()}
        return doc


def range_name(normalize: dict[str, Any]) -> str:
    """The convention `normalize` is (within rounding), or its formula."""
    for name, conv in CONVENTIONS.items():
        if set(conv) == set(normalize) and all(
                conv[k] == normalize[k] if isinstance(conv[k], str) else
                np.allclose(conv[k], normalize[k], rtol=1e-3, atol=1e-4) for k in conv):
            return name
    if "mean" in normalize:
        mean, std = np.asarray(normalize["mean"], float), np.asarray(normalize["std"], float)
        if np.ptp(mean) == 0 and np.ptp(std) == 0:  # one value for every channel: a scale and an offset
            return range_name({"scale": 1.0 / std[0], "offset": -mean[0] / std[0]})
        return f"(pixel − {normalize['mean']}) / {normalize['std']}"
    return f"pixel × {normalize['scale']:.6g} + {normalize['offset']:.6g}"


def near_chance(accuracy: float, classes: int) -> bool:
    """Top-1 within a fifth of the way from chance to perfect: the model is not seeing what it was trained on."""
    chance = 1.0 / max(classes, 1)
    return accuracy < chance + 0.2 * (1.0 - chance)


def given_contract(scale: float | None, offset: float | None, table: dict[str, Any] | None,
                   spec_name: str | None) -> Contract | None:
    """The normalisation the spec file or the flags state, if any."""
    table = table or {}
    if "mean" in table:
        return Contract({"mean": table["mean"], "std": table.get("std")}, "spec", f"{spec_name} states mean/std")
    if "scale" in table or "offset" in table:
        norm = {"scale": float(table.get("scale", 1.0)), "offset": float(table.get("offset", 0.0))}
        return Contract(norm, "spec", f"{spec_name} states {range_name(norm)}")
    if scale is not None or offset is not None:
        norm = {"scale": 1.0 if scale is None else scale, "offset": 0.0 if offset is None else offset}
        return Contract(norm, "flags", f"--scale/--offset state {range_name(norm)}")
    return None


def layer_contract(layer: Any, pixel_mean: np.ndarray) -> Contract | None:
    """What the model's first pixel-changing layer says about its input range (None: nothing)."""
    kind = type(layer).__name__ if layer is not None else ""
    if kind == "Rescaling":
        scale, offset = float(np.mean(layer.scale)), float(np.mean(layer.offset))
        what = f"the model starts with Rescaling(scale={scale:.6g}, offset={offset:.6g})"
        if abs(scale) <= 1 / 50:
            return Contract(dict(CONVENTIONS["[0, 255]"]), "model layer", f"{what}: it takes raw 0–255 pixels")
        if 100 <= abs(scale) <= 300:
            return Contract(dict(CONVENTIONS["[0, 1]"]), "model layer", f"{what}: it takes [0, 1] input")
        return None
    if kind == "Normalization" and not getattr(layer, "invert", False):
        mean = np.asarray(layer.mean, np.float64).ravel()
        std = np.sqrt(np.maximum(np.asarray(layer.variance, np.float64).ravel(), 1e-12))
        if not np.any(mean) and np.allclose(std, 1.0):
            return None  # never adapted: says nothing
        distances = {}
        for name in ("[0, 1]", "[-1, 1]", "[0, 255]"):
            conv = CONVENTIONS[name]
            mapped = pixel_mean * conv["scale"] + conv["offset"]
            distances[name] = float(np.mean(np.abs(mapped - mean) / std))
        best = min(distances, key=distances.__getitem__)
        return Contract(dict(CONVENTIONS[best]), "model layer",
                        f"the model starts with a Normalization layer adapted on {best} input (its mean "
                        f"{np.round(mean, 3).tolist()} fits these images' pixels in {best} best)")
    return None


@dataclass
class Views:
    """Sample images in the model's view (decoded once), their labels, and how to score a normalisation."""

    spec: ImageInputSpec
    images: list[np.ndarray]
    labels: list[str]

    @classmethod
    def of(cls, examples: list[Example], spec: ImageInputSpec) -> Views:
        chosen = stratified_sample(examples, SAMPLE)
        images = [np.asarray(model_view(load_region(ex.path, spec), spec)) for ex in chosen]
        return cls(spec, images, [ex.label for ex in chosen])

    def pixel_mean(self) -> np.ndarray:
        if not self.images:
            return TYPICAL_PIXEL_MEAN
        stack = np.stack(self.images).astype(np.float64)
        return stack.reshape(-1, 1 if stack.ndim == 3 else stack.shape[-1]).mean(axis=0)

    def top1(self, engine: Engine, normalize: dict[str, Any], labels: list[str]) -> float:
        spec = with_normalize(self.spec, normalize)
        index = {name: i for i, name in enumerate(labels)}
        right = 0
        for image, label in zip(self.images, self.labels, strict=True):
            scores = engine.run(to_input_tensor(normalized_view(image, spec), engine.inputs[0]))[0]
            right += int(np.argmax(scores.ravel()) == index[label])
        return right / len(self.images)


def with_normalize(spec: ImageInputSpec, normalize: dict[str, Any]) -> ImageInputSpec:
    """`spec` with this normalisation (and the colour order a convention implies, e.g. caffe's BGR)."""
    spec = dataclasses.replace(spec, color=normalize.get("color", spec.color))
    if "mean" in normalize:
        return dataclasses.replace(spec, mean=tuple(normalize["mean"]), std=tuple(normalize["std"]))
    return dataclasses.replace(spec, scale=normalize["scale"], offset=normalize["offset"], mean=None, std=None)


def conventions_for(channels: int) -> dict[str, dict[str, Any]]:
    """The conventions worth trying: ImageNet mean/std only for colour input."""
    return {k: v for k, v in CONVENTIONS.items() if channels == 3 or "mean" not in v}


def score(views: Views, engine: Engine, labels: list[str], extra: dict[str, Any] | None) -> dict[str, float]:
    """Top-1 of the float32 model on the labelled sample under each convention (and `extra`)."""
    channels = 1 if views.spec.color == "L" else 3
    candidates = dict(conventions_for(channels))
    if extra is not None and range_name(extra) not in candidates:
        candidates[range_name(extra)] = extra
    return {name: views.top1(engine, norm, labels) for name, norm in candidates.items()}


def infer(top1: dict[str, float], classes: int, where: str) -> Contract:
    """The convention that scores best on the labelled sample (refused when even it is near chance)."""
    ranked = sorted(top1, key=top1.__getitem__, reverse=True)
    best = ranked[0]
    if near_chance(top1[best], classes):
        raise ConvertRefused(f"{_no_range(top1, where)}, or {ASK}")
    runner = f"; next best {ranked[1]} {top1[ranked[1]] * 100:.1f}%" if len(ranked) > 1 else ""
    return Contract(dict(CONVENTIONS[best]), "inferred",
                    f"inferred from {where}: the float32 model scores {top1[best] * 100:.1f}% top-1 with {best} "
                    f"input{runner}", top1)


def _no_range(top1: dict[str, float], where: str) -> str:
    ranked = sorted(top1, key=top1.__getitem__, reverse=True)
    table = ", ".join(f"{name} {top1[name] * 100:.1f}%" for name in ranked)
    return (f"no input range gets the model above chance on {where} ({table}): check that the labels match the "
            "model's outputs, in order")


def check(contract: Contract, top1: dict[str, float], classes: int, where: str) -> None:
    """Refuse a given or model-read contract that the labelled eval sample contradicts."""
    mine = top1[contract.range]
    best = max(top1, key=top1.__getitem__)
    if near_chance(top1[best], classes):
        raise ConvertRefused(f"{_no_range(top1, where)}; or pass --force")
    fix = "" if best == contract.range else f"; with {best} input it scores {top1[best] * 100:.1f}% ({FLAGS[best]})"
    if near_chance(mine, classes) or top1[best] - mine > WORSE_BY:
        raise ConvertRefused(f"{contract.detail}, but the float32 model scores {mine * 100:.1f}% top-1 with it on "
                             f"{where}{fix}; fix the input range, or pass --force")


def decide(given: Contract | None, says: Callable[[np.ndarray], Contract | None], engine: Engine,
           spec: ImageInputSpec, labels: list[str], examples: tuple[list[Example] | None, list[Example] | None],
           classification: bool, force: bool) -> Contract:
    """The contract for an image model (see the module docstring). `says(pixel_mean)` is what the model itself
    states (its first layer, its metadata; the sample's mean pixel per channel tells a Normalization layer's
    range); `examples` is (eval, calibration)."""
    eval_examples, calibration = examples
    eval_labelled = [ex for ex in eval_examples or [] if ex.label] if classification else []
    calib_labelled = [ex for ex in calibration or [] if ex.label] if classification else []
    sample = eval_labelled or calib_labelled
    where = (f"{min(len(sample), SAMPLE)} labelled {'eval' if eval_labelled else 'calibration'} images"
             if sample else "")
    any_images = sample or eval_examples or calibration or []
    views = Views.of(any_images, spec) if any_images else None
    layer = says(views.pixel_mean() if views else TYPICAL_PIXEL_MEAN)
    if given is not None and layer is not None and given.range != layer.range and not force:
        raise ConvertError(f"{layer.detail}, but {given.detail}: drop them (or pass --force to use them anyway)")
    contract = given or layer
    if contract is None:
        if views is None or not sample:
            raise ConvertError("cannot tell which input range the model expects: its first layer does not say, and "
                               f"there is no labelled --eval or --calibration set to infer it from; {ASK}")
        return infer(score(views, engine, labels, None), len(labels), where)
    if eval_labelled and views is not None:
        top1 = score(views, engine, labels, contract.normalize)
        if not force:
            check(contract, top1, len(labels), where)
        contract = dataclasses.replace(contract, top1=top1)
    return contract
