#!/bin/sh
# Set up hullwatch on a fresh Debian / Raspberry Pi OS machine:
# the system packages it needs, then a virtualenv (.venv) holding the project.
#   scripts/setup.sh             the monitor and its workstation tools (report, watch)
#   scripts/setup.sh --no-tools  the monitor alone: wheels and pure Python, no compiler
#   scripts/setup.sh --test      the monitor, its tools and everything its tests need
set -eu
cd "$(dirname "$0")/.."

tools=yes
test=no
for arg in "$@"; do
    case "$arg" in
    --test) test=yes ;;
    --no-tools) tools=no ;;
    *)
        echo "usage: $0 [--no-tools] [--test]" >&2
        exit 64
        ;;
    esac
done
# mosquitto and influxdb: the demo starts private instances of both when they are there
packages="python3 python3-venv mosquitto mosquitto-clients influxdb influxdb-client"
extras=""
venv_flags=""
if [ "$tools" = yes ]; then
    extras="tools"
    packages="$packages python3-dev gcc"
    if [ "$(dpkg --print-architecture)" = armhf ]; then
        # PyPI has no armhf wheel for matplotlib, numpy, pillow, kiwisolver or contourpy: Debian's build
        # of them instead of compiling them (textual, the other tool, is pure Python)
        packages="$packages python3-matplotlib"
        venv_flags="--system-site-packages"
    fi
fi
if [ "$test" = yes ]; then
    extras="${extras:+$extras,}test"
    # victoria-metrics: a real server for the InfluxDB v2 write path (no InfluxDB 2.x is packaged);
    # libsystemd-dev, pkg-config, python3-dev and gcc build systemd-python; systemd runs the unit for real
    packages="$packages socat openssl victoria-metrics libsystemd-dev pkg-config python3-dev gcc systemd"
fi
target=".${extras:+[$extras]}"
if grep -qs "Raspberry Pi" /proc/device-tree/model; then
    # gpiozero's pin library comes from Raspberry Pi OS (lgpio works on every Pi, the 5 included);
    # python3-systemd is systemd-python (structured journal fields), with no build step
    packages="$packages python3-lgpio python3-spidev python3-systemd"
    venv_flags="--system-site-packages"
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing system packages:$missing"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    case "$missing " in
    *" victoria-metrics "*)
        # the tests start private instances: the system-wide one the package enables (port 8428) is not wanted
        [ -d /run/systemd/system ] && $sudo systemctl disable --now victoria-metrics.service >/dev/null 2>&1 || true
        ;;
    esac
fi

# shellcheck disable=SC2086
[ -x .venv/bin/python ] || python3 -m venv $venv_flags .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e "$target"
echo "hullwatch installed in $(pwd)/.venv ($(.venv/bin/hullwatch --version))"
