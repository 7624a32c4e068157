"""One `edge-convert` run, step by step: check every input before TensorFlow loads (`plan`), convert each
variant, measure the input reference, describe and load-check the variants, evaluate them, explain (and repair)
quantization error, check the target device, write and sign the bundles, report. Each step reads and fills one
`Job`; exit code 0 when every asked-for variant was written, 3 when one was refused."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from converter.calibrate_decisions import decision_reference
from converter.contract import Contract, decide, given_contract, layer_contract, with_normalize
from converter.convert import CALIBRATED, MODES, ConversionWorker, convert
from converter.datasets import (
    calibration_tensors,
    list_examples,
    list_windows,
    quality_reference,
    sensor_reference,
    stratified_sample,
    window_tensors,
)
from converter.errors import ConvertError
from converter.evaluate import Evaluation, evaluate, in_memory_bundle, over_budget, summarize
from converter.fallback import auto_fallback, layer_errors
from converter.report import print_table, write_markdown
from converter.source import SourceModel, load_source
from converter.specs import check_sensor_shape, input_spec, read_labels, say, sensor_spec, spec_output, spec_table
from converter.target import check_target
from converter.verify import verify_source
from converter.wrap import Wrapped, metadata_contract, wrap_plan
from edge_infer import __version__
from edge_infer.bundle import Bundle, BundleError, build_manifest_doc, write_bundle
from edge_infer.golden import GoldenInput, build_golden
from edge_infer.manifest import LABELLED_TASKS, ImageInputSpec, ManifestError, SensorInputSpec, parse_manifest
from edge_infer.model import Model
from edge_infer.runtime import Engine, RuntimeUnavailable
from edge_infer.signing import key_id, load_private_key, sign_bundle


@dataclass
class Job:
    """What one run has read, made and decided so far."""

    args: argparse.Namespace
    model_path: Path
    out: Path
    modes: list[str]
    labels: list[str]
    calibration: list[Any] | None
    eval_examples: list[Any] | None
    spec_table: dict[str, Any] | None
    sensor: SensorInputSpec | None
    output_table: dict[str, Any]
    signing_key: Any = None
    started: float = field(default_factory=time.monotonic)
    wrapped: Wrapped | None = None  # `edge-convert wrap`: the third-party model as it is
    source: SourceModel | None = None
    contract: Contract | None = None
    spec: ImageInputSpec | SensorInputSpec | None = None
    variants: dict[str, bytes] = field(default_factory=dict)
    tensors: np.ndarray | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    unloadable: dict[str, str] = field(default_factory=dict)
    evals: dict[str, Evaluation] = field(default_factory=dict)
    over: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    target: dict[str, Any] | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The variant the others are compared with: float32, or a wrapped model as it is."""
        return self.modes[0]

    def manifest(self, mode: str, data: bytes) -> dict[str, Any]:
        assert self.spec is not None
        made_by: dict[str, Any] = {"tool": "edge-convert", "version": __version__}
        if self.source is not None:
            made_by["tensorflow"] = self.source.tf.__version__
        if self.wrapped is not None:
            made_by |= {"wrapped": str(self.model_path), **({"metadata": self.wrapped.metadata.describe()}
                                                             if self.wrapped.metadata is not None else {})}
        if self.contract is not None:
            made_by["input_contract"] = self.contract.to_dict()
        return _manifest(self.args, data, self.spec, self.labels, mode, made_by, self.reference, self.output_table)


def run(args: argparse.Namespace) -> int:
    """The whole conversion (raises ConvertError with a one-line reason)."""
    job = plan(args)
    if job.wrapped is not None:
        wrap_variant(job)
    else:
        convert_variants(job)
    measure_reference(job)
    describe_variants(job)
    evaluate_variants(job)
    explain(job)
    check_targets(job)
    write_bundles(job)
    return finish(job)


