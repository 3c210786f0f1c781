"""deploy/hullwatch.service and deploy/install.sh, checked offline.

Needs `systemd-analyze` (Debian package `systemd`), not a running systemd: `verify` works on
a copy whose ExecStart=/ExecReload= point to binaries that exist here, and must print nothing
(it exits 0 even on unknown keys); `security --offline=true` scores the unit. install.sh is
only ever run with --dry-run, with every command that could change the system replaced by a
stub that records the call and fails, so these tests cannot touch the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "hullwatch.service"
INSTALL = ROOT / "deploy" / "install.sh"
EXPOSURE_BAR = 2.5

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def unit_lines(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; keys may repeat."""
    out = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_lines(UNIT.read_text()) if s == section and k == key]


def one(key: str, section: str = "Service") -> str:
    vs = values(key, section)
    assert len(vs) == 1, f"{key}= appears {len(vs)} times in [{section}]"
    return vs[0]


def host_copy(tmp_path: Path, extra: str = "") -> Path:
    """The unit with ExecStart=/ExecReload= binaries that exist on this machine, as the acceptance check does."""
    hw = Path(sys.executable).parent / "hullwatch"
    binary = str(hw) if hw.exists() else shutil.which("true") or "/bin/true"
    kill = shutil.which("kill") or "/bin/kill"
    text = UNIT.read_text()
    text = re.sub(r"(?m)^(ExecStart=)\S+", lambda m: m.group(1) + binary, text)
    text = re.sub(r"(?m)^(ExecReload=)\S+", lambda m: m.group(1) + kill, text)
    copy = tmp_path / "hullwatch.service"
    copy.write_text(text + extra)
    return copy


def analyze(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *map(str, args)], capture_output=True, text=True, timeout=60)


# -- systemd-analyze ----------------------------------------------------------------------------


@needs_analyze
def test_verify_prints_nothing(tmp_path):
    p = analyze("verify", "--man=no", host_copy(tmp_path))
    out = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert p.returncode == 0 and not out, out


@needs_analyze
def test_verify_would_catch_a_bad_key(tmp_path):
    """The check above means something: verify does report an unknown key (on stderr, exit 0)."""
    p = analyze("verify", "--man=no", host_copy(tmp_path, extra="[Service]\nNoSuchSetting=yes\n"))
    assert "NoSuchSetting" in p.stdout + p.stderr


