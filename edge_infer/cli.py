"""`edge-infer`: run the daemon, or check a config before you trust it to systemd.

Exit codes: 0 ok; 2 a problem the user can fix (config, bundle, runtime, outbox), printed as one line.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

from edge_infer import __version__
from edge_infer.bundle import BundleError
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.outbox import OutboxError
from edge_infer.runtime import RuntimeUnavailable

USER_ERRORS = (ConfigError, BundleError, RuntimeUnavailable, OutboxError)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


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
    _setup_logging(args.log_level or cfg.log["level"])
    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    summary = daemon.run(once=args.once)
    if args.once:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.rejections.items())) or "none"
        print(
            f"edge-infer: {summary.results} results ({summary.uncertain} uncertain), "
            f"{summary.rejected} rejected ({reasons}), {summary.skipped} already done; "
            f"published {summary.published}, {summary.queued} still queued in {cfg.outbox['path']}"
        )
        if summary.queued:
            print(
                f"edge-infer: broker {cfg.mqtt['host']}:{cfg.mqtt['port']} not reached in time; "
                "queued messages go out on the next run once it is reachable"
            )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from edge_infer.bundle import load_bundle
    from edge_infer.pipeline import Classifier

    cfg = load_config(args.config)
    _setup_logging(args.log_level or "warning")
    print(f"config   ok: {cfg.path} (device {cfg.device['id']})")
    bundle = load_bundle(cfg.model["bundle"])
    m = bundle.manifest
    print(
        f"bundle   ok: {bundle.path} — {m.name} {m.version}, {m.task}, {len(m.labels)} labels, "
        f"input {m.input.width}x{m.input.height} {m.input.color}, model {m.model_size} bytes, "
        f"sha256 {m.model_sha256[:12]}…"
    )
    classifier = Classifier(bundle, cfg.model["threads"], cfg.model["runtime"])
    rt = classifier.engine.runtime
    print(f"runtime  ok: {rt.name} {rt.version}, {cfg.model['threads']} thread(s)")
    problem = _broker_reachable(cfg)
    where = f"{cfg.mqtt['host']}:{cfg.mqtt['port']}"
    if problem is None:
        print(f"broker   ok: {where} reachable")
    else:
        print(f"broker   unreachable: {where} ({problem}); results will queue in {cfg.outbox['path']}")
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
