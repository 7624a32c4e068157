"""`edge-infer`: run the daemon, or check a config before you trust it to systemd.

Exit codes: 0 ok; 2 a problem only the user can fix (config, bundle, runtime, source), printed as one line — the
systemd unit does not restart on it; 1 anything else (`run`: an outbox that cannot be opened too) — the unit
restarts, backing off, for as long as it takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_infer import __version__
from edge_infer.bundle import BundleError
from edge_infer.cli_common import LOG_LEVELS, subcommand
from edge_infer.cli_fleet import add_parsers as add_fleet_parsers
from edge_infer.cli_setup import add_parsers as add_setup_parsers
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.outbox import OutboxError
from edge_infer.runtime import RuntimeUnavailable
from edge_infer.sources import SourceError

if TYPE_CHECKING:
    pass

USER_ERRORS = (ConfigError, BundleError, RuntimeUnavailable, OutboxError, SourceError)


def _setup_logging(level: str, fmt: str = "kv") -> None:
    from edge_infer.logs import setup_logging

    setup_logging(level, fmt)


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


def _check_findings(cfg: Config) -> list[tuple[str, str, str]]:
    """(what, status, detail) for the config, bundle(s), runtime, accelerator, camera and every broker. Raises
    the one-line errors (bad config or bundle, no runtime) on the way."""
    from edge_infer.model import describe, model_from_config
    from edge_infer.sinks.mqtt_settings import probe, settings_from_config

    found = [("config", "ok", f"{cfg.path} (device {cfg.device.id})")]
    model = model_from_config(cfg.model)
    found.append(("bundle", "ok", f"{model.bundle.path} — {describe(model)}"))
    if cfg.decide.escalate_to:
        second = model_from_config(cfg.model, cfg.decide.escalate_to)
        found.append(("escalate", "ok", f"{second.bundle.path} — {describe(second)}"))
    rt = model.engine.runtime
    variants = ", ".join(["cpu", *(f"{v.name} ({v.delegate})" for v in model.bundle.variants.values())])
    found.append(("runtime", "ok", f"{rt.name} {rt.version}, {cfg.model.threads} thread(s), delegate "
                                   f"{model.engine.settings.describe()}, variant {model.engine.variant} "
                                   f"(the bundle has: {variants})"))
    from edge_infer.delegates.edgetpu import found as edge_tpus

    accelerators = edge_tpus()
    found.append(("accel", "ok" if accelerators else "none", "; ".join(accelerators) or
                  "no Edge TPU on USB or PCIe (another accelerator's delegate: [model] delegate = \"external\")"))
    if (fallback := model.engine.fallback_from) is not None:  # the accelerator is missing: the CPU would run it
        found.append(("accel", "MISSING", f"{fallback.error} — the CPU ({rt.delegate}) runs the model and "
                                          f"{fallback.wanted.delegate} is retried with back-off "
                                          "(delegate_fallback = false makes this an error)"))
    if cfg.source.type == "camera":
        found.append(_camera_line(cfg.source.backend))
    if cfg.sink.type == "mqtt":
        settings = settings_from_config(cfg.mqtt, cfg.device.id or "check")
        for host, port in settings.hosts:  # every broker the daemon would try, with its login and TLS
            problem = probe(settings, host, port)
            found.append(("broker", "ok", f"{host}:{port} accepted the device's login") if problem is None else
                         ("broker", "unreachable", f"{host}:{port} ({problem}); results will queue in "
                                                   f"{cfg.outbox.path}"))
    return found


def cmd_check(args: argparse.Namespace) -> int:
    from edge_infer.install import findings as install_findings

    cfg = load_config(args.config)
    _setup_logging(args.log_level or "warning")
    installed = install_findings()
    if not args.json:  # first, and before anything that could fail for want of what they name
        for what, status, detail in installed:
            print(f"{what:<8} {status}: {detail}", flush=True)
    found = _check_findings(cfg)
    if args.json:
        found = installed + found
        print(json.dumps({"config": str(cfg.path), "checks": [{"check": what, "status": status, "detail": detail}
                                                              for what, status, detail in found]}, indent=2))
    else:
        for what, status, detail in found:
            print(f"{what:<8} {status}: {detail}")
    return 0


def _camera_line(backend: str) -> tuple[str, str, str]:
    """`check`'s finding on the camera library the configured backend needs."""
    import importlib.util

    from edge_infer.sources.camera import picamera2_problem

    problem = None if backend == "opencv" else picamera2_problem()
    if backend != "opencv" and problem is None:
        return "camera", "ok", "picamera2"
    opencv = importlib.util.find_spec("cv2") is not None
    if backend != "picamera2" and opencv:
        return "camera", "ok", "OpenCV" + (f" (picamera2 not usable: {problem})" if problem else "")
    return "camera", "MISSING", problem or "OpenCV is not installed: pip install opencv-python-headless"


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


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_infer.bench import BenchError, print_report, run_bench

    cfg = load_config(args.config)
    _setup_logging("error")
    try:
        report = run_bench(cfg, args.frames, args.rounds, args.broker)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-infer", description=__doc__.splitlines()[0],
                                     epilog="every command: edge-infer COMMAND --help")
    parser.add_argument("--version", action="version", version=f"edge-infer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    run = subcommand(sub.add_parser, "run", "run the inference daemon",
                     "edge-infer run --config /etc/edge-infer/config.toml\n"
                     "edge-infer run --config config.toml --once   # what the source holds now, then exit")
    run.add_argument("--config", required=True, help="device config (TOML)")
    run.add_argument("--once", action="store_true", help="process what the source holds, drain, exit")
    run.add_argument("--log-level", choices=LOG_LEVELS, help="overrides [log] level")
    run.set_defaults(func=cmd_run)
    check = subcommand(sub.add_parser, "check", "validate config, bundle and runtime; probe every broker",
                       "edge-infer check --config /etc/edge-infer/config.toml --json")
    check.add_argument("--config", required=True, help="device config (TOML)")
    check.add_argument("--json", action="store_true", help="print the findings as one JSON document")
    check.add_argument("--log-level", choices=LOG_LEVELS, help="log level while checking (warning)")
    check.set_defaults(func=cmd_check)
    box = subcommand(sub.add_parser, "outbox", "inspect or manage the outbox",
                     "edge-infer outbox stats --config config.toml\n"
                     "edge-infer outbox purge --what dead-letters --yes --config config.toml")
    box.add_argument("action", choices=("stats", "list", "dead-letters", "purge"), help="what to do")
    box.add_argument("--config", required=True, help="device config (TOML)")
    box.add_argument("--json", action="store_true", help="print JSON")
    box.add_argument("--limit", type=int, default=50, help="list / dead-letters: at most this many rows (50)")
    box.add_argument("--what", choices=("queue", "dead-letters"), default="dead-letters", help="purge: which")
    box.add_argument("--yes", action="store_true", help="purge: really delete")
    box.set_defaults(func=cmd_outbox)
    add_setup_parsers(sub.add_parser)
    exp = subcommand(sub.add_parser, "export", "copy kept inputs into the folder layout edge-convert reads",
                     "edge-infer export uncertain --config config.toml --to review/")
    exp.add_argument("what", choices=("uncertain", "rejected"), help="which review folder")
    exp.add_argument("--config", required=True, help="device config (TOML)")
    exp.add_argument("--to", required=True, help="destination folder (<to>/<label-or-reason>/...)")
    exp.add_argument("--group", action="append", help="only this label / reason (repeatable)")
    exp.set_defaults(func=cmd_export)
    bench = subcommand(sub.add_parser, "bench", "measure every stage on the configured model and inputs",
                       "edge-infer bench --config config.toml --frames 300")
    bench.add_argument("--config", required=True, help="device config (TOML); inputs from [source].path")
    bench.add_argument("--frames", type=int, default=200, help="frames per measurement (200)")
    bench.add_argument("--rounds", type=int, default=3, help="repeat every measurement; report medians (3)")
    bench.add_argument("--broker", metavar="HOST:PORT",
                       help="also measure end to end: every result published to this broker (anonymous, no TLS, "
                            "topics under edge-infer-bench/) and acknowledged; use a test broker")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(func=cmd_bench)
    add_fleet_parsers(sub.add_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"edge-infer: error: {exc}", file=sys.stderr)
        # the outbox's disk may come back (full, not yet mounted): worth a restart; the rest needs the user
        return 1 if isinstance(exc, OutboxError) and exc.transient and args.command == "run" else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
