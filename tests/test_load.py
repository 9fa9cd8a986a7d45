"""bench/load.py, the many-users benchmark, against ``python -m omni_app serve`` (no timings asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import SERVER_KEY

ROOT = Path(__file__).resolve().parents[1]


def test_the_load_benchmark_runs_against_a_local_server(live_server):
    out = subprocess.run([sys.executable, "bench/load.py", "--quick", "--url", live_server.url, "--api-key",
                          SERVER_KEY], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    # One line per K; with --quick every user asks once, so K replies, none failed and none mixed up.
    assert [int(row[0]) for row in rows] == [1, 2, 4, 8]
    assert all(int(row[1]) == int(row[0]) and row[2] == "0" and row[3] == "0" for row in rows), rows
    assert lines[-1].startswith("users=8 replicas=1 ttfa_p95=")
    assert lines[-1].endswith(" errors=0 cross_talk=0")
