#!/bin/sh
# Install hullwatch as a systemd service on Raspberry Pi OS (bookworm) or Debian 12.
#
#   sudo deploy/install.sh                  install or upgrade, then start if the config is valid
#   sudo deploy/install.sh --with-servers   also install mosquitto and InfluxDB on this host
#   sudo deploy/install.sh --uninstall      remove the service, the venv and the user;
#                                           keep /etc/hullwatch and /var/lib/hullwatch
#   sudo deploy/install.sh --uninstall --purge   ... and remove those two as well
#   deploy/install.sh --dry-run [...]       print the commands only (no root needed, changes nothing)
#
# Safe to run again: every step checks what is already there. The project is installed
# from the checkout this script lives in. See deploy/README.md.
set -eu
# files the service user must read (venv, unit, README) get group/other read permission
umask 022

PREFIX=/opt/hullwatch
VENV=$PREFIX/venv
CONF_DIR=/etc/hullwatch
CONF=$CONF_DIR/hullwatch.toml
STATE_DIR=/var/lib/hullwatch
UNIT_DIR=/etc/systemd/system
UNIT=hullwatch.service
DROPIN_DIR=$UNIT_DIR/$UNIT.d
GROUPS_DROPIN=$DROPIN_DIR/10-groups.conf
SVC_USER=hullwatch
# Debian's interpreter, not whatever python3 comes first in PATH: the apt packages below are
# built for it, and the service user must be able to run it.
PYTHON=/usr/bin/python3
DEVICE_GROUPS="gpio spi dialout"
# python3-lgpio and python3-spidev: gpiozero's pin and SPI libraries (Raspberry Pi OS builds;
# the venv sees them through --system-site-packages). python3-systemd: structured journal fields.
PACKAGES="python3 python3-venv python3-lgpio python3-spidev python3-systemd"
SERVER_PACKAGES="mosquitto mosquitto-clients influxdb influxdb-client"

SRC=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    sed -n '2,12s/^# \{0,1\}//p' "$0"
}

action=install
purge=0
servers=0
dry=0
for arg in "$@"; do
    case $arg in
        --uninstall) action=uninstall ;;
        --purge) action=uninstall; purge=1 ;;
        --with-servers) servers=1 ;;
        --dry-run|-n) dry=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $arg" >&2; usage >&2; exit 64 ;;
    esac
done

say() { printf '%s\n' "$*"; }
# Print a command, then run it (only print it with --dry-run).
run() {
    printf '+ %s\n' "$*"
    [ "$dry" -eq 1 ] || "$@"
}
# In a dry run, print what a step would do and under which condition.
plan() { printf '+ %s    # %s\n' "$1" "$2"; }
have_systemd() { [ -d /run/systemd/system ]; }

