"""convert → bundle → daemon: a model trained in this run on real digits, converted by the `edge-convert`
CLI, then served by the `edge-infer` CLI to a real mosquitto. The report's numbers must be the numbers the
device actually achieves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import converter.cli
import converter.convert
import converter.job
from converter.datasets import list_examples
from edge_infer.bundle import load_bundle, read_parts
from edge_infer.decide import Thresholds
from edge_infer.delegates import EngineSettings
from edge_infer.golden import read_golden
from edge_infer.model import Model
from edge_infer.pipeline import Pipeline
from edge_infer.runtime import Engine
from edge_infer.signing import generate_keypair, load_public_key, verify_bundle
from edge_infer.sources.directory import DirectorySource, Options
from tests.conftest import REPO, run_cli, write_config
from tests.converter.conftest import DigitsWorkspace
from tests.device.test_daemon_mqtt import BAD_FILES, make_inputs_from
from tests.helpers import independent
from tests.helpers.broker import Mosquitto
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber


def edge_convert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "converter.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def converted(digits: DigitsWorkspace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    private, public = generate_keypair(out / "fleet")
    paths = {"key": private, "public": public}
    for mode in ("float32", "int8-only"):
        bundle, report = out / f"digits-{mode}.tflite", out / f"{mode}.json"
        sign = ["--sign", str(private)] if mode == "int8-only" else []
        proc = edge_convert(str(digits.model), "--mode", mode, "--calibration", str(digits.train),
                            "--eval", str(digits.test), "--labels", str(digits.labels), "--out", str(bundle),
                            "--report", str(report), "--name", "digits", *sign)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "float32" in proc.stdout and "top-1" in proc.stdout
        key = "int8" if mode == "int8-only" else mode
        paths[key], paths[f"{key}-report"] = bundle, report
    return paths


def test_int8_is_small_and_accurate_and_the_report_is_true(digits: DigitsWorkspace, converted) -> None:
    report = json.loads(converted["int8-report"].read_text())
    variants = dict(report["evaluation"]["variants"])
    variants["int8"] = variants["int8-only"]
    size_ratio = variants["int8"]["size_bytes"] / variants["float32"]["size_bytes"]
    assert size_ratio <= 0.30, f"int8 is {size_ratio:.3f} × float32"
    assert variants["float32"]["accuracy"] > 0.95
    assert variants["int8"]["accuracy_drop_points"] <= 1.0
    print(f"\nint8/float32 size {size_ratio:.3f}; accuracy float32 {variants['float32']['accuracy']:.4f} "
          f"int8 {variants['int8']['accuracy']:.4f} agreement {variants['int8']['agreement_with_float32']:.4f}")

    # An independent evaluation of the written bundle: TensorFlow's interpreter, numpy preprocessing from the
    # manifest, the folder names as ground truth (tests/helpers/independent.py) — no converter or device code
    bundle = load_bundle(converted["int8"])
    assert bundle.manifest.raw["evaluation"] == report["evaluation"]
    model = Model(bundle)
    measured = independent.accuracy(converted["int8"], digits.test)
    assert measured == pytest.approx(variants["int8"]["accuracy"], abs=0.01), measured
    assert bundle.manifest.raw["model"]["io_type"] == "uint8"
    engine = model.engine
    assert engine.inputs[0].dtype == np.uint8 and engine.outputs[0].dtype == np.uint8


def test_daemon_serves_the_converted_bundle_at_its_measured_accuracy(
    digits: DigitsWorkspace, converted, tmp_path: Path, broker: Mosquitto
) -> None:
    truth = make_inputs_from(digits.test, tmp_path / "in")
    cfg = write_config(tmp_path / "c.toml", bundle=converted["int8"], source=tmp_path / "in",
                       state=tmp_path / "s", port=broker.port)
    sub = Subscriber(broker.port, "edge/test-pi/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) >= len(truth) and len(s.of_kind("rejections")) >= 3)
    results = {m.json()["input"]["id"]: m.json() for m in sub.of_kind("results")}
    for doc in results.values():
        validate("results", doc)
    rejections = {m.json()["input"]["id"]: m.json()["reason"] for m in sub.of_kind("rejections")}
    assert rejections == BAD_FILES
    assert set(results) == set(truth)
    accuracy = sum(results[k]["result"]["label"] == v for k, v in truth.items()) / len(truth)
    reported = json.loads(converted["int8-report"].read_text())["evaluation"]["variants"]["int8-only"]["accuracy"]
    assert accuracy == pytest.approx(reported, abs=1e-6)
    sub.close()


def test_a_signed_bundle_carries_golden_inputs_and_a_device_promotes_it(converted, tmp_path: Path,
                                                                         broker: Mosquitto) -> None:
    """`edge-convert --sign` → a device with that public key takes the bundle from incoming/, runs its canary on
    the golden inputs the converter shipped, and promotes it over the float32 model it was running."""
    bundles = json.loads(converted["int8-report"].read_text())["bundles"]
    assert bundles["int8-only"]["golden_inputs"] == 16 and bundles["int8-only"]["signed_by"]
    assert verify_bundle(converted["int8"], [load_public_key(converted["public"])]) == bundles["int8-only"]["signed_by"]
    golden = read_golden(read_parts(converted["int8"]).members)
    assert golden is not None and len(golden) == 16 and len({i.label for i in golden.inputs}) == 10
    assert read_golden(read_parts(converted["float32"]).members) is not None  # unsigned, but it has a canary set

    cfg = write_config(tmp_path / "c.toml", bundle=converted["float32"], source=tmp_path / "in",
                       state=tmp_path / "s", port=broker.port)
    public = converted["public"]
    cfg.write_text(cfg.read_text() + f'\n[fleet]\nkeys = ["{public}"]\n\n[update]\nenabled = true\n')
    (tmp_path / "s" / "incoming").mkdir(parents=True)
    shutil.copy(converted["int8"], tmp_path / "s" / "incoming" / "digits-int8.tflite")
    sub = Subscriber(broker.port, "edge/test-pi/events")
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert sub.wait_for(lambda s: any(m.json()["event"] == "model_promoted" for m in s.all()), 60)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        sub.close()
    promoted = next(m.json()["details"] for m in sub.all() if m.json()["event"] == "model_promoted")
    assert promoted["canary"]["passed"] and promoted["canary"]["agreement"] == 1.0
    assert promoted["to"]["sha256"] == bundles["int8-only"]["sha256"]


IMAGE_SPEC = """
[input]
kind = "image"
color = "L"
resize = "letterbox"
pad = 0
mean = [127.5]
std = [127.5]
"""


@pytest.mark.parametrize("spec_text", [None, IMAGE_SPEC], ids=["flags", "spec-file"])
def test_calibration_tensors_are_bit_identical_to_what_the_daemon_feeds(
    digits: DigitsWorkspace, converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_text: str | None
) -> None:
    """Parity: capture the representative dataset the converter hands TensorFlow (in the conversion
    process), and the tensors the daemon's pipeline hands the interpreter for the same files; after the
    model's input quantization they are equal bit for bit."""
    captured: list[np.ndarray] = []
    real_convert = converter.convert.ConversionWorker.convert

    def spy(self, saved, mode, calibration, io_type):
        if calibration is not None:
            captured.extend(x.copy() for x in calibration)
        return real_convert(self, saved, mode, calibration, io_type)

    monkeypatch.setattr(converter.convert.ConversionWorker, "convert", spy)
    calib = tmp_path / "calib"
    for label in ("3", "8"):
        shutil.copytree(digits.train / label, calib / label)
    out = tmp_path / "p.tflite"
    extra = []
    if spec_text:
        (tmp_path / "spec.toml").write_text(spec_text)
        extra = ["--spec", str(tmp_path / "spec.toml")]
    assert converter.cli.main([str(digits.model), "--mode", "int8-only", "--calibration", str(calib),
                               "--labels", str(digits.labels), "--out", str(out),
                               "--calibration-samples", "40", *extra]) == 0
    assert len(captured) == 40

    chosen = converter.datasets.stratified_sample(list_examples(calib, "calibration"), 40)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, ex in enumerate(chosen):
        shutil.copy(ex.path, flat / f"{i:03d}.png")
    bundle = load_bundle(out)
    if spec_text:
        assert bundle.manifest.raw["input"]["resize"] == "letterbox"
        assert bundle.manifest.raw["input"]["normalize"] == {"mean": [127.5], "std": [127.5]}
    fed: list[np.ndarray] = []
    real_run = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, t: (fed.append(t.copy()), real_run(self, t))[1])
    pipeline = Pipeline(Model(bundle), Thresholds(bundle.manifest, None, {}))
    source = DirectorySource(Options(type="directory", path=str(flat), name="d"))
    import threading

    for sample in source.samples(threading.Event(), True, lambda s: False):
        assert pipeline.process(sample).verdict.ok
    assert len(fed) == 40
    from edge_infer.preprocess import to_input_tensor

    tensor = pipeline.model.engine.inputs[0]
    for x, daemon_tensor in zip(captured, fed, strict=True):
        assert np.array_equal(to_input_tensor(x, tensor), daemon_tensor)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/model.keras", "--mode", "float32"], "model not found"),
        (["{model}", "--calibration", "{empty}"], "holds no images"),
        (["{model}", "--mode", "int8", "--labels", "{labels}"], "needs --calibration"),
        (["{model}", "--mode", "all", "--labels", "{labels}"], "needs --calibration"),
        (["{model}", "--calibration", "{tiny}", "--labels", "{labels}"], "too_small"),
        (["{model}", "--mode", "float32", "--eval", "{unlabelled}", "--labels", "{labels}",
          "--max-accuracy-drop", "1"], "needs a labelled --eval set"),
        (["{model}", "--calibration", "{train}", "--eval", "{extra}", "--labels", "{labels}"],
         "eval folder has label folders not in the labels: 42"),
        (["{model}", "--calibration", "{train}", "--labels", "{labels}", "--out", "/nonexistent/x.tflite"],
         "output folder does not exist"),
    ],
)
def test_bad_inputs_are_one_line_errors(digits: DigitsWorkspace, tmp_path: Path, args, message) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "tiny" / "3").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "tiny" / "3" / "speck.png")  # an image of the wrong size
    (tmp_path / "unlabelled").mkdir()
    shutil.copy(next((digits.test / "1").glob("*.png")), tmp_path / "unlabelled" / "a.png")
    (tmp_path / "extra" / "42").mkdir(parents=True)
    shutil.copy(next((digits.test / "1").glob("*.png")), tmp_path / "extra" / "42" / "a.png")
    fill = {"model": digits.model, "empty": tmp_path / "empty", "labels": digits.labels, "train": digits.train,
            "extra": tmp_path / "extra", "tiny": tmp_path / "tiny", "unlabelled": tmp_path / "unlabelled"}
    argv = [a.format(**fill) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o.tflite")]
    proc = edge_convert(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_tensorflow_lite_is_the_last_link_of_the_chain(converted) -> None:
    """On a workstation without LiteRT, TensorFlow's own interpreter runs bundles: same outputs."""
    bundle = load_bundle(converted["int8"])
    via_tf = Engine(bundle.model_bytes, EngineSettings(runtime="tensorflow"))
    assert via_tf.runtime.name == "tensorflow"
    x = np.random.default_rng(3).integers(0, 255, size=(1, 16, 16, 1), dtype=np.uint8)
    assert np.array_equal(via_tf.run(x)[0], Engine(bundle.model_bytes).run(x)[0])


@pytest.mark.parametrize("kind", ["h5", "savedmodel"])
def test_legacy_h5_and_savedmodel_inputs_convert(digits: DigitsWorkspace, tmp_path: Path, kind: str) -> None:
    import keras

    model = keras.models.load_model(digits.model)
    if kind == "h5":
        source = tmp_path / "digits.h5"
        model.save(source)  # the legacy HDF5 format
    else:
        source = tmp_path / "saved"
        model.export(str(source), format="tf_saved_model", verbose=False)
    out = tmp_path / "d.tflite"
    proc = edge_convert(str(source), "--mode", "float32", "--labels", str(digits.labels), "--out", str(out),
                        "--eval", str(digits.test), "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["evaluation"]["variants"]["float32"]["accuracy"] > 0.95
