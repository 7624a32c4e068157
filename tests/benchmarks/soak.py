"""Memory soak: run the pipelined daemon (watch mode, durable outbox, no broker reachable) through 100,000
inferences and report how its RSS moves — the slope, in MB per 10,000 inferences, after warm-up.

A feeder drops real digit images into the watched folder in batches and deletes each batch once it is
processed, as a camera folder with a clean-up job would look; the outbox keeps every result (no broker), so
this also soaks SQLite. Outbox caps are raised so nothing is dropped.

    .venvs/litert/bin/python tests/benchmarks/soak.py [--inferences 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from tests.benchmarks.verdict import figure
from tests.conftest import DIGITS_INT8, DIGITS_TEST, write_config
from tests.helpers.broker import Mosquitto

BATCH = 500


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
    return kb / 1024


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares MB per 10,000 inferences."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return (sum((x - mx) * (y - my) for x, y in points) / var) * 10_000 if var else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inferences", type=int, default=100_000)
    parser.add_argument("--broker", action="store_true",
                        help="deliver to a local mosquitto (rows are deleted as they are acknowledged) instead of "
                             "keeping every result in the outbox")
    args = parser.parse_args()
    images = sorted(DIGITS_TEST.glob("*/*.png"))
    with tempfile.TemporaryDirectory(prefix="edge-infer-soak-") as tmp:
        root = Path(tmp)
        inbox = root / "in"
        inbox.mkdir()
        broker = Mosquitto(root / "broker").start() if args.broker else None
        cfg_path = write_config(root / "soak.toml", bundle=DIGITS_INT8, source=inbox, state=root / "state",
                                port=broker.port if broker else 9,
                                outbox="max_rows = 10000000\nmax_bytes = 10000000000")
        daemon = Daemon(load_config(cfg_path))
        runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
        runner.start()
        samples: list[tuple[int, float]] = []
        started = time.perf_counter()
        fed = 0
        while fed < args.inferences:
            names = []
            for i in range(min(BATCH, args.inferences - fed)):
                name = f"f{fed + i:07d}.png"
                tmp_name = inbox / f".{name}.tmp"
                shutil.copy(images[(fed + i) % len(images)], tmp_name)
                tmp_name.rename(inbox / name)
                names.append(name)
            fed += len(names)
            while daemon.summary.results < fed:
                if not runner.is_alive():
                    raise SystemExit("soak: the daemon stopped unexpectedly")
                time.sleep(0.01)
            for name in names:
                (inbox / name).unlink()
            samples.append((daemon.summary.results, rss_mb()))
        elapsed = time.perf_counter() - started
        daemon.stop_event.set()
        runner.join(60)
        backlog = daemon.summary.queued
        if broker is not None:
            broker.stop()
    warm = [p for p in samples if p[0] >= args.inferences // 10]
    done = daemon.summary.results
    print(f"soak: {done:,} inferences in {elapsed:.0f} s ({done / elapsed:,.0f}/s), {backlog:,} results stored"
          f"{' (delivered to a local mosquitto as they came)' if args.broker else ' (no broker: all kept)'}")
    print(f"RSS: {samples[0][1]:.1f} MB after {samples[0][0]:,}, {warm[0][1]:.1f} MB at {warm[0][0]:,}, "
          f"{samples[-1][1]:.1f} MB at {samples[-1][0]:,}; max {max(r for _, r in samples):.1f} MB")
    print(f"RSS slope after warm-up: {slope(warm):+.3f} MB per 10,000 inferences")
    figure("soak: RSS growth after warm-up, MB per 10,000 inferences", slope(warm), 0.5, at_least=False,
           baseline=f"{warm[0][1]:.1f} MB at {warm[0][0]:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