if [ "$dry" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must be run as root: sudo $0 $*" >&2
    exit 77
fi

# --- uninstall ----------------------------------------------------------------------------
uninstall() {
    if [ "$dry" -eq 1 ]; then
        plan "systemctl disable --now $UNIT" "if systemd runs"
        plan "rm -f $UNIT_DIR/$UNIT $GROUPS_DROPIN" "then rmdir $DROPIN_DIR if empty"
        plan "systemctl daemon-reload" "if systemd runs"
        run rm -rf "$PREFIX"
        plan "userdel $SVC_USER" "if the user exists (and groupdel $SVC_USER if its group is left)"
        if [ "$purge" -eq 1 ]; then
            run rm -rf "$CONF_DIR" "$STATE_DIR"
        else
            say "# kept: $CONF_DIR and $STATE_DIR (remove them with --purge)"
        fi
        return 0
    fi
    if have_systemd && systemctl cat "$UNIT" >/dev/null 2>&1; then
        run systemctl disable --now "$UNIT" || true
    fi
    run rm -f "$UNIT_DIR/$UNIT" "$GROUPS_DROPIN"
    [ ! -d "$DROPIN_DIR" ] || rmdir "$DROPIN_DIR" 2>/dev/null ||
        say "note: $DROPIN_DIR still holds local drop-ins; left in place"
    if have_systemd; then
        run systemctl daemon-reload
        systemctl reset-failed "$UNIT" >/dev/null 2>&1 || true
    fi
    run rm -rf "$PREFIX"
    if getent passwd "$SVC_USER" >/dev/null; then
        run userdel "$SVC_USER"
    fi
    if getent group "$SVC_USER" >/dev/null; then
        run groupdel "$SVC_USER"
    fi
    if [ "$purge" -eq 1 ]; then
        run rm -rf "$CONF_DIR" "$STATE_DIR"
    else
        say "kept: $CONF_DIR (configuration, secrets) and $STATE_DIR (spool, recordings);"
        say "      remove them with: sudo $0 --uninstall --purge"
    fi
    if [ "$servers" -eq 1 ]; then
        say "note: the mosquitto and InfluxDB packages stay installed (apt-get remove them if unwanted)"
    fi
    say "hullwatch uninstalled"
}

# --- install ------------------------------------------------------------------------------
install_packages() {
    wanted=$PACKAGES
    [ "$servers" -eq 0 ] || wanted="$wanted $SERVER_PACKAGES"
    if [ "$dry" -eq 1 ]; then
        plan "apt-get update -qq" "if a package below is missing"
        plan "apt-get install -y $wanted" "only those missing; python3-lgpio is skipped where apt has none (not a Pi)"
        return 0
    fi
    missing=""
    for p in $wanted; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -n "$missing" ] || return 0
    run apt-get update -qq
    available=""
    for p in $missing; do
        if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
            available="$available $p"
        else
            say "note: apt has no package $p here; skipped (python3-lgpio is in the Raspberry Pi OS archive only)"
        fi
    done
    [ -n "$available" ] || return 0
    # shellcheck disable=SC2086
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $available
}

create_user() {
    if [ "$dry" -eq 1 ]; then
        plan "useradd --system --user-group --home-dir $STATE_DIR --no-create-home --shell /usr/sbin/nologin $SVC_USER" \
            "if the user does not exist"
        plan "usermod -a -G gpio,spi,dialout $SVC_USER" "the groups of these that exist"
        plan "printf '[Service]\\nSupplementaryGroups=\\nSupplementaryGroups=<existing groups>\\n' > $GROUPS_DROPIN" \
            "only if one of $DEVICE_GROUPS is missing (not a Pi)"
        return 0
    fi
    if ! getent passwd "$SVC_USER" >/dev/null; then
        if getent group "$SVC_USER" >/dev/null; then
            group_opt="--gid $SVC_USER"
        else
            group_opt="--user-group"
        fi
        # shellcheck disable=SC2086
        run useradd --system $group_opt --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "hullwatch pressure monitor" "$SVC_USER"
    fi
    present=""
    absent=""
    for g in $DEVICE_GROUPS; do
        if getent group "$g" >/dev/null; then
            present="${present:+$present }$g"
        else
            absent="${absent:+$absent }$g"
        fi
    done
    if [ -n "$present" ]; then
        run usermod -a -G "$(printf '%s' "$present" | tr ' ' ',')" "$SVC_USER"
    fi
    if [ -n "$absent" ]; then
        # The unit names all three; a group that does not exist would stop it from starting.
        say "note: no group(s) $absent on this machine (not a Pi?); the service gets only: ${present:-none}"
        run mkdir -p "$DROPIN_DIR"
        printf '# Written by install.sh: group(s) %s do not exist on this machine.\n[Service]\nSupplementaryGroups=\nSupplementaryGroups=%s\n' \
            "$absent" "$present" >"$GROUPS_DROPIN"
        say "  wrote $GROUPS_DROPIN"
    elif [ -e "$GROUPS_DROPIN" ]; then
        run rm -f "$GROUPS_DROPIN"
    fi
}

