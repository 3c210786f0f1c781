#!/bin/bash
# hullwatch on a Raspberry Pi OS-like ARM userland, emulated by qemu-user on this machine:
#   scripts/check-arm.sh arm64|armhf [--tools]
# A Debian bookworm root of that architecture (python3, python3-venv, mosquitto), built once with
# mmdebstrap and kept in ~/.cache/hullwatch-arm/ARCH/root.tar; each run unpacks a fresh copy of it,
# puts this working tree there (tracked and untracked files, not .venv) as /opt/hullwatch, and times:
#   root     building or unpacking the root, with this machine's CA certificates and pip settings
#   setup    scripts/setup.sh --no-tools; then every installed distribution must be a wheel for ARCH
#            or pure Python, and no compiler may be in the root
#   tests    the tests that need no server, no systemd and no serial port (pytest, its plugins first)
#   run      hullwatch run on the simulated module, publishing to a mosquitto started in the root,
#            until an estimate arrives; then SIGTERM, which must end it with exit 0
#   tools    with --tools: scripts/setup.sh (the [tools] extra) in a new .venv, what pip built from
#            source, and then hullwatch report on the example recording
# Each step runs in mount and pid namespaces of its own (tests and run in a network namespace of
# their own too): its mounts and processes end with it. Not part of .ci/run: it takes many minutes.
set -euo pipefail

usage() {
    echo "usage: $0 arm64|armhf [--tools]" >&2
    exit 64
}
arch=${1:-}
case "$arch" in
arm64) qemu=aarch64 ;;
armhf) qemu=arm ;;
*) usage ;;
esac
shift
tools=no
for arg in "$@"; do
    case "$arg" in
    --tools) tools=yes ;;
    *) usage ;;
    esac
done

