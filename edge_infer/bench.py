"""`edge-infer bench`: measure every stage on the configured model and inputs, in one run, side by side.

Each figure is measured in the same process run as its baseline, so the ratios hold on a noisy machine:
raw invoke rate, decode+preprocess rate, decode-gate cost, that work on every core at once, the full pipeline
(pipelined and sequential, into a durable outbox in a temporary folder; with `--broker`, also until a broker
acknowledged every result), a naive per-frame loop (open → convert → resize → invoke, as the
TFLite examples do), start-up to first result, and steady-state RSS against a floor (a bare script that
imports numpy, Pillow, paho and the runtime and loads the same model).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_infer.app.interpreters import interpreter_count, usable_cores
from edge_infer.bundle import Bundle, load_bundle
from edge_infer.config import Config
from edge_infer.delegates import DEFAULT, EngineSettings
from edge_infer.gates.baseline import SceneBaseline, features
from edge_infer.gates.decode import DecodeRejected, decode_image
from edge_infer.gates.quality import gate_from_config
from edge_infer.hosts import host_port
from edge_infer.model import Model, engine_for, engine_settings
from edge_infer.runtime import Engine, RuntimeUnavailable, cpu_settings
from edge_infer.sources import directory
from edge_infer.sources.directory import IGNORED_SUFFIXES
from edge_infer.steal import Span, Stopwatch


class BenchError(Exception):
    """Nothing to measure (no images in the source folder); one line."""


def bench_images(cfg: Config, frames: int) -> list[Path]:
    """`frames` paths of decodable images from the config's `[source]` folder, cycled (raises `BenchError`)."""
    if cfg.source.type != "directory":
        raise BenchError(f"{cfg.path}: bench measures image models on the files of a [source] type = \"directory\" "
                         f"folder; this config's source is {cfg.source.type!r}")
    folder = Path(cfg.source.path)
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith(".") or path.name.endswith(IGNORED_SUFFIXES) or not path.is_file():
            continue
        try:
            decode_image(path.read_bytes())
        except (DecodeRejected, OSError):
            continue
        found.append(path)
    if not found:
        raise BenchError(f"{folder}: no decodable images to benchmark with ([source].path)")
    return list(itertools.islice(itertools.cycle(found), frames))


def _rate(n: int, seconds: float, span: Span | None = None, busy: int = 1) -> dict[str, float]:
    """`n` frames in `seconds`; with the stage's `span` (`seconds` may be part of it) also this process's CPU time
    per frame (`cpu_ms`) and cores kept busy on average (`cores_busy`), the hypervisor's steal on its `busy` cores
    in % (`steal_pct`) and the rate with that steal taken out (`given_per_s`)."""
    rate = {"per_s": round(n / seconds, 1), "ms": round(seconds / n * 1000.0, 3)}
    if span is None or span.wall <= 0:
        return rate
    rate.update(cpu_ms=round(span.cpu / n * 1000.0, 3), cores_busy=round(span.cpu / span.wall, 2))
    if span.steal is not None:
        rate["steal_pct"] = round(100.0 * (span.steal_share(busy) or 0.0), 1)
        rate["given_per_s"] = round(n / (seconds * span.given(busy) / span.wall), 1)
    return rate


def temp_config(cfg: Config, root: Path, inputs: Path, mode: str, broker: str | None = None) -> Config:
    """`cfg` for one measured run in `root`: the inputs' folder, a fresh outbox, and no broker (the discard port:
    results stay in the outbox) — or `broker` (HOST:PORT, anonymous, no TLS), under its own topic prefix, with no
    Home Assistant discovery and every result waited for until the broker acknowledged it."""
    replace = dataclasses.replace
    if broker is None:
        mqtt = replace(cfg.mqtt, hosts=("127.0.0.1:9",), drain_timeout=0.0)  # discard port: never connects
    else:
        mqtt = replace(cfg.mqtt, hosts=(broker,), drain_timeout=600.0, topic_prefix="edge-infer-bench",
                       username=None, password_file=None, tls=False)
    return replace(
        cfg,
        device=replace(cfg.device, state_dir=str(root)),
        source=directory.Options(type="directory", name=cfg.source.name, path=str(inputs), settle_seconds=0.0),
        pipeline=replace(cfg.pipeline, mode=mode),
        outbox=replace(cfg.outbox, path=str(root / f"{mode}.db")),
        mqtt=mqtt,
        homeassistant=replace(cfg.homeassistant, discovery=False),
        log=replace(cfg.log, level="error"),
    )