def _examples(args: argparse.Namespace, sensor: SensorInputSpec | None,
              model_labels: tuple[str, ...] | None = None) -> tuple[list[str], Any, Any]:
    """(labels, calibration examples, eval examples) from the flags (`model_labels`: a wrapped model's own)."""
    if sensor is not None:
        labels = read_labels(args) if args.labels else None
        calibration = list_windows(Path(args.calibration), sensor, labels, "calibration") if args.calibration else None
        eval_examples = list_windows(Path(args.eval), sensor, labels, "eval") if args.eval else None
        if labels is None:
            labels = sorted({ex.label for ex in calibration or []})
            if not labels:
                raise ConvertError("no labels: pass --labels FILE or labelled --calibration windows")
    else:
        labels = list(model_labels) if model_labels and not args.labels else \
            read_labels(args, wrapping=args.wrap) if args.task in LABELLED_TASKS or args.labels else []
        calibration = list_examples(Path(args.calibration), "calibration") if args.calibration else None
        eval_examples = list_examples(Path(args.eval), "eval") if args.eval else None
    for examples, what in ((calibration, "calibration"), (eval_examples, "eval")):
        unknown = sorted({ex.label for ex in examples or []} - set(labels) - {""})
        if unknown and args.task == "classification":
            raise ConvertError(f"{what} folder has label folders not in the labels: {', '.join(unknown)}")
    if args.task != "classification" and eval_examples is not None:
        eval_examples = [dataclasses.replace(ex, label="") for ex in eval_examples]  # outputs are compared, not labels
    return labels, calibration, eval_examples


def _check_flags(args: argparse.Namespace, modes: list[str], calibration: Any, eval_examples: Any) -> None:
    """Flag combinations that cannot work, refused before anything runs."""
    if args.task != "classification" and args.max_accuracy_drop is not None:
        raise ConvertError(f"--max-accuracy-drop measures top-1 accuracy: a {args.task} model has none (the report "
                           "compares its outputs with float32's instead)")
    if args.max_accuracy_drop is not None and not any(ex.label for ex in eval_examples or []):
        raise ConvertError("--max-accuracy-drop needs a labelled --eval set (<dir>/<label>/...)")
    if args.auto_fallback:
        if "int8" not in modes:
            raise ConvertError(f"--auto-fallback keeps layers in float, which --mode {args.mode} cannot do; "
                               "use --mode int8 (full integer with float fallback) or all")
        if args.max_accuracy_drop is None or eval_examples is None:
            raise ConvertError("--auto-fallback needs a budget (--max-accuracy-drop) and a labelled --eval set")
    if args.explain and not any(m in CALIBRATED for m in modes):
        raise ConvertError("--explain measures integer quantization: use --mode int8, int8-only, int16x8 or all")
    if any(m in CALIBRATED for m in modes) and calibration is None and not args.wrap:
        raise ConvertError(f"--mode {args.mode} needs --calibration (representative images, or windows as .npz/.csv)")


def plan(args: argparse.Namespace) -> Job:
    """Every input read and every flag checked, before TensorFlow loads: a mistake fails in a second."""
    signing_key = None
    if args.sign:
        try:
            signing_key = load_private_key(args.sign)
        except ValueError as exc:
            raise ConvertError(str(exc)) from None
    model_path, out = Path(args.model), Path(args.out)
    if not model_path.exists():
        raise ConvertError(f"{model_path}: model not found")
    if not out.parent.exists():
        raise ConvertError(f"{out.parent}: output folder does not exist")
    table = spec_table(Path(args.spec)) if args.spec else None
    sensor = sensor_spec(Path(args.spec)) if table and table["kind"] == "sensor" else None
    wrapped = wrap_plan(args, model_path) if getattr(args, "wrap", False) or model_path.suffix == ".tflite" else None
    args.wrap = wrapped is not None
    if args.threshold is None:
        args.threshold = wrapped.threshold if wrapped is not None and wrapped.threshold is not None else 0.5
    labels, calibration, eval_examples = _examples(args, sensor, wrapped.labels if wrapped is not None else None)
    modes = [wrapped.mode] if wrapped is not None else \
        list(MODES) if args.mode == "all" else list(dict.fromkeys(["float32", args.mode]))
    _check_flags(args, modes, calibration, eval_examples)
    return Job(args, model_path, out, modes, labels, calibration, eval_examples, table, sensor,
               spec_output(Path(args.spec)) if args.spec else {}, signing_key, wrapped=wrapped)


