#!/usr/bin/env bash
# One emulated Raspberry Pi OS leg of tests/run.sh:   bash tests/arm/leg.sh arm64|armhf [pytest args...]
#
# A Debian bookworm root filesystem for the Pi's architecture (what Raspberry Pi OS is built on), made with
# debootstrap and run under qemu-user through binfmt_misc, gets the project installed exactly as the README's
# block for that flavour says (`<!-- ci: install ARCH -->`, copied out of README.md at run time), then runs
#   - the demo (tests/arm/demo_results.py: the real daemon over demo/samples through a real mosquitto), compared
#     with tests/arm/demo-expected.json — labels, confidences to 2 decimals, rejection reasons — which the x86 legs
#     compare with too (tests/device/test_demo.py), so all three architectures agree;
#   - a smoke subset of the device tests on that architecture's runtime (tests/arm/smoke.txt).
# Cached between runs on the same machine (EDGE_INFER_ARM_CACHE, default /var/cache/edge-infer-ci): the base
# root filesystem (debootstrap + apt lists + mosquitto) and qemu. Each run installs the project afresh.
# qemu: Debian trixie's static qemu-user 10 (bookworm's 7.2 crashes in ai-edge-litert 2.x's interpreter), fetched
# with apt from the Debian mirror and registered under its own binfmt name, removed again at the end.
# Exit: pytest's status, or 77 when this machine cannot emulate (no root, no binfmt_misc) — said in one line.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ARCH=${1:?usage: tests/arm/leg.sh arm64|armhf [pytest args]}; shift
case $ARCH in
  arm64) QARCH=aarch64; MACHINE=aarch64; RUNTIME=ai_edge_litert ;;
  armhf) QARCH=arm; MACHINE=armv7l; RUNTIME=tflite_runtime ;;
  *) echo "tests/arm/leg.sh: unknown architecture '$ARCH' (arm64 or armhf)" >&2; exit 2 ;;
esac
CACHE=${EDGE_INFER_ARM_CACHE:-/var/cache/edge-infer-ci}
VENVS=${EDGE_INFER_VENVS:-$ROOT/.venvs}
WORK=$VENVS/arm-$ARCH
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=$CACHE/bookworm-$ARCH-base.tar
R=$WORK/root
BINFMT=/proc/sys/fs/binfmt_misc
ENTRY=edge-infer-$QARCH
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

say() { printf '\n== [%s] %s\n' "$ARCH" "$*"; }
skip() { echo "leg $ARCH: not run — $*"; exit 77; }
die() { echo "tests/arm/leg.sh [$ARCH]: $*" >&2; exit 1; }
started=$SECONDS
clear_dir() {  # clear_dir DIR: remove a root filesystem — first whatever a killed run left mounted in it (proc,
  # sys, the host's /dev), so that the delete can never reach through into the host
  awk -v root="$1/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf --one-file-system "$1"
}

# ---- can this machine emulate? ----------------------------------------------------------------------------
[ "$(uname -m)" = x86_64 ] || skip "the emulated legs run on an x86_64 machine (on a Pi, the device legs are native)"
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, chroot, binfmt_misc)"
if [ ! -e "$BINFMT/register" ]; then
  # the other leg may be mounting it at this very moment (both start together): then it is there afterwards
  mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || [ -e "$BINFMT/register" ] ||
    skip "binfmt_misc is not available on this kernel"
fi
[ -w "$BINFMT/register" ] || skip "binfmt_misc cannot be written here (a container without CAP_SYS_ADMIN?)"
mkdir -p "$CACHE" "$WORK"
# the two legs run side by side: one at a time through apt and the shared qemu download
exec 9> "$CACHE/.setup.lock" && flock 9
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v dpkg-deb >/dev/null || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  say "installing with apt: ${need[*]}"
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
fi