def pipeline_rate(cfg: Config, files: list[Path], mode: str, root: Path, broker: str | None = None,
                   busy: int = 1) -> dict[str, float]:
    """The daemon's rate over `files`, from its start until every result was stored in the outbox — or, with
    `broker`, acknowledged by the broker (raises `BenchError` when not every one was); it keeps `busy` cores
    busy."""
    from edge_infer.app.daemon import Daemon

    inputs = root / f"in-{mode}"
    inputs.mkdir(parents=True)
    for i, path in enumerate(files):
        shutil.copy(path, inputs / f"{i:06d}{path.suffix}")
    daemon = Daemon(temp_config(cfg, root, inputs, mode, broker))
    started = time.monotonic()
    with Stopwatch() as watch:
        daemon.run(once=True)  # then its clean stop (the last messages, `offline`): not part of the rate
    elapsed = daemon.finished_at["stored" if broker is None else "delivered"] - started
    if broker is not None and daemon.summary.queued:
        raise BenchError(f"--broker {broker}: {daemon.summary.queued} results were not acknowledged "
                         f"({daemon.sink.published} were)")
    return _rate(daemon.summary.results + daemon.summary.rejected, elapsed, watch.span, busy)


def _naive_rate(cfg: Config, files: list[Path], threads: int) -> dict[str, float]:
    """The loop from the TFLite examples: no draft decoding, no overlap, a fresh PIL pipeline per frame, the
    interpreter on `threads` threads."""
    bundle = load_bundle(cfg.model.bundle)
    model = Model(bundle, dataclasses.replace(engine_settings(cfg.model), threads=threads))
    interpreter = model.engine.interpreter
    spec, tensor = bundle.manifest.input, model.engine.inputs[0]
    with Stopwatch() as watch:
        for path in files:
            image = Image.open(path).convert("L" if spec.color == "L" else "RGB").resize((spec.width, spec.height))
            x = np.expand_dims(np.asarray(image), 0)
            if spec.color == "L":
                x = x[..., np.newaxis]
            if tensor.dtype == np.float32:
                x = x.astype(np.float32) * spec.scale + spec.offset
            interpreter.set_tensor(tensor.index, x.astype(tensor.dtype))
            interpreter.invoke()
            int(np.argmax(interpreter.get_tensor(model.engine.outputs[0].index)))
    return _rate(len(files), watch.span.wall, watch.span, threads)


CHILD_FLOOR = """
import sys, numpy, PIL.Image, paho.mqtt.client
from edge_infer.config import load_config
from edge_infer.model import engine_for, engine_settings
from edge_infer.bundle import load_bundle
cfg = load_config(sys.argv[1]).model  # the engine as the daemon builds it: variant, delegate and its options
def rss(): return [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]
engines = [engine_for(load_bundle(cfg.bundle), engine_settings(cfg))]
engines[0].run(numpy.zeros(engines[0].inputs[0].shape, engines[0].inputs[0].dtype))
print(rss())
x = numpy.zeros(engines[0].inputs[0].shape, engines[0].inputs[0].dtype)
for _ in range(2):  # what each further interpreter (the pool's twins) costs
    engines.append(engines[0].twin()); engines[-1].run(x)
print(rss())
"""
CHILD_DAEMON = """
import sys, time
t0 = float(sys.argv[2])
from edge_infer.config import load_config
from edge_infer.bench import temp_config
from edge_infer.app.daemon import Daemon
from pathlib import Path
cfg = load_config(sys.argv[1])
root = Path(sys.argv[3])
d = Daemon(temp_config(cfg, root, Path(sys.argv[4]), "pipelined"))
sample = next(d.source.samples(d.stop_event, True, lambda s: False))
d.pipeline.process(sample)
print("first", time.time() - t0, flush=True)
d.run(once=True)
print("rss", [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1], flush=True)
"""