def convert_variants(job: Job) -> None:
    """float32 first (its interpreter tells the input shape and, tried on the labelled images, the input range when
    nothing else does), then each quantized mode in the conversion process (one child for the run: TensorFlow's
    converter leaks memory per call)."""
    args = job.args
    say(f"loading TensorFlow and {job.model_path}")
    job.source = load_source(job.model_path)
    with job.source.saved_model() as saved:
        say(f"converting {job.model_path} → float32")
        float_bytes = convert(saved, "float32")
        float_engine = Engine(float_bytes)
        _check_outputs(job, float_engine)
        first = job.source.first_layer()
        job.spec = _input_contract(job, float_engine, lambda mean: layer_contract(first, mean)) \
            if job.sensor is None else check_sensor_shape(job.sensor, float_engine)
        job.variants = {"float32": float_bytes}
        if any(m in CALIBRATED for m in job.modes):
            job.tensors = _calibration_array(job.calibration, job.spec, args.calibration_samples)
        with ConversionWorker() as worker:
            for mode in job.modes[1:]:
                what = f"{mode} ({args.io_type} I/O)" if mode == "int8-only" else mode
                calibrated = f", calibrated on {len(job.tensors)} inputs" \
                    if job.tensors is not None and mode in CALIBRATED else ""
                say(f"converting → {what}{calibrated} (in a conversion process)")
                job.variants[mode] = worker.convert(saved, mode, job.tensors if mode in CALIBRATED else None,
                                                    args.io_type)


def wrap_variant(job: Job) -> None:
    """`edge-convert wrap`: the third-party model is the one variant, as it is."""
    assert job.wrapped is not None
    engine = job.wrapped.engine
    _check_outputs(job, engine)
    if job.sensor is not None:
        job.spec = check_sensor_shape(job.sensor, engine)
    else:
        channels = engine.inputs[0].shape[-1]
        job.spec = _input_contract(job, engine, lambda _: metadata_contract(job.wrapped.metadata, channels))
    job.variants = {job.base: job.wrapped.model}


def _check_outputs(job: Job, engine: Engine) -> None:
    outputs = int(np.prod(engine.outputs[0].shape))
    if job.args.task == "classification" and outputs != len(job.labels):
        raise ConvertError(f"model has {outputs} outputs but {len(job.labels)} labels")


def _input_contract(job: Job, engine: Engine, says: Callable[[np.ndarray], Contract | None]) -> ImageInputSpec:
    """The image input spec with the normalisation `converter.contract.decide` settles on (said on stderr);
    `says(pixel_mean)` is what the model itself states (its first layer, its metadata)."""
    args = job.args
    base = input_spec(args, engine, job.spec_table)
    given = given_contract(args.scale, args.offset, job.spec_table, args.spec)
    job.contract = decide(given, says, engine, base, job.labels, (job.eval_examples, job.calibration),
                          args.task == "classification", args.force)
    spec = with_normalize(base, job.contract.normalize)
    say(f"input contract: {spec.width}×{spec.height} {spec.color} ({spec.resize}), {job.contract.range} — "
        f"{job.contract.detail}")
    return spec


