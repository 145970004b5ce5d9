"""benchmarks/load_floor.py keeps running: it connects, paces and prints each level's CPU (the
figures are for the benchmarks README, never checked here)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_floor_benchmark_prints_each_level():
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "benchmarks" / "load_floor.py"), "--calls", "3", "--duration", "0.3", "--reps", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("3 connections, 150 frames a second, 0.3 s a level, on ")
    rep = out.stdout.splitlines()[1]
    levels = re.findall(r"(\w+) (\d+\.\d+) cores \((\d+\.\d+) us a frame\)", rep)
    assert [name for name, _, _ in levels] == ["wake", "write", "media"]
