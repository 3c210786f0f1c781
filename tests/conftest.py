"""Shared fixtures: small configuration files written into tmp_path. And a way out past stray threads."""

import os
import sys
import threading
import time

import pytest


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config):
    """A non-daemon thread left running (by a failed test) would keep the interpreter from ever exiting:
    give such threads 5 s, then name them and exit with the session's status."""
    end = time.monotonic() + 5.0
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join(max(0.0, end - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if left:
        print(f"\nnon-daemon threads still running at exit: {', '.join(left)}; not waiting for them", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash.get(_EXIT_STATUS, 1))


_EXIT_STATUS = pytest.StashKey[int]()

MINIMAL_TOML = """\
[station]
name = "prk-mockup"

[[segment]]
name = "prk"
volume_m3 = 4.0

[[sensor]]
name = "p_prk"
segment = "prk"
driver = "simulated"
"""

TWO_SEGMENT_TOML = """\
[station]
name = "prk-mockup"

[[segment]]
name = "prk"
volume_m3 = 4.0

[[segment]]
name = "zvezda"
volume_m3 = 75.0

[[hatch]]
name = "prk-hatch"
between = ["prk", "zvezda"]
initial = "open"

[[sensor]]
name = "p_prk"
segment = "prk"
driver = "simulated"

[[sensor]]
name = "t_prk"
segment = "prk"
driver = "simulated"
"""


@pytest.fixture
def write_file(tmp_path):
    """write_file(text, name="hullwatch.toml") -> str path of a file under tmp_path."""

    def write(text: str, name: str = "hullwatch.toml") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def minimal_toml() -> str:
    """Station, one segment, one simulated sensor with no further keys."""
    return MINIMAL_TOML


@pytest.fixture
def two_segment_toml() -> str:
    """The ICD §2 example: prk 4.0 + zvezda 75.0 joined by an open hatch."""
    return TWO_SEGMENT_TOML
