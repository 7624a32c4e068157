"""`--target device_configs/<profile>.toml`: will the bundle run on that device, before anyone copies it there?

Two checks:
- static: every TFLite flatbuffer records the oldest runtime that has all its op versions
  (`min_runtime_version`, written by the converter). A profile that runs tflite-runtime (32-bit Raspberry Pi OS,
  pinned to 2.14.0 in setup.cfg) cannot load a model that needs more — e.g. TF 2.21's dynamic-range
  FULLY_CONNECTED is op version 12, which needs 2.17.
- dynamic: with `--target-python` (a Python that has the profile's runtime installed, e.g. a tflite-runtime
  venv), the bundle is loaded and run there by the device's own code, and any failure is reported verbatim.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from converter.errors import ConvertError

TFLITE_RUNTIME_VERSION = "2.14.0"  # setup.cfg: tflite-runtime==2.14.0; platform_machine == "armv7l"

RUN_IN_TARGET = """
import sys
import numpy as np
from edge_infer.bundle import load_bundle
from edge_infer.delegates import EngineSettings
from edge_infer.runtime import Engine
bundle = load_bundle(sys.argv[1])
engine = Engine(bundle.model_bytes, EngineSettings(runtime=sys.argv[2]))
engine.run(np.zeros(engine.inputs[0].shape, engine.inputs[0].dtype))
print(engine.runtime.name, engine.runtime.version)
"""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def model_requirements(model_bytes: bytes) -> tuple[str | None, list[str]]:
    """(min_runtime_version, ["OP vN", …]) from the flatbuffer (needs TensorFlow's schema module)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
    ops = sorted({f"{names.get(max(c.builtinCode, c.deprecatedBuiltinCode), c.builtinCode)} v{c.version}"
                  for c in model.operatorCodes})
    for meta in model.metadata or []:
        if meta.name and meta.name.decode() == "min_runtime_version":
            data = model.buffers[meta.buffer].data
            raw = bytes(data) if data is not None else b""
            return raw.rstrip(b"\0").decode("ascii", "replace") or None, ops
    return None, ops


def check_target(profile: Path, variants: dict[str, bytes], bundles: dict[str, Path],
                 target_python: str | None) -> dict[str, Any]:
    """Per variant: `ok`, or the reason the profile's runtime cannot run it."""
    from edge_infer.config import ConfigError, load_config

    try:
        cfg = load_config(profile)
    except ConfigError as exc:
        raise ConvertError(f"--target: {exc}") from None
    runtime = cfg.model.runtime
    old_runtime = runtime == "tflite_runtime"
    out: dict[str, Any] = {"profile": str(profile), "runtime": runtime, "variants": {}}
    if old_runtime:
        out["runtime_version"] = TFLITE_RUNTIME_VERSION
    for mode, data in variants.items():
        needed, ops = model_requirements(data)
        verdict: dict[str, Any] = {"min_runtime_version": needed, "ops": ops, "ok": True}
        if old_runtime and needed and _version(needed) > _version(TFLITE_RUNTIME_VERSION):
            newest = [op for op in ops if not op.endswith(" v1")]
            verdict.update(ok=False, problem=(
                f"needs a TFLite runtime ≥ {needed}; {profile.name} runs tflite-runtime {TFLITE_RUNTIME_VERSION} "
                f"(op versions in this model: {', '.join(newest) or ', '.join(ops)})"))
        if verdict["ok"] and target_python and mode in bundles:
            proc = subprocess.run([target_python, "-c", RUN_IN_TARGET, str(bundles[mode]),
                                   "tflite_runtime" if old_runtime else "auto"],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                verdict["ran_on"] = proc.stdout.strip().splitlines()[-1]
            else:
                lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
                verdict.update(ok=False, problem=f"does not run with {target_python}: "
                                                 f"{lines[-1] if lines else 'exit ' + str(proc.returncode)}")
        out["variants"][mode] = verdict
    return out
