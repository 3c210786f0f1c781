"""deploy/hullwatch.service under a real systemd user manager, with a real journald beside it.

The manager runs in a mount and cgroup namespace of its own (tests/systemd_rig.py), so nothing
outside it is touched. The unit is the shipped one less its mount-namespace lines (Protect*,
Private*: they need a mount namespace the user manager cannot make here, 226/NAMESPACE); the
system-call filter, MemoryDenyWriteExecute, NoNewPrivileges, the empty capability sets and
RestrictAddressFamilies stay. A drop-in does what an installation would: where the program and
its config are, the service user, and a short watchdog so that a lapse takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_rig import Transducer, station

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "hullwatch.service"
RIG = Path(__file__).resolve().parent / "systemd_rig.py"
HULLWATCH = Path(sys.executable).parent / "hullwatch"
WATCHDOG_S = 4
STALE_S = 1.0
STOP_TIMEOUT_S = 10  # TimeoutStopSec in the shipped unit


def unavailable() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, cgroups, mounts)"
    for tool in ("/lib/systemd/systemd", "/lib/systemd/systemd-journald"):
        if not os.access(tool, os.X_OK):
            return f"{tool} not installed (Debian package systemd)"
    for tool in ("systemctl", "journalctl", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not HULLWATCH.exists():
        return f"{HULLWATCH} missing: hullwatch is not installed in this Python's environment"
    try:
        import systemd.daemon  # noqa: F401
        import systemd.journal  # noqa: F401
    except ImportError:
        return "systemd-python not installed (pip install -e '.[systemd]'; needs libsystemd-dev, pkg-config)"
    return None


pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


class UserManager:
    """tests/systemd_rig.py in a subprocess; commands run inside its mount namespace through nsenter."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.rig_log = open(workdir / "rig.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(RIG), str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.rig_log,
            text=True,
        )
        line = self._first_line(timeout=60)
        if line.startswith("unavailable:"):
            self.close()
            pytest.skip(line)
        if not line.startswith("ready "):
            self.close()
            pytest.fail(f"the user manager did not start: {line!r}; {self.logs()}")
        info = json.loads(line[len("ready ") :])
        self.env = info["env"]
        self.groups = [Path(g).name for g in info["groups"]]

    def _first_line(self, timeout: float) -> str:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if readable else "(nothing)"

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        env = [f"{k}={v}" for k, v in self.env.items()]
        return subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "--", "env", "-i", *env, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def systemctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--user", "--no-pager", *args, timeout=timeout)

    def show(self, *props: str) -> dict[str, str]:
        out = self.systemctl("show", "hullwatch.service", *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> list[dict]:
        """Every entry journald has stored, oldest first."""
        out = self.run("journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def service_entries(self) -> list[dict]:
        return [e for e in self.journal() if e.get("SYSLOG_IDENTIFIER") == "hullwatch"]

    def wait_for(self, condition, timeout: float, what: str):
        """Poll condition() until it gives something true; fail with `what` and the journal at the deadline."""
        end = time.monotonic() + timeout
        while True:
            got = condition()
            if got:
                return got
            if time.monotonic() > end:
                pytest.fail(f"not within {timeout} s: {what}\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        messages = "\n".join(str(e.get("MESSAGE")) for e in self.journal()[-40:]) if self.proc.poll() is None else ""
        files = {p.name: p.read_text()[-2000:] for p in self.workdir.glob("*.log") if p.stat().st_size}
        return f"journal (last 40):\n{messages}\nfiles: {files}"

    def close(self) -> None:
        """Close the rig's stdin: it stops the manager and journald and removes its groups. Then check."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.rig_log.close()
        remove_groups(getattr(self, "groups", []))


def remove_groups(names: list[str]) -> None:
    """What the rig left behind (it was killed): kill the processes in its groups, remove the groups."""
    own = {line.split(":")[1]: line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()}
    for mount in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        hierarchy = "name=systemd" if mount.endswith("systemd") else ""
        for name in names:
            top = Path(mount + own.get(hierarchy, "/").rstrip("/")) / name
            if not top.is_dir():
                continue
            groups = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
            for group in groups:
                with contextlib.suppress(OSError):
                    for pid in (group / "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.5)
            for group in groups:
                with contextlib.suppress(OSError):
                    group.rmdir()


def write_unit(workdir: Path, cfg: Path, extra: str = "") -> None:
    """The shipped unit less Protect*/Private*, and a drop-in as an installation would write (plus `extra`)."""
    units = workdir / "home" / ".config" / "systemd" / "user"
    (units / "hullwatch.service.d").mkdir(parents=True)
    shipped = UNIT.read_text()
    kept = [line for line in shipped.splitlines() if not re.match(r"(Protect|Private)\w*=", line)]
    (units / "hullwatch.service").write_text("\n".join(kept) + "\n")
    (units / "hullwatch.service.d" / "local.conf").write_text(
        "[Service]\n"
        "ExecStart=\n"
        f"ExecStart={HULLWATCH} run -c {cfg}\n"
        f"WatchdogSec={WATCHDOG_S}\n"
        # the user manager runs as root, with no hullwatch user, no device groups, no /var/lib here
        "User=\nGroup=\nSupplementaryGroups=\n"
        "WorkingDirectory=%S/hullwatch\n" + extra
    )


@pytest.fixture
def manager(tmp_path):
    m = UserManager(tmp_path)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def transducer():
    t = Transducer()
    try:
        yield t
    finally:
        t.close()


def pid(m: UserManager) -> int:
    return int(m.show("MainPID")["MainPID"])


def test_the_shipped_unit_under_systemd_and_journald(manager, transducer, tmp_path):
    cfg = tmp_path / "hullwatch.toml"
    cfg.write_text(station("lab-station", transducer.port, stale_after_s=STALE_S))
    write_unit(tmp_path, cfg)
    m = manager
    assert m.systemctl("daemon-reload").returncode == 0

    # start: Type=notify, so `systemctl start` returns once READY=1 arrived
    start = m.systemctl("start", "hullwatch.service")
    assert start.returncode == 0, f"start failed: {start.stderr}\n{m.logs()}"
    times = m.show("ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    ready_s = (int(times["ActiveEnterTimestampMonotonic"]) - int(times["ExecMainStartTimestampMonotonic"])) / 1e6
    assert 0 < ready_s < 5.0, f"READY=1 within 5 s of the start (took {ready_s:.2f} s)"
    print(f"READY=1 {ready_s:.2f} s after the process started")
    first = pid(m)
    state = m.show("ActiveState", "SubState")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{first}/status").read_text().splitlines())
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", "the filters are in force"
    assert int(status["CapBnd"], 16) == 0 and int(status["CapEff"], 16) == 0, "no capabilities"
    text = m.wait_for(lambda: re.search(r"lab \d+ Pa", m.show("StatusText")["StatusText"]), 10, "a StatusText")
    print(f"StatusText: {text.string}")

    # a bad config: the reload is refused and the old daemon runs on
    cfg.write_text(station("lab-station", transducer.port, stale_after_s=STALE_S) + "\n[[segment]]\nname = 42\n")
    assert m.systemctl("reload", "hullwatch.service").returncode == 0
    m.wait_for(
        lambda: any("reload refused" in str(e.get("MESSAGE")) for e in m.service_entries()),
        10,
        "the refused reload in the journal",
    )
    m.wait_for(lambda: "reload refused" in m.show("StatusText")["StatusText"], 10, "StatusText says why")
    assert pid(m) == first and m.show("ActiveState")["ActiveState"] == "active", "the old daemon runs on"

    # a good config: taken over in the same process
    cfg.write_text(station("renamed", transducer.port, stale_after_s=STALE_S))
    assert m.systemctl("reload", "hullwatch.service").returncode == 0
    m.wait_for(
        lambda: any(str(e.get("MESSAGE")).startswith("monitoring renamed") for e in m.service_entries()),
        10,
        "monitoring with the reloaded config",
    )
    assert pid(m) == first and m.show("ActiveState")["ActiveState"] == "active"

    # every sensor silent: the stale alarm, then no more WATCHDOG=1, so systemd aborts and restarts it
    transducer.streaming.clear()
    m.wait_for(lambda: pid(m) not in (0, first), 4 * WATCHDOG_S + 10, "a restart after the watchdog lapse")
    transducer.streaming.set()
    m.wait_for(lambda: m.show("ActiveState")["ActiveState"] == "active", 10, "active again after the restart")
    restarted = m.show("NRestarts", "Result")
    assert int(restarted["NRestarts"]) >= 1
    manager_says = [str(e["MESSAGE"]) for e in m.journal() if e.get("USER_UNIT") == "hullwatch.service"]
    assert any("Watchdog timeout" in s for s in manager_says), manager_says

    # stop: clean, well within TimeoutStopSec
    sent = time.monotonic()
    stop = m.systemctl("stop", "hullwatch.service", timeout=STOP_TIMEOUT_S + 20)
    took = time.monotonic() - sent
    assert stop.returncode == 0, stop.stderr
    assert took < STOP_TIMEOUT_S, f"stopped in {took:.1f} s"
    print(f"systemctl stop returned after {took:.2f} s")
    after = m.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert after["ActiveState"] == "inactive" and after["Result"] == "success", after
    assert after["ExecMainStatus"] == "0", "exit 0 on SIGTERM, not killed"

    # the journal: structured alarm transitions, plain messages
    entries = m.service_entries()
    transitions = [e for e in entries if "ALARM" in e]
    assert transitions, "alarm transitions in the journal"
    for e in transitions:
        assert {"SOURCE", "SEVERITY", "ALARM_STATE", "PRIORITY", "LOGGER"} <= e.keys(), e
    by_alarm = {(e["ALARM"], e["SOURCE"], e["ALARM_STATE"]) for e in transitions}
    assert ("reload_fault", "config", "active") in by_alarm and ("reload_fault", "config", "cleared") in by_alarm
    stale = [e for e in transitions if e["SOURCE"] == "p" and e["ALARM_STATE"] == "active"]
    assert stale and stale[0]["PRIORITY"] == "4", "a sensor's alarm, as a warning"
    prefixed = [e["MESSAGE"] for e in entries if re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b", e["MESSAGE"])]
    assert prefixed == [], "messages without a level prefix (PRIORITY says it)"
    assert all(e.get("LOGGER", "").startswith("hullwatch") for e in entries), "every line through the journal handler"
    assert any(e["MESSAGE"].startswith("systemd: notifying through systemd-python") for e in entries)
    for e in transitions:
        print(
            f"journal: PRIORITY={e['PRIORITY']} ALARM={e['ALARM']} SOURCE={e['SOURCE']} SEVERITY={e['SEVERITY']}"
            f" ALARM_STATE={e['ALARM_STATE']} MESSAGE={e['MESSAGE']}"
        )


def test_without_systemd_python_notify_and_plain_lines_on_the_journal_stream(manager, transducer, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "systemd.py").write_text('raise ImportError("systemd-python hidden for this test")\n')
    cfg = tmp_path / "hullwatch.toml"
    cfg.write_text(station("lab-station", transducer.port, stale_after_s=STALE_S))
    write_unit(tmp_path, cfg, extra=f"Environment=PYTHONPATH={shadow}\n")
    m = manager
    assert m.systemctl("daemon-reload").returncode == 0
    start = m.systemctl("start", "hullwatch.service")
    assert start.returncode == 0, f"start failed: {start.stderr}\n{m.logs()}"
    m.wait_for(lambda: re.search(r"lab \d+ Pa", m.show("StatusText")["StatusText"]), 10, "a StatusText")
    cfg.write_text(station("lab-station", transducer.port) + "\n[[segment]]\nname = 42\n")
    assert m.systemctl("reload", "hullwatch.service").returncode == 0
    refused = m.wait_for(
        lambda: [e for e in m.service_entries() if "reload refused" in str(e.get("MESSAGE"))], 10, "a refused reload"
    )
    sent = time.monotonic()
    assert m.systemctl("stop", "hullwatch.service", timeout=STOP_TIMEOUT_S + 20).returncode == 0
    assert time.monotonic() - sent < STOP_TIMEOUT_S
    assert m.show("Result")["Result"] == "success"

    entries = m.service_entries()
    assert entries and all("LOGGER" not in e for e in entries), "no systemd-python: plain lines on stderr"
    assert refused[0]["PRIORITY"] == "3", "an error, from the <3> prefix"
    assert any(e["MESSAGE"].startswith("systemd: notifying through socket") for e in entries)
    assert any(e["MESSAGE"].startswith("monitoring lab-station") and e["PRIORITY"] == "6" for e in entries)
    prefixed = [e["MESSAGE"] for e in entries if re.match(r"<\d>|(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b", e["MESSAGE"])]
    assert prefixed == [], "the level is PRIORITY, not text"
