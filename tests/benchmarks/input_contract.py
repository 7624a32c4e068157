"""What `edge-convert` does with no normalisation flag, per real-world model layout (#16), as a Markdown table:
the input contract it chose and how it knew, the source model's top-1 beside the float32 and int8-only bundles',
and what the old silent default (`--scale 1/255`) now gets.

    .venvs/convert/bin/python -m tests.benchmarks.input_contract [--work DIR]

The models are `tests/converter/input_models.py`'s, trained here on scikit-learn's digits."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.converter.input_models import TRAINED_ON, build

KINDS = ("rescaling", "normalization", "minus1", "mobilenet")


def convert(root: Path, out: Path, *extra: str) -> tuple[int, dict, str]:
    report = out.with_suffix(".json")
    proc = subprocess.run([sys.executable, "-m", "converter.cli", str(root / "model.keras"), "--calibration",
                           str(root / "train"), "--eval", str(root / "test"), "--labels", str(root / "labels.txt"),
                           "--out", str(out), "--report", str(report), "--golden", "0", *extra],
                          capture_output=True, text=True)
    doc = json.loads(report.read_text()) if report.exists() and proc.returncode == 0 else {}
    return proc.returncode, doc, proc.stderr.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the models and bundles (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        print("| model | trained on | chosen (how) | source top-1 | float32 | int8-only | with `--scale 1/255` |")
        print("|---|---|---|---:|---:|---:|---|")
        for kind in KINDS:
            root = work / kind
            if not (root / "model.keras").exists():
                root.mkdir(parents=True, exist_ok=True)
                build(kind, root)
            rc, doc, last = convert(root, root / "bundle.tflite")
            if rc != 0:
                print(f"| {kind} | {TRAINED_ON[kind]} | exit {rc}: {last} | | | | |")
                continue
            contract, ev = doc["input_contract"], doc["evaluation"]
            old_rc, _, old_last = convert(root, root / "old.tflite", "--scale", str(1 / 255))
            print(f"| {kind} | {TRAINED_ON[kind]} | {contract['range']} ({contract['determined_by']}) | "
                  f"{ev['source']['accuracy']:.2%} | {ev['variants']['float32']['accuracy']:.2%} | "
                  f"{ev['variants']['int8-only']['accuracy']:.2%} | exit {old_rc}"
                  + (f": {old_last.split(': ', 2)[-1]}" if old_rc else "") + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
