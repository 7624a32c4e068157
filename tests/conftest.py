"""Shared fixtures: the repo's shipped demo assets, a real mosquitto per test, the CLIs as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.broker import Mosquitto

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
DIGITS_INT8 = DEMO / "digits-int8-only.tflite"
DIGITS_FLOAT32 = DEMO / "digits-float32.tflite"
DIGITS_TEST = DEMO / "digits" / "test"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `edge-infer ARGS` as a user would (a separate process), capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edge_infer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )


def write_config(path: Path, *, bundle: Path, source: Path, state: Path, port: int,
                 device_id: str = "test-pi", outbox: str = "", mqtt: str = "",
                 drift: str = "enabled = false") -> Path:
    """A device config as a Pi owner would write it. Drift monitoring is off unless asked for: most tests
    read a folder label by label (a class-skewed stream, which the monitor rightly reports) and count the
    messages exactly."""
    path.write_text(
        f"""
[device]
id = "{device_id}"
state_dir = "{state}"

[model]
bundle = "{bundle}"
threads = 1

[source]
type = "directory"
path = "{source}"
poll_interval = 0.05
settle_seconds = 0.0

[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "edge"
drain_timeout = 30
reconnect_max = 1.0
{mqtt}

[outbox]
{outbox}

[drift]
{drift}
"""
    )
    return path


SYSTEM_MARKS = ("run_cli(", "DaemonProcess(", "Mosquitto(", "subprocess.", "offline_broker_with_auditor(",
                "Subscriber(")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `system` tier: a test that starts a broker, a daemon process, the CLI or a subscriber — from its
    fixtures or its own source. `-m "not system"` runs the fast, in-process tier."""
    import inspect

    for item in items:
        function = getattr(item, "function", None)
        if function is None or item.get_closest_marker("system"):
            continue
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            continue
        if "broker" in getattr(item, "fixturenames", ()) or any(mark in source for mark in SYSTEM_MARKS):
            item.add_marker(pytest.mark.system)
