#!/usr/bin/env bash
# The demo, end to end, on a fresh Debian / Raspberry Pi OS machine:   bash demo/run.sh
#
# Installs edge-infer (device side only: numpy, Pillow, paho-mqtt, a TFLite runtime) into .venv, makes sure a
# local MQTT broker is there, then runs the daemon once over demo/samples with device_configs/demo.toml and
# shows what a subscriber receives.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv
CONFIG=device_configs/demo.toml
PORT=1883   # as in device_configs/demo.toml
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "demo: Python 3.11 or newer is required ($("$PYTHON" --version 2>&1))" >&2; exit 2; }
if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  say "installing python${PYVER}-venv (apt)"
  as_root apt-get update -qq && as_root apt-get install -y -qq "python${PYVER}-venv" >/dev/null
fi

if [ ! -x "$VENV/bin/edge-infer" ]; then
  say "installing edge-infer into .venv (device dependencies only — no TensorFlow)"
  mkdir -p .demo-state
  { "$PYTHON" -m venv "$VENV" && "$VENV/bin/pip" install --upgrade pip && "$VENV/bin/pip" install -e .; } \
    > .demo-state/install.log 2>&1 || { tail -20 .demo-state/install.log; echo "demo: install failed (log: .demo-state/install.log)"; exit 1; }
fi

# A broker on 127.0.0.1:1883: use one that is running, else start mosquitto for the demo's duration.
broker_up() { "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; }
BROKER_PID=
cleanup() { if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT
if ! broker_up; then
  if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    say "installing mosquitto (apt) so you can see results delivered"
    as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mosquitto >/dev/null ||
      echo "demo: could not install mosquitto; results will stay queued in the outbox"
  fi
  if ! broker_up && { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; }; then
    MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    mkdir -p .demo-state
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" > .demo-state/mosquitto.conf
    "$MOSQ" -c .demo-state/mosquitto.conf >/dev/null 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 50); do broker_up && break; sleep 0.1; done
  fi
fi

rm -f .demo-state/outbox.db*   # a fresh demo: forget earlier runs' checkpoints
N=$(find demo/samples -maxdepth 1 -type f | wc -l)

say "edge-infer check --config $CONFIG"
"$VENV/bin/edge-infer" check --config "$CONFIG"

WATCH_PID=
if broker_up; then
  say "subscriber on edge/demo-pi/# (what Home Assistant or Node-RED would receive)"
  "$VENV/bin/python" demo/watch.py --port "$PORT" --count "$N" --timeout 60 > .demo-state/watch.log 2>&1 &
  WATCH_PID=$!
  for _ in $(seq 100); do grep -q subscribed .demo-state/watch.log 2>/dev/null && break; sleep 0.1; done
fi

say "edge-infer run --config $CONFIG --once   ($N files in demo/samples)"
"$VENV/bin/edge-infer" run --config "$CONFIG" --once --log-level warning

if [ -n "$WATCH_PID" ]; then
  wait "$WATCH_PID" || true
  say "received over MQTT"
  grep -v '^subscribed' .demo-state/watch.log
fi

cat <<TXT

== where things are
  results      MQTT topic edge/demo-pi/results     (one JSON message per image; schema: edge_infer/schemas/)
  rejections   MQTT topic edge/demo-pi/rejections  (bad files, each with a reason)
  status       MQTT topic edge/demo-pi/status      (retained: online/offline, runtime, model)
  health       MQTT topic edge/demo-pi/health      (counts, uncertain rate, drift: every minute and at exit)
  outbox       $ROOT/.demo-state/outbox.db  (SQLite; messages wait here until the broker acknowledges them)
  watch live   mosquitto_sub -h 127.0.0.1 -t 'edge/demo-pi/#' -v     (Debian package mosquitto-clients)
  run again    $VENV/bin/edge-infer run --config $CONFIG
TXT