# ---- qemu-user 10, static, from Debian trixie (cached) -----------------------------------------------------
QEMU=$CACHE/qemu-10/$QARCH-binfmt-P   # as Debian names it: the -binfmt-P name tells qemu argv[0] is kept (flag P)
if ! "$CACHE/qemu-10/qemu-$QARCH" --version >/dev/null 2>&1; then
  say "fetching qemu-user from Debian trixie (static; cached in $CACHE/qemu-10)"
  apt_dir=$CACHE/trixie-apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$CACHE/qemu-10"
  echo "deb $MIRROR trixie main" > "$apt_dir/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir" -o "Dir::Cache::archives=$apt_dir/archives" -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq || die "cannot read Debian trixie's package list from $MIRROR"
  (cd "$apt_dir/archives" && apt-get "${opts[@]}" download qemu-user) >/dev/null || die "cannot download qemu-user"
  rm -rf "$apt_dir/x" && dpkg-deb -x "$apt_dir"/archives/qemu-user_*.deb "$apt_dir/x" || die "cannot unpack qemu-user"
  for a in aarch64 arm; do
    cp "$apt_dir/x/usr/bin/qemu-$a" "$CACHE/qemu-10/qemu-$a" && ln -sf "qemu-$a" "$CACHE/qemu-10/$a-binfmt-P"
  done
  rm -rf "$apt_dir/x" "$apt_dir"/archives/*.deb
  "$CACHE/qemu-10/qemu-$QARCH" --version >/dev/null || die "the downloaded qemu-$QARCH does not run"
fi
flock -u 9
conf=$(sed -n "s|^:qemu-$QARCH:M::\([^:]*\):\([^:]*\):.*|\1:\2|p" <<'EOF'
:qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:x:OPF
:qemu-arm:M::\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:x:OPF
EOF
)
[ -e "$BINFMT/$ENTRY" ] && echo -1 > "$BINFMT/$ENTRY"
# the newest registration for a magic wins, so this one is used even where Debian's qemu-user-static is installed
echo ":$ENTRY:M::$conf:$QEMU:OPF" > "$BINFMT/register" || skip "binfmt_misc refused the $QARCH registration"

mounted=()
cleanup() {
  local m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null; done
  [ -e "$BINFMT/$ENTRY" ] && echo -1 > "$BINFMT/$ENTRY"
  return 0
}
trap cleanup EXIT

# ---- the base root filesystem (cached): debootstrap minbase + apt lists + mosquitto for the tests ------------
if [ ! -s "$BASE" ]; then
  say "debootstrap bookworm $ARCH (once per machine; cached as $BASE)"
  tmp=$CACHE/build-$ARCH && clear_dir "$tmp"
  debootstrap --arch="$ARCH" --variant=minbase --include=ca-certificates bookworm "$tmp" "$MIRROR" \
    > "$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
  chroot "$tmp" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends mosquitto >/dev/null && apt-get clean" \
    || die "apt-get in the $ARCH root failed"
  tar -C "$tmp" --numeric-owner -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE" && clear_dir "$tmp"
fi

say "a fresh root filesystem from the cached base"
clear_dir "$R" && mkdir -p "$R" && tar -C "$R" --numeric-owner -xf "$BASE" || die "cannot unpack $BASE"
for m in proc sys dev dev/pts; do
  mount --bind "/$m" "$R/$m" && mounted+=("$R/$m") || die "cannot bind-mount /$m"
done
cp /etc/resolv.conf "$R/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"  # this machine's trust (a proxy's CA)
mkdir -p "$R/src/edge-infer"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$ROOT" ls-files -z | tar -C "$ROOT" --null -T - -cf - | tar -C "$R/src/edge-infer" -xf -
else
  tar -C "$ROOT" --exclude=./.venvs --exclude=./.git --exclude=./.venv -cf - . | tar -C "$R/src/edge-infer" -xf -
fi
in_root() {  # in_root COMMAND: run a bash command line inside the emulated Pi, as root, in the project's copy
  chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    ${PIP_CERT:+PIP_CERT=$PIP_CERT} ${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} \
    EDGE_INFER_EXPECT_RUNTIME=$RUNTIME EDGE_INFER_FAULT_KILLS=5 /bin/bash -c "cd /src/edge-infer && $1"
}
[ "$(in_root 'uname -m')" = "$MACHINE" ] || die "the root does not run as $MACHINE: $(in_root 'uname -m' 2>&1)"

# ---- install exactly as the README says -------------------------------------------------------------------------
install=$(sed -n "/<!-- ci: install $ARCH -->/,/^\`\`\`\$/p" README.md | sed '1,2d;$d')
[ -n "$install" ] || die "README.md has no '<!-- ci: install $ARCH -->' block"
install=${install//\/path\/to\/edge-infer//src/edge-infer}
say "install, as README.md says for this flavour:"
sed 's/^/    /' <<< "$install"
t0=$SECONDS
in_root "sudo() { \"\$@\"; }; set -e; $install" > "$WORK/install.log" 2>&1 \
  || { tail -30 "$WORK/install.log"; die "the README's install failed (log: $WORK/install.log)"; }
echo "installed in $((SECONDS - t0)) s; $(in_root 'du -sh /opt/edge-infer | cut -f1') in the venv"
in_root '/opt/edge-infer/bin/python -m pip list --format=freeze 2>/dev/null' > "$WORK/packages.txt"
in_root '/opt/edge-infer/bin/python -c "import sys, numpy, PIL, paho.mqtt, cryptography
print(sys.version.split()[0], \"numpy\", numpy.__version__, numpy.__file__.rsplit(\"/\", 3)[0], \"| Pillow\", PIL.__version__,
      \"| cryptography\", cryptography.__version__, \"| paho-mqtt\", paho.mqtt.__version__)"'

# ---- the demo, compared with this machine's ---------------------------------------------------------------------
say "the demo on $MACHINE, compared with tests/arm/demo-expected.json (what x86_64 gives)"
in_root '/opt/edge-infer/bin/python tests/arm/demo_results.py' > "$WORK/demo-$ARCH.json" 2> "$WORK/demo-$ARCH.err" \
  || { cat "$WORK/demo-$ARCH.err"; die "the demo failed on $MACHINE"; }
grep demo_results: "$WORK/demo-$ARCH.err"
demo_rc=0
diff tests/arm/demo-expected.json "$WORK/demo-$ARCH.json" > "$WORK/demo.diff" \
  || { cat "$WORK/demo.diff"; echo "leg $ARCH: the demo's results differ from x86_64's"; demo_rc=1; }

# ---- a smoke subset of the device tests on this architecture's runtime -----------------------------------------------
say "smoke tests (tests/arm/smoke.txt) on $MACHINE"
in_root '/opt/edge-infer/bin/pip install -q --only-binary=:all: pytest pytest-timeout hypothesis jsonschema' \
  > "$WORK/test-install.log" 2>&1 || { tail -20 "$WORK/test-install.log"; die "cannot install the test tools"; }
mapfile -t smoke < <(grep -v '^\s*#' tests/arm/smoke.txt | grep .)
in_root "/opt/edge-infer/bin/python -m pytest -p no:cacheprovider --timeout 900 \
  --junitxml=/tmp/junit.xml -q ${smoke[*]} $*"
rc=$?
[ -f "$R/tmp/junit.xml" ] && cp "$R/tmp/junit.xml" "$VENVS/junit-$ARCH.xml"
echo "leg $ARCH: $((SECONDS - started)) s in all"
[ "$rc" -eq 0 ] && rc=$demo_rc
exit "$rc"
