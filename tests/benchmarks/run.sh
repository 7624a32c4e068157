#!/usr/bin/env bash
# Every benchmark, rerunnable from a fresh clone:   bash tests/benchmarks/run.sh
# Builds the test environments if needed (via tests/run.sh --collect-only), makes the pipeline benchmark's
# inputs (a MobileNetV2-shaped int8 bundle and 640x480 JPEG frames, in .bench/), then prints:
#   - edge-infer bench on both device runtimes (stage rates, pipeline vs slowest stage, vs a naive loop, vs the
#     CPU-bound limit and vs the same work on all cores at once; end to end to a local mosquitto's
#     acknowledgement; start-up to first result, RSS vs a floor);
#   - the delivery benchmark (durable enqueue and backlog drain rates vs same-run baselines);
#   - converter time per mode; drift detection delay and false alarms; a 100,000-inference memory soak.
# Each figure is printed beside its baseline from the same run and its target ("met" / "MISSED").
# --check: exit 1 when any target was missed (not part of CI: the machines are noisy).
set -euo pipefail
cd "$(dirname "$0")/../.."
CHECK=0
[ "${1:-}" = --check ] && CHECK=1
BENCH_VERDICTS=$(mktemp)
export BENCH_VERDICTS
trap 'rm -f "$BENCH_VERDICTS"' EXIT
VENVS=${EDGE_INFER_VENVS:-$PWD/.venvs}
if [ ! -x "$VENVS/convert/bin/python" ] || [ ! -x "$VENVS/litert/bin/python" ] || [ ! -x "$VENVS/tflrt/bin/python" ]; then
  bash tests/run.sh --collect-only -q > /dev/null
fi
"$VENVS/convert/bin/python" tests/benchmarks/make_bench_assets.py --out .bench 2>&1 | grep -E "^(wrote|edge-convert)" || true
FRAMES=${FRAMES:-600}
# a broker of its own for the end-to-end figure (source to broker acknowledgement)
BROKER_DIR=$(mktemp -d)
BROKER_PORT=$("$VENVS/litert/bin/python" -c 'from tests.helpers.broker import free_port; print(free_port())')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$BROKER_PORT" > "$BROKER_DIR/mosquitto.conf"
mosquitto -c "$BROKER_DIR/mosquitto.conf" > "$BROKER_DIR/log" 2>&1 &
BROKER_PID=$!
trap 'rm -f "$BENCH_VERDICTS"; kill "$BROKER_PID" 2>/dev/null || true; rm -rf "$BROKER_DIR"' EXIT
echo; echo "== edge-infer bench (ai-edge-litert)"
"$VENVS/litert/bin/edge-infer" bench --config .bench/bench.toml --frames "$FRAMES" --broker "127.0.0.1:$BROKER_PORT" \
  2>&1 | grep -v '^INFO:' | "$VENVS/litert/bin/python" -m tests.benchmarks.verdict
echo; echo "== edge-infer bench (tflite-runtime 2.14)"
EDGE_INFER_RUNTIME=tflite_runtime "$VENVS/tflrt/bin/edge-infer" bench --config .bench/bench.toml --frames 60 2>&1 | grep -v '^INFO:'
echo; echo "== delivery"
"$VENVS/litert/bin/python" tests/benchmarks/bench_delivery.py
echo; echo "== converter time per mode"
"$VENVS/convert/bin/python" tests/benchmarks/bench_converter.py --assets .bench 2>/dev/null | grep -v '^INFO'
echo; echo "== drift: false alarms and detection delay (held-out digits)"
"$VENVS/litert/bin/python" -m tests.benchmarks.drift 2>&1 | grep -v '^INFO'
if [ "${SOAK:-1}" != 0 ]; then
  echo; echo "== memory soak (SOAK=0 skips it: about 3 minutes)"
  "$VENVS/litert/bin/python" tests/benchmarks/soak.py 2>&1 | grep -E '^(soak|RSS)'
fi
echo
missed=$(grep -c MISSED "$BENCH_VERDICTS" || true)
echo "benchmarks: $(wc -l < "$BENCH_VERDICTS") figures against their targets, $missed missed"
grep MISSED "$BENCH_VERDICTS" || true
if [ "$CHECK" = 1 ] && [ "$missed" != 0 ]; then exit 1; fi
