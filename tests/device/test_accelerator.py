"""An accelerator delegate, for real: the test run compiles `tests/helpers/probe_delegate.c` (the external-delegate
ABI declared by hand — no TFLite headers ship anywhere) into a shared library that records its options and every
Prepare call, takes the graph's RESHAPE nodes on request (its kernel copies the bytes, so answers are the CPU's
exactly), and fails on demand — at load, at Prepare, or in its kernel during `invoke()` — blocks there (locked
up), or crashes the process that loads it. Loaded through the config on this leg's runtime (ai-edge-litert or
tflite-runtime 2.14): options reach it; a delegate that cannot load, cannot take the model, crashes its trial
process, or stops answering mid-run (an error, or no answer within the deadline) hands the model to the CPU variant
with `accelerator_lost` and comes back with `accelerator_restored` when it loads and answers again — and no input
is lost meanwhile. Bundles with an accelerator variant (`edge-convert add-variant`) run that variant on its
delegate and the CPU model without it."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_infer.app.daemon import Daemon
from edge_infer.bundle import load_bundle
from edge_infer.config import ConfigError, load_config
from edge_infer.deadline import Hung
from edge_infer.delegates import EngineSettings
from edge_infer.gates.decode import decode_image
from edge_infer.model import Model, model_from_config
from edge_infer.sinks.memory import MemorySink
from edge_infer.trial import try_in_child
from tests.conftest import DIGITS_INT8, DIGITS_TEST, REPO, run_cli, write_config
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
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-pthread", "-o", str(out), str(SOURCE)], check=True)
    return out


HANG_S = 2.0  # the tests' accelerator deadline: far above the probe's answer, even on a loaded machine


def config(tmp_path: Path, library: Path, bundle: Path = DIGITS_INT8, **options: str) -> Path:
    cfg = write_config(tmp_path / "c.toml", bundle=bundle, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    table = ", ".join(f'{k} = "{v}"' for k, v in {"log": str(tmp_path / "probe.log"), **options}.items())
    cfg.write_text(cfg.read_text().replace(
        "threads = 1\n", f'threads = 1\ndelegate = "external"\naccelerator_timeout = {HANG_S}\n'
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


def test_a_delegate_given_by_its_path_is_an_external_one_with_those_options(library: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    cfg.write_text(cfg.read_text().replace("threads = 1\n", f'threads = 1\ndelegate = "{library}"\ndelegate_options'
                                           f' = {{ log = "{tmp_path / "probe.log"}", answer = "7" }}\n'))
    settings = load_config(cfg).model
    assert (settings.delegate, dict(settings.delegate_options)) == (
        "external", {"library": str(library), "options": {"log": str(tmp_path / "probe.log"), "answer": "7"}})
    model = model_from_config(settings)
    assert model.engine.runtime.delegate == "external" and model.engine.fallback_from is None
    assert probe_log(tmp_path)[-3:] == ["option answer=7", "create", "prepare"]


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


def test_a_library_that_is_no_tflite_delegate_is_named_as_such(tmp_path: Path) -> None:
    """A real shared library without the external-delegate entry points (Python's own `_ctypes`): the CPU runs
    the model, and `check` says why in one line — not that no runtime could load the model."""
    import _ctypes

    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    cfg.write_text(cfg.read_text().replace("threads = 1\n", f'threads = 1\ndelegate = "{_ctypes.__file__}"\n'))
    proc = run_cli("check", "--config", str(cfg))
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("accel") and "MISSING" in ln)
    assert (f"delegate library {_ctypes.__file__} cannot be loaded: it is not a TFLite external delegate "
            "(no tflite_plugin_create_delegate in it)") in line, line
    assert "no TFLite runtime" not in line and "the CPU (xnnpack) runs the model" in line


def events(sink: MemorySink) -> list[dict]:
    return [json.loads(p) for p in sink.of_kind("events")]


LOST_AT_LOAD = {  # failure → (the probe's option, what accelerator_lost says)
    "load": ("fail_if_exists", "cannot be loaded"),
    "prepare": ("fail_prepare_if_exists", "failed on this model"),
    "crash": ("crash_if_exists", "crashed the process that loaded it (SIGSEGV)"),
}


@pytest.mark.parametrize("failure", list(LOST_AT_LOAD))
def test_a_lost_accelerator_hands_over_to_the_cpu_and_comes_back(library: Path, tmp_path: Path,
                                                                  failure: str) -> None:
    gone = tmp_path / "gone"  # while this file exists the "accelerator" is unplugged
    gone.touch()
    option, says = LOST_AT_LOAD[failure]
    options = {option: str(gone)}
    (tmp_path / "in").mkdir()
    sinks: list[MemorySink] = []
    daemon = Daemon(load_config(config(tmp_path, library, **options)),
                    sink=lambda opener: sinks.append(MemorySink(opener)) or sinks[0])
    sink, feed = sinks[0], feeder(tmp_path / "in")
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
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
    assert says in lost["error"], lost
    assert probe_log(tmp_path).count("prepare") >= 1  # the restored interpreter prepared the model on it


def add_variant(*args: str) -> subprocess.CompletedProcess[str]:
    """`edge-convert add-variant ARGS` as a user runs it (no TensorFlow needed)."""
    return subprocess.run([sys.executable, "-m", "converter.cli", "add-variant", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


@pytest.fixture
def probe_bundle(tmp_path: Path) -> Path:
    """The digits bundle with a `probe` variant for the external delegate: the same graph with another
    description, so its bytes (and sha256) differ from the CPU model's."""
    variant = tmp_path / "digits_probe.tflite"
    variant.write_bytes(DIGITS_INT8.read_bytes().replace(b"MLIR Converted.", b"probe variant.."))
    out = tmp_path / "digits-variants.tflite"
    proc = add_variant(str(DIGITS_INT8), str(variant), "--name", "probe", "--delegate", "external", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "variant 'probe' for the external delegate" in proc.stdout and "contract checked" in proc.stdout
    return out


def feeder(folder: Path) -> Callable[[list[Path], int], None]:
    def feed(paths: list[Path], start: int) -> None:
        for i, path in enumerate(paths, start):
            shutil.copy(path, folder / f".{i}.tmp")
            (folder / f".{i}.tmp").rename(folder / f"{i:03d}-{path.parent.name}.png")
    return feed


MID_RUN = {  # failure → (the probe's option, what accelerator_lost says)
    "fail": ("fail_invoke_if_exists", "failed during inference: probe delegate: the accelerator stopped answering"),
    "hang": ("hang_invoke_if_exists", f"did not answer within {HANG_S:g} s (locked up?)"),
}


@pytest.mark.parametrize("failure", list(MID_RUN))
def test_an_accelerator_that_stops_answering_mid_run_loses_no_input(library: Path, tmp_path: Path,
                                                                    probe_bundle: Path, failure: str) -> None:
    gone = tmp_path / "gone"  # while this file exists the "accelerator" fails (or blocks in) every invoke()
    (tmp_path / "in").mkdir()
    option, says = MID_RUN[failure]
    cfg = config(tmp_path, library, bundle=probe_bundle, claim="reshape", **{option: str(gone)})
    sinks: list[MemorySink] = []
    daemon = Daemon(load_config(cfg), sink=lambda opener: sinks.append(MemorySink(opener)) or sinks[0])
    sink, feed = sinks[0], feeder(tmp_path / "in")
    assert daemon.model.engine.ran_on == {"variant": "probe", "delegate": "external"}
    assert "claimed 1" in probe_log(tmp_path)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        feed(DIGITS[:10], 0)
        assert wait_until(lambda: len(sink.of_kind("results")) >= 10, 60)
        gone.touch()  # unplugged while serving
        feed(DIGITS[10:30], 10)
        assert wait_until(lambda: any(e["event"] == "accelerator_lost" for e in events(sink)), 60)
        assert wait_until(lambda: len(sink.of_kind("results")) >= 30, 60)
        assert wait_until(lambda: daemon.health()["accelerator"]["attempts"] >= 1, 30)  # loads, cannot answer
        assert daemon.health()["accelerator"]["lost"] is True
        if failure == "hang":  # not loaded again while a lane's call is still blocked in it: no thread piles up
            assert wait_until(lambda: "has not answered an earlier call yet" in daemon.health()["accelerator"]["error"],
                              30)  # a try ended that way
            assert probe_log(tmp_path).count("hang") == 1, probe_log(tmp_path)  # one interpreter on an accelerator
        gone.unlink()
        assert wait_until(lambda: any(e["event"] == "accelerator_restored" for e in events(sink)), 60)
        feed(DIGITS[30:], 30)
        assert wait_until(lambda: len(sink.of_kind("results")) >= len(DIGITS), 60)
    finally:
        daemon.stop_event.set()
        runner.join(30)
    results = sorted((json.loads(p) for p in sink.of_kind("results")), key=lambda r: r["input"]["id"])
    assert [r["input"]["id"] for r in results] == [f"{i:03d}-{p.parent.name}.png" for i, p in enumerate(DIGITS)]
    cpu = Model(load_bundle(DIGITS_INT8))
    for r, path in zip(results, DIGITS, strict=True):  # the same answers whoever made them
        assert r["result"]["label"] == cpu.classify(decode_image(path.read_bytes())).label
    ran_on = [(r["ran_on"]["variant"], r["ran_on"]["delegate"]) for r in results]
    assert set(ran_on[:10]) == {("probe", "external")} and set(ran_on[30:]) == {("probe", "external")}
    assert ran_on[10] == ("cpu", "xnnpack")  # the input that met the failure: answered by the CPU, not lost
    assert set(ran_on[10:30]) == {("cpu", "xnnpack")}
    lost = next(e for e in events(sink) if e["event"] == "accelerator_lost")["details"]
    assert lost["delegate"] == "external" and lost["variant"] == "probe" and lost["fallback"] == "xnnpack"
    assert says in lost["error"], lost
    changes = [e["event"] for e in events(sink) if e["event"].startswith("accelerator_")]
    assert changes == ["accelerator_lost", "accelerator_restored"], changes


def test_a_retry_waiting_on_a_locked_up_device_does_not_hold_up_housekeeping(library: Path, tmp_path: Path,
                                                                            probe_bundle: Path) -> None:
    """Each retry's trial waits up to 45 s for a device that locked up at load; meanwhile the housekeeping thread
    (health, reloads, commands) goes on, and the health document says a try is under way."""
    gone, stuck = tmp_path / "gone", tmp_path / "stuck"  # fails every invoke(); blocks the delegate's creation
    (tmp_path / "in").mkdir()
    cfg = config(tmp_path, library, bundle=probe_bundle, claim="reshape", fail_invoke_if_exists=str(gone),
                 hang_create_if_exists=str(stuck))
    cfg.write_text(cfg.read_text() + "\n[health]\ninterval = 0.2\n")
    sinks: list[MemorySink] = []
    daemon = Daemon(load_config(cfg), sink=lambda opener: sinks.append(MemorySink(opener)) or sinks[0])
    sink, feed = sinks[0], feeder(tmp_path / "in")
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()

    def snapshots() -> int:
        return sum(kind == "health" for kind, _ in list(sink.snapshots))

    try:
        stuck.touch()
        gone.touch()  # unplugged while serving, and locked up for whoever loads it next
        feed(DIGITS[:5], 0)
        assert wait_until(lambda: any(e["event"] == "accelerator_lost" for e in events(sink)), 60)
        assert wait_until(lambda: "hang" in probe_log(tmp_path), 60)  # a retry's trial, blocked in the device
        assert daemon.health()["accelerator"]["retrying"] is True
        seen = snapshots()
        assert wait_until(lambda: snapshots() >= seen + 3, 20)  # housekeeping goes on: a snapshot every 0.2 s
        assert "hang over" not in probe_log(tmp_path)  # … while the trial is still blocked
        assert wait_until(lambda: len(sink.of_kind("results")) >= 5, 60)  # and so does the CPU
        stuck.unlink()
        gone.unlink()  # the device answers again: that same trial goes on, loads and answers
        assert wait_until(lambda: any(e["event"] == "accelerator_restored" for e in events(sink)), 60)
        assert daemon.health()["accelerator"]["retrying"] is False
        assert daemon.model.engine.ran_on == {"variant": "probe", "delegate": "external"}
    finally:
        stuck.unlink(missing_ok=True)
        daemon.stop_event.set()
        runner.join(30)


def test_a_bundle_runs_the_variant_for_its_delegate_and_its_own_model_without_one(
        library: Path, tmp_path: Path, probe_bundle: Path) -> None:
    bundle = load_bundle(probe_bundle)
    assert set(bundle.variants) == {"probe"} and bundle.variants["probe"].model_bytes != bundle.model_bytes
    on_probe = model_from_config(load_config(config(tmp_path, library, bundle=probe_bundle)).model)
    assert on_probe.engine.ran_on == {"variant": "probe", "delegate": "external"}
    plain = write_config(tmp_path / "cpu.toml", bundle=probe_bundle, source=tmp_path / "in", state=tmp_path / "s2",
                         port=free_port())
    on_cpu = model_from_config(load_config(plain).model)
    assert on_cpu.engine.ran_on == {"variant": "cpu", "delegate": "xnnpack"}
    for path in DIGITS[:20]:
        image = decode_image(path.read_bytes())
        assert on_probe.classify(image).label == on_cpu.classify(image).label
    proc = run_cli("check", "--config", str(config(tmp_path, library, bundle=probe_bundle)))
    assert "variant probe (the bundle has: cpu, probe (external))" in proc.stdout, proc.stdout


def test_add_variant_refuses_what_breaks_the_contract_in_one_line(tmp_path: Path) -> None:
    from tests.conftest import DIGITS_FLOAT32

    cases = {
        "float32 [1, 16, 16, 1], the bundle's model's is uint8": (str(DIGITS_INT8), str(DIGITS_FLOAT32)),
        "not a TFLite model": (str(DIGITS_INT8), str(REPO / "README.md")),
        "No such file": (str(DIGITS_INT8), str(tmp_path / "missing.tflite")),
        "bundle not found": (str(tmp_path / "nope.tflite"), str(DIGITS_INT8)),
    }
    for expected, args in cases.items():
        proc = add_variant(*args, "--out", str(tmp_path / "out.tflite"))
        assert proc.returncode == 2 and expected in proc.stderr, (expected, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out.tflite").exists()


def test_bench_reports_each_variants_latency_on_its_delegate(library: Path, tmp_path: Path,
                                                             probe_bundle: Path) -> None:
    (tmp_path / "in").mkdir()
    feeder(tmp_path / "in")(DIGITS[:10], 0)
    cfg = config(tmp_path, library, bundle=probe_bundle, claim="reshape")
    proc = run_cli("bench", "--config", str(cfg), "--frames", "20", "--rounds", "1", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    variants = json.loads(proc.stdout)["variants"]
    assert set(variants) == {"cpu", "probe"}
    assert variants["cpu"]["delegate"] == "xnnpack" and variants["probe"]["delegate"] == "external"
    assert all(v["ms"] > 0 and v["per_s"] > 0 for v in variants.values()), variants
    assert "claimed 1" in probe_log(tmp_path)  # the probe variant really ran on the delegate


def test_the_accelerator_deadline_leaves_the_watchdog_time_to_spare(library: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, library)
    cfg.write_text(cfg.read_text().replace(f"accelerator_timeout = {HANG_S}", "accelerator_timeout = 20"))
    with pytest.raises(ConfigError, match=r"accelerator_timeout = 20: at most half of \[service\]\.watchdog_sec "
                                          r"\(30 s\)") as caught:
        load_config(cfg)
    assert "\n" not in str(caught.value)
    cfg.write_text(cfg.read_text() + "\n[service]\nwatchdog_sec = 60\n")
    assert load_config(cfg).model.accelerator_timeout == 20.0  # a longer watchdog: allowed
    on_cpu = write_config(tmp_path / "cpu.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s2",
                          port=free_port())
    on_cpu.write_text(on_cpu.read_text().replace("threads = 1\n", "threads = 1\naccelerator_timeout = 3000\n"))
    assert load_config(on_cpu).model.accelerator_timeout == 3000.0  # no accelerator, no deadline to check


def test_an_engine_let_go_takes_its_deadline_thread_with_it(library: Path, tmp_path: Path) -> None:
    def callers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "external-invoke"}

    before = callers()
    model = model_from_config(load_config(config(tmp_path, library, claim="reshape")).model)
    image = decode_image(DIGITS[0].read_bytes())
    for _ in range(3):
        model.infer(model.prepare(image))
    (mine,) = callers() - before  # the inferences ran on the deadline's thread
    del model
    gc.collect()
    assert wait_until(lambda: not mine.is_alive(), 10)  # a reloaded model leaves no thread behind


def test_without_fallback_a_locked_up_accelerator_is_an_error_that_says_so(library: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    cfg = config(tmp_path, library, claim="reshape", hang_invoke_if_exists=str(gone))
    cfg.write_text(cfg.read_text().replace('delegate = "external"\n',
                                           'delegate = "external"\ndelegate_fallback = false\n'))
    model = model_from_config(load_config(cfg).model)
    gone.touch()  # locked up after it loaded
    try:
        with pytest.raises(Hung, match=rf"^the external delegate did not answer within {HANG_S:g} s \(locked up\?\)$"):
            model.infer(model.prepare(decode_image(DIGITS[0].read_bytes())))
    finally:
        gone.unlink()  # the blocked call returns and its thread ends
    assert wait_until(lambda: probe_log(tmp_path).count("hang over") == 1, 10)


def test_a_delegate_is_tried_in_a_child_process_first(library: Path, tmp_path: Path) -> None:
    """What the child reports, for each way a load can go; the test process itself never loads the delegate."""
    trouble = tmp_path / "trouble"
    trouble.touch()
    cases = {
        "fail_if_exists": "cannot be loaded",
        "crash_if_exists": "the external delegate crashed the process that loaded it (SIGSEGV)",
        "hang_create_if_exists": "the external delegate did not load and answer within 3 s (locked up?)",
        "hang_invoke_if_exists": "the external delegate did not load and answer within 3 s (locked up?)",
        "fail_invoke_if_exists": "the external delegate failed during inference: ",
    }
    for option, says in cases.items():
        settings = EngineSettings(delegate="external", delegate_options={
            "library": str(library), "options": {"claim": "reshape", option: str(trouble)}})
        problem = try_in_child(DIGITS_INT8.read_bytes(), settings, timeout_s=3.0)
        assert problem is not None and says in problem, (option, problem)
        assert "\n" not in problem
    trouble.unlink()
    assert try_in_child(DIGITS_INT8.read_bytes(), settings, timeout_s=60.0) is None  # all well: it answered


def test_a_trial_blocked_in_a_locked_up_device_ends_with_the_service_that_started_it(library: Path,
                                                                                  tmp_path: Path) -> None:
    """A service killed (or stopped) while its trial child waits in a device locked up at load leaves no process
    behind: the child goes with it, not when the device comes back (maybe never)."""
    stuck = tmp_path / "stuck"
    stuck.touch()
    options = {"library": str(library), "options": {"log": str(tmp_path / "probe.log"),
                                                     "hang_create_if_exists": str(stuck)}}
    service = subprocess.Popen([sys.executable, "-c", (
        "import sys; from edge_infer.delegates import EngineSettings; from edge_infer.trial import try_in_child; "
        f"print(try_in_child(open({str(DIGITS_INT8)!r}, 'rb').read(), "
        f"EngineSettings(delegate='external', delegate_options={options!r}), timeout_s=600))")], cwd=REPO)
    try:
        assert wait_until(lambda: "hang" in probe_log(tmp_path), 60)  # the child is blocked in the device
        children = [pid for pid in _pids() if _parent(pid) == service.pid]
        assert len(children) == 1, children
        service.kill()  # kill -9: nothing of the service runs to clean up
        service.wait(30)
        assert wait_until(lambda: not _alive(children[0]), 30)
        assert "hang over" not in probe_log(tmp_path)  # it went while still blocked, not because the device came back
    finally:
        service.kill()
        stuck.unlink()  # a survivor (the bug this test is for) would end now


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state, parent, …); [] once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its reaper."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"
