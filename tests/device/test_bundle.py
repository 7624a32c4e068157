"""The bundle contract: one file, loads as a plain TFLite model, refused with one line when damaged."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_infer.bundle import BundleError, build_manifest_doc, load_bundle, read_manifest_doc, write_bundle
from edge_infer.delegates import EngineSettings
from edge_infer.model import Model
from edge_infer.runtime import RUNTIMES, Engine
from tests.conftest import DIGITS_INT8, DIGITS_TEST

SHIPPED = DIGITS_INT8.read_bytes()
BUNDLE = load_bundle(DIGITS_INT8)


def _doc(**overrides: object) -> dict:
    _, doc = read_manifest_doc(DIGITS_INT8)
    doc = {k: v for k, v in doc.items() if k not in ("format", "format_version")}
    doc.update(overrides)
    return build_manifest_doc(BUNDLE.model_bytes, **doc)


def test_shipped_bundle_is_verified_and_described() -> None:
    m = BUNDLE.manifest
    assert (m.name, m.task, m.labels) == ("digits", "classification", tuple(str(d) for d in range(10)))
    assert (m.input.width, m.input.height, m.input.color) == (16, 16, "L")
    assert m.model_size == len(BUNDLE.model_bytes) < len(SHIPPED)
    assert BUNDLE.model_bytes[4:8] == b"TFL3"


def test_shipped_bundle_is_as_accurate_on_held_out_digits_as_it_claims() -> None:
    """Measured against the ground truth (each test image's folder is its label), not read from the manifest."""
    model = Model(BUNDLE)
    files = sorted(DIGITS_TEST.glob("*/*.png"))
    correct = sum(model.classify(Image.open(f)).label == f.parent.name for f in files)
    accuracy = correct / len(files)
    assert len(files) >= 300 and accuracy > 0.95
    assert accuracy == pytest.approx(BUNDLE.manifest.raw["evaluation"]["variants"]["int8"]["accuracy"], abs=0.01)


def test_round_trip(tmp_path: Path) -> None:
    out = write_bundle(tmp_path / "b.tflite", BUNDLE.model_bytes, _doc(version="2.0.0"))
    again = load_bundle(out)
    assert again.model_bytes == BUNDLE.model_bytes
    assert again.manifest.version == "2.0.0"
    assert not list(tmp_path.glob(".*.tmp")), "atomic write leaves no temp file"


def test_bundle_still_loads_as_a_plain_model_in_every_installed_runtime(tmp_path: Path) -> None:
    """Trailing archive bytes are ignored by TFLite runtimes: the whole file is a valid .tflite. Every runtime
    whose package is installed must load it (any failure fails the test); the leg's own runtime must be one."""
    installed = [name for name, (module, _cls, _pkg) in RUNTIMES.items()
                 if importlib.util.find_spec(module.split(".")[0]) is not None]
    for name in installed:
        engine = Engine(SHIPPED, EngineSettings(runtime=name))
        assert engine.runtime.name == name and engine.inputs[0].shape == (1, 16, 16, 1)
    assert installed, "no TFLite runtime is installed"
    expected = os.environ.get("EDGE_INFER_EXPECT_RUNTIME")
    if expected:  # tests/run.sh pins each leg's runtime
        assert expected in installed


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: BUNDLE.manifest.model_size], "no manifest archive"),
        (lambda b: b[: len(b) // 2], "no manifest archive"),
        (lambda b: b[:1000] + bytes([b[1000] ^ 0xFF]) + b[1001:], "do not match the manifest's sha256"),
        (lambda b: b"", "no TFL3 identifier"),
        (lambda b: b"\x89PNG\r\n\x1a\n" + b[8:], "no TFL3 identifier"),
        (lambda b: b[:-10], "archive"),
    ],
    ids=["plain-tflite", "truncated", "flipped-model-byte", "empty", "not-a-model", "cut-archive"],
)
def test_damaged_bundles_are_refused_with_one_line(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(damage(SHIPPED))
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "newer than this edge-infer supports"),
        ({"task": "detection-3d"}, "unsupported value 'detection-3d'"),
        ({"labels": []}, "'labels'"),
        ({"input": {"kind": "image", "width": 16, "height": 16, "color": "CMYK"}}, "'input.color'"),
        ({"thresholds": {"default": 1.5}}, "'thresholds.default'"),
    ],
)
def test_unsupported_manifests_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    doc = _doc()
    doc.update(change)
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("manifest.json", json.dumps(doc))
    path = tmp_path / "m.tflite"
    path.write_bytes(BUNDLE.model_bytes + archive.getvalue())
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_missing_bundle() -> None:
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle("/nonexistent/model.tflite")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SHIPPED) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(1, len(SHIPPED)))
def test_random_damage_never_escapes_as_anything_but_bundle_error(tmp_path: Path, flips, cut) -> None:
    data = bytearray(SHIPPED[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    path = tmp_path / "fuzz.tflite"
    path.write_bytes(bytes(data))
    try:
        bundle = load_bundle(path)
    except BundleError:
        return
    assert bundle.model_bytes == BUNDLE.model_bytes  # only damage outside the model (and manifest) may pass


@pytest.mark.parametrize("damage, expected", [
    ("tamper", "its bytes do not match the manifest (corrupted or tampered)"),
    ("missing", "variants/npu.tflite is missing from the archive"),
    ("bad_name", "is not a variant name"),
    ("cpu_delegate", "is not an accelerator"),
    ("twice", "'npu' is listed twice"),
])
def test_a_damaged_variant_refuses_the_bundle_in_one_line(tmp_path: Path, damage: str, expected: str) -> None:
    from edge_infer.bundle import BundleParts, read_parts, write_parts
    from edge_infer.variants import entry, member_name

    parts = read_parts(DIGITS_INT8)
    data = DIGITS_INT8.read_bytes()[: len(parts.model_bytes)]
    doc = json.loads(parts.members["manifest.json"])
    listed = [entry("npu", "external", data)]
    members = dict(parts.members)
    members[member_name("npu")] = data
    if damage == "tamper":
        members[member_name("npu")] = data[:-1] + bytes([data[-1] ^ 1])
    elif damage == "missing":
        del members[member_name("npu")]
    elif damage == "bad_name":
        listed[0]["name"] = "../../etc/passwd"
    elif damage == "cpu_delegate":
        listed[0]["delegate"] = "xnnpack"
    elif damage == "twice":
        listed.append(dict(listed[0]))
    members["manifest.json"] = json.dumps({**doc, "variants": listed}).encode()
    path = write_parts(tmp_path / "b.tflite", BundleParts(parts.model_bytes, members))
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert expected in str(err.value) and "\n" not in str(err.value)
