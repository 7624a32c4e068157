"""Fallbacks end to end (CLI, config, MQTT): a cascade beats its small model; suppressed results are counted,
deferred ones kept for review and exportable in the layout edge-convert reads — and seq stays gapless."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from edge_infer.bundle import load_bundle
from tests.conftest import DIGITS_INT8, REPO, run_cli, write_config
from tests.device.test_daemon_mqtt import make_inputs
from tests.helpers.broker import Mosquitto
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber

TINY = REPO / "demo" / "digits-tiny.tflite"


def _run(tmp_path: Path, name: str, broker: Mosquitto, truth: dict[str, str], decide: str,
         drift: str = "enabled = false") -> tuple[list[dict], str]:
    cfg = write_config(tmp_path / f"{name}.toml", bundle=TINY, source=tmp_path / "in", state=tmp_path / name,
                       port=broker.port, device_id=name, drift=drift)
    cfg.write_text(cfg.read_text() + f"\n[decide]\n{decide}\n")
    sub = Subscriber(broker.port, f"edge/{name}/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: s.went_offline(), 30), "the run's last word (offline) never arrived"
    docs = [m.json() for m in sub.of_kind("results")]
    for doc in docs:
        validate("results", doc)
    seqs = sorted(m.json()["seq"] for m in sub.messages if m.kind in ("results", "rejections", "events"))
    assert seqs == list(range(1, len(seqs) + 1)), "seq stays gapless around suppressed / deferred results"
    return docs, proc.stderr


def _accuracy(docs: list[dict], truth: dict[str, str]) -> float:
    return sum(d["result"]["label"] == truth[d["input"]["id"]] for d in docs) / len(truth)


def test_cascade_escalates_uncertain_inputs_and_beats_the_small_model(tmp_path: Path, broker: Mosquitto) -> None:
    """A one-layer model (94 % on held-out digits) with the CNN behind it for what it is unsure of (1 in 5)."""
    truth = make_inputs(tmp_path / "in")
    alone, _ = _run(tmp_path, "tiny", broker, truth, 'fallback = "publish"')
    cascade, log = _run(tmp_path, "cascade", broker, truth, f'fallback = "escalate"\nescalate_to = "{DIGITS_INT8}"',
                        drift="window = 200")
    assert len(alone) == len(cascade) == len(truth)
    escalated = [d for d in cascade if d["path"] == "escalated"]
    uncertain_alone = [d for d in alone if d["status"] == "uncertain"]
    assert {d["input"]["id"] for d in escalated} == {d["input"]["id"] for d in uncertain_alone}
    big = load_bundle(DIGITS_INT8).manifest.model_sha256
    assert all(d["decided_by"]["sha256"] == big for d in escalated)
    assert all(d["path"] == "model" and "decided_by" not in d for d in cascade if d not in escalated)
    gain = _accuracy(cascade, truth) - _accuracy(alone, truth)
    assert gain >= 0.03, f"tiny {_accuracy(alone, truth):.3f} → cascade {_accuracy(cascade, truth):.3f}"
    assert f"escalated={len(escalated)} " in log
    # the drift monitor follows the first model: escalated inputs count as its uncertain ones, so the
    # uncertain rate matches the reference (the folder's label order does skew the predicted classes)
    alarmed = log.split("event=stop", 1)[1].split("drift=", 1)[1].split()[0].split(",")
    assert "predicted_class" in alarmed and "uncertain_rate" not in alarmed, alarmed


def test_suppress_counts_and_defer_keeps_for_review(tmp_path: Path, broker: Mosquitto) -> None:
    truth = make_inputs(tmp_path / "in")
    published, _ = _run(tmp_path, "pub", broker, truth, 'fallback = "publish"')
    unsure = {d["input"]["id"]: d["result"]["label"] for d in published if d["status"] == "uncertain"}
    assert len(unsure) >= 10
    suppressed, log = _run(tmp_path, "sup", broker, truth, 'fallback = "suppress"')
    assert {d["input"]["id"] for d in suppressed} == set(truth) - set(unsure)
    assert f"suppressed={len(unsure)} " in log
    deferred, log = _run(tmp_path, "def", broker, truth, 'fallback = "defer"\nkeep_uncertain = 25')
    assert {d["input"]["id"] for d in deferred} == set(truth) - set(unsure)
    assert f"deferred={len(unsure)} " in log
    kept = sorted(p for p in (tmp_path / "def" / "uncertain").glob("*/*") if p.suffix != ".json")
    assert len(kept) == min(25, len(unsure)), "the review folder stays within its cap"
    for path in kept:  # filed under the model's guess, with the result beside it
        assert unsure[path.name.split("-", 1)[1]] == path.parent.name
        assert path.with_name(path.name + ".json").exists()
    cfg = tmp_path / "def.toml"
    proc = run_cli("export", "uncertain", "--config", str(cfg), "--to", str(tmp_path / "export"))
    assert proc.returncode == 0, proc.stderr
    exported = sorted((tmp_path / "export").glob("*/*"))
    assert len(exported) == len(kept) and not any(p.suffix == ".json" for p in exported)
    assert f"exported {len(kept)} uncertain inputs" in proc.stdout


def test_kept_inputs_upload_in_chunks_once_results_are_out(tmp_path: Path, broker: Mosquitto) -> None:
    """`upload = true`: every deferred input arrives on /captures, reassembled byte for byte, after the
    results; a second run sends nothing again."""
    import base64
    import hashlib

    make_inputs(tmp_path / "in")
    decide = 'fallback = "defer"\nkeep_uncertain = 15\nupload = true\nupload_chunk_bytes = 1024'
    cfg = write_config(tmp_path / "up.toml", bundle=TINY, source=tmp_path / "in", state=tmp_path / "up",
                       port=broker.port, device_id="up")
    cfg.write_text(cfg.read_text() + f"\n[decide]\n{decide}\n")
    sub = Subscriber(broker.port, "edge/up/#")
    assert run_cli("run", "--config", str(cfg), "--once").returncode == 0
    assert sub.wait_for(lambda s: len({m.json()["capture"]["id"] for m in s.of_kind("captures")}) >= 15)
    parts: dict[str, dict[int, bytes]] = {}
    for m in sub.of_kind("captures"):
        doc = m.json()
        validate("captures", doc)
        cap = doc["capture"]
        parts.setdefault(cap["sha256"], {})[cap["chunk"]] = base64.b64decode(doc["data"])
        if cap["chunk"] == 0:
            assert doc["meta"]["decision"]["status"] == "uncertain"
    kept = {p.read_bytes() for p in (tmp_path / "up" / "uncertain").glob("*/*") if p.suffix == ".png"}
    rebuilt = {b"".join(chunks[i] for i in sorted(chunks)) for chunks in parts.values()}
    inputs = {p.read_bytes() for p in (tmp_path / "in").iterdir()}
    # every input still kept went out, each a byte-exact copy of an input; on a slow machine one may go out while
    # the outbox is momentarily empty and later leave the folder (it holds the newest 15): that one is extra here
    assert kept <= rebuilt <= inputs and all(hashlib.sha256(b).hexdigest() in parts for b in rebuilt)
    # captures go out only while no result waits: a result stored (its `ts`) well before a capture chunk was made
    # is published before that chunk. (A slow pipeline leaves the outbox empty between results, so captures
    # may interleave with results stored later: that is by design.)
    stamped = [(m.kind, datetime.fromisoformat(m.json()["ts"].replace("Z", "+00:00")).timestamp())
               for m in sub.messages if m.kind in ("results", "captures")]
    for i, (kind, made) in enumerate(stamped):
        if kind == "captures":
            assert not [t for k, t in stamped[i + 1:] if k == "results" and t < made - 0.5], \
                "a result stored before a capture was made waited behind it"
    assert sub.wait_for(lambda s: s.went_offline(1), 30)
    before = len(sub.of_kind("captures"))
    assert run_cli("run", "--config", str(cfg), "--once").returncode == 0
    assert sub.wait_for(lambda s: s.went_offline(2), 30), "the second run's offline (sent after any upload)"
    assert len(sub.of_kind("captures")) == before


def test_uploader_splits_large_files_and_skips_oversized_ones(tmp_path: Path) -> None:
    import base64
    import json
    import os

    from edge_infer.uploader import CaptureUploader

    (tmp_path / "blurry").mkdir()
    data = os.urandom(5000)
    (tmp_path / "blurry" / "a.jpg").write_bytes(data)
    (tmp_path / "blurry" / "a.jpg.json").write_text('{"reason": "blurry"}')
    (tmp_path / "blurry" / "huge.jpg").write_bytes(os.urandom(9000))
    up = CaptureUploader({"rejected": tmp_path}, lambda: {"v": 1}, max_bytes=8000, chunk_bytes=1024)
    capture, chunks = up.next_file()
    docs = [json.loads(c) for c in chunks]
    assert [d["capture"]["chunk"] for d in docs] == [0, 1, 2, 3, 4] and docs[0]["meta"] == {"reason": "blurry"}
    assert b"".join(base64.b64decode(d["data"]) for d in docs) == data
    up.mark_done(capture)
    assert up.next_file() is None and up.skipped_too_large == 1 and not up.pending()
    again = CaptureUploader({"rejected": tmp_path}, lambda: {"v": 1}, max_bytes=8000, chunk_bytes=1024)
    assert again.next_file() is None, "the .uploaded list survives a restart"
