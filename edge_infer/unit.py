"""The systemd unit for a config: `edge-infer install-service --config FILE [--dry-run]`.

Type=notify with a watchdog, restart on failure within a start limit, an unprivileged user, a state
directory, and a sandbox (`systemd-analyze security` exposure ≤ 2.0): read-only system, no home, no
capabilities, no new privileges, only the socket families MQTT needs, the @system-service system calls, and
devices closed except the camera / serial nodes the config's source uses, granted one by one. Memory and CPU
caps come from the device profile's `[service]` table.
"""

from __future__ import annotations

import grp
import re
import shlex
import sys
from pathlib import Path

from edge_infer.config import Config
from edge_infer.delegates import Grants, grants_for

UNIT_NAME = "edge-infer.service"
CAMERA_DMA_HEAPS = ("/dev/dma_heap/linux,cma", "/dev/dma_heap/system")


def accelerator_grants(cfg: Config) -> Grants:
    """What the configured delegate's hardware needs (a Coral: its USB or PCIe node, and netlink for USB)."""
    return grants_for(cfg.model.delegate, dict(cfg.model.delegate_options))


def service_groups(cfg: Config) -> tuple[list[str], list[str]]:
    """(groups the service user joins, groups it should but that do not exist here): the source's, the
    accelerator's and `[service] groups`. A unit naming a missing group would not start, so those are left out
    and `install-service` says which (e.g. `apex` before the Coral PCIe driver is installed)."""
    wanted = set(source_devices(cfg)[1]) | set(accelerator_grants(cfg).groups) | set(cfg.service.groups)
    present, missing = [], []
    for group in sorted(wanted):
        try:
            grp.getgrnam(group)
            present.append(group)
        except KeyError:
            missing.append(group)
    return present, missing


def source_devices(cfg: Config) -> tuple[list[str], list[str]]:
    """Device nodes the source needs, and the groups that own them on Raspberry Pi OS."""
    src = cfg.source
    if src.type == "camera":
        if src.backend == "opencv":  # one V4L2 node
            return [f"/dev/video{src.index}"], ["video"]
        # libcamera (picamera2) opens several video and media nodes and allocates from the DMA heaps;
        # DeviceAllow takes device classes for that (globs are not allowed)
        return ["char-video4linux", "char-media", *CAMERA_DMA_HEAPS], ["video"]
    if src.type == "serial":
        return [src.port], ["dialout"]
    if src.type == "iio":
        return [], []  # sysfs reads: /sys stays readable under the sandbox
    return [], []


SANDBOX = [
    "# sandbox",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallArchitectures=native",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "RemoveIPC=yes",
    "KeyringMode=private",
    "UMask=0077",
]
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _exec_start(python: str, config: str) -> str:
    return " ".join(shlex.quote(p) for p in (python, "-m", "edge_infer", "run", "--config")) + f" {config}"


def _unit_head(description: str) -> list[str]:
    return ["[Unit]", f"Description={description}", "Wants=network-online.target",
            "After=network-online.target time-sync.target"]


CONFIG_ERROR_EXIT = 2  # `edge-infer run` exits 2 on a problem only the user can fix: restarting cannot help


def systemd_version() -> int:
    """The installed systemd's version (`systemctl --version`), or 252 (Debian bookworm's) when unknown."""
    import subprocess

    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[1])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return 252


def restart_lines(version: int) -> list[str]:
    """Restart on failure, never on a config error; back off from 5 s to 5 min where systemd can (254+),
    else every 15 s. With `StartLimitIntervalSec=0` (the default) it never gives up."""
    lines = ["Restart=on-failure", f"RestartPreventExitStatus={CONFIG_ERROR_EXIT}"]
    if version >= 254:
        return [*lines, "RestartSec=5", "RestartSteps=6", "RestartMaxDelaySec=300"]
    return [*lines, "RestartSec=15"]


def _service_head(exec_start: str, version: int) -> list[str]:
    return ["Type=notify", "NotifyAccess=main", f"ExecStart={exec_start}", "ExecReload=/bin/kill -HUP $MAINPID",
            *restart_lines(version)]


