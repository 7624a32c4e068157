"""`edge-infer`: run the daemon, or check a config before you trust it to systemd.

Exit codes: 0 ok; 2 a problem only the user can fix (config, bundle, runtime, source), printed as one line — the
systemd unit does not restart on it; 1 anything else (`run`: an outbox that cannot be opened too) — the unit
restarts, backing off, for as long as it takes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_infer import __version__
from edge_infer.bundle import BundleError
from edge_infer.cli_setup import add_parsers
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.outbox import OutboxError
from edge_infer.runtime import RuntimeUnavailable
from edge_infer.sources import SourceError

if TYPE_CHECKING:
    from edge_infer.remote import Remote

USER_ERRORS = (ConfigError, BundleError, RuntimeUnavailable, OutboxError, SourceError)


def _setup_logging(level: str, fmt: str = "kv") -> None:
    from edge_infer.logs import setup_logging

    setup_logging(level, fmt)


def _broker_reachable(cfg: Config, timeout: float = 2.0) -> str | None:
    """None when a TCP connection to the broker opens, else why not."""
    try:
        with socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def cmd_run(args: argparse.Namespace) -> int:
    from edge_infer.app.daemon import Daemon, DaemonFailed  # heavy imports only once the config is known to be good

    cfg = load_config(args.config)
    _setup_logging(args.log_level or cfg.log.level, cfg.log.format)
    from edge_infer.logs import capture_stray_output

    restore = capture_stray_output()  # the runtime's own stderr lines (XNNPACK's INFO) in the same format
    try:
        daemon = Daemon(cfg)
        daemon.install_signal_handlers()
        summary = daemon.run(once=args.once)
    except DaemonFailed as exc:
        restore()
        print(f"edge-infer: error: {exc}", file=sys.stderr)
        return 1
    finally:
        restore()  # a one-line error from main() reaches stderr as it is
    if args.once:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.rejections.items())) or "none"
        paths = "".join(f", {n} {what}" for n, what in ((summary.escalated, "escalated"),
                        (summary.suppressed, "suppressed"), (summary.deferred, "deferred for review")) if n)
        print(
            f"edge-infer: {summary.results} results ({summary.uncertain} uncertain{paths}), "
            f"{summary.rejected} rejected ({reasons}), {summary.skipped} already done"
            + (f", {dropped} dropped (live source ahead of the pipeline)" if (dropped := daemon.source.dropped) else "")
            + f"; published {summary.published}, {summary.queued} still queued in {cfg.outbox.path}"
        )
        if summary.queued:
            print(
                f"edge-infer: broker {cfg.mqtt.host}:{cfg.mqtt.port} not reached in time; "
                "queued messages go out on the next run once it is reachable"
            )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from edge_infer.model import describe, model_from_config

    cfg = load_config(args.config)
    _setup_logging(args.log_level or "warning")
    print(f"config   ok: {cfg.path} (device {cfg.device.id})")
    model = model_from_config(cfg.model)
    print(f"bundle   ok: {model.bundle.path} — {describe(model)}")
    if cfg.decide.escalate_to:
        second = model_from_config(cfg.model, cfg.decide.escalate_to)
        print(f"escalate ok: {second.bundle.path} — {describe(second)}")
    rt = model.engine.runtime
    print(f"runtime  ok: {rt.name} {rt.version}, {cfg.model.threads} thread(s), delegate "
          f"{model.engine.settings.describe()}")
    if model.engine.fallback_from is not None:  # the accelerator is missing: the service would run on the CPU
        wanted, why = model.engine.fallback_from
        print(f"accel    MISSING: {why} — the CPU ({rt.delegate}) runs the model and {wanted.delegate} is retried "
              "with back-off (delegate_fallback = false makes this an error)")
    if cfg.source.type == "camera":
        print(_camera_line(cfg.source.backend))
    problem = _broker_reachable(cfg)
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    if problem is None:
        print(f"broker   ok: {where} reachable")
    else:
        print(f"broker   unreachable: {where} ({problem}); results will queue in {cfg.outbox.path}")
    return 0


def _camera_line(backend: str) -> str:
    """`check`'s line on the camera library the configured backend needs."""
    import importlib.util

    from edge_infer.sources.camera import picamera2_problem

    problem = None if backend == "opencv" else picamera2_problem()
    if backend != "opencv" and problem is None:
        return "camera   ok: picamera2"
    opencv = importlib.util.find_spec("cv2") is not None
    if backend != "picamera2" and opencv:
        return "camera   ok: OpenCV" + (f" (picamera2 not usable: {problem})" if problem else "")
    return f"camera   MISSING: {problem or 'OpenCV is not installed: pip install opencv-python-headless'}"


