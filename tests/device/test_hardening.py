"""Hostile input, in process: the parts a hostile publisher or file reaches, each through its interface with real
SQLite, real files and real signatures. The same attacks through a real broker and daemon: test_hostile.py."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest

from edge_infer.app.daemon import Daemon, DaemonFailed
from edge_infer.bundle import BundleError, read_parts
from edge_infer.config import load_config
from edge_infer.control.commands import CommandError, decode_json, plain_id
from edge_infer.control.replay import Refused, ReplayGuard
from edge_infer.control.transfer import Header, Transfer, TransferError, header_args
from edge_infer.messages import Identity, bounded_details, event_payload
from edge_infer.outbox import Limits, Outbox, Pending
from edge_infer.signing import SignatureError, generate_keypair, load_private_key, sign_bundle, verify_bundle
from edge_infer.sources.directory import DirectorySource, Options
from edge_infer.writer import OutboxWriter
from tests.conftest import DIGITS_INT8, write_config
from tests.device.faults import make_frames, wait_until
from tests.helpers.broker import free_port

IDENTITY = Identity("pi", "boot", {"name": "m", "version": "1", "sha256": "0" * 64})


def _events(box: Outbox) -> list[dict]:
    return [json.loads(r.payload) for r in box.pending(0, 100_000) if r.kind == "events"]


def _builder(seq: int, msg_id: str, name: str, details: dict) -> bytes:
    return event_payload(IDENTITY, seq, msg_id, name, details)


def test_the_writer_refuses_one_unbuildable_message_and_keeps_everything_else(tmp_path: Path):
    box = Outbox(tmp_path / "o.db", event_builder=_builder, primary=True)
    writer = OutboxWriter(box, window_s=0.2, max_batch=64, on_committed=lambda: None, on_problem=lambda _t: None)
    writer.start()

    def bad(_seq: int) -> bytes:
        return "\ud800".encode()  # what the writer died of: an unencodable echo

    items = [Pending("results", f"good-{i}", lambda s: b'{"ok":1}', ("src", f"k{i}")) for i in range(5)]
    items.insert(2, Pending("results", "bad", bad, ("src", "k-bad")))
    for item in items:
        assert writer.put(item)
    assert writer.flush(30)
    writer.put(Pending("results", "after", lambda s: b'{"ok":2}', ("src", "k-after")))
    assert writer.flush(30) and writer.is_alive()
    stored = [r.msg_id for r in box.pending(0, 100) if r.kind == "results"]
    assert stored == [f"good-{i}" for i in range(5)] + ["after"]
    assert box.is_processed("src", "k-bad")  # the input is not processed again
    refused = [e for e in _events(box) if e["event"] == "message_refused"]
    assert len(refused) == 1 and refused[0]["details"]["msg_id"] == "bad"
    assert "UnicodeEncodeError" in refused[0]["details"]["error"]
    writer.stop()
    box.close()


def test_an_echoed_lone_surrogate_or_a_huge_string_encodes_and_is_bounded():
    payload = event_payload(IDENTITY, 1, "m", "command_failed", {"id": "\ud800", "detail": "A" * 300_000})
    doc = json.loads(payload.decode("utf-8"))  # valid UTF-8 JSON
    assert len(payload) < 9 * 1024 and doc["details"]["id"] == "?"
    assert "A" * 1000 not in payload.decode()
    assert bounded_details({f"k{i}": "x" * 500 for i in range(1000)}).get("truncated") is True


@pytest.mark.parametrize("payload", [b"[" * 200_000, b'{"a":' * 50_000, b"\xff\xfe", b"null", b'"\\ud800"',
                                     b"1e999999", b'{"id": {"nested": []}}'])
def test_hostile_json_is_a_malformed_refusal_never_an_exception(payload: bytes):
    try:
        doc = decode_json(payload)
    except CommandError as exc:
        assert exc.reason == "malformed" and len(exc.detail) < 100
    else:
        assert isinstance(doc, dict) and plain_id(doc.get("id")) == ""


def test_replay_protection_survives_a_restart_and_refuses_stale_and_undated(tmp_path: Path):
    path = tmp_path / "commands.json"
    guard = ReplayGuard(path, window_s=600)
    now = time.time()
    guard.admit("key1", "a", now)
    restarted = ReplayGuard(path, window_s=600)  # a new process reads what the old one wrote
    with pytest.raises(Refused) as replayed:
        restarted.admit("key1", "a", now)
    assert replayed.value.reason == "replayed"
    with pytest.raises(Refused) as stale:  # signed a month ago: older than the newest seen by more than the window
        restarted.admit("key1", "b", now - 30 * 86400)
    assert stale.value.reason == "stale"
    for issued in (None, "yesterday", float("nan"), True):
        with pytest.raises(Refused) as undated:
            restarted.admit("key1", "c", issued)
        assert undated.value.reason == "malformed"
    restarted.admit("key1", "d", now - 60)  # out of order within the window is fine
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def _header(bundle: Path, chunk: int = 4096) -> tuple[Header, list[bytes]]:
    args, parts = header_args(bundle, chunk, "t1")
    return Header.parse(args, time.time(), 64 * 1024 * 1024, 128 * 1024), parts


def test_a_transfer_writes_only_chunks_its_signed_header_lists(tmp_path: Path):
    header, parts = _header(DIGITS_INT8)
    transfer = Transfer.begin(header, tmp_path / "slots")
    forged = base64.b64encode(b"\0" * len(parts[0])).decode()
    with pytest.raises(TransferError, match="not the one the signed header lists"):
        transfer.add({"transfer": "t1", "index": 0, "data": forged})
    assert transfer.path.stat().st_size == 0  # nothing written
    for bad in ({"index": len(parts), "data": ""}, {"index": "0", "data": ""}, {"index": 0, "data": "!!"},
                {"index": 0, "data": "A" * 10_000_000}):
        with pytest.raises(TransferError):
            transfer.add(bad)
    done = [transfer.add({"index": i, "data": base64.b64encode(p).decode()}) for i, p in enumerate(parts)]
    assert done[-1] and not any(done[:-1])
    target = transfer.finish(tmp_path / "incoming")
    assert target.read_bytes() == DIGITS_INT8.read_bytes()
    with pytest.raises(TransferError, match="size"):
        args, _ = header_args(DIGITS_INT8, 4096, "t2")
        Header.parse({**args, "size": 10 ** 12}, time.time(), 64 * 1024 * 1024, 128 * 1024)


def _zip_bomb(path: Path, member_mib: int) -> Path:
    """The model's bytes, then an archive holding a manifest and `member_mib` MiB of zeros (~1000:1)."""
    path.write_bytes(DIGITS_INT8.read_bytes())
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("golden/x.npy", "w") as out:
        block = b"\0" * (1 << 20)
        for _ in range(member_mib):
            out.write(block)
    return path


