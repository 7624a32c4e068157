#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh Debian / Raspberry Pi OS machine:  bash tests/run.sh
#
#  - installs mosquitto with apt when it is missing (tests start their own brokers on free ports), and chromium
#    for the live view's browser test;
#  - builds one virtual environment per leg under .venvs/ (reused while setup.cfg is unchanged):
#      litert    device side on ai-edge-litert, numpy 2          → tests/device
#      tflrt     device side on tflite-runtime 2.14, numpy < 2   → tests/device -m "not system" (what a 32-bit
#                Pi gets: every in-process test, the whole app included, on the other runtime; the system tier —
#                real brokers, daemon processes, signals — tests delivery and faults, which do not depend on
#                the runtime, and runs once, in the litert leg)
#      convert   TensorFlow converter + device code              → tests/converter
#      arm64, armhf  an emulated Raspberry Pi OS (bookworm) root filesystem per architecture, the project
#                installed in it as the README says, the demo compared with this machine's and a smoke subset of
#                tests/device (tests/arm/leg.sh: debootstrap + qemu-user through binfmt_misc; skipped, with the
#                reason, where this machine cannot emulate)
#  - runs pytest in each leg (the emulated and the converter legs in the background while the device legs run;
#    pytest-xdist workers within each leg) and ends with one line:  tests: N passed, N failed, N skipped
# Extra arguments go to every pytest run (e.g. -x, -k outbox).  LEGS="litert tflrt" picks legs.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENVS=${EDGE_INFER_VENVS:-$ROOT/.venvs}
PYTHON=${PYTHON:-python3}
MACHINE=$(uname -m)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

say() { printf '\n== %s\n' "$*"; }
die() { printf 'tests/run.sh: %s\n' "$*" >&2; exit 2; }

# ---- system prerequisites -------------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is required ($("$PYTHON" --version 2>&1))"
PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  die "need root to run: $*"; fi; }
apt_install() {
  say "installing with apt: $*"
  as_root apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then apt_install mosquitto; fi
# the live view's test opens the page in a real headless browser (Playwright drives Debian's chromium)
if [[ " ${LEGS:-litert} " == *" litert "* ]] && ! command -v chromium >/dev/null; then apt_install chromium; fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  apt_install "python${PYVER}-venv"
fi

# ---- one virtual environment per leg -----------------------------------------------------------------
# make_venv NAME PIP-INSTALL-ARGS... : (re)build .venvs/NAME unless its stamp matches setup.cfg + args
make_venv() {
  local name=$1; shift
  local dir=$VENVS/$name stamp
  stamp=$(cat setup.cfg tests/requirements_for.py | sha256sum | cut -c1-16)-$(echo "$*" | sha256sum | cut -c1-16)
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then return 0; fi
  say "building $name environment (.venvs/$name)"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir" || return 1
  "$dir/bin/pip" install -q --upgrade pip || return 1
  "$@" || return 1
  echo "$stamp" > "$dir/.stamp"
}
pip_in() { local name=$1; shift; "$VENVS/$name/bin/pip" install -q "$@"; }

build_litert() { pip_in litert -e ".[test]"; }
build_tflrt() {
  # exactly what setup.cfg resolves to on an armv7l Pi, plus the test extra; the package itself without deps
  "$VENVS/tflrt/bin/python" tests/requirements_for.py armv7l test > "$VENVS/tflrt/requirements.txt" &&
    pip_in tflrt -r "$VENVS/tflrt/requirements.txt" && pip_in tflrt --no-deps -e .
}
build_convert() { pip_in convert -e ".[convert,test]"; }

# ---- legs ------------------------------------------------------------------------------------------------
declare -A PATHS=([litert]=tests/device [tflrt]=tests/device [convert]=tests/converter)
declare -A EXPECT=([litert]=ai_edge_litert [tflrt]=tflite_runtime [convert]=)
# Workers per leg (pytest-xdist). The converter leg is TensorFlow work in child processes: two workers, one test
# file each. The device legs' slow tests mostly wait (outages, reconnects, signals), so they share out by test.
declare -A WORKERS=([litert]="-n ${DEVICE_WORKERS:-3} --dist load" [tflrt]="-n ${DEVICE_WORKERS:-3} --dist load"
                    [convert]="-n ${CONVERT_WORKERS:-2} --dist loadfile")
declare -A TIER=([litert]="" [tflrt]="not system" [convert]="" [arm64]="" [armhf]="")
unavailable() {  # why a leg cannot run on this machine (wheels that do not exist), or nothing
  case $1 in
    litert) [ "$MACHINE" = armv7l ] && echo "ai-edge-litert has no armv7l wheels" ;;
    tflrt) [[ "$PYVER" != 3.11 && "$PYVER" != 3.10 ]] && echo "tflite-runtime 2.14 has no wheels for Python $PYVER" ;;
    convert) [ "$MACHINE" = armv7l ] && echo "TensorFlow has no armv7l wheels (convert on a workstation)" ;;
  esac
  return 0
}

