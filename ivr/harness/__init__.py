"""The replay harness and load generator: a caller that behaves exactly like Twilio.

`load_call()` turns a recording, a Twilio capture or a call script into a `CallPlan`;
`TwilioEmulator` plays it against a bot's WebSocket on one call clock (optionally faster than
real time) and returns a `CallRecord`; `build_report()` / `write_outputs()` turn that into
report.json, a stereo WAV and an HTML timeline. Formats: README.md in this directory.

Names are imported on first use, so the server can use `ivr.harness.capture` without loading
the WebSocket client and the report code.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CaptureWriter": "capture",
    "read_capture": "capture",
    "ReplayOptions": "emulator",
    "TwilioEmulator": "emulator",
    "After": "plan",
    "CallPlan": "plan",
    "Dtmf": "plan",
    "Hangup": "plan",
    "Say": "plan",
    "Wait": "plan",
    "CallRecord": "record",
    "build_report": "report",
    "replay": "run",
    "write_outputs": "run",
    "CallSourceError": "sources",
    "load_call": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ivr.harness' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ivr.harness.{module}"), name)
