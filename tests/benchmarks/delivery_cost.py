"""What delivery costs the daemon: the same frames through the pipelined daemon with and without a broker, in
interleaved rounds (so the machine's noise hits both alike) — to the outbox vs to the broker's acknowledgement, with
this process's CPU time per frame. Needs a broker (a local mosquitto).

    .venvs/litert/bin/python tests/benchmarks/delivery_cost.py --config .bench/bench.toml --broker 127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_infer.bench import bench_images, pipeline_rate
from edge_infer.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--broker", required=True, help="HOST:PORT of a test broker")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(args.config)
    files = bench_images(cfg, args.frames)
    runs: dict[str, list[tuple[float, float]]] = {"to the outbox": [], "to broker ack": []}
    with tempfile.TemporaryDirectory(prefix="delivery-cost-") as tmp:
        for r in range(args.rounds):
            for k, (name, broker) in enumerate((("to the outbox", None), ("to broker ack", args.broker))):
                run = pipeline_rate(cfg, files, "pipelined", Path(tmp) / f"{r}-{k}", broker)
                rate, cpu = run["per_s"], run["cpu_ms"]
                runs[name].append((rate, cpu))
                print(f"round {r} {name:14s} {rate:7.1f} frames/s  {cpu:6.2f} CPU ms/frame", flush=True)
    medians = {name: statistics.median(rate for rate, _ in values) for name, values in runs.items()}
    for name, values in runs.items():
        print(f"median {name:14s} {medians[name]:7.1f} frames/s  {statistics.median(c for _, c in values):6.2f} "
              "CPU ms/frame")
    print(f"delivery costs {1 - medians['to broker ack'] / medians['to the outbox']:.0%} of the rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