def _config_lines(cfg: Config) -> tuple[list[str], list[str]]:
    """What this config decides: ([Unit] start limits, [Service] watchdog, user, groups, state and writable
    folders, credentials, memory and CPU caps, and the devices its source opens)."""
    svc = cfg.service
    devices, _ = source_devices(cfg)
    accel = accelerator_grants(cfg)
    devices = [*devices, *accel.devices]
    groups, _ = service_groups(cfg)
    state = Path(cfg.device.state_dir)
    http_pw = getattr(cfg.source, "password_file", None)
    service = [
        f"WatchdogSec={svc.watchdog_sec}",
        f"TimeoutStopSec={svc.stop_timeout}",
        f"User={svc.user}",
        f"Group={svc.user}",
        *([f"SupplementaryGroups={' '.join(groups)}"] if groups else []),
        # the state directory: systemd creates it, owned by the service user, under /var/lib
        *([f"StateDirectory={state.relative_to('/var/lib')}", "StateDirectoryMode=0700"]
          if state.is_relative_to("/var/lib") else [f"ReadWritePaths={state}"]),
        *[f"ReadWritePaths={p}" for p in _extra_writable(cfg)],
        *([f"LoadCredential=mqtt_password:{cfg.mqtt.password_file}"] if cfg.mqtt.password_file else []),
        *([f"LoadCredential=http_password:{http_pw}"] if http_pw else []),
        *([f"LoadCredential=web_token:{cfg.web.token_file}"] if cfg.web.enabled and cfg.web.token_file else []),
        f"MemoryMax={systemd_size(svc.memory_max)}",
        *([f"CPUQuota={svc.cpu_quota}"] if svc.cpu_quota else []),
        *(["PrivateDevices=yes"] if not devices else
          ["DevicePolicy=closed", *[f"DeviceAllow={d} rw" for d in devices]]),
        # the sandbox's families plus what the accelerator needs (systemd merges repeated lines)
        *([f"RestrictAddressFamilies={' '.join(accel.families)}"] if accel.families else []),
    ]
    return [f"StartLimitIntervalSec={svc.start_limit_interval}", f"StartLimitBurst={svc.start_limit_burst}"], service


def systemd_size(n: int) -> str:
    """Bytes as systemd writes sizes: the largest binary unit that divides them (`300M`, `1G`), else bytes."""
    for suffix, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def render_unit(cfg: Config, python: str | None = None, version: int | None = None) -> str:
    """The unit file text for this config (paths absolute, as systemd wants them) for systemd `version`
    (default: the installed one)."""
    unit, service = _config_lines(cfg)
    return "\n".join([
        "# Written by `edge-infer install-service`; rerun it after changing the config's [service] table.",
        *_unit_head("edge-infer: offline inference, results over MQTT"), *unit, "",
        "[Service]", *_service_head(_exec_start(python or sys.executable, shlex.quote(str(cfg.path))),
                                    version or systemd_version()),
        *service, *SANDBOX, "", "[Install]", "WantedBy=multi-user.target", ""])


def instance_name(cfg: Config) -> str:
    """The instance a config runs as under the template (`edge-infer@NAME` reads `DIR/NAME.toml`); ValueError
    (one line) when its file name cannot be one."""
    name = cfg.path.stem
    if cfg.path.suffix != ".toml" or not INSTANCE_NAME.match(name):
        raise ValueError(f"{cfg.path}: one daemon per camera runs as edge-infer@NAME with the config NAME.toml; "
                         "name it with letters, digits, '-', '_' or '.' and the .toml suffix")
    return name


def render_template(cfg: Config, python: str | None = None, version: int | None = None) -> tuple[str, str]:
    """(`edge-infer@.service`, this config's drop-in `edge-infer@NAME.service.d/config.conf`): the template
    holds what every instance shares (the command — `DIR/%i.toml` — and the sandbox), the drop-in what this
    config decides (user, state, devices, limits), so cameras with different devices each get only theirs."""
    instance_name(cfg)
    folder = str(cfg.path.parent.absolute())
    if any(c in folder for c in " \t\"'\\%$"):
        raise ValueError(f"{folder}: the template names its configs by this folder; move them to one whose path "
                         "has no spaces, quotes, '%' or '$' (e.g. /etc/edge-infer)")
    config = f"{folder}/%i.toml"
    template = "\n".join([
        "# Written by `edge-infer install-service --instance`: one daemon per config in "
        f"{cfg.path.parent}/NAME.toml. Each instance's own settings are in edge-infer@NAME.service.d/.",
        *_unit_head("edge-infer %i: offline inference, results over MQTT"), "",
        "[Service]", *_service_head(_exec_start(python or sys.executable, config), version or systemd_version()),
        *SANDBOX, "",
        "[Install]", "WantedBy=multi-user.target", ""])
    unit, service = _config_lines(cfg)
    dropin = "\n".join([f"# Written by `edge-infer install-service --instance` from {cfg.path}; rerun it after "
                         "changing the config's [service] table or its source.", "[Unit]", *unit, "",
                         "[Service]", *service, ""])
    return template, dropin


