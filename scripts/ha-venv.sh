#!/bin/sh
# Home Assistant for tests/test_home_assistant.py: a virtualenv of its own, built once and kept.
#   scripts/ha-venv.sh      build it unless it holds this version already; print its path
# HULLWATCH_HA_VENV is where (default ~/.cache/hullwatch-ha-venv); HULLWATCH_HA_PYTHON the
# interpreter (default: the first Python >= 3.13 found on PATH or under pyenv). Home
# Assistant 2025.x needs Python 3.13; Debian 12's python3 is 3.11.
set -eu

HA_VERSION=2025.4.4  # the newest release that installs on Python 3.13.0
venv="${HULLWATCH_HA_VENV:-$HOME/.cache/hullwatch-ha-venv}"
stamp="$venv/.hullwatch-homeassistant-$HA_VERSION"

if [ -f "$stamp" ]; then
    echo "$venv"
    exit 0
fi

new_enough() {
    [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null
}
python=""
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for candidate in "${HULLWATCH_HA_PYTHON:-}" python3.14 python3.13 "$pyenv_root"/versions/3.1[3-9]*/bin/python; do
    if new_enough "$candidate"; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "no Python >= 3.13 found (set HULLWATCH_HA_PYTHON): Home Assistant $HA_VERSION cannot be installed" >&2
    exit 1
fi

echo "installing Home Assistant $HA_VERSION with $("$python" --version) into $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q uv
# uv resolves Home Assistant's ~400 pins in seconds where pip backtracks for many minutes
uv_install() {
    "$venv/bin/uv" pip install --quiet --native-tls --compile-bytecode --python "$venv/bin/python" "$@"
}
uv_install "homeassistant==$HA_VERSION"
# What the integrations the test loads require (Home Assistant would install them at start-up;
# the test runs it with --skip-pip, so that nothing is fetched while it runs)
# shellcheck disable=SC2046
uv_install $("$venv/bin/python" -c '
import json, pathlib, homeassistant.components as c
for name in ("frontend", "mqtt"):
    print(*json.loads((pathlib.Path(c.__path__[0]) / name / "manifest.json").read_text())["requirements"])
')
touch "$stamp"
echo "$venv"
