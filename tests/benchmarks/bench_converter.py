"""Converter time per mode for the MobileNetV2-shaped model of the pipeline benchmark (converter environment).

    .venvs/convert/bin/python tests/benchmarks/bench_converter.py --assets .bench
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from converter.cli import main as convert
from converter.convert import MODES
from tests.benchmarks.verdict import figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(".bench"))
    args = parser.parse_args()
    model = args.assets / "mobilenetv2.keras"
    print(f"{'mode':<9} {'seconds':>8} {'bundle bytes':>13}  (MobileNetV2-shaped, 224x224x3, 100 calibration images;"
          " each run also converts the float32 reference)")
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        for mode in MODES:
            out, report = Path(tmp) / f"{mode}.tflite", Path(tmp) / f"{mode}.json"
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the converter's own table: not what we time
                rc = convert([str(model), "--mode", mode, "--calibration", str(args.assets / "calibration"),
                              "--labels", str(args.assets / "labels.txt"), "--calibration-samples", "100",
                              "--out", str(out), "--report", str(report), "--scale", str(2 / 255), "--offset", "-1"])
            seconds = time.perf_counter() - started
            doc = json.loads(report.read_text()) if report.exists() else {}
            if rc not in (0, 3) or not doc:
                return rc or 1
            if mode in doc.get("refused", {}):
                print(f"{mode:<9} {seconds:>8.1f} {'refused':>13}  ({doc['refused'][mode][:90]}…)")
            else:
                print(f"{mode:<9} {seconds:>8.1f} {doc['bundles'][mode]['bytes']:>13,}")
            times[mode] = seconds
    for mode, seconds in times.items():  # each mode against the plain float32 conversion of the same run
        if mode != "float32":
            figure(f"convert: {mode} time / float32 time", seconds / times["float32"], 3.0, at_least=False,
                   baseline=f"float32 {times['float32']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
