"""The runtime chain picks a runtime by building an interpreter, honours the override, and explains failures."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edge_infer.delegates import EngineSettings
from edge_infer.runtime import RUNTIME_ENV, Engine, RuntimeUnavailable
from tests.conftest import DIGITS_INT8 as BUNDLE_PATH

BUNDLE_BYTES_INT8 = BUNDLE_PATH.read_bytes()

EXPECTED = os.environ.get("EDGE_INFER_EXPECT_RUNTIME")


@pytest.mark.skipif(not EXPECTED, reason="set EDGE_INFER_EXPECT_RUNTIME (tests/run.sh does) to pin the leg")
def test_chain_picks_this_legs_runtime() -> None:
    assert Engine(BUNDLE_BYTES_INT8).runtime.name == EXPECTED


def test_override_to_a_missing_runtime_names_every_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_ENV, "tensorflow")
    if "tensorflow" in sys.modules or _importable("tensorflow"):
        pytest.skip("TensorFlow is installed in this environment")
    with pytest.raises(RuntimeUnavailable, match="tensorflow: not installed"):
        Engine(BUNDLE_BYTES_INT8)


def test_unknown_runtime_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_ENV, "onnx")
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'onnx'"):
        Engine(BUNDLE_BYTES_INT8)


def test_garbage_model_is_refused_by_every_runtime() -> None:
    with pytest.raises(RuntimeUnavailable, match="no TFLite runtime could load the model"):
        Engine(b"\x00\x00\x00\x00TFL3" + b"\x00" * 64)


def test_inference_is_deterministic_and_typed() -> None:
    engine = Engine(BUNDLE_BYTES_INT8, EngineSettings(threads=2))
    assert engine.inputs[0].dtype == np.uint8 and engine.outputs[0].dtype == np.uint8
    x = np.random.default_rng(0).integers(0, 255, size=(1, 16, 16, 1), dtype=np.uint8)
    a, b = engine.run(x)[0], engine.run(x)[0]
    assert a.shape == (1, 10) and np.array_equal(a, b)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_device_code_never_imports_tensorflow() -> None:
    """The whole device path — CLI, daemon, pipeline, an inference — runs without importing TensorFlow."""
    code = (
        "import sys, numpy as np\n"
        "import edge_infer.cli, edge_infer.app.daemon\n"
        "from edge_infer.bundle import load_bundle\n"
        "from edge_infer.model import Model\n"
        "from PIL import Image\n"
        f"c = Model(load_bundle({str(BUNDLE_PATH)!r}))\n"
        "c.classify(Image.new('L', (32, 32)))\n"
        "assert c.engine.runtime.name != 'tensorflow', c.engine.runtime\n"
        "bad = [m for m in sys.modules if m == 'tensorflow' or m.startswith(('tensorflow.', 'keras'))]\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != RUNTIME_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

