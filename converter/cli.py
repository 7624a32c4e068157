"""`edge-convert`: a trained TensorFlow/Keras model → a TFLite bundle the device can run, with a report.

Example:
  edge-convert model.keras --mode int8 --calibration data/train --eval data/test \\
      --labels labels.txt --out digits.tflite --report report.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from converter.calibrate_decisions import drift_reference, recommended_thresholds
from converter.convert import (
    CALIBRATED,
    IO_TYPES,
    MODES,
    convert,
    convert_in_subprocess,
    import_tensorflow,
    saved_model_dir,
)
from converter.datasets import (
    calibration_tensors,
    folder_labels,
    list_examples,
    list_windows,
    load_image,
    quality_reference,
    sensor_reference,
    stratified_sample,
    window_tensors,
)
from converter.errors import ConvertError
from converter.evaluate import Evaluation, evaluate, summarize
from converter.fallback import layer_errors, with_float_layers
from converter.report import write_markdown
from converter.target import check_target
from edge_infer import __version__
from edge_infer.bundle import Bundle, BundleError, build_manifest_doc, model_digest, write_bundle
from edge_infer.gates.quality import assess
from edge_infer.golden import GoldenInput, build_golden
from edge_infer.manifest import (
    COLORS,
    LABELLED_TASKS,
    TASKS,
    ImageInputSpec,
    ManifestError,
    SensorInputSpec,
    parse_image_spec,
    parse_manifest,
    parse_sensor_spec,
)
from edge_infer.model import Model
from edge_infer.monitor import channel_means
from edge_infer.preprocess import model_view
from edge_infer.runtime import Engine, RuntimeUnavailable
from edge_infer.signing import key_id, load_private_key, sign_bundle


def _say(msg: str) -> None:
    print(f"edge-convert: {msg}", file=sys.stderr, flush=True)


def _read_labels(args: argparse.Namespace) -> list[str]:
    if args.labels:
        path = Path(args.labels)
        try:
            labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise ConvertError(f"{path}: cannot read labels file: {exc.strerror}") from None
        if not labels:
            raise ConvertError(f"{path}: labels file is empty")
        if len(set(labels)) != len(labels):
            raise ConvertError(f"{path}: labels file repeats a label")
        return labels
    if args.calibration:
        return folder_labels(Path(args.calibration))
    raise ConvertError("no labels: pass --labels FILE or a --calibration folder laid out by label")


def _input_spec(args: argparse.Namespace, engine: Engine, table: dict[str, Any] | None = None) -> ImageInputSpec:
    """Input size from the model's input tensor; colour, resize mode and normalisation from the spec file's
    [input] table when given, else from the flags."""
    table = table or {}
    shape = engine.inputs[0].shape
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise ConvertError(f"model input shape {shape} is not an image batch (1, H, W, 1|3)")
    color = table.get("color") or args.color or ("L" if shape[3] == 1 else "RGB")
    if (color == "L") != (shape[3] == 1):
        raise ConvertError(f"colour {color} does not fit the model's {shape[3]}-channel input")
    for key, size in (("width", shape[2]), ("height", shape[1])):
        if key in table and table[key] != size:
            raise ConvertError(f"spec [input].{key} = {table[key]}, but the model's input is {size}")
    doc: dict[str, Any] = {"input": {
        "kind": "image", "width": shape[2], "height": shape[1], "color": color,
        "resize": table.get("resize", "stretch"), "pad": table.get("pad", 0),
        "normalize": ({"mean": table["mean"], "std": table.get("std")} if "mean" in table else
                      {"scale": table.get("scale", args.scale), "offset": table.get("offset", args.offset)}),
    }}
    try:
        return parse_image_spec(doc)
    except ManifestError as exc:
        raise ConvertError(f"{args.spec or 'flags'}: [input]: {exc}") from None


IMAGE_SPEC_KEYS = {"kind", "width", "height", "color", "resize", "pad", "scale", "offset", "mean", "std"}
SENSOR_SPEC_KEYS = {"kind", "channels", "window", "hop", "sample_rate", "mean", "std", "range_low", "range_high"}


def _spec_table(path: Path) -> dict[str, Any]:
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


def _spec_output(path: Path) -> dict[str, Any]:
    """The optional [output] table of a spec file: how to read a detection, regression or raw model's outputs."""
    import tomllib

    return dict(tomllib.loads(path.read_text(encoding="utf-8")).get("output", {}))