@needs_analyze
def test_security_exposure_at_most_2_5():
    p = analyze("security", "--offline=true", UNIT)
    m = re.search(r"Overall exposure level for \S+:\s*([0-9.]+)", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    score = float(m.group(1))
    assert score <= EXPOSURE_BAR, f"exposure {score} > {EXPOSURE_BAR}"
    p = analyze("security", "--offline=true", f"--threshold={int(EXPOSURE_BAR * 10)}", UNIT)
    assert p.returncode == 0


# -- the unit's contents ----------------------------------------------------------------------------


def test_unit_lifecycle():
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert int(one("WatchdogSec")) > 0
    assert one("Restart") == "on-failure"
    assert one("ExecStart") == "/opt/hullwatch/venv/bin/hullwatch run -c /etc/hullwatch/hullwatch.toml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert set(one("RestartPreventExitStatus").split()) == {"64", "78"}  # usage, config error: no restart loop
    assert values("WantedBy", "Install") == ["multi-user.target"]


def test_unit_identity_and_files():
    assert one("User") == "hullwatch"
    assert one("Group") == "hullwatch"
    assert "DynamicUser" not in {k for _, k, _ in unit_lines(UNIT.read_text())}
    assert set(one("SupplementaryGroups").split()) == {"gpio", "spi", "dialout"}
    assert one("StateDirectory") == "hullwatch"
    assert one("ConfigurationDirectory") == "hullwatch"
    # lgpio makes its notification FIFOs in the working directory: it must be writable
    assert one("WorkingDirectory") == "/var/lib/hullwatch"
    assert one("SyslogIdentifier") == "hullwatch"


def test_unit_keeps_what_the_hardware_needs():
    settings = {k: v for _, k, v in unit_lines(UNIT.read_text())}
    assert settings.get("PrivateDevices", "no") in ("no", "false")  # would hide /dev/gpiochip*, /dev/tty*
    assert settings.get("ProcSubset", "all") == "all"  # gpiozero reads /proc/device-tree and /proc/cpuinfo
    assert one("DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in values("DeviceAllow")}
    assert {"char-gpiochip", "char-spi", "char-ttyUSB", "char-ttyACM", "char-ttyAMA"} <= allowed
    assert all(v.split()[1] == "rw" for v in values("DeviceAllow"))
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_every_credential_has_a_fallback():
    """A missing secret file must not keep the monitor from starting."""
    loaded = {v.split(":", 1)[0] for v in values("LoadCredential")}
    fallback = {v.split(":", 1)[0] for v in values("SetCredential")}
    assert "mqtt-password" in loaded and "influx-token" in loaded
    assert loaded == fallback
    assert all(v.split(":", 1)[1].startswith("/etc/hullwatch/") for v in values("LoadCredential"))


# -- install.sh ----------------------------------------------------------------------------------

# Every command install.sh could change the system with: in a dry run none may be called.
MUTATING = [
    "apt-get",
    "apt-cache",
    "dpkg",
    "useradd",
    "userdel",
    "usermod",
    "groupadd",
    "groupdel",
    "runuser",
    "sudo",
    "su",
    "systemctl",
    "install",
    "cp",
    "mv",
    "rm",
    "rmdir",
    "mkdir",
    "ln",
    "chgrp",
    "chown",
    "chmod",
    "find",
    "mktemp",
    "pip",
    "pip3",
    "python",
    "python3",
    "env",
    "tee",
    "touch",
]


@pytest.fixture
def guarded_env(tmp_path):
    """PATH with a failing, recording stub in front of every mutating command."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls.log"
    for name in MUTATING:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return env, calls, stubs


def run_install(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=60, cwd=str(ROOT)
    )


def test_install_sh_syntax():
    p = subprocess.run(["sh", "-n", str(INSTALL)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert INSTALL.read_text().startswith("#!/bin/sh\n")
    assert re.search(r"(?m)^set -eu$", INSTALL.read_text())


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_sh_shellcheck():
    p = subprocess.run(["shellcheck", "-s", "sh", str(INSTALL)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_install_dry_run_prints_the_plan_and_runs_nothing(guarded_env):
    env, calls, _ = guarded_env
    p = run_install(env, "--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert not calls.exists(), calls.read_text()
    assert "useradd --system" in out and "--shell /usr/sbin/nologin" in out
    assert "systemctl enable --now hullwatch" in out
    assert "--system-site-packages /opt/hullwatch/venv" in out
    assert "check-config -c /etc/hullwatch/hullwatch.toml" in out
    assert out.index("check-config") < out.index("systemctl enable")
    assert "python3-venv" in out and "python3-lgpio" in out and "python3-spidev" in out
    assert "mosquitto" not in out
    # the venv the script builds is the one the unit starts
    exec_start = one("ExecStart").split()[0]
    assert f"{Path(exec_start).parent.parent} " in out or f"{Path(exec_start).parent.parent}\n" in out


def test_install_dry_run_with_servers(guarded_env):
    env, calls, _ = guarded_env
    p = run_install(env, "--dry-run", "--with-servers")
    assert p.returncode == 0 and not calls.exists()
    assert "mosquitto" in p.stdout and "influxdb" in p.stdout


def test_uninstall_dry_run_keeps_config_and_state_unless_purge(guarded_env):
    env, calls, _ = guarded_env
    p = run_install(env, "--dry-run", "--uninstall")
    assert p.returncode == 0 and not calls.exists(), p.stdout + p.stderr
    removed = [ln for ln in p.stdout.splitlines() if ln.startswith("+ rm ")]
    assert any("/opt/hullwatch" in ln for ln in removed)
    assert not any("/etc/hullwatch" in ln or "/var/lib/hullwatch" in ln for ln in removed)
    assert "userdel hullwatch" in p.stdout and "systemctl disable --now hullwatch" in p.stdout
    p = run_install(env, "--dry-run", "--uninstall", "--purge")
    assert p.returncode == 0 and not calls.exists()
    assert any(
        "/etc/hullwatch" in ln and "/var/lib/hullwatch" in ln for ln in p.stdout.splitlines() if ln.startswith("+ rm ")
    )


def test_install_refuses_without_root_and_bad_options(guarded_env):
    env, calls, stubs = guarded_env
    fake_id = stubs / "id"
    fake_id.write_text("#!/bin/sh\necho 1000\n")
    fake_id.chmod(0o755)
    p = run_install(env)
    assert p.returncode == 77 and "root" in p.stderr
    p = run_install(env, "--bogus")
    assert p.returncode == 64
    assert not calls.exists(), calls.read_text()