def measure_reference(job: Job) -> None:
    """The input reference the device's gate compares live inputs with (from the calibration set)."""
    if job.calibration is None:
        say("no --calibration: no input quality reference; the device gate falls back to its loose defaults")
        return
    if isinstance(job.spec, SensorInputSpec):
        say(f"measuring sensor reference on {len(job.calibration)} calibration windows")
        job.reference["sensor"] = sensor_reference(job.calibration, job.spec)
    else:
        sample = stratified_sample(job.calibration, job.args.calibration_samples)
        say(f"measuring input quality reference on {len(sample)} calibration images")
        job.reference["image_quality"] = quality_reference(sample, job.spec)


def describe_variants(job: Job) -> None:
    """Each variant's manifest and report entry; every variant must load in this machine's device runtime."""
    assert job.spec is not None
    job.docs = {mode: job.manifest(mode, data) for mode, data in job.variants.items()}
    try:
        parse_manifest(job.docs[job.base])
    except ManifestError as exc:
        raise ConvertError(f"{job.args.spec or 'flags'}: {exc}") from None
    job.report = {"model": str(job.model_path), "mode": job.args.mode, "input": job.spec.to_dict(),
                  **({"input_contract": job.contract.to_dict()} if job.contract is not None else {}),
                  "labels": job.labels,
                  "variants": {mode: {"size_bytes": len(data)} for mode, data in job.variants.items()}}
    if job.reference:
        job.report["reference"] = job.reference
    for mode, data in list(job.variants.items()):
        try:
            Engine(data)
        except RuntimeUnavailable as exc:
            job.unloadable[mode] = f"the converted model does not load: {str(exc).split(' — ', 1)[-1][:400]}"
            job.report["variants"][mode]["error"] = job.unloadable[mode]
            if mode == job.base:
                raise ConvertError(f"{job.model_path}: {job.unloadable[mode]}") from None


def evaluate_variants(job: Job) -> None:
    """Accuracy (labelled) or agreement with float32 on the eval set, per variant; thresholds and drift
    reference from it; which variants are over the accuracy budget."""
    if job.eval_examples is not None:
        job.evals = {mode: evaluate(in_memory_bundle(job.out, data, job.docs[mode]), job.eval_examples, mode)
                     for mode, data in job.variants.items() if mode not in job.unloadable}
        baseline = job.evals[job.base]
        job.report["evaluation"] = {
            "dataset": str(Path(job.args.eval)), "examples": len(job.eval_examples), "labelled": baseline.labelled,
            "runtime": baseline.runtime,
            "variants": {mode: summarize(ev, len(job.variants[mode]), None if mode == job.base else baseline,
                                         job.labels) for mode, ev in job.evals.items()},
        }
        if baseline.labelled and job.args.task == "classification" and isinstance(job.spec, ImageInputSpec):
            say(f"checking the {job.base} bundle" + (" against the source model" if job.source else "")
                + " on the eval set")
            checked = verify_source(job.source, job.eval_examples, job.spec, job.labels, baseline, job.args.force)
            if checked:
                job.report["evaluation"]["source"] = checked
        for mode in job.variants:
            job.docs[mode]["evaluation"] = job.report["evaluation"]
        decision_reference(job.args, job.evals, job.eval_examples, job.spec, job.labels, job.docs, job.report)
    job.over = over_budget(job.report, job.args.max_accuracy_drop)


def explain(job: Job) -> None:
    """`--explain`: the layers quantization hurts most; `--auto-fallback`: keep them in float until the int8
    variant is within budget."""
    args = job.args
    if not (args.explain or args.auto_fallback):
        return
    assert job.tensors is not None
    assert job.source is not None
    with job.source.saved_model() as saved:
        say("measuring per-layer quantization error (QuantizationDebugger)")
        errors = layer_errors(saved, job.tensors)
        job.report["layer_errors"] = [e.to_dict() for e in errors[:20]]
        if not (args.auto_fallback and "int8" in job.over):
            return
        assert job.eval_examples is not None
        fixed = auto_fallback(saved, job.tensors, errors, job.eval_examples, job.evals["float32"], job.out,
                               job.docs["int8"], args.max_accuracy_drop, job.report)
    if fixed is not None:
        job.variants["int8"] = fixed
        job.docs["int8"] = job.manifest("int8", fixed)
        job.docs["int8"]["evaluation"] = job.report["evaluation"]
        del job.over["int8"]