def _sensor_spec(path: Path) -> SensorInputSpec:
    """The preprocessing spec of a sensor model from a small TOML file (see the README: sensor models)."""
    table = _spec_table(path)
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


def _check_sensor_shape(spec: SensorInputSpec, engine: Engine) -> SensorInputSpec:
    shape = engine.inputs[0].shape
    if tuple(shape) != (1, *spec.shape):
        raise ConvertError(f"model input shape {shape} does not fit the spec's {spec.window}-reading windows of "
                           f"{len(spec.channels)} channels (1, {spec.window}, {len(spec.channels)})")
    return spec


def _manifest(
    args: argparse.Namespace,
    model_bytes: bytes,
    spec: ImageInputSpec | SensorInputSpec,
    labels: list[str],
    mode: str,
    tf: Any,
    reference: dict[str, Any],
    output: dict[str, Any] | None = None,
) -> dict[str, Any]:
    model = Path(args.model)
    extra = {"reference": reference} if reference else {}
    return build_manifest_doc(
        model_bytes,
        name=args.name or model.stem,
        version=args.model_version,
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        task=args.task,
        model={"quantization": mode, "io_type": "float32" if mode == "float32" else args.io_type},
        input=spec.to_dict(),
        output={"activation": args.activation, **(output or {})},
        labels=labels,
        thresholds={"default": args.threshold},
        converter={"tool": "edge-convert", "version": __version__, "tensorflow": tf.__version__},
        **extra,
    )


