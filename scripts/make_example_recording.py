#!/usr/bin/env python3
"""Write config/examples/prk-2026.csv.gz, the example recording `hullwatch analyze` is shown on.

The 2026 PrK story from hullwatch.sim.stories, at 1 Hz for 6 hours: a 0.45 kg/day leak in
the PrK (4 m³) through the open hatch to Zvezda (75 m³), doubling to 1.0 kg/day at 2 h;
the hatch closes at 4 h. Deterministic: running it again gives the same file.
"""

import gzip
import io
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root / "daemon"))

from hullwatch.samples import HEADER  # noqa: E402
from hullwatch.sim.stories import prk_2026  # noqa: E402

out = root / "config" / "examples" / "prk-2026.csv.gz"
with gzip.GzipFile(out, "wb", mtime=0) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
    f.write(",".join(HEADER) + "\n")
    for s in prk_2026().samples:
        f.write(f"{s.time:.3f},{s.sensor},{s.quantity.value},{s.value:.10g}\n")
print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
