import subprocess
import sys


def test_bench_capacity_help():
    out = subprocess.run([sys.executable, "-m", "ivr", "bench", "capacity", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--calls" in out.stdout
