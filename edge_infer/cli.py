"""`edge-infer`: run the daemon, or check a config before you trust it to systemd.

Exit codes: 0 ok; 2 a problem the user can fix (config, bundle, runtime, outbox), printed as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_infer import __version__
from edge_infer.bundle import BundleError
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.outbox import OutboxError
from edge_infer.runtime import RuntimeUnavailable
from edge_infer.sources import SourceError

USER_ERRORS = (ConfigError, BundleError, RuntimeUnavailable, OutboxError, SourceError)


def _setup_logging(level: str, fmt: str = "kv") -> None:
    from edge_infer.logs import setup_logging

    setup_logging(level, fmt)


def _broker_reachable(cfg: Config, timeout: float = 2.0) -> str | None:
    """None when a TCP connection to the broker opens, else why not."""
    try:
        with socket.create_connection((cfg.mqtt["host"], cfg.mqtt["port"]), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def cmd_run(args: argparse.Namespace) -> int:
    from edge_infer.daemon import Daemon  # heavy imports only once the config is known to be good

    cfg = load_config(args.config)
    _setup_logging(args.log_level or cfg.log["level"], cfg.log["format"])
    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    summary = daemon.run(once=args.once)
    if args.once:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.rejections.items())) or "none"
        paths = "".join(f", {n} {what}" for n, what in ((summary.escalated, "escalated"),
                        (summary.suppressed, "suppressed"), (summary.deferred, "deferred for review")) if n)
        print(
            f"edge-infer: {summary.results} results ({summary.uncertain} uncertain{paths}), "
            f"{summary.rejected} rejected ({reasons}), {summary.skipped} already done"
            + (f", {dropped} dropped (live source ahead of the pipeline)" if (dropped := daemon.source.dropped) else "")
            + f"; published {summary.published}, {summary.queued} still queued in {cfg.outbox['path']}"
        )
        if summary.queued:
            print(
                f"edge-infer: broker {cfg.mqtt['host']}:{cfg.mqtt['port']} not reached in time; "
                "queued messages go out on the next run once it is reachable"
            )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from edge_infer.model import describe, model_from_config

    cfg = load_config(args.config)
    _setup_logging(args.log_level or "warning")
    print(f"config   ok: {cfg.path} (device {cfg.device['id']})")
    model = model_from_config(cfg.model)
    print(f"bundle   ok: {model.bundle.path} — {describe(model)}")
    if cfg.decide["escalate_to"]:
        second = model_from_config(cfg.model, cfg.decide["escalate_to"])
        print(f"escalate ok: {second.bundle.path} — {describe(second)}")
    rt = model.engine.runtime
    print(f"runtime  ok: {rt.name} {rt.version}, {cfg.model['threads']} thread(s)")
    problem = _broker_reachable(cfg)
    where = f"{cfg.mqtt['host']}:{cfg.mqtt['port']}"
    if problem is None:
        print(f"broker   ok: {where} reachable")
    else:
        print(f"broker   unreachable: {where} ({problem}); results will queue in {cfg.outbox['path']}")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from edge_infer.outbox import Outbox

    cfg = load_config(args.config)
    path = cfg.outbox["path"]
    if not os.path.exists(path):
        raise OutboxError(f"{path}: no outbox yet (the daemon creates it on its first run)")
    box = Outbox(path, cfg.outbox["durability"])
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
    from edge_infer.capture import export

    cfg = load_config(args.config)
    root = cfg.decide["uncertain_dir"] if args.what == "uncertain" else cfg.gate["rejected_dir"]
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


def cmd_install_service(args: argparse.Namespace) -> int:
    import pwd
    import subprocess

    from edge_infer.unit import install_commands, next_steps, render_unit

    cfg = load_config(args.config)
    unit = render_unit(cfg, args.python)
    path = Path(args.unit_dir) / "edge-infer.service"
    commands = install_commands(cfg, path)
    try:
        pwd.getpwnam(cfg.service["user"])
        commands = [c for c in commands if c[0] != "useradd"]
    except KeyError:
        pass
    if args.dry_run:
        print(f"# would write {path}:\n{unit}")
        for command in commands:
            print("# would run: " + " ".join(command))
    else:
        if os.geteuid() != 0:
            raise ConfigError(f"{cfg.path}: install-service writes {path} and creates a system user: run it as root "
                              "(or with --dry-run to see what it would do)")
        path.write_text(unit, encoding="utf-8")
        print(f"edge-infer: wrote {path}")
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            status = "ok" if done.returncode == 0 else f"failed: {done.stderr.strip()}"
            print(f"edge-infer: {' '.join(command)} — {status}")
    print(f"edge-infer: the service user '{cfg.service['user']}' must be able to read {cfg.path} and "
          f"{cfg.model['bundle']}. Then:")
    for step in next_steps(path):
        print(f"  {step}")
    return 0


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
    svc = sub.add_parser("install-service", help="write the hardened systemd unit and create the service user")
    svc.add_argument("--config", required=True, help="device config (TOML); its [service] table sets the limits")
    svc.add_argument("--dry-run", action="store_true", help="print the unit and the commands instead")
    svc.add_argument("--unit-dir", default="/etc/systemd/system")
    svc.add_argument("--python", default=None, help="the Python that runs edge-infer (default: this one)")
    svc.set_defaults(func=cmd_install_service)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"edge-infer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