def _in_memory_bundle(out: Path, model_bytes: bytes, doc: dict[str, Any]) -> Bundle:
    try:
        return Bundle(path=out, model_bytes=model_bytes, manifest=parse_manifest(doc))
    except ManifestError as exc:
        raise ConvertError(f"invalid manifest: {exc}") from None


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    model_path = Path(args.model)
    signing_key = None
    if args.sign:  # before any conversion: a wrong key path fails in a second, not after minutes
        try:
            signing_key = load_private_key(args.sign)
        except ValueError as exc:
            raise ConvertError(str(exc)) from None
    out = Path(args.out)
    if not model_path.exists():
        raise ConvertError(f"{model_path}: model not found")
    if not out.parent.exists():
        raise ConvertError(f"{out.parent}: output folder does not exist")
    spec_table = _spec_table(Path(args.spec)) if args.spec else None
    sensor = _sensor_spec(Path(args.spec)) if spec_table and spec_table["kind"] == "sensor" else None
    if sensor is not None:
        labels = _read_labels(args) if args.labels else None
        calibration = list_windows(Path(args.calibration), sensor, labels, "calibration") if args.calibration else None
        eval_examples = list_windows(Path(args.eval), sensor, labels, "eval") if args.eval else None
        if labels is None:
            labels = sorted({ex.label for ex in calibration or []})
            if not labels:
                raise ConvertError("no labels: pass --labels FILE or labelled --calibration windows")
    else:
        labels = _read_labels(args) if args.task in LABELLED_TASKS or args.labels else []
        calibration = list_examples(Path(args.calibration), "calibration") if args.calibration else None
        eval_examples = list_examples(Path(args.eval), "eval") if args.eval else None
    for examples, what in ((calibration, "calibration"), (eval_examples, "eval")):
        unknown = sorted({ex.label for ex in examples or []} - set(labels) - {""})
        if unknown and args.task == "classification":
            raise ConvertError(f"{what} folder has label folders not in the labels: {', '.join(unknown)}")
    output_table = _spec_output(Path(args.spec)) if args.spec else {}
    if args.task != "classification" and args.max_accuracy_drop is not None:
        raise ConvertError(f"--max-accuracy-drop measures top-1 accuracy: a {args.task} model has none (the report "
                           "compares its outputs with float32's instead)")
    if args.task != "classification" and eval_examples is not None:
        eval_examples = [dataclasses.replace(ex, label="") for ex in eval_examples]  # outputs are compared, not labels
    modes = list(MODES) if args.mode == "all" else list(dict.fromkeys(["float32", args.mode]))
    if args.auto_fallback:
        if "int8" not in modes:
            raise ConvertError(f"--auto-fallback keeps layers in float, which --mode {args.mode} cannot do; "
                               "use --mode int8 (full integer with float fallback) or all")
        if args.max_accuracy_drop is None or eval_examples is None:
            raise ConvertError("--auto-fallback needs a budget (--max-accuracy-drop) and a labelled --eval set")
    if args.explain and not any(m in CALIBRATED for m in modes):
        raise ConvertError("--explain measures integer quantization: use --mode int8, int8-only, int16x8 or all")
    if any(m in CALIBRATED for m in modes) and calibration is None:
        raise ConvertError(f"--mode {args.mode} needs --calibration (representative images, or windows as .npz/.csv)")

    _say("loading TensorFlow")
    tf = import_tensorflow()
    with saved_model_dir(model_path) as saved:
        _say(f"converting {model_path} → float32")
        float_bytes = convert(saved, "float32")
        float_engine = Engine(float_bytes)  # one interpreter tells input shape and output size
        spec: ImageInputSpec | SensorInputSpec = (
            _input_spec(args, float_engine, spec_table) if sensor is None
            else _check_sensor_shape(sensor, float_engine)
        )
        float_out = float_engine.outputs[0]
        if args.task == "classification" and int(np.prod(float_out.shape)) != len(labels):
            raise ConvertError(f"model has {int(np.prod(float_out.shape))} outputs but {len(labels)} labels")
        variants: dict[str, bytes] = {"float32": float_bytes}
        tensors = _calibration_array(calibration, spec, args.calibration_samples) \
            if any(m in CALIBRATED for m in modes) else None
        for mode in modes[1:]:
            what = f"{mode} ({args.io_type} I/O)" if mode == "int8-only" else mode
            calibrated = f", calibrated on {len(tensors)} inputs" if tensors is not None and mode in CALIBRATED else ""
            _say(f"converting → {what}{calibrated} (in its own process)")
            variants[mode] = convert_in_subprocess(saved, mode, tensors if mode in CALIBRATED else None, args.io_type)

    reference: dict[str, Any] = {}
    if calibration is not None:
        sample = stratified_sample(calibration, args.calibration_samples)
        if isinstance(spec, SensorInputSpec):
            _say(f"measuring sensor reference on {len(calibration)} calibration windows")
            reference["sensor"] = sensor_reference(calibration, spec)
        else:
            _say(f"measuring input quality reference on {len(sample)} calibration images")
            reference["image_quality"] = quality_reference(sample, spec)
    else:
        _say("no --calibration: no input quality reference; the device gate falls back to its loose defaults")
    docs = {mode: _manifest(args, data, spec, labels, mode, tf, reference, output_table)
            for mode, data in variants.items()}
    try:
        parse_manifest(docs["float32"])
    except ManifestError as exc:
        raise ConvertError(f"{args.spec or 'flags'}: {exc}") from None
    report: dict[str, Any] = {
        "model": str(model_path),
        "mode": args.mode,
        "input": spec.to_dict(),
        "labels": labels,
        "variants": {mode: {"size_bytes": len(data)} for mode, data in variants.items()},
    }
    if reference:
        report["reference"] = reference
    unloadable: dict[str, str] = {}
    for mode, data in list(variants.items()):  # every variant must load in this machine's device runtime
        try:
            Engine(data)
        except RuntimeUnavailable as exc:
            unloadable[mode] = f"the converted model does not load: {str(exc).split(' — ', 1)[-1][:400]}"
            report["variants"][mode]["error"] = unloadable[mode]
            if mode == "float32":
                raise ConvertError(f"{model_path}: {unloadable[mode]}") from None
    if eval_examples is not None:
        evals: dict[str, Evaluation] = {
            mode: evaluate(_in_memory_bundle(out, data, docs[mode]), eval_examples, mode)
            for mode, data in variants.items() if mode not in unloadable
        }
        baseline = evals["float32"]
        report["evaluation"] = {
            "dataset": str(Path(args.eval)),
            "examples": len(eval_examples),
            "labelled": baseline.labelled,
            "runtime": baseline.runtime,
            "variants": {
                mode: summarize(ev, len(variants[mode]), None if mode == "float32" else baseline, labels)
                for mode, ev in evals.items()
            },
        }
        for mode in variants:
            docs[mode]["evaluation"] = report["evaluation"]
        _decision_reference(args, evals, eval_examples, spec, labels, docs, report)
    over = _over_budget(report, args.max_accuracy_drop)
    if args.explain or args.auto_fallback:
        assert tensors is not None
        with saved_model_dir(model_path) as saved:
            _say("measuring per-layer quantization error (QuantizationDebugger)")
            errors = layer_errors(saved, tensors)
            report["layer_errors"] = [e.to_dict() for e in errors[:20]]
            if args.auto_fallback and "int8" in over:
                assert eval_examples is not None
                fixed = _auto_fallback(saved, tensors, errors, eval_examples, evals["float32"], out, docs["int8"],
                                       args.max_accuracy_drop, report)
                if fixed is not None:
                    variants["int8"] = fixed
                    docs["int8"] = _manifest(args, fixed, spec, labels, "int8", tf, reference, output_table)
                    docs["int8"]["evaluation"] = report["evaluation"]
                    del over["int8"]
    if over:
        report["over_budget"] = over
    refused = {**unloadable, **over}
    target = None
    if args.target:
        target = check_target(Path(args.target), {m: b for m, b in variants.items() if m not in unloadable}, {},
                              None)
        for mode, verdict in target["variants"].items():
            if not verdict["ok"]:
                refused.setdefault(mode, verdict["problem"])
    written = [mode for mode in modes if mode not in refused and (args.mode == "all" or mode == args.mode)]
    paths = {mode: (out if args.mode != "all" else out.with_name(f"{out.stem}-{mode}{out.suffix}")) for mode in written}
    golden_source = eval_examples if eval_examples is not None else calibration
    for mode, path in paths.items():
        extra = _golden(args, golden_source, _in_memory_bundle(out, variants[mode], docs[mode]))
        try:
            write_bundle(path, variants[mode], docs[mode], extra)
        except BundleError as exc:
            raise ConvertError(str(exc)) from None
        if signing_key is not None:
            sign_bundle(path, signing_key)
    if args.target and args.target_python:  # now run the written bundles with the target's runtime for real
        ran = check_target(Path(args.target), {m: variants[m] for m in paths}, paths, args.target_python)
        assert target is not None
        target["variants"].update(ran["variants"])
        for mode, verdict in ran["variants"].items():
            if not verdict["ok"]:
                refused[mode] = verdict["problem"]
                paths.pop(mode).unlink()
    report["bundles"] = {mode: {"path": str(p), "bytes": p.stat().st_size, "sha256": docs[mode]["model"]["sha256"],
                                "golden_inputs": min(args.golden, len(golden_source or [])),
                                **({"signed_by": key_id(signing_key)} if signing_key is not None else {})}
                         for mode, p in paths.items()}
    if target is not None:
        report["target"] = target
    if refused:
        report["refused"] = refused
    report["seconds"] = round(time.monotonic() - started, 1)
    _print_table(report)
    if args.report:
        report_path = Path(args.report)
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        extra = write_markdown(report, report_path.with_suffix(".md"))
        _say(f"wrote {report_path} and {', '.join(str(p) for p in extra)}")
    for mode, path in paths.items():
        extras = [f"{report['bundles'][mode]['golden_inputs']} golden inputs"]
        if signing_key is not None:
            extras.append(f"signed by {key_id(signing_key)}")
        _say(f"wrote {path} ({path.stat().st_size} bytes, {mode}; {', '.join(extras)})")
    for mode, why in refused.items():
        _say(f"refused {mode}: {why}")
    return 3 if refused else 0