def _children(cfg: Config, files: list[Path], root: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    floor = subprocess.run(
        [sys.executable, "-c", CHILD_FLOOR, str(cfg.path)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )
    inputs = root / "in-child"
    inputs.mkdir()
    for i, path in enumerate(files):
        shutil.copy(path, inputs / f"{i:06d}{path.suffix}")
    out = subprocess.run(
        [sys.executable, "-c", CHILD_DAEMON, str(cfg.path), str(time.time()), str(root / "child"), str(inputs)],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    ).stdout.split()
    lines = floor.stdout.strip().splitlines()
    floor_kb, three_kb, rss_kb = int(lines[-2]), int(lines[-1]), int(out[out.index("rss") + 1])
    return {
        "startup_to_first_result_s": round(float(out[out.index("first") + 1]), 3),
        "rss_mb": round(rss_kb / 1024, 1),
        "rss_floor_mb": round(floor_kb / 1024, 1),
        "rss_ratio": round(rss_kb / floor_kb, 3),
        "rss_per_extra_interpreter_mb": round((three_kb - floor_kb) / 2 / 1024, 1),
    }


def _variants(bundle: Bundle, settings: EngineSettings, tensors: list[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Invoke latency of each model variant in the bundle on its own delegate: the CPU model on the CPU, an
    accelerator variant on the configured delegate when it is the variant's (else why it was not measured)."""
    runs: list[tuple[str, str, bytes, EngineSettings | None]] = [
        ("cpu", DEFAULT, bundle.model_bytes, cpu_settings(settings))]
    for v in bundle.variants.values():  # None: not this machine's configured delegate
        runs.append((v.name, v.delegate, v.model_bytes, settings if settings.delegate == v.delegate else None))
    out: dict[str, dict[str, Any]] = {}
    for name, delegate, content, how in runs:
        if how is None:
            out[name] = {"delegate": delegate,
                         "not_measured": f"for the {delegate} delegate; [model] delegate is {settings.delegate!r}"}
            continue
        try:
            engine = Engine(content, how, name)
            engine.run(tensors[0])
            started = time.perf_counter()
            for tensor in tensors:
                engine.run(tensor)
        except (RuntimeUnavailable, RuntimeError) as exc:
            out[name] = {"delegate": delegate, "not_measured": str(exc).splitlines()[0]}
            continue
        out[name] = {"delegate": delegate, **_rate(len(tensors), time.perf_counter() - started)}
    return out


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    """The median round by rate; the CPU and steal figures are their own medians."""
    middle = dict(sorted(results, key=lambda r: r["per_s"])[len(results) // 2])
    for key in ("cpu_ms", "cores_busy", "steal_pct", "given_per_s"):
        if all(key in r for r in results):
            middle[key] = sorted(r[key] for r in results)[len(results) // 2]
    return middle


class FrontHalf:
    """What the pipeline's decode thread does per frame: decode, the model's region, the quality gate (and the
    camera baseline when configured), preprocess. The gate is timed in place (a warm cache, as in the
    pipeline), not on a list of frames decoded long before: `seconds` and `rejected`, one entry per frame."""

    def __init__(self, cfg: Config, model: Model) -> None:
        self.cfg, self.model = cfg, model
        self.gate = gate_from_config(cfg.gate, model.manifest.image_quality_reference)
        self.scene = SceneBaseline(None, cfg.gate.baseline_warmup) if cfg.gate.baseline else None  # not saved
        self.seconds: list[float] = []
        self.rejected: list[bool] = []

    def __call__(self, data: bytes) -> np.ndarray:
        g = self.cfg.gate
        image = self.model.region(decode_image(data, g.max_pixels, g.min_side, self.model.draft_size))
        view = self.model.view(image)
        pixels = np.asarray(view)
        started = time.perf_counter()
        gray, quality, plane = self.gate.measure(image, view, pixels)
        verdict = self.gate.judge(gray, quality)
        if self.scene is not None and quality is not None and verdict.ok:
            self.scene.judge(features(image, quality.focus, plane))
        self.seconds.append(time.perf_counter() - started)
        self.rejected.append(not verdict.ok)
        return self.model.view_tensor(pixels)


def _all_cores(cfg: Config, model: Model, blobs: list[bytes], cores: int) -> dict[str, float]:
    """The CPU-bound limit's own work — decode + gate + preprocess, then a single-thread invoke — on every core
    at once, each thread on its own interpreter and its own share of the frames, no pipeline between them: what
    this machine's cores deliver together (shared caches, memory bandwidth, a hypervisor's neighbours and the
    GIL included), the ceiling for any schedule of this work in this process."""
    engines = [model.engine, *(model.engine.twin() for _ in range(cores - 1))]
    fronts = [FrontHalf(cfg, model) for _ in range(cores)]
    for engine, front in zip(engines, fronts, strict=True):
        engine.run(front(blobs[0]))  # warm-up
    start = threading.Barrier(cores + 1)

    def work(i: int) -> None:
        start.wait()
        for data in blobs[i::cores]:
            engines[i].run(fronts[i](data))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(cores)]
    with Stopwatch() as watch:
        seconds = run_together(threads, start)
    return _rate(len(blobs), seconds, watch.span, cores)


def run_together(runners: list[Any], start: Any) -> float:
    """Start every runner (threads or processes, each waiting on the barrier `start` before its work), release
    them at once, and return the seconds until the last one finished."""
    for runner in runners:
        runner.start()
    start.wait()
    started = time.perf_counter()
    for runner in runners:
        runner.join()
    return time.perf_counter() - started


def _ratios(stages: dict[str, dict[str, float]], cores: int, one_thread: bool) -> dict[str, float | None]:
    """Each figure against its baseline from the same run (the CPU-bound limit only when the interpreter runs
    one thread); `delivered_*` only when the run had a broker; `*_given` only where the steal was counted."""
    limit = _limit(stages, cores, "per_s") if one_thread else None
    pipelined, sequential, naive = stages["pipeline_pipelined"], stages["pipeline_sequential"], stages["naive_loop"]
    slowest = min(stages["invoke"]["per_s"], stages["decode_preprocess"]["per_s"])
    ratios: dict[str, float | None] = {
        "pipeline_vs_slowest_stage": round(pipelined["per_s"] / slowest, 3),
        "pipeline_vs_naive": round(pipelined["per_s"] / naive["per_s"], 3),
        "pipeline_vs_cpu_limit": round(pipelined["per_s"] / limit, 3) if limit else None,
        "all_cores_vs_cpu_limit": round(stages["all_cores"]["per_s"] / limit, 3) if limit else None,
        "pipeline_vs_all_cores": round(pipelined["per_s"] / stages["all_cores"]["per_s"], 3),
        "pipelined_vs_sequential": round(pipelined["per_s"] / sequential["per_s"], 3),
        "decode_gate_share_of_frame": round(stages["decode_gate"]["ms"] / pipelined["ms"], 3),
        "quality_gate_share_of_frame": round(stages["quality_gate"]["ms"] / pipelined["ms"], 3),
    }
    if delivered := stages.get("pipeline_delivered"):
        ratios["delivered_vs_naive"] = round(delivered["per_s"] / naive["per_s"], 3)
        ratios["delivered_vs_cpu_limit"] = round(delivered["per_s"] / limit, 3) if limit else None
    if one_thread and (given := _limit(stages, cores, "given_per_s")):
        for name, stage in (("pipeline", "pipeline_pipelined"), ("all_cores", "all_cores"),
                            ("delivered", "pipeline_delivered")):
            if "given_per_s" in stages.get(stage, {}):
                ratios[f"{name}_vs_cpu_limit_given"] = round(stages[stage]["given_per_s"] / given, 3)
    return ratios


def _spread(samples: dict[str, list[dict[str, float]]], cores: int, one_thread: bool) -> dict[str, list[float]]:
    """The lowest and highest of each headline ratio taken round by round (each round's figures against that
    round's own baselines): how much the machine's noise moves the median."""
    pairs = {"pipeline_vs_naive": ("pipeline_pipelined", "naive"),
             "delivered_vs_naive": ("pipeline_delivered", "naive")}
    if one_thread:
        pairs.update(pipeline_vs_cpu_limit=("pipeline_pipelined", "limit"),
                     delivered_vs_cpu_limit=("pipeline_delivered", "limit"))
    rounds = len(samples["invoke"])
    per_round: dict[str, list[float]] = {}
    for r in range(rounds):
        stages = {name: results[r] for name, results in samples.items() if len(results) == rounds}
        base = {"naive": max(v["per_s"] for k, v in stages.items() if k.startswith("naive_loop_")),
                "limit": _limit(stages, cores, "per_s")}
        for name, (stage, against) in pairs.items():
            if stage in stages and base[against]:
                per_round.setdefault(name, []).append(stages[stage]["per_s"] / base[against])
    return {name: [round(min(v), 3), round(max(v), 3)] for name, v in per_round.items()}


def _limit(stages: dict[str, dict[str, float]], cores: int, key: str) -> float | None:
    """The CPU-bound limit, cores ÷ (decode+preprocess time + single-thread invoke time), from the rates `key`."""
    decode, invoke = stages["decode_preprocess"].get(key), stages["invoke"].get(key)
    return cores / (1.0 / decode + 1.0 / invoke) if decode and invoke else None


def run_bench(cfg: Config, frames: int = 200, rounds: int = 3, broker: str | None = None) -> dict[str, Any]:
    """Measure every stage `rounds` times, interleaved (so a burst of machine noise hits all stages alike),
    and report each stage's median round. With `broker` (HOST:PORT) the pipelined run is also measured end to
    end: until the broker acknowledged every result."""
    if broker is not None and host_port(broker) is None:
        raise BenchError(f"--broker {broker!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    files = bench_images(cfg, frames)
    cores = usable_cores()
    blobs = [p.read_bytes() for p in files]
    bundle = load_bundle(cfg.model.bundle)
    settings = engine_settings(cfg.model)
    model = Model(bundle, settings, engine=engine_for(bundle, settings))  # a missing accelerator: the CPU's figures
    max_pixels, min_side, draft = cfg.gate.max_pixels, cfg.gate.min_side, model.draft_size
    front_half = FrontHalf(cfg, model)
    tensors = [front_half(data) for data in blobs]
    model.engine.run(tensors[0])  # warm-up
    samples: dict[str, list[dict[str, float]]] = {}

    def timed(name: str, work: Any) -> None:
        with Stopwatch() as watch:
            work()
        samples.setdefault(name, []).append(_rate(len(files), watch.span.wall, watch.span))

    with tempfile.TemporaryDirectory(prefix="edge-infer-bench-") as tmp:
        root = Path(tmp)
        for r in range(rounds):
            timed("decode_gate", lambda: [decode_image(d, max_pixels, min_side, draft) for d in blobs])
            front_half.seconds.clear()
            front_half.rejected.clear()
            timed("decode_preprocess", lambda: [front_half(d) for d in blobs])
            samples.setdefault("quality_gate", []).append(_rate(len(files), sum(front_half.seconds)))
            timed("invoke", lambda: [model.engine.run(t) for t in tensors])
            samples.setdefault("all_cores", []).append(_all_cores(cfg, model, blobs, cores))
            for threads in sorted({1, cores}):
                samples.setdefault(f"naive_loop_{threads}", []).append(_naive_rate(cfg, files, threads))
            for mode in ("pipelined", "sequential"):
                samples.setdefault(f"pipeline_{mode}", []).append(
                    pipeline_rate(cfg, files, mode, root / str(r), busy=cores if mode == "pipelined" else 1))
            if broker is not None:
                samples.setdefault("pipeline_delivered", []).append(
                    pipeline_rate(cfg, files, "pipelined", root / f"{r}-delivered", broker, cores))
        children = _children(cfg, files, root)
    variants = _variants(bundle, settings, tensors)
    stages = {name: _median(results) for name, results in samples.items()}
    naive_threads = max((k for k in stages if k.startswith("naive_loop_")), key=lambda k: stages[k]["per_s"])
    stages["naive_loop"] = {**stages[naive_threads], "threads": int(naive_threads.rsplit("_", 1)[1])}
    frame = Image.open(files[0])
    return {
        "model": {"name": bundle.manifest.name, "sha256": bundle.sha256[:12], "bytes": bundle.manifest.model_size},
        "runtime": model.engine.runtime.to_dict(),
        "variants": variants,
        "threads": cfg.model.threads,
        "interpreters": interpreter_count(cfg.pipeline.interpreters, cfg.model.threads, cores),
        "frames": len(files),
        "frame_size": f"{frame.width}x{frame.height} {frame.format}",
        "machine": {"arch": os.uname().machine, "cpus": os.cpu_count(), "usable_cores": cores},
        "rounds": rounds,
        "stages": stages,
        "ratios": _ratios(stages, cores, cfg.model.threads == 1),
        "spread": _spread(samples, cores, cfg.model.threads == 1),
        "quality_gate": {"limits": front_half.gate.limits.to_dict(),
                         "rejected": sum(front_half.rejected)},
        **children,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"model {report['model']['name']} ({report['model']['bytes']:,} B), runtime {report['runtime']['name']} "
          f"{report['runtime']['version']}, {report['threads']} thread(s), {report['frames']} frames of "
          f"{report['frame_size']}, {report['machine']['arch']} × {report['machine']['cpus']} CPUs, "
          f"median of {report['rounds']} rounds")
    print(f"{'stage':<44} {'frames/s':>10} {'ms/frame':>10} {'CPU ms/frame':>13} {'cores busy':>11} {'steal %':>8}")
    labels = {
        "invoke": "raw interpreter invoke",
        "decode_preprocess": "decode + quality gate + preprocess",
        "decode_gate": "decode gate (verify + full decode)",
        "quality_gate": "  of which: image quality gate (+ baseline)",
        "pipeline_pipelined": "full pipeline, pipelined (durable outbox)",
        "pipeline_sequential": "full pipeline, sequential",
        "pipeline_delivered": "full pipeline, pipelined, to broker ack",
        "all_cores": f"no pipeline: that work on all {report['machine']['usable_cores']} cores at once",
        "naive_loop": f"naive loop, best of 1/{report['machine']['usable_cores']} threads "
                      f"({report['stages']['naive_loop']['threads']})",
    }
    for key, label in labels.items():
        if key not in report["stages"]:  # pipeline_delivered: only with --broker
            continue
        stage = report["stages"][key]
        cpu = f"{stage['cpu_ms']:>13.3f} {stage['cores_busy']:>11.2f}" if "cpu_ms" in stage else " " * 25
        steal = f"{stage['steal_pct']:>8.1f}" if "steal_pct" in stage else ""
        print(f"{label:<44} {stage['per_s']:>10,.1f} {stage['ms']:>10.3f} {cpu} {steal}".rstrip())
    r = report["ratios"]
    span = {name: f" (rounds {low:.2f}–{high:.2f})" for name, (low, high) in report.get("spread", {}).items()}
    if r["pipeline_vs_cpu_limit"]:
        print(f"pipeline / CPU-bound limit          {r['pipeline_vs_cpu_limit']:.2f}"
              f"{span.get('pipeline_vs_cpu_limit', '')}  (cores ÷ (decode+preprocess + single-thread invoke); "
              f"{report['interpreters']} interpreter(s))")
        print(f"all cores at once / CPU-bound limit {r['all_cores_vs_cpu_limit']:.2f}  (what the cores deliver "
              f"together on this work: the ceiling of any schedule here)")
    print(f"pipeline / all cores at once        {r['pipeline_vs_all_cores']:.2f}")
    if "delivered_vs_naive" in r:
        if r["delivered_vs_cpu_limit"]:
            print(f"to broker ack / CPU-bound limit     {r['delivered_vs_cpu_limit']:.2f}"
                  f"{span.get('delivered_vs_cpu_limit', '')}")
        print(f"to broker ack / naive loop          {r['delivered_vs_naive']:.2f}{span.get('delivered_vs_naive', '')}")
    given = [f"{label} {r[key]:.2f}" for key, label in (
        ("pipeline_vs_cpu_limit_given", "pipeline / limit"), ("all_cores_vs_cpu_limit_given", "all cores / limit"),
        ("delivered_vs_cpu_limit_given", "to broker ack / limit")) if key in r]
    if given:
        print("… with the hypervisor's steal taken out ('steal %': the share of a stage's busy cores' time the host "
              "gave to other\n  guests; 0 on a Raspberry Pi): " + ", ".join(given))
    stages = report["stages"]
    pipeline, ceiling = stages["pipeline_pipelined"], stages["all_cores"]
    if "cpu_ms" in ceiling and r["pipeline_vs_cpu_limit"]:
        alone = stages["decode_preprocess"]["cpu_ms"] + stages["invoke"]["cpu_ms"]
        print(f"all cores at once vs one core alone: {ceiling['cpu_ms'] / alone:.2f}× the CPU per frame (busy cores "
              f"slow each other: shared caches, memory, a host's hyperthreads), cores busy {ceiling['cores_busy']:.2f} "
              f"of {report['machine']['usable_cores']}")
    if "cpu_ms" in pipeline and "cpu_ms" in ceiling:
        print(f"pipeline vs all cores at once: {pipeline['cpu_ms'] / ceiling['cpu_ms']:.2f}× the CPU per frame "
              f"(reading, judging, storing; its start and stop), cores busy {pipeline['cores_busy']:.2f} vs "
              f"{ceiling['cores_busy']:.2f}")
    print(f"pipeline / slowest stage            {r['pipeline_vs_slowest_stage']:.2f}")
    print(f"pipeline / naive loop               {r['pipeline_vs_naive']:.2f}{span.get('pipeline_vs_naive', '')}")
    print(f"pipelined / sequential              {r['pipelined_vs_sequential']:.2f}")
    print(f"decode gate / pipeline frame time   {r['decode_gate_share_of_frame']:.2f}")
    print(f"quality gate / pipeline frame time  {r['quality_gate_share_of_frame']:.3f}  "
          f"(limits from {report['quality_gate']['limits']['source']}; "
          f"{report['quality_gate']['rejected']}/{report['frames']} frames rejected)")
    for name, v in report["variants"].items():
        figure = f"{v['ms']:.3f} ms/frame ({v['per_s']:,.1f}/s)" if "ms" in v else f"not measured: {v['not_measured']}"
        print(f"variant {name:<12} on {v['delegate']:<10}   {figure}")
    print(f"start-up to first result            {report['startup_to_first_result_s']:.2f} s")
    print(f"steady RSS / floor                  {report['rss_mb']} MB / {report['rss_floor_mb']} MB "
          f"= {report['rss_ratio']:.2f}; each further interpreter +{report['rss_per_extra_interpreter_mb']} MB")
