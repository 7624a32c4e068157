"""A Keras application with built-in preprocessing (MobileNetV3Small, weights=None, include_preprocessing) nested
in a transfer-learning Sequential: `edge-convert` reads its Rescaling layer through the nesting and feeds raw
pixels, with no flag (#16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.converter.contract_checks import convert_without_flags, device_top1, source_top1
from tests.converter.input_models import build


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mobilenet")
    build("mobilenet", root)
    return root


@pytest.mark.parametrize("mode, floor", [("float32", 0.99), ("int8-only", 0.97)])
def test_mobilenet_v3_with_built_in_preprocessing_converts_with_no_flag(
        mobilenet: Path, tmp_path: Path, mode: str, floor: float) -> None:
    proc, report = convert_without_flags(mobilenet, tmp_path / "m.tflite", "--mode", mode,
                                         "--calibration-samples", "100")
    assert proc.returncode == 0, proc.stderr[-2000:]
    contract = report["input_contract"]
    assert (contract["range"], contract["determined_by"]) == ("[0, 255]", "model layer"), contract
    assert "Rescaling(scale=0.00784314, offset=-1)" in contract["detail"]
    source, truth = source_top1("mobilenet", mobilenet)
    device = device_top1(tmp_path / "m.tflite", mobilenet)
    agreement = float(np.mean(source == device))
    print(f"mobilenet {mode}: source top-1 {np.mean(source == truth):.4f}, bundle on the device "
          f"{np.mean(device == truth):.4f}, agreement {agreement:.4f}")
    assert np.mean(source == truth) > 0.8
    assert agreement >= floor
