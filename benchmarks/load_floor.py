"""The floor under `ivr load`: what its frame pacer and its writes cost with no call behind them.

    python benchmarks/load_floor.py [--calls 100] [--duration 15] [--reps 3]

N loopback TCP connections to a process that only reads and discards. In this process, the
load generator's own `FramePacer` sends each connection a frame every 20 ms, the connections'
clocks spread over the start grid as a load run spreads its calls, on uvloop where it is
installed (as `ivr load` runs). Three levels, each printed as this process's CPU (the reader's
is not counted) and per frame:

- wake: the pacer's passes alone, every callback returning its next due time and writing nothing;
- write: plus one write per frame of a Twilio media message's size, framed (the same bytes each
  time);
- media: plus the message itself, built as the load generator builds it (`TwilioSender`'s media
  message, framed and masked as a WebSocket client frame).

What `ivr load` costs above `media` is the emulator: the bot's messages, the playout model, the
marks, the caller's plan and the figures. The reader is not `ivr serve`: it never writes back and
does no work per frame, so what waking it costs the writer may differ from a real server's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import socket
import sys
import time

from ivr.harness.clock import START_GRID_S, FramePacer
from ivr.telephony.twilio import TwilioSender
from ivr.wsframes import OP_TEXT, client_frame, next_mask

FRAME_S = 0.020
LEVELS = ("wake", "write", "media")


def _loop_factory():
    """uvloop's loop where it is installed, as `ivr load` runs (None: asyncio's own)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(coro):
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


def _reader(listener: socket.socket) -> None:
    """The other end: accept and discard, until killed."""

    class Discard(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Discard, sock=listener)
        await server.serve_forever()

    _run(serve())


async def _measure(port: int, calls: int, duration: float, level: str) -> float:
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(calls):
        transport, _protocol = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transports.append(transport)
    pacer = FramePacer()
    steps = round(FRAME_S / START_GRID_S)
    start = FramePacer.start_at(time.monotonic() + 0.1)
    end = start + duration
    payload = bytes(range(160))
    filler = bytes(len(client_frame(_twilio().media_utf8(payload, 0), next_mask(), OP_TEXT)))

    def sender(transport, t0: float):
        write, twilio, k = transport.write, _twilio(), 0

        def send(now: float) -> float | None:
            nonlocal k
            if level == "media":
                write(client_frame(twilio.media_utf8(payload, k * 20), next_mask(), OP_TEXT))
            elif level == "write":
                write(filler)
            k += 1
            due = t0 + k * FRAME_S
            return due if due < end else None

        return send

    for i, transport in enumerate(transports):
        t0 = start + (i % steps) * START_GRID_S
        pacer.add(t0, sender(transport, t0))
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for transport in transports:
        transport.close()
    return (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / (w1 - w0)


def _twilio() -> TwilioSender:
    return TwilioSender("MZ" + "0" * 32, "CA" + "0" * 32, "AC" + "0" * 32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=100, help="connections, one frame each every 20 ms (default 100)")
    p.add_argument("--duration", type=float, default=15, help="seconds per level and rep (default 15)")
    p.add_argument("--reps", type=int, default=3, help="reps of the three levels (default 3)")
    args = p.parse_args()
    listener = socket.create_server(("127.0.0.1", 0))
    reader = multiprocessing.get_context("fork").Process(target=_reader, args=(listener,), daemon=True)
    reader.start()
    port = listener.getsockname()[1]
    listener.close()  # the reader's now: were it to die, connecting fails here instead of queueing
    frames = args.calls / FRAME_S
    loop = "uvloop" if _loop_factory() is not None else "asyncio's loop"
    print(f"{args.calls} connections, {frames:.0f} frames a second, {args.duration:g} s a level, on {loop}")
    try:
        for rep in range(args.reps):
            cores = {}
            for level in LEVELS:
                cores[level] = _run(_measure(port, args.calls, args.duration, level))
                if not reader.is_alive():
                    print(f"the reader died (exit {reader.exitcode}): no figures", file=sys.stderr)
                    return 1
            print(f"rep {rep}: " + "; ".join(f"{level} {c:.4f} cores ({c / frames * 1e6:.1f} us a frame)"
                                           for level, c in cores.items()), flush=True)
    finally:
        reader.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