def _golden(args: argparse.Namespace, examples: list[Any] | None, bundle: Bundle) -> dict[str, bytes]:
    """`--golden N` held-out inputs (eval set, else calibration) with this bundle's own results on them: what a
    device's canary checks before it promotes the bundle."""
    if not args.golden or not examples:
        return {}
    chosen = stratified_sample(examples, args.golden)
    inputs = [GoldenInput(f"golden/{i:03d}{ex.path.suffix.lower()}", data=ex.path.read_bytes(), label=ex.label)
              if ex.window is None else GoldenInput(f"window {i}", window=ex.window, label=ex.label)
              for i, ex in enumerate(chosen)]
    return build_golden(Model(bundle), inputs)


def _calibration_array(examples: Any, spec: Any, limit: int) -> np.ndarray:
    """The representative tensors, computed once by the device's preprocessing (progress on a terminal)."""
    chosen = stratified_sample(examples, limit)
    tensors = window_tensors(chosen, spec) if isinstance(spec, SensorInputSpec) else calibration_tensors(chosen, spec)
    out = [x for x in tqdm(tensors, total=len(chosen), desc="calibration data", unit="input", file=sys.stderr,
                           leave=False, disable=None)]
    return np.stack(out).astype(np.float32)


def _decision_reference(args: argparse.Namespace, evals: dict[str, Evaluation], examples: list[Any], spec: Any,
                        labels: list[str], docs: dict[str, dict[str, Any]], report: dict[str, Any]) -> None:
    """Per variant: recommended per-label thresholds (labelled eval) and the drift reference, into its manifest."""
    inputs: dict[str, np.ndarray] = {}
    if isinstance(spec, SensorInputSpec):
        windows = np.stack([ex.window for ex in examples])
        inputs = {f"{c}.mean": windows[:, :, i].mean(axis=1) for i, c in enumerate(spec.channels)}
        inputs |= {f"{c}.std": windows[:, :, i].std(axis=1) for i, c in enumerate(spec.channels)}
    else:
        views = [(img, model_view(img, spec)) for img in
                 (load_image(ex.path, (spec.width, spec.height)) for ex in examples)]
        qualities = [assess(img, view) for img, view in views]
        inputs = {m: np.array([getattr(q, m) for q in qualities]) for m in ("brightness", "contrast", "sharpness")}
        if spec.channels == 3:  # colour casts: the per-channel means, as `channel_means` measures them live
            means = np.array([channel_means(np.asarray(view)) for _, view in views])
            inputs |= {f"mean.{c}": means[:, i] for i, c in enumerate("RGB")}
    report["thresholds"] = {}
    for mode, ev in evals.items():
        if args.task != "classification":  # inputs only: the output statistics the monitor follows are classes
            docs[mode].setdefault("reference", {})["drift"] = drift_reference([], np.zeros(0), [], inputs)
            continue
        confidences = ev.scores.max(axis=1)
        recommended: dict[str, float] = {}
        if ev.labelled:
            recommended = recommended_thresholds(ev.predictions, confidences, ev.labels, labels, args.precision,
                                                 args.threshold)
            docs[mode]["thresholds"] = {"default": args.threshold, "labels": recommended}
            report["thresholds"][mode] = recommended
        uncertain = float(np.mean([c < recommended.get(p, args.threshold)
                                   for p, c in zip(ev.predictions, confidences, strict=True)]))
        drift = drift_reference(ev.predictions, confidences, labels, inputs, uncertain)
        docs[mode].setdefault("reference", {})["drift"] = drift