TESTS="tests/test_estimator.py tests/test_monitor.py tests/test_config.py tests/test_units.py \
tests/test_linefit.py tests/test_conditions.py tests/test_lifecycle.py tests/test_samples.py \
tests/test_topology.py"
repo=$(cd "$(dirname "$0")/.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/hullwatch-arm/$arch"
tarball="$cache/root.tar"
work=""  # this run's copy of the root: $cache/root.XXXXXX, removed at the end
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

summary=()
phase() {
    phase_name=$1
    phase_t0=$(date +%s.%N)
    echo "== $phase_name"
}
phase_done() { # phase_done [WHAT]: the time of the phase begun last, with what it found
    local s
    s=$(echo "$(date +%s.%N) - $phase_t0" | bc)
    summary+=("$(printf '%-6s %7.1f s  %s' "$phase_name" "$s" "${1:-}")")
    printf '== %s: %.1f s %s\n' "$phase_name" "$s" "${1:-}"
}

cleanup() {
    [ -n "$work" ] || return 0
    # the steps mount only inside their own mount namespaces; anything left under the root is unmounted
    findmnt -rn -o TARGET | { grep -F "$work/" || true; } | sort -r | while read -r m; do $sudo umount -l "$m" || true; done
    [ -n "${HULLWATCH_ARM_KEEP:-}" ] || $sudo rm -rf --one-file-system "$work"
}
trap cleanup EXIT

in_root() { # in_root [--offline] SCRIPT: sh -c SCRIPT as root in the root, with /proc, /dev and /sys
    local offline=no
    if [ "$1" = --offline ]; then
        offline=yes
        shift
    fi
    local net=()
    [ "$offline" = no ] || net=(--net)
    # shellcheck disable=SC2016
    $sudo unshare --mount --pid --fork --kill-child "${net[@]}" -- /bin/sh -c '
        set -e
        r=$1
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount --rbind /sys "$r/sys"
        [ "$2" = no ] || ip link set lo up
        exec chroot "$r" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 TERM=dumb /bin/sh -c "$3"
    ' sh "$work" "$offline" "$1"
}

# --- this machine: qemu-user for ARCH, mmdebstrap
missing=""
for p in qemu-user-static binfmt-support mmdebstrap bc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing on this machine:$missing"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || $sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
grep -qs '^enabled' "/proc/sys/fs/binfmt_misc/qemu-$qemu" || $sudo update-binfmts --enable "qemu-$qemu"
echo "host: $(nproc) cores, $(uname -m), $(qemu-$qemu-static --version | head -1)"

# --- root
phase root
if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    $sudo mmdebstrap --variant=apt --architectures="$arch" --format=tar \
        --include=python3,python3-venv,mosquitto,mosquitto-clients,ca-certificates \
        --aptopt='Acquire::Check-Valid-Until "false"' bookworm "$tarball.part" \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main"
    $sudo mv "$tarball.part" "$tarball"
    built="built"
else
    built="unpacked from $tarball"
fi
work=$($sudo mktemp -d "$cache/root.XXXXXX")
$sudo tar -C "$work" -xpf "$tarball"
# name resolution as here; no service starts when setup.sh installs a package
$sudo cp -L /etc/resolv.conf /etc/hosts "$work/etc/"
printf '#!/bin/sh\nexit 101\n' | $sudo tee "$work/usr/sbin/policy-rc.d" >/dev/null
$sudo chmod 755 "$work/usr/sbin/policy-rc.d"
# the certificate authorities this machine trusts, so that apt and pip reach their registries as here
# (copied as they are: update-ca-certificates would take minutes under emulation)
$sudo cp -a /etc/ssl/certs/. "$work/etc/ssl/certs/"
[ ! -d /usr/local/share/ca-certificates ] ||
    $sudo cp -a /usr/local/share/ca-certificates/. "$work/usr/local/share/ca-certificates/"
# pip's settings that say how to reach an index (not local directories, which the root has not)
declare -A pip_settings=()
while IFS= read -r line; do
    key=${line%%=*}
    key=${key#*.}
    value=${line#*=}
    value=${value#\'}
    value=${value%\'}
    case "$key" in
    cert | client-cert)
        [ -f "$value" ] || continue
        $sudo install -D -m 644 "$value" "$work$value"
        ;;
    index-url | extra-index-url | trusted-host | proxy)
        # shellcheck disable=SC2086
        value=$(printf '%s\n' $value | grep -v '^file:' | paste -sd ' ' || true)
        [ -n "$value" ] || continue
        ;;
    *) continue ;;
    esac
    pip_settings[$key]=$value
done < <(python3 -m pip config list 2>/dev/null || true)
{
    echo "[global]"
    for key in "${!pip_settings[@]}"; do echo "$key = ${pip_settings[$key]}"; done
} | $sudo tee "$work/etc/pip.conf" >/dev/null
# this working tree, as committed or not, without the virtualenv or anything else git ignores
$sudo mkdir -p "$work/opt/hullwatch"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
        (cd "$repo" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) |
        $sudo tar -C "$work/opt/hullwatch" -xf -
else
    tar -C "$repo" --exclude=./.venv -cf - . | $sudo tar -C "$work/opt/hullwatch" -xf -
fi
# shellcheck disable=SC2016
phase_done "$built, $(in_root '. /etc/os-release; echo "$PRETTY_NAME $(dpkg --print-architecture), $(python3 --version)"')"

# --- setup: the monitor without [tools], from wheels or pure Python alone
phase setup
in_root 'cd /opt/hullwatch && PIP_LOG=/tmp/setup-pip.log scripts/setup.sh --no-tools'
# shellcheck disable=SC2016
wheels=$(in_root 'set -e
    for c in cc gcc c++ g++ clang; do
        if command -v "$c" >/dev/null; then echo "a compiler is in the root: $c" >&2; exit 1; fi
    done
    cd /opt/hullwatch
    if grep -E "Building wheel for" /tmp/setup-pip.log | grep -v "for hullwatch " >&2; then
        echo "pip built the distributions above from source" >&2
        exit 1
    fi
    .venv/bin/pip freeze --exclude-editable >/tmp/daemon-freeze.txt
    rm -rf /tmp/wheels
    .venv/bin/pip download -q --only-binary=:all: --no-deps -d /tmp/wheels -r /tmp/daemon-freeze.txt
    n=$(ls /tmp/wheels | wc -l)
    own=$(ls /tmp/wheels | grep -v -- "-none-any.whl$" | sed "s/-.*//" | paste -sd " " || true)
    echo "$n distributions, all wheels; for $(dpkg --print-architecture) only: ${own:-none}"')
phase_done "$wheels"

phase pytest
in_root 'cd /opt/hullwatch && .venv/bin/pip install -q pytest pytest-timeout hypothesis'
phase_done "pytest, pytest-timeout, hypothesis"

# --- tests: pure Python, no network
phase tests
log=$(mktemp)
# shellcheck disable=SC2086
if ! in_root --offline "cd /opt/hullwatch && .venv/bin/python -m pytest -q -p no:cacheprovider $TESTS" | tee "$log"; then
    phase_done "FAILED: $(tail -1 "$log")"
    printf '%s\n' "${summary[@]}"
    exit 1
fi
phase_done "$(tail -1 "$log" | tr -d '=' | sed 's/^ *//;s/ *$//')"
rm -f "$log"

# --- run: the simulated module, MQTT to a private mosquitto, SIGTERM
phase run
# shellcheck disable=SC2016
ran=$(in_root --offline 'set -e
    cd /opt/hullwatch
    d=$(mktemp -d)
    cfg=config/check-arm.toml  # beside the sim config: its scenario path is relative to the file
    { cat config/hullwatch.sim.toml; printf "\n[mqtt]\nport = 1883\n\n[spool]\npath = \"%s/spool.sqlite\"\n" "$d"; } >$cfg
    printf "listener 1883 127.0.0.1\nallow_anonymous true\n" >$d/mosquitto.conf
    mosquitto -c $d/mosquitto.conf >$d/mosquitto.log 2>&1 &
    i=0
    until mosquitto_pub -h 127.0.0.1 -t check/up -n 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "mosquitto did not start" >&2; exit 1; }
        sleep 0.3
    done
    mosquitto_sub -h 127.0.0.1 -t "hullwatch/prk-sim/volume/+" -C 1 -W 300 -v >$d/first &
    sub=$!
    t0=$(date +%s.%N)
    .venv/bin/hullwatch run -c $cfg >$d/run.log 2>&1 &
    run=$!
    if ! wait $sub; then
        echo "no estimate on hullwatch/prk-sim/volume/+ within 300 s" >&2
        tail -20 $d/run.log >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    kill -TERM $run
    rc=0
    wait $run || rc=$?
    t2=$(date +%s.%N)
    rm -f $cfg
    if [ $rc -ne 0 ] || grep -q Traceback $d/run.log; then
        echo "hullwatch run ended with exit $rc" >&2
        tail -20 $d/run.log >&2
        exit 1
    fi
    cut -c1-160 $d/first >&2
    tail -3 $d/run.log >&2
    echo "first estimate $(echo "$t1 - $t0" | python3 -c "print(f\"{eval(input()):.1f}\")") s after start, SIGTERM -> exit 0 in $(echo "$t2 - $t1" | python3 -c "print(f\"{eval(input()):.1f}\")") s"')
phase_done "$ran"

# --- tools: what scripts/setup.sh with the [tools] extra costs here, in a new .venv; then a report
if [ "$tools" = yes ]; then
    phase tools
    result="installed"
    in_root "cd /opt/hullwatch && mv .venv .venv-no-tools &&
        PIP_LOG=/tmp/tools-pip.log timeout ${HULLWATCH_ARM_TOOLS_TIMEOUT:-5400} scripts/setup.sh" ||
        result="FAILED (exit $?)"
    # shellcheck disable=SC2016
    built=$(in_root 'grep -o "Building wheel for [^ ]*" /tmp/tools-pip.log | sed "s/Building wheel for //" |
        grep -vx hullwatch | sort -u | paste -sd " " || true')
    phase_done "$result; built from source: ${built:-nothing}"
    if [ "$result" = installed ]; then
        phase report
        in_root --offline 'cd /opt/hullwatch && .venv/bin/hullwatch report -c config/hullwatch.sim.toml \
            config/examples/prk-2026.csv.gz -o /tmp/report | tail -1 && test -s /tmp/report/report.png'
        phase_done "hullwatch report on config/examples/prk-2026.csv.gz"
    fi
fi

echo
echo "hullwatch on $arch under qemu-user ($(nproc) cores, $(uname -m)):"
printf '%s\n' "${summary[@]}"
