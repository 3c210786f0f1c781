"""`hullwatch demo` tells the whole story, fast."""

import os
import subprocess
import sys


def test_the_demo_tells_the_story():
    env = dict(os.environ, TERM="dumb")
    p = subprocess.run(
        [sys.executable, "-m", "hullwatch", "demo", "--speed", "1500"],
        capture_output=True,
        text=True,
        timeout=600,  # ~9 s here; the whole story however slow the machine
        env=env,
        stdin=subprocess.DEVNULL,
    )
    out = p.stdout
    assert p.returncode == 0, p.stdout + p.stderr
    assert "WARNING   leak_rate prk-zvezda ACTIVE" in out  # the doubling
    assert "hatch prk-hatch closed" in out
    assert "leak_rate prk ACTIVE" in out  # isolated to the PrK
    assert "leak_rate zvezda ACTIVE" not in out
    assert "EMERGENCY rapid_depress prk ACTIVE" in out  # the hole
    assert "[buzzer/LED] emergency: buzzer on" in out
    assert "samples.csv" in out and "the demo ended" in out