def _auto_fallback(saved: Path, tensors: np.ndarray, errors: list[Any], examples: list[Any], baseline: Evaluation,
                   out: Path, doc: dict[str, Any], budget: float, report: dict[str, Any]) -> bytes | None:
    """Keep the worst layers of the `int8` variant in float, one more per step, until the top-1 drop is within
    budget. Records every step in the report; returns the repaired model, or None when nothing was enough."""
    kept: list[str] = []
    steps = []
    for layer in errors:
        kept.append(layer.tensor)
        data = with_float_layers(saved, tensors, kept)
        trial = dict(doc, model={**doc["model"], "sha256": model_digest(data), "size": len(data)})
        ev = evaluate(_in_memory_bundle(out, data, trial), examples, f"int8 + {len(kept)} float layer(s)")
        drop = (baseline.accuracy - ev.accuracy) * 100.0
        steps.append({"kept_in_float": layer.tensor, "op": layer.op, "accuracy": round(ev.accuracy, 6),
                      "accuracy_drop_points": round(drop, 4), "size_bytes": len(data)})
        _say(f"auto-fallback step {len(kept)}: {layer.op} {layer.tensor.split(';')[0]} in float → top-1 "
             f"{ev.accuracy * 100:.2f}% (drop {drop:.2f} points)")
        if drop <= budget:
            summary = summarize(ev, len(data), baseline, report["labels"])
            report["evaluation"]["variants"]["int8"] = summary
            report["variants"]["int8"] = {"size_bytes": len(data)}
            report["fallback"] = {"within_budget": True, "layers_kept_in_float": kept, "steps": steps}
            _say(f"auto-fallback: {len(kept)} layer(s) kept in float — within the budget of {budget:g} points")
            return data
    report["fallback"] = {"within_budget": False, "layers_kept_in_float": kept, "steps": steps}
    _say("auto-fallback: no combination of float layers met the budget")
    return None