def test_a_zip_bomb_is_refused_from_the_central_directory_unread(tmp_path: Path):
    bomb = _zip_bomb(tmp_path / "bomb.tflite", 400)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(SignatureError) as refused:
        verify_bundle(bomb, [], max_bytes=64 * 1024 * 1024)
    assert refused.value.reason == "unreadable" and "unpacks to" in refused.value.detail
    with pytest.raises(BundleError, match=r"unpacks to|compressed"):
        read_parts(bomb)
    small = _zip_bomb(tmp_path / "small.tflite", 20)  # within the total, but 1000:1
    with pytest.raises(BundleError, match="compressed"):
        read_parts(small)


def test_streaming_verification_still_names_what_changed(tmp_path: Path):
    private, public = generate_keypair(tmp_path / "k")
    from edge_infer.signing import load_public_key

    bundle = tmp_path / "b.tflite"
    bundle.write_bytes(DIGITS_INT8.read_bytes())
    sign_bundle(bundle, load_private_key(private))
    assert verify_bundle(bundle, [load_public_key(public)])
    with zipfile.ZipFile(bundle, "a") as zf:
        zf.writestr("extra.txt", b"added")
    with pytest.raises(SignatureError, match=r"extra\.txt"):
        verify_bundle(bundle, [load_public_key(public)])


def _sample_error(source: DirectorySource, name: str) -> str | None:
    try:
        source.read_file(source.path / name)
    except OSError as exc:
        return str(exc)
    return None