def cmd_outbox(args: argparse.Namespace) -> int:
    from edge_infer.outbox import Outbox

    cfg = load_config(args.config)
    path = cfg.outbox.path
    if not os.path.exists(path):
        raise OutboxError(f"{path}: no outbox yet (the daemon creates it on its first run)")
    box = Outbox(path, cfg.outbox.durability)
    try:
        if args.action == "stats":
            _show(box.stats(), args.json)
        elif args.action == "list":
            rows = box.pending(0, args.limit)
            if args.json:
                print(json.dumps([{"seq": r.seq, "kind": r.kind, "msg_id": r.msg_id, "bytes": len(r.payload)}
                                  for r in rows]))
            else:
                for r in rows:
                    print(f"{r.seq:>10}  {r.kind:<10}  {r.msg_id}  {len(r.payload):>6} B")
                print(f"({len(rows)} shown of {box.backlog()} queued)")
        elif args.action == "dead-letters":
            letters = box.dead_letters(args.limit)
            if args.json:
                print(json.dumps(letters))
            else:
                for d in letters:
                    print(f"{d['seq']:>10}  {d['kind']:<10}  {d['msg_id']}  {d['bytes']:>6} B  {d['reason']}")
                print(f"({len(letters)} shown of {box.dead_letter_count()} dead letters)")
        else:  # purge
            if not args.yes:
                print(f"edge-infer: this deletes every {args.what} entry in {path}; add --yes to do it",
                      file=sys.stderr)
                return 2
            print(f"purged {box.purge(args.what)} {args.what} entries (recorded as an outbox_dropped event)"
                  if args.what == "queue" else f"purged {box.purge(args.what)} dead letters")
    finally:
        box.close()
    return 0


