"""The delegate seam (`[model].delegate`): each CPU delegate runs the shipped model on this leg's runtime, and
the reference kernels — a second, plain implementation of every operator — agree with the optimized ones bit
for bit on the 450 held-out digits; a delegate that cannot load is a one-line error before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_infer.bundle import load_bundle
from edge_infer.config import ConfigError, load_config
from edge_infer.delegates import EngineSettings
from edge_infer.gates.decode import decode_image
from edge_infer.model import Model
from edge_infer.runtime import Engine, RuntimeUnavailable
from tests.conftest import DIGITS_INT8, DIGITS_TEST, run_cli, write_config
from tests.helpers.broker import free_port

DIGITS = sorted(DIGITS_TEST.glob("*/*.png"))


def outputs(delegate: str) -> np.ndarray:
    bundle = load_bundle(DIGITS_INT8)
    model = Model(bundle, EngineSettings(delegate=delegate))
    assert model.engine.runtime.delegate == delegate
    tensors = [model.prepare(decode_image(p.read_bytes())) for p in DIGITS]
    return np.stack([model.engine.run(t)[0] for t in tensors])


def test_reference_kernels_agree_with_the_optimized_ones() -> None:
    """`builtin` equals the reference kernels bit for bit; XNNPACK rounds its own way (measured on LiteRT:
    3 of 450 outputs differ, by at most 8 of 256 steps) but never changes a label."""
    fast, plain, reference = outputs("xnnpack"), outputs("builtin"), outputs("reference")
    assert np.array_equal(plain, reference)
    assert np.array_equal(fast.argmax(axis=-1), reference.argmax(axis=-1))
    assert np.abs(fast.astype(int) - reference.astype(int)).max() <= 12
    truth = np.array([p.parent.name for p in DIGITS])
    labels = np.array(load_bundle(DIGITS_INT8).manifest.labels)[reference.reshape(len(DIGITS), -1).argmax(axis=1)]
    assert (labels == truth).mean() >= 0.9  # and the shared answer is the right one


def test_a_delegate_library_that_does_not_load_is_one_line() -> None:
    settings = EngineSettings(delegate="external", delegate_options={"library": "/nonexistent/libnpu.so"})
    with pytest.raises(RuntimeUnavailable, match=r"/nonexistent/libnpu\.so cannot be loaded") as caught:
        Engine(DIGITS_INT8.read_bytes(), settings)
    assert "\n" not in str(caught.value)


def config_with(tmp_path: Path, model_extra: str) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    cfg.write_text(cfg.read_text().replace("threads = 1", f"threads = 1\n{model_extra}"))
    return cfg


@pytest.mark.parametrize(("extra", "problem"), [
    ('delegate = "npu"', r"\[model\]\.delegate: expected one of 'xnnpack', 'builtin'.* or the path to a TFLite "
                         r"delegate library \(\.so\), got 'npu'"),
    ('delegate = "external"', r"\[model.delegate_options\]\.library: the delegate library's path is required"),
    ('delegate = "edgetpu"\ndelegate_options = { device = "gpu" }',
     r"\[model.delegate_options\]\.device: expected \"usb\""),
    ('delegate_options = { library = "x.so" }', r"library: not an option of the 'xnnpack' delegate"),
])
def test_delegate_config_errors_are_one_line(tmp_path: Path, extra: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(config_with(tmp_path, extra))


def test_a_delegate_library_path_is_relative_to_the_config_file_and_a_bare_name_is_the_loaders(
        tmp_path: Path) -> None:
    """Like every path in the config: `./lib/x.so` is next to the config file, wherever the service starts."""
    def library(extra: str) -> str:
        return load_config(config_with(tmp_path, extra)).model.delegate_options["library"]

    assert library('delegate = "./lib/libnpu.so"') == str(tmp_path / "lib" / "libnpu.so")
    assert library('delegate = "external"\ndelegate_options = { library = "../libnpu.so" }') == \
        str(tmp_path.parent / "libnpu.so")
    assert library('delegate = "/opt/npu/libnpu.so"') == "/opt/npu/libnpu.so"
    assert library('delegate = "~/npu/libnpu.so"') == str(Path.home() / "npu" / "libnpu.so")  # dlopen expands no ~
    assert library('delegate = "external"\ndelegate_options = { library = "libnpu.so" }') == "libnpu.so"


def test_check_names_the_delegate_and_refuses_one_that_cannot_load(tmp_path: Path) -> None:
    ok = run_cli("check", "--config", str(config_with(tmp_path, 'delegate = "builtin"')))
    assert ok.returncode == 0, ok.stderr
    assert "delegate builtin" in ok.stdout
    missing = config_with(tmp_path, 'delegate = "edgetpu"')
    fallback = run_cli("check", "--config", str(missing))  # the service would run: on the CPU, and say so
    assert fallback.returncode == 0, fallback.stderr
    assert "accel    MISSING: no Edge TPU: libedgetpu.so.1 cannot be loaded" in fallback.stdout
    missing.write_text(missing.read_text().replace('delegate = "edgetpu"', 'delegate = "edgetpu"\n'
                                                   'delegate_fallback = false'))
    bad = run_cli("check", "--config", str(missing))
    assert bad.returncode == 2
    assert "no Edge TPU: libedgetpu.so.1 cannot be loaded" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_check_finds_edge_tpus_by_usb_id_and_apex_node(tmp_path: Path) -> None:
    """A sysfs- and /dev-shaped tree (the ids are Coral's, before and after its firmware loads)."""
    from edge_infer.delegates.edgetpu import found

    for name, (vendor, product) in {"1-1": ("1a6e", "089a"), "2-1": ("18d1", "9302"), "1-2": ("046d", "c52b")}.items():
        device = tmp_path / "sys" / "bus" / "usb" / "devices" / name
        device.mkdir(parents=True)
        (device / "idVendor").write_text(vendor + "\n")
        (device / "idProduct").write_text(product + "\n")
    (tmp_path / "dev").mkdir()
    assert found(tmp_path / "sys", tmp_path / "dev")[:2] == [
        "Coral USB Accelerator (firmware not loaded yet) on USB 1-1", "Coral USB Accelerator on USB 2-1"]
    (tmp_path / "dev" / "apex_0").touch()
    assert f"Coral M.2/PCIe Edge TPU {tmp_path / 'dev' / 'apex_0'}" in found(tmp_path / "sys", tmp_path / "dev")
    assert found(tmp_path / "nothing", tmp_path / "nothing") == []