failed_legs=()
not_run=()
ready=()
legs=${LEGS:-litert tflrt convert arm64 armhf}
if [[ " $legs " != *" litert "* ]] || [ -n "$(unavailable litert)" ]; then
  TIER[tflrt]=""  # no litert leg here (an armv7l Pi, or LEGS without it): tflrt runs the system tier too
fi
mkdir -p "$VENVS" && rm -f "$VENVS"/junit-*.xml "$VENVS"/leg-*.log "$VENVS"/leg-*.rc
# The emulated Pi legs start first, each in the background (output: .venvs/leg-ARCH.log, shown when it ends):
# under emulation everything is slow, and they need nothing the other legs build.
arm_pids=()
for leg in arm64 armhf; do
  [[ " $legs " == *" $leg "* ]] || continue
  say "leg $leg: started in the background (emulated; output: .venvs/leg-$leg.log, shown when it ends)"
  ( bash tests/arm/leg.sh "$leg" "$@" > "$VENVS/leg-$leg.log" 2>&1; echo $? > "$VENVS/leg-$leg.rc" ) &
  arm_pids+=("$leg:$!")
done

prepare() {  # prepare LEG: build its environment; 0 when it can run
  local leg=$1 why
  [[ " $legs " == *" $leg "* ]] || return 1
  why=$(unavailable "$leg")
  if [ -n "$why" ]; then say "leg $leg: not run on this machine — $why"; not_run+=("leg not run — $leg: $why"); return 1; fi
  if ! make_venv "$leg" "build_$leg"; then failed_legs+=("$leg(install)"); return 1; fi
  ready+=("$leg")
}

run_leg() {  # run_leg LEG [pytest args...]: its pytest run; the exit status is pytest's
  local leg=$1 tier=(); shift
  say "leg $leg: pytest ${PATHS[$leg]} ($("$VENVS/$leg/bin/python" -c 'import numpy; print("numpy", numpy.__version__)'))"
  if [ -n "${TIER[$leg]}" ]; then tier=(-m "${TIER[$leg]}"); fi
  # shellcheck disable=SC2086  # WORKERS holds several words on purpose
  EDGE_INFER_EXPECT_RUNTIME=${EXPECT[$leg]} "$VENVS/$leg/bin/python" -m pytest "${PATHS[$leg]}" "${tier[@]}" \
    -p no:cacheprovider --junitxml="$VENVS/junit-$leg.xml" ${WORKERS[$leg]} "$@"
}

judge() {  # judge LEG RC: record a failed leg
  case $2 in
    0) ;;
    5) echo "tests/run.sh: leg $1 collected no tests — that is a failure here"; failed_legs+=("$1(no tests)") ;;
    *) failed_legs+=("$1(pytest exit $2)") ;;
  esac
  if [ -n "${TIER[$1]}" ]; then
    not_run+=("tier not run — $1: only -m \"${TIER[$1]}\" (the system tier runs in litert)")
  fi
}