install_venv() {
    if [ "$dry" -eq 1 ]; then
        run install -d -m 0755 -o root -g root "$PREFIX"
        plan "$PYTHON -m venv --system-site-packages $VENV" "if there is no venv yet, or it is not based on $PYTHON"
        plan "cp -R $SRC/pyproject.toml $SRC/README.md $SRC/daemon TMPDIR/" \
            "a copy, so that the build leaves nothing root-owned in the checkout"
        run "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade TMPDIR
        run install -m 0644 "$SRC/deploy/README.md" "$PREFIX/README.md"
        return 0
    fi
    run install -d -m 0755 -o root -g root "$PREFIX"
    if [ -x "$VENV/bin/python" ] && ! grep -qx "home = $(dirname "$PYTHON")" "$VENV/pyvenv.cfg" 2>/dev/null; then
        say "note: $VENV is not based on $PYTHON; making it again"
        run rm -rf "$VENV"
    fi
    [ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv --system-site-packages "$VENV"
    build=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$build'" EXIT
    run cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/daemon" "$build/"
    rm -rf "$build"/daemon/*.egg-info
    run "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade "$build"
    rm -rf "$build"
    trap - EXIT
    run install -m 0644 "$SRC/deploy/README.md" "$PREFIX/README.md"
    say "installed: $("$VENV/bin/hullwatch" --version)"
}

fresh_config=0
install_config() {
    run install -d -m 0750 -o root -g "$SVC_USER" "$CONF_DIR"
    if [ "$dry" -eq 1 ]; then
        plan "install -m 0640 -o root -g $SVC_USER $SRC/config/hullwatch.example.toml $CONF" "only if $CONF is absent"
        return 0
    fi
    if [ -e "$CONF" ]; then
        # Files kept by --uninstall carry the gid of the removed hullwatch group: give them the
        # new one. The configuration itself is always root:hullwatch.
        if [ -n "$(find "$CONF_DIR" -nogroup -print -quit)" ]; then
            run find "$CONF_DIR" -nogroup -exec chgrp "$SVC_USER" {} +
        fi
        if [ "$(stat -c %G "$CONF")" != "$SVC_USER" ]; then
            run chgrp "$SVC_USER" "$CONF"
        fi
        say "kept: $CONF"
    else
        run install -m 0640 -o root -g "$SVC_USER" "$SRC/config/hullwatch.example.toml" "$CONF"
        fresh_config=1
    fi
}

install_unit() {
    run install -m 0644 "$SRC/deploy/$UNIT" "$UNIT_DIR/$UNIT"
    if [ "$dry" -eq 1 ]; then
        plan "systemctl daemon-reload" "if systemd runs"
    elif have_systemd; then
        run systemctl daemon-reload
    fi
}

check_and_start() {
    check="$VENV/bin/hullwatch check-config -c $CONF"
    if [ "$dry" -eq 1 ]; then
        plan "runuser -u $SVC_USER -- $check" "as the service user, so file permissions are checked too"
        plan "systemctl enable --now $UNIT" \
            "if the check passes and $CONF is not the example just copied; restart instead if already running"
        return 0
    fi
    if [ "$fresh_config" -eq 1 ]; then
        say ""
        say "$CONF is new: a copy of the example, with simulated sensors. Not starting the service."
        say "Describe your mock-up there (see the comments in it and deploy/README.md), then:"
        say "    sudo $check"
        say "    sudo systemctl enable --now hullwatch      (or run this script again)"
        return 0
    fi
    # shellcheck disable=SC2086
    if ! (cd / && run runuser -u "$SVC_USER" -- $check); then
        say ""
        say "not enabling $UNIT: $CONF is invalid (see above), or unreadable by user $SVC_USER."
        say "Fix it, then: sudo systemctl enable --now hullwatch      (or run this script again)"
        return 78
    fi
    if ! have_systemd; then
        run systemctl enable "$UNIT"
        say "systemd is not running here: enabled for the next boot, not started"
        return 0
    fi
    if systemctl is-active --quiet "$UNIT"; then
        run systemctl enable "$UNIT"
        run systemctl restart "$UNIT"
    else
        run systemctl enable --now "$UNIT"
    fi
    say ""
    say "hullwatch started: systemctl status hullwatch; journalctl -u hullwatch -f"
}

install_all() {
    if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/deploy/$UNIT" ]; then
        echo "install.sh: $SRC does not look like a hullwatch checkout" >&2
        exit 66
    fi
    install_packages
    create_user
    install_venv
    install_config
    install_unit
    check_and_start
}

if [ "$dry" -eq 1 ]; then
    say "# dry run: these are the commands a real run would use; nothing is changed"
fi
case $action in
    install) install_all ;;
    uninstall) uninstall ;;
esac
