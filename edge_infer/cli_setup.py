"""`edge-infer init` and `edge-infer install-service`: set a device up — a starter config for the camera it
has, and the hardened systemd unit (one service, or one instance per camera of the `edge-infer@` template)."""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
from pathlib import Path

from edge_infer.cli_common import AddParser, subcommand
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.hosts import host_port


def _venv_for_camera(cfg: Config, python: str | None, dry_run: bool) -> list[str]:
    """A camera config whose venv cannot see apt's picamera2: switch the venv to see system packages (what
    `--system-site-packages` would have done). Lines saying what was (or would be) done."""
    from edge_infer.sources.camera import picamera2_problem
    from edge_infer.venv import APT_SITE, let_see_system_site, sees_system_site, venv_config

    if cfg.source.type != "camera" or cfg.source.backend == "opencv" or not (APT_SITE / "picamera2").is_dir():
        return []
    cfg_file = venv_config(str(Path(python).parent.parent) if python else None)
    if cfg_file is None or sees_system_site(cfg_file) or picamera2_problem() is None:
        return []
    if dry_run:
        return [f"would let {cfg_file.parent} see apt's packages (picamera2): include-system-site-packages = true"]
    let_see_system_site(cfg_file)
    return [f"let {cfg_file.parent} see apt's packages (picamera2): include-system-site-packages = true"]


def _install_gaps(python: str | None) -> list[str]:
    """What the service's Python lacks to run the daemon (`edge_infer.install`), one line each — asked of that
    Python itself, which may be another venv than this one."""
    import json

    ask = "from edge_infer.install import main; main()"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as systemd starts it: no PYTHONPATH
    try:
        done = subprocess.run([python or sys.executable, "-c", ask], capture_output=True, text=True, timeout=60,
                              cwd="/", env=env)
        found = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return [f"{python or sys.executable} cannot import edge_infer: install edge-infer into that venv "
                "(README: Install on a Pi)"]
    return [detail for _what, status, detail in found if status == "MISSING"]


def _siblings(cfg: Config) -> list[Config]:
    """The other configs in the folder an instance's config lives in (the ones that load)."""
    others = []
    for path in sorted(cfg.path.parent.glob("*.toml")):
        try:
            others.append(load_config(path))
        except (ConfigError, OSError):
            continue
    return others


def _unit_files(cfg: Config, args: argparse.Namespace) -> tuple[str, dict[Path, str]]:
    """(the unit to enable, {file: text}) for one service or an instance of the template."""
    from edge_infer.unit import UNIT_NAME, instance_name, render_template, render_unit, shared_state_dir

    unit_dir = Path(args.unit_dir)
    if not args.instance:
        return UNIT_NAME, {unit_dir / UNIT_NAME: render_unit(cfg, args.python)}
    try:
        name = instance_name(cfg)
        template, dropin = render_template(cfg, args.python)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if problem := shared_state_dir(cfg, _siblings(cfg)):
        raise ConfigError(problem)
    unit = f"edge-infer@{name}.service"
    return unit, {unit_dir / "edge-infer@.service": template, unit_dir / f"{unit}.d" / "config.conf": dropin}