def _show(doc: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    for key, value in doc.items():
        print(f"{key:<18} {value}")


def cmd_audit(args: argparse.Namespace) -> int:
    import threading
    import time

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_infer.audit import Auditor

    auditor = Auditor(validate=not args.no_schema)
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(_c, _u, msg: mqtt.MQTTMessage) -> None:
        with lock:
            auditor.feed(msg.topic, msg.payload)
            last[0] = time.monotonic()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(args.topic, qos=1)
    client.on_message = on_message
    try:
        client.connect(args.host, args.port)
    except OSError as exc:
        print(f"edge-infer: error: cannot reach broker {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    client.loop_start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.duration:
            if args.idle and time.monotonic() - last[0] > args.idle and auditor.messages:
                break
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        report = auditor.report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if not report["schema_validation"]:
            print("schema validation skipped: pip install jsonschema")
        for device, d in report["devices"].items():
            print(f"{device}: {d['received']} unique messages (seq {d['seq_first']}..{d['seq_last']}), "
                  f"{d['duplicates_dropped']} duplicates dropped, {d['explained_drops']} explained drops, "
                  f"{d['dead_letters']} dead letters, {d['missing']} missing {d['unexplained_gaps'][:5]}")
        for problem in report["invalid"][:10]:
            print(f"invalid: {problem}")
        print("complete" if report["complete"] else "INCOMPLETE")
    return 0 if report["complete"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_infer.bench import BenchError, print_report, run_bench

    cfg = load_config(args.config)
    _setup_logging("error")
    try:
        report = run_bench(cfg, args.frames, args.rounds)
    except BenchError as exc:
        print(f"edge-infer: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edge_infer.review import export

    cfg = load_config(args.config)
    root = cfg.decide.uncertain_dir if args.what == "uncertain" else cfg.gate.rejected_dir
    try:
        counts = export(root, args.to, set(args.group) if args.group else None)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    total = sum(counts.values())
    detail = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing"
    print(f"edge-infer: exported {total} {args.what} inputs from {root} to {args.to} ({detail})")
    if args.what == "uncertain" and total:
        print("edge-infer: folders are the model's guesses: check and move files before training on them")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge_infer.signing import generate_keypair, key_id, load_private_key

    try:
        private, public = generate_keypair(args.out)
    except FileExistsError as exc:
        raise ConfigError(str(exc)) from None
    print(f"edge-infer: wrote {private} (private: keep it on the signing machine, mode 0600) and {public} "
          f"(public: list it in each device's [fleet].keys); key id {key_id(load_private_key(private))}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from edge_infer.signing import load_private_key, sign_bundle

    try:
        key = load_private_key(args.key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for bundle in args.bundle:
        print(f"edge-infer: signed {bundle} with key {sign_bundle(bundle, key)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from edge_infer.golden import read_golden
    from edge_infer.signing import SignatureError, load_public_key, read_parts, verify_bundle

    try:
        keys = [load_public_key(k) for k in args.key]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    failed = 0
    for bundle in args.bundle:
        try:
            signer = verify_bundle(bundle, keys)
        except SignatureError as exc:
            print(f"edge-infer: {bundle}: REFUSED ({exc.reason}): {exc.detail}")
            failed += 1
            continue
        golden = read_golden(read_parts(bundle).members)
        print(f"edge-infer: {bundle}: signed by {signer}; {len(golden) if golden else 'no'} golden inputs")
    return 1 if failed else 0


def _remote(args: argparse.Namespace) -> Remote:
    from edge_infer.remote import Broker, Remote

    host, _, port = args.broker.rpartition(":")
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    broker = Broker(host or args.broker, int(port) if port.isdigit() else 1883, args.username, password, args.tls,
                    args.ca_file)
    try:
        return Remote(broker, args.prefix, args.device)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"{args.broker}: cannot reach the broker: {exc}") from None


def _print_answer(events: list[dict], timeout: float) -> int:
    if not events:
        print(f"edge-infer: no answer within {timeout:.0f} s (is the device online, and [commands] enabled?)",
              file=sys.stderr)
        return 2
    for event in events:
        print(json.dumps({"event": event.get("event"), **event.get("details", {})}))
    return 1 if any(e.get("event") in ("command_failed", "model_rolled_back") for e in events) else 0


def cmd_command(args: argparse.Namespace) -> int:
    from edge_infer.remote import command_payload

    try:
        command_args = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--args: not JSON: {exc}") from None
    command_id, payload = command_payload(args.name, args.device, command_args, Path(args.key) if args.key else None)
    remote = _remote(args)
    try:
        remote.publish(f"cmd/{args.name}", payload)
        return _print_answer(remote.wait(command_id, args.timeout), args.timeout)
    finally:
        remote.close()


def cmd_push_model(args: argparse.Namespace) -> int:
    from edge_infer.remote import bundle_chunks

    transfer, chunks = bundle_chunks(Path(args.bundle), args.chunk_bytes, Path(args.key), args.device)
    remote = _remote(args)
    try:
        for i, chunk in enumerate(chunks, 1):
            remote.publish("cmd/update-model", chunk)
            print(f"\redge-infer: sent {i}/{len(chunks)} messages", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        also = ("model_confirmed", "model_rolled_back") if args.wait_watch else ()
        return _print_answer(remote.wait(transfer, args.timeout, also), args.timeout)
    finally:
        remote.close()


def _remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True, help="the device's id ([device].id)")
    p.add_argument("--broker", default="127.0.0.1:1883", help="host:port (127.0.0.1:1883)")
    p.add_argument("--prefix", default="edge", help="the devices' [mqtt].topic_prefix (edge)")
    p.add_argument("--username")
    p.add_argument("--password-file")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--ca-file")
    p.add_argument("--timeout", type=float, default=60.0, help="wait this long for the answer (s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-infer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-infer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the inference daemon")
    run.add_argument("--config", required=True, help="device config (TOML)")
    run.add_argument("--once", action="store_true", help="process what the source holds, drain, exit")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate config, bundle and runtime; probe the broker")
    check.add_argument("--config", required=True, help="device config (TOML)")
    check.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    check.set_defaults(func=cmd_check)
    box = sub.add_parser("outbox", help="inspect or manage the outbox")
    box.add_argument("action", choices=("stats", "list", "dead-letters", "purge"))
    box.add_argument("--config", required=True, help="device config (TOML)")
    box.add_argument("--json", action="store_true")
    box.add_argument("--limit", type=int, default=50)
    box.add_argument("--what", choices=("queue", "dead-letters"), default="dead-letters", help="purge: which")
    box.add_argument("--yes", action="store_true", help="purge: really delete")
    box.set_defaults(func=cmd_outbox)
    audit = sub.add_parser("audit", help="subscribe and check streams are complete (for subscribers)")
    audit.add_argument("--host", default="127.0.0.1")
    audit.add_argument("--port", type=int, default=1883)
    audit.add_argument("--topic", default="edge/#")
    audit.add_argument("--duration", type=float, default=60.0, help="listen at most this long (s)")
    audit.add_argument("--idle", type=float, default=0.0, help="stop after this many quiet seconds (s)")
    audit.add_argument("--no-schema", action="store_true", help="skip JSON Schema validation")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)
    add_parsers(sub.add_parser)
    exp = sub.add_parser("export", help="copy kept inputs into the folder layout edge-convert reads")
    exp.add_argument("what", choices=("uncertain", "rejected"), help="which review folder")
    exp.add_argument("--config", required=True, help="device config (TOML)")
    exp.add_argument("--to", required=True, help="destination folder (<to>/<label-or-reason>/...)")
    exp.add_argument("--group", action="append", help="only this label / reason (repeatable)")
    exp.set_defaults(func=cmd_export)
    bench = sub.add_parser("bench", help="measure every stage on the configured model and inputs")
    bench.add_argument("--config", required=True, help="device config (TOML); inputs from [source].path")
    bench.add_argument("--frames", type=int, default=200, help="frames per measurement (200)")
    bench.add_argument("--rounds", type=int, default=3, help="repeat every measurement; report medians (3)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)
    keygen = sub.add_parser("keygen", help="make a fleet signing key pair (<out>.key, <out>.pub)")
    keygen.add_argument("--out", required=True, help="path stem, e.g. fleet")
    keygen.set_defaults(func=cmd_keygen)
    sign = sub.add_parser("sign", help="sign bundles with the fleet's private key")
    sign.add_argument("bundle", nargs="+")
    sign.add_argument("--key", required=True, help="private key (PEM)")
    sign.set_defaults(func=cmd_sign)
    verify = sub.add_parser("verify", help="check bundles' signatures as a device would")
    verify.add_argument("bundle", nargs="+")
    verify.add_argument("--key", required=True, action="append", help="public key (PEM file or base64); repeatable")
    verify.set_defaults(func=cmd_verify)
    command = sub.add_parser("command", help="send a command to a device and print its answer")
    command.add_argument("name", help="reload, snapshot, set-threshold or update-model")
    command.add_argument("--args", help='JSON object, e.g. \'{"threshold": 0.8}\'')
    command.add_argument("--key", help="fleet private key to sign with (devices with [commands] auth = \"signed\")")
    _remote_args(command)
    command.set_defaults(func=cmd_command)
    push = sub.add_parser("push-model", help="send a signed bundle to a device over MQTT and print what it did")
    push.add_argument("bundle")
    push.add_argument("--chunk-bytes", type=int, default=96 * 1024,
                      help="raw bytes per chunk message (96 KiB: about 128 KiB on the wire)")
    push.add_argument("--key", required=True,
                      help="fleet private key: signs the transfer header that the device checks before it writes")
    push.add_argument("--wait-watch", action="store_true", help="also wait for the watch window's verdict")
    _remote_args(push)
    push.set_defaults(func=cmd_push_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"edge-infer: error: {exc}", file=sys.stderr)
        # the outbox's disk may come back (full, remounted): worth a restart; the rest needs the user
        return 1 if isinstance(exc, OutboxError) and args.command == "run" else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
