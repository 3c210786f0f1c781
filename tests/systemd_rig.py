"""A systemd user manager with journald beside it, confined to a mount and cgroup namespace of its own.

Run as `python3 systemd_rig.py WORKDIR` (root). It enters a mount and a cgroup namespace of its own
(unshare(2), as `unshare -m -C --propagation private` would), remounts
the cgroup hierarchies, makes a child group of its own in each tracking hierarchy and moves itself
there, puts tmpfs on /run/systemd, /run/log, /run/user (and /var/log/journal), starts
/lib/systemd/systemd-journald and `/lib/systemd/systemd --user`, then prints one line
`ready {json}` and waits until its stdin closes. Then it stops both by PID, kills whatever is left
in its groups and removes them (bottom-up). Outside the namespace, enter it with `nsenter -t PID -m`.

Without the cgroup namespace a `systemd --user` started as root would move every process on the
machine into its own cgroup: this script starts nothing unless it is in a cgroup namespace of its own.
It prints `unavailable: ...` and exits 4 where namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CGROUP = Path("/sys/fs/cgroup")
SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
RUNTIME_DIR = Path("/run/user/0")
JOURNAL_DIR = "/run/log/journal"


def enter_namespaces() -> None:
    """unshare(CLONE_NEWNS | CLONE_NEWCGROUP), then make every mount private: nothing leaks out."""
    outside = os.readlink("/proc/self/ns/cgroup")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWCGROUP) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    if os.readlink("/proc/self/ns/cgroup") == outside:
        raise OSError("still in the cgroup namespace it started in")
    mount("--make-rprivate", "/")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def remount_cgroups() -> list[Path]:
    """Mount the tracking hierarchies again inside the namespace (rooted at our group); their paths."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    cgroup_mounts = [(m[1], m[2], m[3]) for m in mounts if m[2] in ("cgroup", "cgroup2")]
    if any(point == str(CGROUP) and fs == "cgroup2" for point, fs, _ in cgroup_mounts):
        mount("-t", "cgroup2", "cgroup2", str(CGROUP))  # unified hierarchy only
        return [CGROUP]
    mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", str(CGROUP))
    tracking = []
    for point, fs, options in cgroup_mounts:
        if fs == "cgroup2":
            target = Path(point)
            target.mkdir(parents=True, exist_ok=True)
            mount("-t", "cgroup2", "cgroup2", str(target))
            tracking.append(target)
        elif "name=systemd" in options.split(","):
            target = Path(point)
            target.mkdir(parents=True, exist_ok=True)
            mount("-t", "cgroup", "-o", "none,name=systemd", "cgroup", str(target))
            tracking.append(target)
    if not tracking:
        raise RuntimeError("no systemd or unified cgroup hierarchy mounted")
    return tracking


def groups_below(top: Path) -> list[Path]:
    """Every group under top, deepest first."""
    found = [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def pids_in(top: Path) -> set[int]:
    pids: set[int] = set()
    for group in groups_below(top):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
    return pids


def wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def stop(proc: subprocess.Popen | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    workdir = Path(sys.argv[1])
    try:
        enter_namespaces()
    except OSError as exc:
        print(f"unavailable: cannot make a mount and cgroup namespace: {exc}", flush=True)
        return 4
    name = f"hullwatch-test-{os.getpid()}"
    groups: list[Path] = []
    journald = manager = None
    created: list[Path] = []
    try:
        for tracking in remount_cgroups():
            group = tracking / name
            group.mkdir()
            groups.append(group)
            (group / "cgroup.procs").write_text(str(os.getpid()))
        for point in map(Path, ("/run/systemd", "/run/log", "/run/user")):
            if not point.is_dir():  # an empty directory on the host's /run, removed at the end
                point.mkdir()
                created.append(point)
            mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", str(point))
        if Path("/var/log/journal").is_dir():  # whatever journald.conf says, nothing reaches the host's journal
            mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/var/log/journal")
        for sub in ("/run/systemd/system", "/run/systemd/journal", "/run/systemd/journald.conf.d", JOURNAL_DIR):
            Path(sub).mkdir(parents=True, exist_ok=True)
        # only what is sent to it: not the kernel's ring buffer, nothing passed on to the host
        Path("/run/systemd/journald.conf.d/rig.conf").write_text(
            "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToKMsg=no\nForwardToWall=no\n"
        )
        RUNTIME_DIR.mkdir(mode=0o700, parents=True)
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home),
            "USER": "root",
            "LOGNAME": "root",
            "XDG_RUNTIME_DIR": str(RUNTIME_DIR),
        }
        with open(workdir / "journald.log", "w") as out:
            journald = subprocess.Popen([JOURNALD], env=env, stdout=out, stderr=subprocess.STDOUT)
        if not wait_for(lambda: Path("/run/systemd/journal/socket").exists(), 10):
            raise RuntimeError("journald did not open its socket")
        with open(workdir / "manager.log", "w") as out:
            manager = subprocess.Popen(
                [SYSTEMD, "--user", "--log-target=journal"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        if not wait_for(lambda: (RUNTIME_DIR / "systemd" / "private").exists() or manager.poll() is not None, 20):
            raise RuntimeError("the user manager did not open its socket")
        if manager.poll() is not None:
            raise RuntimeError(f"the user manager exited with {manager.returncode}")
        info = {"groups": [str(g) for g in groups], "manager": manager.pid, "journald": journald.pid, "env": env}
        print("ready " + json.dumps(info), flush=True)
        sys.stdin.read()  # until the test closes it (or dies)
        return 0
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"error: {exc} {detail}".strip(), flush=True)
        return 1
    finally:
        stop(manager, 15)  # stops its units first
        for group in groups:
            for pid in pids_in(group) - {os.getpid(), journald.pid if journald else -1}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        stop(journald, 10)
        for group in groups:
            with contextlib.suppress(OSError):
                (group.parent / "cgroup.procs").write_text(str(os.getpid()))
            wait_for(lambda g=group: not pids_in(g), 5)
            for sub in groups_below(group):
                with contextlib.suppress(OSError):
                    sub.rmdir()
        for point in reversed(created):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
            with contextlib.suppress(OSError):
                point.rmdir()
        print("cleaned", flush=True)


if __name__ == "__main__":
    sys.exit(main())