def check_targets(job: Job) -> None:
    """`--target`: whether each variant's operators run on the target device's runtime."""
    if job.over:
        job.report["over_budget"] = job.over
    job.refused = {**job.unloadable, **job.over}
    if not job.args.target:
        return
    loadable = {m: b for m, b in job.variants.items() if m not in job.unloadable}
    job.target = check_target(Path(job.args.target), loadable, {}, None)
    for mode, verdict in job.target["variants"].items():
        if not verdict["ok"]:
            job.refused.setdefault(mode, verdict["problem"])


def write_bundles(job: Job) -> None:
    """The bundles that were asked for and not refused, with golden inputs, signed with `--sign`; with
    `--target-python` each is then run by the target's runtime for real (and removed when it fails there)."""
    args = job.args
    written = [m for m in job.modes if m not in job.refused and (args.mode == "all" or m == args.mode)]
    job.paths = {m: (job.out if args.mode != "all" else job.out.with_name(f"{job.out.stem}-{m}{job.out.suffix}"))
                 for m in written}
    golden_source = job.eval_examples if job.eval_examples is not None else job.calibration
    for mode, path in job.paths.items():
        extra = _golden(args, golden_source, in_memory_bundle(job.out, job.variants[mode], job.docs[mode]))
        try:
            write_bundle(path, job.variants[mode], job.docs[mode], extra)
        except BundleError as exc:
            raise ConvertError(str(exc)) from None
        if job.signing_key is not None:
            sign_bundle(path, job.signing_key)
    if args.target and args.target_python:
        ran = check_target(Path(args.target), {m: job.variants[m] for m in job.paths}, job.paths, args.target_python)
        assert job.target is not None
        job.target["variants"].update(ran["variants"])
        for mode, verdict in ran["variants"].items():
            if not verdict["ok"]:
                job.refused[mode] = verdict["problem"]
                job.paths.pop(mode).unlink()
    signed = {"signed_by": key_id(job.signing_key)} if job.signing_key is not None else {}
    job.report["bundles"] = {mode: {"path": str(p), "bytes": p.stat().st_size,
                                    "sha256": job.docs[mode]["model"]["sha256"],
                                    "golden_inputs": min(args.golden, len(golden_source or [])), **signed}
                             for mode, p in job.paths.items()}


def finish(job: Job) -> int:
    """The table, the report files, one line per bundle written and per variant refused; the exit code."""
    report = job.report
    if job.target is not None:
        report["target"] = job.target
    if job.refused:
        report["refused"] = job.refused
    report["seconds"] = round(time.monotonic() - job.started, 1)
    print_table(report)
    if job.args.report:
        report_path = Path(job.args.report)
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        extra = write_markdown(report, report_path.with_suffix(".md"))
        say(f"wrote {report_path} and {', '.join(str(p) for p in extra)}")
    for mode, path in job.paths.items():
        extras = [f"{report['bundles'][mode]['golden_inputs']} golden inputs"]
        if job.signing_key is not None:
            extras.append(f"signed by {key_id(job.signing_key)}")
        say(f"wrote {path} ({path.stat().st_size} bytes, {mode}; {', '.join(extras)})")
    for mode, why in job.refused.items():
        say(f"refused {mode}: {why}")
    return 3 if job.refused else 0


def _manifest(
    args: argparse.Namespace,
    model_bytes: bytes,
    spec: ImageInputSpec | SensorInputSpec,
    labels: list[str],
    mode: str,
    made_by: dict[str, Any],
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
        converter=made_by,
        **extra,
    )


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
