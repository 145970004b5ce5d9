"""Two load generators side by side: the CPU of `ivr load` from two source trees, at once.

    python benchmarks/load_generator_ab.py BEFORE_TREE AFTER_TREE [--calls 50] [--duration 35] [--reps 5]

One `ivr serve` and the cloud fakes (as `ivr bench capacity` starts them), and two `ivr load`
processes against that server at the same time, each with `--calls` calls, one from each tree
(PYTHONPATH). Each rep prints both generators' CPU over the steady window and their ratio.

Why at once: the machine's speed moves by a tenth or more between runs a minute apart (the
server's CPU for the same calls moved by 15 % between two capacity runs), which drowns a change
of a few percent in the generator when the two are run one after the other. Run together, both
see the same machine, the same server and the same bot audio; the start order alternates.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil

from ivr.bench.capacity import FLOW, SAMPLES, _cpu_s
from ivr.bench.procs import Procs, run_processes, start_fakes, start_server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="source tree of the first generator (holds ivr/)")
    p.add_argument("after", type=Path, help="source tree of the second generator")
    p.add_argument("--calls", type=int, default=50, help="calls per generator (default 50)")
    p.add_argument("--duration", type=float, default=35, help="seconds per rep (default 35)")
    p.add_argument("--reps", type=int, default=5, help="reps (default 5)")
    args = p.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for tree in trees.values():
        if not (tree / "ivr" / "__init__.py").exists():
            p.error(f"{tree}: no ivr/ package there")

    def body(procs: Procs, tmp: Path) -> int:
        flow = tmp / "flow.yaml"
        flow.write_text(FLOW)
        fakes = start_fakes(procs, 150, 300, 150, varied=True)
        limit = str(4 * args.calls)
        limits = {"IVR_DEEPGRAM_MAX_STREAMS": limit, "IVR_OPENAI_MAX_REQUESTS": limit, "IVR_ELEVENLABS_MAX_SOCKETS": limit}
        server, port = start_server(procs, fakes, flow, limits)
        server_proc = psutil.Process(server.pid)
        ratios = []
        for rep in range(args.reps):
            order = list(trees.items()) if rep % 2 == 0 else list(reversed(trees.items()))
            loads = {}
            for name, tree in order:
                # -P: the tree comes from PYTHONPATH, not from the directory this is run in
                # (`-m` would put that first on the path).
                argv = [sys.executable, "-P", "-m", "ivr", "load", str(SAMPLES / "hours.yaml"),
                        "--url", f"ws://127.0.0.1:{port}/media", "--calls", str(args.calls), "--ramp", "5",
                        "--duration", str(args.duration), "--out", str(tmp / f"{name}-{rep}.json"), "--no-progress"]
                loads[name] = procs.start(f"load-{name}-{rep}", argv, env=dict(os.environ, PYTHONPATH=str(tree)))
            watched = {name: psutil.Process(proc.pid) for name, proc in loads.items()}
            time.sleep(6)  # after the ramp
            cpu0, server0, wall0 = {n: _cpu_s(w) for n, w in watched.items()}, _cpu_s(server_proc), time.monotonic()
            time.sleep(max(1.0, args.duration - 7))
            cpu1, server1, wall1 = {n: _cpu_s(w) for n, w in watched.items()}, _cpu_s(server_proc), time.monotonic()
            for name, proc in loads.items():
                proc.wait(timeout=args.duration + 60)
                del procs.procs[f"load-{name}-{rep}"]
            wall = wall1 - wall0
            cores = {n: (cpu1[n] - cpu0[n]) / wall for n in watched}
            ratios.append(cores["after"] / cores["before"])
            print(f"rep {rep}: before {cores['before']:.4f} cores, after {cores['after']:.4f} cores, "
                  f"after/before {ratios[-1]:.3f}; server {(server1 - server0) / wall:.3f} cores", flush=True)
        ratios.sort()
        print(f"after/before over {len(ratios)} reps: median {ratios[len(ratios) // 2]:.3f}, "
              f"range {ratios[0]:.3f}-{ratios[-1]:.3f}")
        return 0

    return run_processes("load generator before and after", body)


if __name__ == "__main__":
    sys.exit(main())