def test_the_watched_folder_never_follows_a_link_out(tmp_path: Path):
    folder, outside = tmp_path / "in", tmp_path / "secret.txt"
    folder.mkdir()
    outside.write_text("EDGE_INFER_MQTT_PASSWORD=hunter2")
    (folder / "environ.png").symlink_to("/proc/self/environ")
    (folder / "secret.png").symlink_to(outside)
    (folder / "real.png").write_bytes(b"png")
    (folder / "inside.png").symlink_to(folder / "real.png")
    os.mkfifo(folder / "fifo.png")
    strict = DirectorySource(Options(type="directory", path=str(folder)))
    samples = {s.input_id: s for s in strict.samples(threading.Event(), True, lambda _s: False)}
    assert set(samples) == {"environ.png", "secret.png", "inside.png", "real.png"}  # a FIFO is no input
    assert samples["real.png"].data == b"png" and samples["environ.png"].data is None
    for name in ("environ.png", "secret.png", "inside.png"):
        assert "symbolic link" in (_sample_error(strict, name) or "")
    assert _sample_error(strict, "real.png") is None
    follow = DirectorySource(Options(type="directory", path=str(folder), follow_symlinks=True))
    assert _sample_error(follow, "inside.png") is None
    for name in ("environ.png", "secret.png"):
        assert "outside the watched folder" in (_sample_error(follow, name) or "")
    capped = DirectorySource(Options(type="directory", path=str(folder), max_file_bytes=2))
    assert "max_file_bytes" in (_sample_error(capped, "real.png") or "")


def _disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def test_200000_live_frames_keep_the_outbox_within_its_byte_cap(tmp_path: Path):
    """Live frames carry no checkpoint (the daemon passes none for a live source); data, drop events and the
    WAL stay within the stated bound however long it runs."""
    limits = Limits(max_bytes=1024 * 1024)
    box = Outbox(tmp_path / "o.db", "normal", limits, event_builder=_builder, primary=True)
    payload = json.dumps({"result": {"label": "7", "confidence": 0.93}, "pad": "x" * 450}).encode()
    peak = 0
    for batch in range(800):
        box.commit_batch([Pending("results", f"{batch}-{i}", lambda _s: payload, None) for i in range(250)])
        if batch % 40 == 0:
            peak = max(peak, _disk(tmp_path))
    stats = box.stats()
    bound = 1.3 * (limits.max_bytes + limits.event_bytes + limits.dead_letter_bytes) + 6 * 1024 * 1024
    assert max(peak, _disk(tmp_path)) <= bound, (peak, bound)
    assert stats["queued_data_bytes"] <= limits.max_bytes and stats["processed_inputs"] == 0
    assert stats["dropped"]["max_bytes"] > 190_000  # the cap really was crossed, again and again
    assert stats["last_seq"] > 200_000
    box.close()


def test_dead_letters_and_events_have_caps_of_their_own(tmp_path: Path):
    limits = Limits(max_bytes=64 * 1024, max_dead_letters=5, max_event_rows=8)
    box = Outbox(tmp_path / "o.db", limits=limits, event_builder=_builder, primary=True)
    seqs = [box.commit("results", str(i), lambda s: b"y" * 100) for i in range(12)]
    for seq in seqs:
        box.dead_letter(seq, "refused: " + "r" * 10_000)
    stats = box.stats()
    assert stats["dead_letters"] == 5 and stats["dead_letters_dropped"] == 7
    assert stats["queued_by_kind"]["events"] == 8 and stats["dropped"]["events"] > 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_worker_thread_that_dies_anyway_stops_the_daemon_loudly(tmp_path: Path):
    """Fault injection: the writer's commit raises SystemExit, which ends its thread whatever it catches. The
    daemon must not idle on (reading input, storing nothing): it stops with `DaemonFailed` (the CLI exits 1)."""
    make_frames(tmp_path / "in", 5)
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    daemon = Daemon(load_config(cfg))

    def die(_batch: list) -> list[int]:
        raise SystemExit("the writer thread dies")

    daemon.writer.outbox.commit_batch = die  # type: ignore[method-assign]
    failures: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except DaemonFailed as exc:
            failures.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    assert wait_until(lambda: not runner.is_alive(), 30), "the daemon idled on with a dead writer"
    assert failures and "outbox-writer" in str(failures[0])
    assert daemon.health()["threads"]["writer"] is False