def cmd_install_service(args: argparse.Namespace) -> int:
    from edge_infer.unit import hidden_paths, install_commands, next_steps, service_groups

    cfg = load_config(args.config)
    unit, files = _unit_files(cfg, args)
    if not args.dry_run and os.geteuid() != 0:
        raise ConfigError(f"{cfg.path}: install-service writes {next(iter(files))} and creates a system user: run "
                          "it as root (or with --dry-run to see what it would do)")
    gaps = _install_gaps(args.python)
    if gaps and not args.dry_run:
        raise ConfigError(f"the service's Python lacks {gaps[0]}" + (f" (and {len(gaps) - 1} more: run edge-infer "
                                                                     "check)" if len(gaps) > 1 else ""))
    for gap in gaps:
        print(f"edge-infer: warning: the service's Python lacks {gap}", file=sys.stderr)
    problems = hidden_paths(cfg, args.python)
    if problems and not args.dry_run:
        raise ConfigError(f"{cfg.path}: {problems[0]}" + (f" (and {len(problems) - 1} more: see --dry-run)"
                                                          if len(problems) > 1 else ""))
    for problem in problems:
        print(f"edge-infer: warning: {problem}", file=sys.stderr)
    for group in service_groups(cfg)[1]:
        print(f"edge-infer: warning: group {group!r} does not exist here, so the service does not join it (its "
              "device's driver or udev rules create it: install them, then run install-service again)",
              file=sys.stderr)
    commands = install_commands(cfg)
    try:
        pwd.getpwnam(cfg.service.user)
        commands = [c for c in commands if c[0] != "useradd"]
    except KeyError:
        pass
    for line in _venv_for_camera(cfg, args.python, args.dry_run):
        print(f"edge-infer: {line}")
    if args.dry_run:
        for path, text in files.items():
            print(f"# would write {path}:\n{text}")
        for command in commands:
            print("# would run: " + " ".join(command))
    else:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"edge-infer: wrote {path}")
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            status = "ok" if done.returncode == 0 else f"failed: {done.stderr.strip()}"
            print(f"edge-infer: {' '.join(command)} — {status}")
    print(f"edge-infer: the service user '{cfg.service.user}' must be able to read {cfg.path} and "
          f"{cfg.model.bundle}. Then:")
    for step in next_steps(unit):
        print(f"  {step}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Find the camera and write a starter config for it (never over an existing file)."""
    from edge_infer.sources.camera import picamera2_problem
    from edge_infer.starter import find_cameras, starter_config

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists: pass --force to replace it, or --out another file")
    if host_port(args.broker) is None:
        raise ConfigError(f"--broker {args.broker!r}: expected host:port, e.g. 127.0.0.1:1883")
    cameras, csi_unreached = find_cameras(Path(args.sys_root))
    if csi_unreached:
        print(f"edge-infer: a Raspberry Pi camera is attached, but {picamera2_problem() or 'picamera2 lists none'}",
              file=sys.stderr)
    if not cameras:
        raise ConfigError("no camera found (picamera2 lists none and no USB camera is under /dev/video*): "
                          "plug one in and run this again, or write [source] by hand (docs/inputs.md)")
    camera = cameras[args.camera] if args.camera < len(cameras) else None
    if camera is None:
        raise ConfigError(f"--camera {args.camera}: only {len(cameras)} camera(s) found")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(starter_config(camera, args.bundle, args.broker, args.device_id), encoding="utf-8")
    others = "".join(f"\n  camera {i}: {c.name} ({c.backend} {c.index})" for i, c in enumerate(cameras) if c != camera)
    print(f"edge-infer: wrote {out} for {camera.name} ({camera.backend}, camera {camera.index})"
          + (f"; also found (--camera N):{others}" if others else ""))
    print(f"  next: put your bundle at {args.bundle}, then: edge-infer check --config {out}")
    return 0


def add_parsers(add_parser: AddParser) -> None:
    """The `init` and `install-service` subcommands (`add_parser`: the subparsers' `add_parser`)."""
    init = subcommand(add_parser, "init", "find the camera and write a starter config for it",
                      "edge-infer init --camera --bundle /var/lib/edge-infer/models/model.tflite \\\n"
                      "    --broker 192.168.1.10:1883 --out /etc/edge-infer/porch.toml",
                      "A Raspberry Pi camera through picamera2 comes first, else a USB camera; it never "
                      "replaces a file.")
    init.add_argument("--camera", type=int, nargs="?", const=0, default=0,
                      help="which of the cameras found (0: the first; a Pi camera comes before USB ones)")
    init.add_argument("--out", default="/etc/edge-infer/config.toml", help="where to write it (refuses to replace)")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.add_argument("--bundle", default="/var/lib/edge-infer/models/model.tflite",
                      help="the model bundle the config names")
    init.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker, host:port")
    init.add_argument("--device-id", default=None, help="[device].id (default: the host name)")
    init.add_argument("--sys-root", default="/sys", help=argparse.SUPPRESS)  # tests: a sysfs-shaped tree
    init.set_defaults(func=cmd_init)
    svc = subcommand(add_parser, "install-service", "write the hardened systemd unit and create the service user",
                     "sudo edge-infer install-service --config /etc/edge-infer/config.toml --dry-run\n"
                     "sudo edge-infer install-service --config /etc/edge-infer/porch.toml --instance",
                     "With --instance, one daemon per camera: the edge-infer@.service template plus this "
                     "config's drop-in; the config must be DIR/NAME.toml and runs as edge-infer@NAME.")
    svc.add_argument("--config", required=True, help="device config (TOML); its [service] table sets the limits")
    svc.add_argument("--instance", action="store_true",
                     help="install as edge-infer@NAME (NAME: the config's file name without .toml)")
    svc.add_argument("--dry-run", action="store_true", help="print the unit(s) and the commands instead")
    svc.add_argument("--unit-dir", default="/etc/systemd/system", help="where unit files go")
    svc.add_argument("--python", default=None, help="the Python that runs edge-infer (default: this one)")
    svc.set_defaults(func=cmd_install_service)
