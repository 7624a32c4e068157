"""The sensor window gate: each fault with its reason, limits from the bundle, thousands of random windows
and garbled lines that all end in a verdict."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_infer.bundle import load_bundle
from edge_infer.gates.sensor import SensorGate, limits_for, reference_stats, sensor_gate_from_config
from edge_infer.sections import GateConfig
from edge_infer.sources.readings import ReadingParser
from tests.conftest import DEMO

BUNDLE = load_bundle(DEMO / "vibration-int8-only.tflite")
SPEC = BUNDLE.manifest.input
REASONS = {"non_finite", "out_of_range", "sample_gap", "flatline", "spike"}


def healthy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(64) / 100.0
    x = np.stack([0.3 * np.sin(2 * np.pi * 25 * t), 0.2 * np.cos(2 * np.pi * 25 * t), 9.81 + 0 * t], axis=1)
    return x + rng.normal(0, 0.03, x.shape), 1000.0 + t


@pytest.fixture(scope="module")
def gate() -> SensorGate:
    return sensor_gate_from_config(GateConfig(), SPEC, BUNDLE.manifest.sensor_reference)


def test_a_healthy_window_passes(gate: SensorGate) -> None:
    assert gate.check(*healthy()).ok


@pytest.mark.parametrize(
    ("fault", "reason", "channel"),
    [
        (lambda x, t: x.__setitem__((5, 1), np.nan), "non_finite", "ay"),
        (lambda x, t: x.__setitem__((9, 0), np.inf), "non_finite", "ax"),
        (lambda x, t: x.__setitem__((40, 2), 25.0), "out_of_range", "az"),
        (lambda x, t: x.__setitem__((slice(None), 2), 9.81), "flatline", "az"),
        (lambda x, t: x.__setitem__((30, 0), x[30, 0] + 15.0), "spike", "ax"),
        (lambda x, t: t.__setitem__(slice(20, None), t[20:] + 0.5), "sample_gap", None),
        (lambda x, t: t.__setitem__(10, t[8]), "sample_gap", None),  # out of order
    ],
)
def test_each_fault_has_its_reason(gate: SensorGate, fault, reason: str, channel: str | None) -> None:
    x, t = healthy()
    fault(x, t)
    verdict = gate.check(x, t)
    assert verdict.reason == reason, verdict
    assert verdict.metrics.get("channel") == channel
    assert {"metric", "value", "threshold"} <= set(verdict.metrics) and verdict.detail


def test_limits_come_from_the_manifest_and_the_reference_and_config_overrides_them() -> None:
    ref = BUNDLE.manifest.sensor_reference
    limits = limits_for(SPEC, ref, {})
    assert limits.low == SPEC.low and limits.source == "manifest+reference"
    assert limits.max_step == pytest.approx(tuple(ref["channels"][c]["step_p99"] * 4 for c in SPEC.channels))
    custom = limits_for(SPEC, ref, {"max_step": [1.0, 2.0, 3.0], "min_std": 0.5, "max_gap_factor": 0})
    assert custom.max_step == (1.0, 2.0, 3.0) and custom.min_std == (0.5, 0.5, 0.5)
    assert custom.max_gap_factor is None and custom.source.endswith("+config")
    with pytest.raises(ValueError, match="2 values for 3 channels"):
        sensor_gate_from_config(GateConfig(min_std=(1.0, 2.0)), SPEC, ref)


def test_reference_stats_describe_healthy_windows() -> None:
    stats = reference_stats([healthy(i)[0] for i in range(20)], SPEC.channels)
    az = stats["channels"]["az"]
    assert stats["samples"] == 20 and 9.6 < az["min"] < az["max"] < 10.0
    assert 0.01 < az["std_p01"] < 0.05 and 0.05 < az["step_p99"] < 0.3


_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _mutated(changes: list[tuple[int, int, float]]) -> np.ndarray:
    x, _ = healthy()
    for i, c, v in changes:
        x[i, c] = v
    return x


def _mutated_times(changes: list[tuple[int, float]]) -> np.ndarray:
    _, t = healthy()
    for i, v in changes:
        t[i] = v
    return t


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        hnp.arrays(np.float64, (64, 3), elements=_FLOATS),  # anything at all, of the right shape
        st.lists(st.tuples(st.integers(0, 63), st.integers(0, 2), _FLOATS), max_size=6).map(_mutated),
        hnp.arrays(np.float64, st.tuples(st.integers(0, 70), st.integers(1, 4)), elements=_FLOATS),  # wrong shape
    ),
    st.one_of(st.none(), hnp.arrays(np.float64, 64, elements=_FLOATS),
              st.lists(st.tuples(st.integers(0, 63), _FLOATS), max_size=3).map(_mutated_times)),
)
def test_any_window_gets_a_verdict(gate: SensorGate, window: np.ndarray, times: np.ndarray | None) -> None:
    verdict = gate.check(window, times)
    assert verdict.ok or (verdict.reason in REASONS and verdict.detail)
    if verdict.ok:  # nothing unhealthy gets through
        assert window.shape == (64, 3) and np.isfinite(window).all()
        assert times is None or (np.isfinite(times).all() and (np.diff(times) > 0).all())


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=200))
def test_any_line_parses_to_a_reading_or_nothing(line: str) -> None:
    parser = ReadingParser(("ax", "ay", "az"))
    parser.parse("t,ax,ay,az")
    reading = parser.parse(line)
    if reading is not None:
        t, values = reading
        assert values.shape == (3,) and (t is None or isinstance(t, float))