def shared_state_dir(cfg: Config, others: list[Config]) -> str | None:
    """One line when another instance's config in the same folder keeps its state in the same place (two
    daemons would share one outbox and baseline), else None."""
    mine = Path(cfg.device.state_dir).absolute()
    for other in others:
        if other.path.absolute() != cfg.path.absolute() and Path(other.device.state_dir).absolute() == mine:
            return (f"{cfg.path} and {other.path} both keep their state in {mine}: give each daemon its own "
                    f"[device].state_dir (e.g. \"/var/lib/edge-infer/{cfg.path.stem}\")")
    return None


def _extra_writable(cfg: Config) -> list[str]:
    """Folders outside the state directory the daemon writes: a directory source that moves or deletes
    processed files, and review folders configured elsewhere."""
    state = Path(cfg.device.state_dir)
    paths = []
    if cfg.source.type == "directory" and cfg.source.processed != "keep":
        source = Path(cfg.source.path)
        paths.append(str(source))
        if cfg.source.processed == "move":  # the source's default: a sibling `<folder>.done`
            paths.append(cfg.source.processed_dir or str(source.parent / f"{source.name}.done"))
    folders = [cfg.decide.uncertain_dir, cfg.gate.rejected_dir, str(Path(cfg.outbox.path).parent)]
    if cfg.update.enabled:
        folders += [cfg.update.incoming_dir, cfg.update.slots_dir]
    for folder in folders:
        if folder and not Path(folder).is_relative_to(state):
            paths.append(str(folder))
    return sorted(set(paths))


# ProtectHome=yes hides these (and PrivateTmp=yes gives the service its own empty /tmp and /var/tmp)
HIDDEN = {"/home": "ProtectHome", "/root": "ProtectHome", "/run/user": "ProtectHome", "/tmp": "PrivateTmp",
          "/var/tmp": "PrivateTmp"}


def hidden_paths(cfg: Config, python: str | None = None) -> list[str]:
    """One line per path the service needs that its sandbox would hide (it would then fail with 203/EXEC or
    'not found'): the interpreter, the config, the bundles, the input and every folder it writes."""
    python = python or sys.executable
    needed = {"the Python interpreter (ExecStart)": python, "the config": str(cfg.path),
              "[model].bundle": cfg.model.bundle, "[device].state_dir": cfg.device.state_dir}
    if cfg.decide.escalate_to:
        needed["[decide].escalate_to"] = cfg.decide.escalate_to
    if source_path := getattr(cfg.source, "path", None):  # the sources that read files
        needed["[source].path"] = source_path
    needed.update({f"a folder it writes ({p})": p for p in _extra_writable(cfg)})
    problems = []
    for what, value in needed.items():
        path = Path(value).absolute()
        for root, setting in HIDDEN.items():
            if path.is_relative_to(root):
                fix = ("install into a virtual environment outside /home and /tmp, e.g. python3 -m venv "
                       "/opt/edge-infer" if "interpreter" in what else "move it under /etc/edge-infer, /opt or "
                       "/var/lib/edge-infer")
                problems.append(f"{what} is under {root}, which the unit's {setting}=yes hides from the "
                                f"service: {fix}")
                break
    return problems


def install_commands(cfg: Config) -> list[list[str]]:
    """What `install-service` runs as root: the user (no login, no home) in the device groups."""
    svc = cfg.service
    groups, _ = service_groups(cfg)
    useradd = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
               "/usr/sbin/nologin", "--user-group", svc.user]
    if groups:
        useradd[1:1] = ["--groups", ",".join(groups)]
    return [useradd, ["systemctl", "daemon-reload"]]


def next_steps(unit: str) -> list[str]:
    """What to run after installing `unit` (`edge-infer.service`, or `edge-infer@NAME.service`)."""
    return [f"sudo systemctl enable --now {unit}",
            f"systemctl status {unit}        # STATUS line: results, rejections, drift",
            f"journalctl -u {unit} -f         # one key=value line per event",
            f"sudo systemctl reload {unit}   # after editing the config (SIGHUP)"]
