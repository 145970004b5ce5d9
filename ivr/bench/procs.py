"""The cloud fakes and one `ivr serve`, each its own process on 127.0.0.1, for the provider
benchmarks (`ivr bench cloud`, `ivr bench capacity`).

Separate processes, as in production where the clouds are elsewhere: in one process the fakes'
threads and the server's would take turns on the GIL (a waiting thread can lose up to its 5 ms
switch interval at every hop), which is the benchmark's cost, not the server's. CLOCK_MONOTONIC is
one clock for every process on the machine, so the fakes' timestamps (`--timings`) and the
harness's can be compared directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"


def cpu_steal() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs so far, from /proc/stat; None where there is none.
    On a virtual machine, steal is time the host gave our vCPUs to others: a process that was
    runnable simply did not run, which shows as latency no code of ours caused."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def have_fakes() -> bool:
    return (FAKES / "deepgram.py").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """The processes a benchmark started; all of them are stopped on exit, whatever the exit."""

    def __init__(self, logs: Path) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = logs

    def start(self, name: str, argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        # stderr to a file, not a pipe: an undrained pipe would stall a chatty server mid-run.
        # Their own session: a Ctrl-C reaches only us, and we stop them in order in stop_all().
        with open(self.logs / f"{name}.log", "w") as err:
            proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=err, start_new_session=True, text=True)
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def print_failures(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None and (tail := self.log_tail(name)):
                print(f"--- {name} stderr:\n{tail}", file=sys.stderr)


def run_processes(command: str, body: Callable[[Procs, Path], int]) -> int:
    """`body(procs, folder)` in a new temporary folder; every process it starts is stopped after,
    whatever the exit. A RuntimeError (a process that would not start or answer) prints, with the
    stderr of the processes that died, and exits 1; Ctrl-C exits 130."""
    with tempfile.TemporaryDirectory(prefix=command.replace(" ", "-") + "-") as tmp:
        procs = Procs(Path(tmp))
        try:
            return body(procs, Path(tmp))
        except KeyboardInterrupt:
            print("interrupted: stopping the processes", file=sys.stderr)
            return 130
        except RuntimeError as exc:
            print(f"{command}: {exc}", file=sys.stderr)
            procs.print_failures()
            return 1
        finally:
            procs.stop_all()


@dataclass
class Fakes:
    deepgram_url: str
    openai_url: str
    elevenlabs_url: str
    #: Where each fake writes its timestamps when it stops (None: not asked for).
    timings: dict[str, Path] | None = None

    def read_timings(self) -> dict[str, dict]:
        """The fakes' timestamps; call after Procs.stop_all() (a fake writes them as it exits)."""
        out = {}
        for name, path in (self.timings or {}).items():
            if not path.exists():
                raise RuntimeError(f"the {name} fake wrote no timings to {path}")
            out[name] = json.loads(path.read_text())
        return out


#: What the Deepgram fake hears every caller say, written as nova's `smart_format` writes it.
STT_TEXT = "What time are you open?"


def start_fakes(procs: Procs, stt_ms: float, llm_ms: float, tts_ms: float, varied: bool = False,
                timings_dir: Path | None = None, stt_text: str = STT_TEXT) -> Fakes:
    """The three fakes with fixed delays. `varied`: every OpenAI reply is new text, so no answer
    comes from the prompt cache and each one is spoken by ElevenLabs."""
    py = sys.executable
    timings = {name: timings_dir / f"{name}-timings.json" for name in ("deepgram", "openai", "elevenlabs")} if timings_dir else None

    def timing_args(name: str) -> list[str]:
        return ["--timings", str(timings[name])] if timings else []

    # Every caller utterance is "heard" as the same question, so each turn goes to the LLM.
    dg = procs.start("deepgram", [py, str(FAKES / "deepgram.py"), "--port", "0", "--key", "dg-bench",
                                  "--text", stt_text, "--final-delay-ms", str(stt_ms),
                                  *timing_args("deepgram")], stdout=subprocess.PIPE)
    el = procs.start("elevenlabs", [py, str(FAKES / "elevenlabs.py"), "--port", "0", "--key", "el-bench",
                                    "--voice", "v", "--first-audio-delay-ms", str(tts_ms), *timing_args("elevenlabs")],
                     stdout=subprocess.PIPE)
    oa_port = free_port()
    procs.start("openai", [py, str(FAKES / "openai_api.py"), "--port", str(oa_port), "--key", "sk-bench",
                           "--first-token-delay-ms", str(llm_ms), *(["--varied"] if varied else []),
                           *timing_args("openai")])
    dg_url, el_url = _first_line(dg, "Deepgram"), _first_line(el, "ElevenLabs")
    _wait_listening(oa_port, procs.procs["openai"], "OpenAI fake")
    return Fakes(dg_url, f"http://127.0.0.1:{oa_port}/v1", el_url, timings)


def start_server(procs: Procs, fakes: Fakes, flow: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """`ivr serve` with all three cloud adapters pointed at the fakes; returns it once ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IVR_", "TWILIO_"))}
    env.update({
        "IVR_HOST": "127.0.0.1", "IVR_PORT": str(port), "IVR_LOG_LEVEL": "warning", "IVR_MAX_CALLS": "100000",
        "IVR_FLOW": str(flow), "IVR_DEEPGRAM_ENDPOINTING_MS": "700",
        "DEEPGRAM_API_KEY": "dg-bench", "IVR_DEEPGRAM_URL": fakes.deepgram_url,
        "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": fakes.openai_url,
        "ELEVENLABS_API_KEY": "el-bench", "ELEVENLABS_VOICE_ID": "v", "IVR_ELEVENLABS_URL": fakes.elevenlabs_url,
        **(extra_env or {}),
    })
    server = procs.start("server", [sys.executable, "-m", "ivr", "serve"], env=env)
    _wait_http(f"http://127.0.0.1:{port}/readyz", server, "ivr serve")
    return server, port


def _first_line(proc: subprocess.Popen, name: str, timeout: float = 20) -> str:
    """The URL a fake prints once it listens (the fakes pick their port when given 0)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise RuntimeError(f"{name} fake printed no URL within {timeout:g} s")
    line = proc.stdout.readline().strip()
    if not line:
        raise RuntimeError(f"{name} fake exited with {proc.poll()}")
    return line


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen, name: str, what: str, timeout: float) -> None:
    """Poll `ready()` until it holds; a process that exits meanwhile fails at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} {what} within {timeout:g} s")


def _wait_http(url: str, proc: subprocess.Popen, name: str, timeout: float = 60) -> None:
    def ok() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    _wait_until(ok, proc, name, f"not ready at {url}", timeout)


def _wait_listening(port: int, proc: subprocess.Popen, name: str, timeout: float = 30) -> None:
    def listening() -> bool:
        # Any TCP answer means uvicorn listens (its routes want the key).
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    _wait_until(listening, proc, name, "not listening", timeout)
