"""The fast tier: the whole app built in-process with a list source and a memory sink — real bundle, real
interpreter, real SQLite outbox, no broker and no subprocess. Commands, reload, a model swap and the data path
are checked here in well under a second each; the subprocess and broker tests stay for faults and the CLI."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from edge_infer.control.reload import apply_reload
from edge_infer.sinks.memory import MemorySink
from edge_infer.sources.memory import ListSource, sample_of
from tests.conftest import DIGITS_FLOAT32, DIGITS_INT8, DIGITS_TEST, write_config
from tests.device.faults import wait_until
from tests.helpers.broker import free_port
from tests.helpers.schemas import validate

DIGITS = sorted(DIGITS_TEST.glob("*/*.png"))


def config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    cfg.write_text(cfg.read_text() + extra)
    return cfg


def build(cfg: Path, files: list[Path], extra: list[tuple[str, bytes]] = ()) -> tuple[Daemon, MemorySink]:
    samples = [sample_of(f"{p.parent.name}_{p.name}", p.read_bytes()) for p in files]
    samples += [sample_of(name, data) for name, data in extra]
    sinks: list[MemorySink] = []

    def make_sink(opener):
        sinks.append(MemorySink(opener))
        return sinks[0]

    daemon = Daemon(load_config(cfg), source=ListSource(samples), sink=make_sink)
    return daemon, sinks[0]


def docs(sink: MemorySink, kind: str) -> list[dict]:
    return [json.loads(p) for p in sink.of_kind(kind)]


def housekeepers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "housekeeping")


def test_a_finished_run_leaves_no_thread_behind(tmp_path: Path) -> None:
    """A program that runs the daemon once, then again (bench does, an embedding program may): each run's
    housekeeping thread ends with it — none keeps waking to work on a closed outbox."""
    before = housekeepers()
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        daemon, _sink = build(config(tmp_path / run), DIGITS[:5])
        assert daemon.run(once=True).results == 5
    assert housekeepers() == before


def test_the_app_in_process_classifies_rejects_and_delivers(tmp_path: Path) -> None:
    """450 held-out digits and two broken files: every input ends as a schema-valid result or rejection, in
    order, and the results agree with the ground truth (the folder each digit came from)."""
    daemon, sink = build(config(tmp_path), DIGITS, [("zero.png", b""), ("text.png", b"not a picture")])
    summary = daemon.run(once=True)
    results, rejections = docs(sink, "results"), docs(sink, "rejections")
    assert len(results) == len(DIGITS) and summary.results == len(DIGITS)
    assert {r["input"]["id"]: r["reason"] for r in rejections} == {"zero.png": "empty_file",
                                                                   "text.png": "not_an_image"}
    for doc in results[:20] + rejections:
        validate("results" if "result" in doc else "rejections", doc)
    right = sum(d["result"]["label"] == d["input"]["id"].split("_")[0] for d in results)
    assert right / len(results) >= 0.9, right
    seqs = [d["seq"] for d in results + rejections]
    assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs)))


def test_a_second_run_skips_what_is_already_stored(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    daemon, _ = build(cfg, DIGITS[:30])
    daemon.run(once=True)
    again, sink2 = build(cfg, DIGITS[:40])
    summary = again.run(once=True)
    assert summary.skipped == 30 and summary.results == 10
    assert len(sink2.of_kind("results")) == 10


def test_set_threshold_and_reload_through_the_command_table(tmp_path: Path) -> None:
    """Commands arrive as (topic, payload) in the inbox's order; `set-threshold` changes the next input's
    decision and persists; `reload` applies a changed file. Answers arrive on `events`."""
    cfg = config(tmp_path, '\n[commands]\nenabled = true\nauth = "acl"\n')
    daemon, sink = build(cfg, DIGITS[:5])
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: len(sink.of_kind("results")) == 5, 30)
        prefix = "edge/test-pi/cmd/"
        daemon.commands.handle(prefix + "set-threshold", json.dumps({"id": "t1", "args": {"threshold": 0.9999}}
                                                                   ).encode())
        assert daemon.model.thresholds.default == 0.9999
        cfg.write_text(cfg.read_text().replace("[drift]", "[health]\ninterval = 5\n\n[drift]"))
        daemon.commands.handle(prefix + "reload", b'{"id": "r1"}')
        daemon.commands.handle(prefix + "set-threshold", b'{"id": "t2", "args": {"threshold": "high"}}')
        assert wait_until(lambda: len(docs(sink, "events")) >= 3, 10)
    finally:
        daemon.stop_event.set()
        thread.join(30)
    answers = {e["details"]["id"]: e for e in docs(sink, "events") if e["event"].startswith("command_")}
    assert answers["t1"]["event"] == "command_done" and answers["t1"]["details"]["persisted"] is True
    assert answers["r1"]["details"]["applied"] == ["health.interval"]
    assert answers["t2"]["event"] == "command_failed" and answers["t2"]["details"]["reason"] == "invalid_args"
    state = json.loads((tmp_path / "s" / "models" / "state.json").read_text())
    assert state["overrides"] == {"threshold": 0.9999}


def test_a_model_swap_names_the_new_model_and_is_announced(tmp_path: Path) -> None:
    """`Serving.serve` between two inputs: later results name the new model; the sink re-announces it."""
    daemon, sink = build(config(tmp_path), [])
    samples = [sample_of(p.name, p.read_bytes()) for p in DIGITS[:10]]
    old = daemon.identity.model["sha256"]
    for sample in samples[:5]:
        daemon.handle(sample)
    daemon.serving.serve(daemon.serving.open_model(DIGITS_FLOAT32))
    for sample in samples[5:]:
        daemon.handle(sample)
    daemon.run(once=True)  # starts the writer and the sink, drains what was queued, stops
    models = [d["model"]["sha256"] for d in docs(sink, "results")]
    assert models[:5] == [old] * 5 and len(set(models[5:])) == 1 and models[5] != old
    assert sink.announced == 1


@pytest.mark.parametrize("fallback", ["suppress", "defer"])
def test_uncertain_results_follow_the_fallback(tmp_path: Path, fallback: str) -> None:
    """A threshold nothing reaches: every result is uncertain; suppress publishes none, defer keeps every
    input for review — counted either way."""
    unreachable = "\n".join(f'"{digit}" = 0.99999' for digit in range(10))  # int8 confidences stop at 255/256
    cfg = config(tmp_path, f'\n[decide]\nfallback = "{fallback}"\n\n[model.thresholds]\n{unreachable}\n')
    daemon, sink = build(cfg, DIGITS[:12])
    summary = daemon.run(once=True)
    assert summary.results == 12 and summary.uncertain == 12
    assert sink.of_kind("results") == []
    assert (summary.suppressed, summary.deferred) == ((12, 0) if fallback == "suppress" else (0, 12))
    kept = list((tmp_path / "s" / "uncertain").rglob("*.png"))
    assert len(kept) == (12 if fallback == "defer" else 0)


def test_a_running_pipeline_is_never_changed_only_replaced(tmp_path: Path) -> None:
    """`set-threshold` and a reload build new rules, a new `Model` on the same interpreter and a new pipeline;
    the one an input is already in keeps its model, rules, gate and policy. Config tables are frozen."""
    cfg = config(tmp_path, '\n[commands]\nenabled = true\nauth = "acl"\n')
    daemon, _ = build(cfg, DIGITS[:1])
    before, model = daemon.pipeline, daemon.model
    default, gate, policy = model.thresholds.default, before.gate, before.policy

    daemon.serving.set_threshold({"threshold": 0.97})
    cfg.write_text(cfg.read_text().replace("threads = 1", "threads = 1\ntop_k = 2")
                   + "\n[gate]\nmin_contrast = 3.0\n\n[decide]\ndebounce = [2, 3]\n")
    applied, restart = apply_reload(daemon.serving, load_config(cfg))
    assert set(applied) == {"model.top_k", "gate.min_contrast", "decide.debounce"} and restart == []

    now = daemon.pipeline
    assert now is not before and now.model is not model and now.model.engine is model.engine
    assert (now.model.thresholds.default, now.model.top_k, now.policy.debounce) == (0.97, 2, (2, 3))
    assert now.gate.limits.min_contrast == 3.0 and now.paths is before.paths  # the run's counters carry over
    assert (before.model, model.thresholds.default, model.top_k) == (model, default, 3)
    assert (before.gate, before.policy, before.debouncer) == (gate, policy, None)
    assert now.info is before.info  # the same model by name: messages name it as before

    with pytest.raises(AttributeError):
        model.thresholds = now.model.thresholds
    with pytest.raises(dataclasses.FrozenInstanceError):
        daemon.cfg.model.top_k = 5
    with pytest.raises(TypeError):
        daemon.cfg.model.thresholds["0"] = 0.5
    assert isinstance(daemon.cfg.source.patterns, tuple)
