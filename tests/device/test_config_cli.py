"""Config validation and the CLI's user-facing errors: exit 2, one line, naming the file and the key."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_infer.config import ConfigError, load_config
from tests.conftest import DIGITS_INT8, REPO, run_cli, write_config
from tests.helpers.broker import Mosquitto, free_port

DEVICE_CONFIGS = sorted((REPO / "device_configs").glob("*.toml"))


@pytest.mark.parametrize("path", DEVICE_CONFIGS, ids=[p.stem for p in DEVICE_CONFIGS])
def test_every_shipped_device_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.mqtt.topic_prefix and cfg.model.threads >= 1


def test_demo_config_resolves_paths_relative_to_itself() -> None:
    cfg = load_config(REPO / "device_configs" / "demo.toml")
    assert Path(cfg.model.bundle) == DIGITS_INT8
    assert Path(cfg.source.path) == REPO / "demo" / "samples"
    assert cfg.outbox.path == str(REPO / ".demo-state" / "outbox.db")
    assert cfg.mqtt.client_id == "edge-infer-demo-pi"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\nprot=1883\n",
         "[mqtt].prot: unknown key (did you mean 'port'?)"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\nport='abc'\n",
         "[mqtt].port: expected an integer, got 'abc'"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\nport=70000\n",
         "[mqtt].port: expected a value from 1 to 65535, got 70000"),
        ("[model]\nbundle='x'\n[source]\ntype='webcam'\npath='.'\n", "[source].type: expected one of 'directory'"),
        ("[model]\nbundle='x'\n[source]\ntype='camera'\npath='.'\n",
         "[source].path: not a key of type 'camera' sources (it belongs to: directory, replay)"),
        ("[model]\nbundle='x'\n[source]\ntype='serial'\n", "[source].port: missing (required)"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\nprocessed='archive'\n",
         "[source].processed: expected one of 'keep', 'move', 'delete'"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[gate]\nroi=[0.5, 0, 0.2, 1]\n",
         "[gate].roi: expected [x0, y0, x1, y1]"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[gate]\nmin_brightness=300\n",
         "[gate].min_brightness: expected a value from 0 to 255"),
        ("[model]\nbundle='x'\n", "[source]: missing section (required)"),
        ("[model]\n[source]\ntype='directory'\npath='.'\n", "[model].bundle: missing (required)"),
        ("[model]\nbundle='x'\nthreads=true\n[source]\ntype='directory'\npath='.'\n",
         "[model].threads: expected an integer, got True"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\ntopic_prefix='a/#'\n",
         "[mqtt].topic_prefix: 'a/#' is not a valid MQTT topic segment"),
        ("[model]\nbundle='x'\n[model.thresholds]\n'7'=2.0\n[source]\ntype='directory'\npath='.'\n",
         "[model.thresholds].7: expected a number from 0 to 1"),
        ("[modle]\nbundle='x'\n", "[modle]: unknown key (did you mean 'model'?)"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\npassword='hunter2'\n",
         "[mqtt].password: passwords are never read from the config file"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\nhosts=['a:1', 'b']\n",
         "[mqtt].hosts: expected a list of \"host:port\" strings, got 'b'"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\ntls=true\ncert_file='c'\n",
         "[mqtt].cert_file/key_file: give both"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[mqtt]\nca_file='c'\n",
         "[mqtt].tls: set tls = true"),
        ("[model]\nbundle='x'\n[source]\ntype='directory'\npath='.'\n[outbox]\npolicy='drop-newest'\n",
         "[outbox].policy: expected one of 'drop-oldest', 'reject-new'"),
        ("[model\nbundle='x'\n", "invalid TOML"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path.resolve() if 'TOML' not in message else path}: ")
    assert message in str(err.value)


def _assert_one_line_exit_2(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edge-infer: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nbundle='x.tflite'\n[source]\ntype='directory'\npath='.'\n[mqtt]\nport=-1\n")
    for command in ("run", "check"):
        _assert_one_line_exit_2(run_cli(command, "--config", str(cfg)), str(cfg.resolve()), "[mqtt].port")


def test_cli_missing_config_exits_2(tmp_path: Path) -> None:
    _assert_one_line_exit_2(run_cli("run", "--config", str(tmp_path / "nope.toml")), "config file not found")


def test_cli_missing_bundle_exits_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", bundle=tmp_path / "gone.tflite", source=tmp_path, state=tmp_path / "s",
                       port=free_port())
    _assert_one_line_exit_2(run_cli("run", "--config", str(cfg), "--once"), "gone.tflite", "bundle not found")


def test_cli_corrupted_bundle_exits_2_and_processes_nothing(tmp_path: Path) -> None:
    data = bytearray(DIGITS_INT8.read_bytes())
    data[2000] ^= 0x55
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(bytes(data))
    (tmp_path / "in").mkdir()
    cfg = write_config(tmp_path / "c.toml", bundle=bad, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    _assert_one_line_exit_2(run_cli("run", "--config", str(cfg), "--once"), "corrupt.tflite", "sha256")
    assert not (tmp_path / "s" / "outbox.db").exists()


def test_check_reports_bundle_runtime_and_broker(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b").start()
    try:
        cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path, state=tmp_path / "s",
                           port=broker.port)
        proc = run_cli("check", "--config", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert "bundle   ok:" in proc.stdout and "digits 1.0.0" in proc.stdout
        assert "runtime  ok:" in proc.stdout
        assert f"broker   ok: 127.0.0.1:{broker.port} accepted the device's login" in proc.stdout
    finally:
        broker.stop()
    proc = run_cli("check", "--config", str(cfg))
    assert proc.returncode == 0
    assert "broker   unreachable" in proc.stdout and "results will queue" in proc.stdout


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed")
def test_check_logs_in_to_every_configured_broker_and_says_so_as_json(tmp_path: Path) -> None:
    """`[mqtt] hosts` lists a broker that wants a login and one that is down: `check --json` reports each
    (never the `host` key it does not use); a wrong password is a refusal, not "reachable"."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "pi", "right-one"], check=True,
                   capture_output=True)
    passwords.chmod(0o600)
    port, down = free_port(), free_port()
    broker = Mosquitto(tmp_path / "b", port=port, listener=f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                                                           f"password_file {passwords}\n").start()
    secret = tmp_path / "secret"
    try:
        cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path, state=tmp_path / "s",
                           port=1)  # `host`/`port` say 127.0.0.1:1; `hosts` wins
        cfg.write_text(cfg.read_text().replace(
            "[mqtt]\n", f'[mqtt]\nhosts = ["127.0.0.1:{port}", "127.0.0.1:{down}"]\nusername = "pi"\n'
                        f'password_file = "{secret}"\n', 1))
        for password, accepted in (("right-one", True), ("wrong", False)):
            secret.write_text(password + "\n")
            proc = run_cli("check", "--config", str(cfg), "--json")
            assert proc.returncode == 0, proc.stderr
            brokers = [c for c in json.loads(proc.stdout)["checks"] if c["check"] == "broker"]
            assert [c["detail"].split(" ")[0] for c in brokers] == [f"127.0.0.1:{port}", f"127.0.0.1:{down}"]
            assert brokers[0]["status"] == ("ok" if accepted else "unreachable"), brokers
            assert accepted or "refused" in brokers[0]["detail"]
            assert brokers[1]["status"] == "unreachable" and "127.0.0.1:1 " not in proc.stdout
    finally:
        broker.stop()




