"""What the GIL costs the CPU-bound limit's work: decode + gate + preprocess + a single-thread invoke per frame
(`edge_infer.bench.FrontHalf`, as `edge-infer bench` measures the limit), on one core, on every core as threads
of one process (what the daemon's lanes can reach), and on every core as processes (no GIL shared). Rounds are
interleaved so the machine's noise hits all three alike; prints each round (with the hypervisor's steal in it:
`edge_infer.steal`) and the medians, and the two parallel efficiencies (rate ÷ cores × the one-core rate).

    .venvs/litert/bin/python tests/benchmarks/threads_vs_processes.py --config .bench/bench.toml [--frames 200]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_infer.app.interpreters import usable_cores
from edge_infer.bench import FrontHalf, bench_images, run_together
from edge_infer.bundle import load_bundle
from edge_infer.config import Config, load_config
from edge_infer.model import Model, engine_for, engine_settings
from edge_infer.steal import Stopwatch


def _worker(cfg: Config, blobs: list[bytes], go: Any, out: Any) -> None:
    """One core's share: its own interpreter and front half, timed from the common start."""
    bundle, settings = load_bundle(cfg.model.bundle), engine_settings(cfg.model)
    model = Model(bundle, settings, engine=engine_for(bundle, settings))
    front = FrontHalf(cfg, model)
    model.engine.run(front(blobs[0]))  # warm-up
    go.wait()
    for data in blobs:
        model.engine.run(front(data))
    out.put(1)


def _rate(cfg: Config, blobs: list[bytes], workers: int, processes: bool) -> tuple[float, float]:
    """Frames per second, and the share of the busy cores' time the hypervisor took meanwhile (steal)."""
    ctx = mp.get_context("fork")
    go = ctx.Barrier(workers + 1) if processes else threading.Barrier(workers + 1)
    out = ctx.Queue() if processes else queue.SimpleQueue()
    kind = ctx.Process if processes else threading.Thread
    runners = [kind(target=_worker, args=(cfg, blobs[i::workers], go, out)) for i in range(workers)]
    with Stopwatch() as watch:
        seconds = run_together(runners, go)
    return len(blobs) / seconds, watch.span.steal_share(workers) or 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(args.config)
    blobs = [p.read_bytes() for p in bench_images(cfg, args.frames)]
    cores = usable_cores()
    rates: dict[str, list[float]] = {"one core": [], "threads": [], "processes": []}
    for r in range(args.rounds):
        steal = {}
        for kind, workers, processes in (("one core", 1, True), ("threads", cores, False),
                                         ("processes", cores, True)):
            rate, steal[kind] = _rate(cfg, blobs, workers, processes)
            rates[kind].append(rate)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s (steal {100 * steal[k]:.0f} %)"
                                             for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median of {args.rounds} rounds, {len(blobs)} frames, {cores} cores: "
          + ", ".join(f"{k} {v:.1f}/s" for k, v in med.items()))
    for kind in ("threads", "processes"):
        print(f"{kind:<9} / ({cores} × one core) = {med[kind] / (cores * med['one core']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
