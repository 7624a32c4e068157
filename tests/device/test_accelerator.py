"""An accelerator delegate, for real: the test run compiles `tests/helpers/probe_delegate.c` (the external-delegate
ABI declared by hand — no TFLite headers ship anywhere) into a shared library that records its options and every
Prepare call, leaves the graph to the CPU, and fails on demand. Loaded through the config on this leg's runtime
(ai-edge-litert or tflite-runtime 2.14): options reach it; a delegate that cannot load, or cannot take the model,
hands the model to the CPU with `accelerator_lost` and comes back with `accelerator_restored` when it loads again
— and no input is lost meanwhile."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_infer.app.daemon import Daemon
from edge_infer.bundle import load_bundle
from edge_infer.config import load_config
from edge_infer.gates.decode import decode_image
from edge_infer.model import Model, model_from_config
from edge_infer.sinks.memory import MemorySink
from tests.conftest import DIGITS_INT8, DIGITS_TEST, run_cli, write_config
from tests.device.faults import wait_until
from tests.helpers.broker import free_port

SOURCE = Path(__file__).parents[1] / "helpers" / "probe_delegate.c"
DIGITS = sorted(DIGITS_TEST.glob("*/*.png"))[::9]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the probe delegate (apt install gcc)")
    out = tmp_path_factory.mktemp("delegate") / "libprobe.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(SOURCE)], check=True)
    return out


def config(tmp_path: Path, library: Path, **options: str) -> Path:
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    table = ", ".join(f'{k} = "{v}"' for k, v in {"log": str(tmp_path / "probe.log"), **options}.items())
    cfg.write_text(cfg.read_text().replace(
        "threads = 1\n", f'threads = 1\ndelegate = "external"\n'
                         f'delegate_options = {{ library = "{library}", options = {{ {table} }} }}\n'))
    return cfg


def probe_log(tmp_path: Path) -> list[str]:
    path = tmp_path / "probe.log"
    return path.read_text().splitlines() if path.exists() else []


def test_the_delegate_loads_through_the_config_and_gets_its_options(library: Path, tmp_path: Path) -> None:
    model = model_from_config(load_config(config(tmp_path, library, mode="probe", answer="42")).model)
    assert model.engine.runtime.delegate == "external" and model.engine.fallback_from is None
    assert probe_log(tmp_path)[-4:] == ["option mode=probe", "option answer=42", "create", "prepare"]
    cpu = Model(load_bundle(DIGITS_INT8))
    for path in DIGITS:  # it claims no operator: the CPU kernels give the answers either way
        image = decode_image(path.read_bytes())
        assert model.infer(model.prepare(image)).label == cpu.infer(cpu.prepare(image)).label


@pytest.mark.parametrize("failure", ["load", "prepare"])
def test_without_fallback_a_failing_delegate_is_one_line(library: Path, tmp_path: Path, failure: str) -> None:
    options = {"fail_if_exists": str(tmp_path)} if failure == "load" else {"fail_prepare": "1"}
    cfg = config(tmp_path, library, **options)
    cfg.write_text(cfg.read_text().replace('delegate = "external"\n',
                                           'delegate = "external"\ndelegate_fallback = false\n'))
    proc = run_cli("check", "--config", str(cfg))
    assert proc.returncode != 0
    line = next(ln for ln in (proc.stdout + proc.stderr).splitlines() if "delegate" in ln)
    assert ("cannot be loaded" if failure == "load" else "failed on this model") in line, line


def events(sink: MemorySink) -> list[dict]:
    return [json.loads(p) for p in sink.of_kind("events")]


@pytest.mark.parametrize("failure", ["load", "prepare"])
def test_a_lost_accelerator_hands_over_to_the_cpu_and_comes_back(library: Path, tmp_path: Path,
                                                                  failure: str) -> None:
    gone = tmp_path / "gone"  # while this file exists the "accelerator" is unplugged
    gone.touch()
    options = {"fail_if_exists": str(gone)} if failure == "load" else {"fail_prepare_if_exists": str(gone)}
    (tmp_path / "in").mkdir()
    sinks: list[MemorySink] = []
    daemon = Daemon(load_config(config(tmp_path, library, **options)),
                    sink=lambda opener: sinks.append(MemorySink(opener)) or sinks[0])
    sink = sinks[0]
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()

    def feed(paths: list[Path], start: int) -> None:
        for i, path in enumerate(paths, start):
            shutil.copy(path, tmp_path / "in" / f".{i}.tmp")
            (tmp_path / "in" / f".{i}.tmp").rename(tmp_path / "in" / f"{i:03d}-{path.parent.name}.png")

    try:
        assert wait_until(lambda: any(e["event"] == "accelerator_lost" for e in events(sink)), 30)
        health = daemon.health()["accelerator"]
        assert health["lost"] is True and health["delegate"] == "xnnpack" and health["wanted"] == "external"
        assert any("running on the CPU" in p for p in sink.problems())
        feed(DIGITS[:20], 0)  # the CPU serves meanwhile
        assert wait_until(lambda: len(sink.of_kind("results")) >= 20, 60)
        assert wait_until(lambda: daemon.health()["accelerator"]["attempts"] >= 1, 30)  # retried, still gone
        gone.unlink()  # plugged back in
        assert wait_until(lambda: any(e["event"] == "accelerator_restored" for e in events(sink)), 60)
        assert daemon.model.engine.runtime.delegate == "external" and daemon.health()["accelerator"]["lost"] is False
        assert not any("running on the CPU" in p for p in sink.problems())
        feed(DIGITS[20:], 20)
        assert wait_until(lambda: len(sink.of_kind("results")) >= len(DIGITS), 60)
    finally:
        daemon.stop_event.set()
        runner.join(30)
    results = [json.loads(p) for p in sink.of_kind("results")]
    assert sorted(r["input"]["id"] for r in results) == sorted(
        f"{i:03d}-{p.parent.name}.png" for i, p in enumerate(DIGITS))  # every input, once
    assert np.mean([r["result"]["label"] == r["input"]["id"][4] for r in results]) > 0.9
    changes = [(e["event"], e["severity"]) for e in events(sink) if e["event"].startswith("accelerator_")]
    assert changes == [("accelerator_lost", "warning"), ("accelerator_restored", "info")], changes
    lost = next(e for e in events(sink) if e["event"] == "accelerator_lost")["details"]
    assert lost["delegate"] == "external" and lost["fallback"] == "xnnpack"
    assert ("cannot be loaded" if failure == "load" else "failed on this model") in lost["error"]
    assert probe_log(tmp_path).count("prepare") >= 1  # the restored interpreter prepared the model on it