def test_durations_and_sizes_take_their_unit_everywhere(tmp_path: Path) -> None:
    """"250ms", "30s", "5m", "7d", "64MiB" wherever a key is a duration or a size — in the core tables and in a
    plug-in's own keys; plain numbers keep their documented unit; anything else is one line naming examples."""
    def config(outbox: str, extra: str = "") -> Path:
        cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path, state=tmp_path / "s",
                           port=1883, outbox=outbox)
        cfg.write_text(cfg.read_text().replace("poll_interval = 0.05",
                                               'poll_interval = "250ms"\nmax_file_bytes = "20MiB"') + extra)
        return cfg

    loaded = load_config(config('ttl = "7d"\nmax_bytes = "64MiB"\ncommit_window_ms = "0.5s"',
                                '\n[health]\ninterval = "5m"\n\n[service]\nwatchdog_sec = "1m"\n'))
    assert loaded.source.poll_interval == 0.25 and loaded.source.max_file_bytes == 20 * 2**20
    assert loaded.outbox.ttl == 7 * 86400 and loaded.outbox.max_bytes == 64 * 2**20
    assert loaded.outbox.commit_window_ms == 500 and loaded.health.interval == 300 and loaded.service.watchdog_sec == 60
    assert isinstance(loaded.service.watchdog_sec, int) and isinstance(loaded.outbox.max_bytes, int)
    assert load_config(config("ttl = 3600\nmax_bytes = 1048576")).outbox.ttl == 3600  # plain numbers: as before
    for bad, expected in (('ttl = "7 days"', '[outbox].ttl: expected "30s", "5m", "2h"'),
                          ('max_bytes = "64 mebibytes"', '[outbox].max_bytes: expected "64MiB"'),
                          ('ttl = true', '[outbox].ttl: expected "30s"')):
        with pytest.raises(ConfigError) as caught:
            load_config(config(bad))
        assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    with pytest.raises(ConfigError, match="not a whole number of seconds"):
        load_config(config("", '\n[service]\nwatchdog_sec = "1500ms"\n'))
