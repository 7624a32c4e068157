"""`--target`: a bundle the profile's runtime cannot run is refused before anyone copies it to a device.
TensorFlow 2.21 writes dynamic-range FULLY_CONNECTED as op version 12 (runtime ≥ 2.17); a 32-bit Pi has
tflite-runtime 2.14."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from converter.target import model_requirements
from tests.conftest import DEMO, REPO
from tests.converter.conftest import DigitsWorkspace
from tests.converter.test_convert_to_device import edge_convert

ARMV7L = REPO / "device_configs" / "pi-3b-armv7l.toml"
PI4 = REPO / "device_configs" / "pi-4.toml"


def target_python() -> str:
    """The tflite-runtime 2.14 Python (tests/run.sh's tflrt leg) these tests prove bundles on; when it is missing
    the test is skipped, visibly, with that reason (never run without its real-runtime check)."""
    path = os.environ.get("EDGE_INFER_TARGET_PYTHON") or str(REPO / ".venvs" / "tflrt" / "bin" / "python")
    if not Path(path).exists():
        pytest.skip(f"no tflite-runtime 2.14 environment at {path} (tests/run.sh builds it in the tflrt leg)")
    return path


def test_the_flatbuffer_says_which_runtime_it_needs() -> None:
    needed, ops = model_requirements((DEMO / "digits-dynamic.tflite").read_bytes())
    assert needed == "2.17.0" and "FULLY_CONNECTED v12" in ops
    needed, ops = model_requirements((DEMO / "digits-int8-only.tflite").read_bytes())
    assert needed is not None and tuple(int(p) for p in needed.split(".")) <= (2, 14, 0)


def test_an_armv7l_target_refuses_what_tflite_runtime_cannot_load(digits: DigitsWorkspace, tmp_path: Path) -> None:
    """Every mode for a 32-bit Pi: `dynamic` is refused by the static check; with the target Python (the tflrt
    leg's environment) every other bundle is loaded and run under tflite-runtime 2.14 for real."""
    out = tmp_path / "d.tflite"
    args = [str(digits.model), "--mode", "all", "--calibration", str(digits.train), "--calibration-samples", "60",
            "--labels", str(digits.labels), "--out", str(out), "--report", str(tmp_path / "r.json"),
            "--target", str(ARMV7L)]
    args += ["--target-python", target_python()]
    proc = edge_convert(*args)
    assert proc.returncode == 3, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc["refused"]) == {"dynamic"}
    assert "needs a TFLite runtime ≥ 2.17.0" in doc["refused"]["dynamic"]
    assert "FULLY_CONNECTED v12" in doc["refused"]["dynamic"] and "tflite-runtime 2.14.0" in proc.stderr
    assert not (tmp_path / "d-dynamic.tflite").exists() and (tmp_path / "d-int8-only.tflite").exists()
    ran = {m: v.get("ran_on") for m, v in doc["target"]["variants"].items()}
    assert ran.pop("dynamic") is None
    assert all(value == "tflite_runtime 2.14.0" for value in ran.values()), ran
    # no images at all: nothing can tell the input range, so it is stated (the digits model takes [0, 1])
    pi4 = edge_convert(str(digits.model), "--mode", "dynamic", "--labels", str(digits.labels), "--scale",
                       str(1 / 255), "--out", str(tmp_path / "p.tflite"), "--target", str(PI4))
    assert pi4.returncode == 0, pi4.stderr[-2000:]  # LiteRT on a 64-bit Pi runs it