# The converter leg is the longest and mostly computes; the device legs mostly wait. So the converter leg starts
# first, in the background (its output goes to .venvs/leg-convert.log and is shown when it ends), and the device
# legs run meanwhile. The tflrt environment is built beside the converter's (both mostly download and unpack):
# the converter's --target check runs bundles under tflite-runtime 2.14 with the tflrt leg's Python.
tflrt_build=
if [[ " $legs " == *" tflrt "* ]] && [[ " $legs " == *" convert "* ]] && [ -z "$(unavailable tflrt)" ]; then
  ( make_venv tflrt build_tflrt ) & tflrt_build=$!
fi
prepare convert; convert_ready=$?
if [ -n "$tflrt_build" ]; then wait "$tflrt_build"; fi  # then `prepare` finds it built (or builds it, saying why)
prepare tflrt && export EDGE_INFER_TARGET_PYTHON="$VENVS/tflrt/bin/python"
convert_pid=
if [ "$convert_ready" -eq 0 ]; then
  say "leg convert: started in the background (output: .venvs/leg-convert.log, shown when it ends)"
  ( run_leg convert "$@" > "$VENVS/leg-convert.log" 2>&1; echo $? > "$VENVS/leg-convert.rc" ) &
  convert_pid=$!
fi
prepare litert
for leg in litert tflrt; do
  [[ " ${ready[*]} " == *" $leg "* ]] || continue
  run_leg "$leg" "$@"
  judge "$leg" $?
  if [ "$leg" = litert ]; then
    say "lint: ruff check, lint-imports (layers in pyproject.toml), module and function sizes"
    "$VENVS/litert/bin/ruff" check --quiet . || failed_legs+=("ruff")
    "$VENVS/litert/bin/lint-imports" --no-cache >/dev/null || { "$VENVS/litert/bin/lint-imports" --no-cache | tail -25;
      failed_legs+=("lint-imports"); }
    "$VENVS/litert/bin/python" tests/lint_layout.py || failed_legs+=("layout")
  fi
done
if [ -n "$convert_pid" ]; then
  say "leg convert: waiting for it to end"
  wait "$convert_pid"
  cat "$VENVS/leg-convert.log"
  judge convert "$(cat "$VENVS/leg-convert.rc" 2>/dev/null || echo 1)"
fi
for entry in "${arm_pids[@]}"; do
  leg=${entry%%:*}
  say "leg $leg: waiting for it to end"
  wait "${entry#*:}"
  cat "$VENVS/leg-$leg.log"
  rc=$(cat "$VENVS/leg-$leg.rc" 2>/dev/null || echo 1)
  if [ "$rc" = 77 ]; then not_run+=("$(grep -m1 "^leg $leg: not run" "$VENVS/leg-$leg.log")")
  else judge "$leg" "$rc"; fi
done

# ---- one closing block over every leg: skips by reason, legs not run, then the count line ---------------------
"$PYTHON" - "$VENVS" "${not_run[@]}" <<'EOF'
import collections, glob, os, sys, xml.etree.ElementTree as ET
total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
reasons = collections.Counter()
for path in sorted(glob.glob(f"{sys.argv[1]}/junit-*.xml")):
    leg = os.path.basename(path)[len("junit-"):-len(".xml")]
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in total:
            total[key] += int(suite.get(key, 0))
    for case in ET.parse(path).getroot().iter("testcase"):
        for skip in case.findall("skipped"):
            reasons[f"{leg}: {(skip.get('message') or 'no reason given').removeprefix('Skipped: ')}"] += 1
print()
for reason, count in sorted(reasons.items()):
    print(f"skipped {count}× — {reason}")
for line in sys.argv[2:]:
    print(line)
failed = total["failures"] + total["errors"]
passed = total["tests"] - failed - total["skipped"]
print(f"tests: {passed} passed, {failed} failed, {total['skipped']} skipped")
EOF
if [ ${#failed_legs[@]} -gt 0 ]; then
  echo "tests/run.sh: FAILED legs: ${failed_legs[*]}"
  exit 1
fi
echo "tests/run.sh: all legs passed"