def _over_budget(report: dict[str, Any], budget: float | None) -> dict[str, str]:
    """Variants whose top-1 accuracy drop exceeds `--max-accuracy-drop`, with the numbers."""
    if budget is None:
        return {}
    evaluation = report.get("evaluation", {})
    if not evaluation.get("labelled"):
        raise ConvertError("--max-accuracy-drop needs a labelled --eval set (<dir>/<label>/...)")
    out = {}
    base = evaluation["variants"]["float32"]["accuracy"] * 100
    for mode, ev in evaluation["variants"].items():
        drop = ev.get("accuracy_drop_points", 0.0)
        if drop > budget:
            out[mode] = (f"top-1 {base:.2f}% → {ev['accuracy'] * 100:.2f}%, a drop of {drop:.2f} points, over the "
                         f"budget of {budget:g}")
    return out


def _print_table(report: dict[str, Any]) -> None:
    """The comparison table: one line per variant."""
    evaluation = report.get("evaluation", {}).get("variants", {})
    float_size = report["variants"]["float32"]["size_bytes"]
    over = report.get("refused", {})
    print(f"{'variant':<10} {'size':>11} {'× f32':>6} {'top-1':>8} {'top-3':>8} {'drop':>7} {'agree':>8} "
          f"{'max|Δ|':>7} {'latency':>9}")
    for mode, info in report["variants"].items():
        ev = evaluation.get(mode, {})

        def pct(key: str, ev: dict[str, Any] = ev) -> str:
            return f"{ev[key] * 100:.2f}%" if key in ev else "—"

        drop = f"{ev['accuracy_drop_points']:+.2f}" if "accuracy_drop_points" in ev else "—"
        err = f"{ev['output_max_abs_error']:.3f}" if "output_max_abs_error" in ev else "—"
        lat = f"{ev['latency_ms']:.3f}ms" if "latency_ms" in ev else "—"
        flag = "  ✗ refused" if mode in over else ""
        print(f"{mode:<10} {info['size_bytes']:>10,}B {info['size_bytes'] / float_size:>6.2f} {pct('accuracy'):>8} "
              f"{pct('top3_accuracy'):>8} {drop:>7} {pct('agreement_with_float32'):>8} {err:>7} {lat:>9}{flag}")
    if evaluation:
        print(f"(evaluated on {report['evaluation']['examples']} inputs with {report['evaluation']['runtime']}; "
              "drop in top-1 points vs float32; max|Δ| = largest output difference vs float32)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-convert",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("model", help="SavedModel directory or .keras file")
    p.add_argument("--task", choices=TASKS, default="classification",
                   help="what the model does (default classification); detection, regression and raw read their "
                        "outputs as the spec file's [output] table says (see docs/decisions.md)")
    p.add_argument("--mode", choices=(*MODES, "all"), default="int8-only",
                   help="quantization (default: int8-only); all: every mode, compared in one table")
    p.add_argument("--io-type", choices=IO_TYPES, default="uint8", help="int8-only mode: input/output type")
    p.add_argument("--max-accuracy-drop", type=float, metavar="PTS",
                   help="refuse a variant whose top-1 accuracy drops more than PTS points (exit 3)")
    p.add_argument("--explain", action="store_true",
                   help="per-layer quantization error (RMSE / scale, TF's QuantizationDebugger) in the report")
    p.add_argument("--auto-fallback", action="store_true",
                   help="int8: keep the worst layers in float, one at a time, until --max-accuracy-drop is met")
    p.add_argument("--target", metavar="PROFILE",
                   help="device profile (device_configs/*.toml): refuse variants its runtime cannot run (exit 3)")
    p.add_argument("--target-python", metavar="PYTHON",
                   help="with --target: a Python with the profile's runtime installed, to load and run each bundle")
    p.add_argument("--spec", help="preprocessing spec TOML: [input] kind = image (colour, resize stretch|letterbox|"
                   "centre-crop, pad, scale/offset or mean/std) or sensor (channels, window, hop, rate, mean/std)")
    p.add_argument("--calibration", help="representative images: <dir>/<label>/*.png|jpg; sensor: .npz or .csv")
    p.add_argument("--calibration-samples", type=int, default=300, help="images used to calibrate (300)")
    p.add_argument("--eval", help="labelled held-out images: <dir>/<label>/*.png|jpg; sensor: .npz or .csv")
    p.add_argument("--labels", help="labels file, one per line, in model output order")
    p.add_argument("--out", required=True, help="bundle to write (.tflite)")
    p.add_argument("--golden", type=int, default=16, metavar="N",
                   help="ship N held-out inputs and this bundle's results on them, for the device canary (16; 0: none)")
    p.add_argument("--sign", metavar="KEY", help="sign the bundle with this Ed25519 private key (edge-infer keygen)")
    p.add_argument("--report", help="write the conversion report as JSON here")
    p.add_argument("--name", help="model name in the manifest (default: model file stem)")
    p.add_argument("--model-version", default="1.0.0", help="model version in the manifest")
    p.add_argument("--color", choices=COLORS, help="colour order (default: from the input channels)")
    p.add_argument("--scale", type=float, default=1.0 / 255.0, help="normalise: x = pixel*scale + offset")
    p.add_argument("--offset", type=float, default=0.0, help="normalise: x = pixel*scale + offset")
    p.add_argument("--activation", choices=("softmax", "none", "logits"), default="softmax",
                   help="softmax: the model outputs probabilities; logits: the device applies softmax")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="default confidence threshold (labels the eval set gives enough evidence for get their own)")
    p.add_argument("--precision", type=float, default=0.97,
                   help="a label whose predictions above --threshold were right less often than this on the "
                        "labelled eval set gets a higher threshold of its own (0.97)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConvertError as exc:
        print(f"edge-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
