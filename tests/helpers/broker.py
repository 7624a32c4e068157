"""A real mosquitto on a free loopback port, which tests can stop, kill and restart on the same port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if not found:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto); tests/run.sh installs it")
    return found


class Mosquitto:
    """`persistent=True` keeps sessions across restarts (saved every second), so a test subscriber with a
    persistent session misses nothing while the broker is down — even after a SIGKILL."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "", persistent: bool = False,
                 listener: str | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        persistence = (
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            if persistent else "persistence false\n"
        )
        listen = listener or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        # started as root, mosquitto drops to user 'mosquitto', who cannot reach pytest's private tmp dirs
        listen += "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{listen}{persistence}log_dest file {self.log}\nlog_type error\nlog_type warning\n"
            f"log_type notice\nmax_queued_messages 100000\nqueue_qos0_messages true\n{extra_conf}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-500:] if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port}")
            time.sleep(0.02)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
