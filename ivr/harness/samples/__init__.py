"""Sample calls against the bundled bakery flow (ivr/flows/example.yaml), used by `ivr demo`.
Sources and licence: README.md here."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def sample_calls() -> list[Path]:
    """The call scripts, in the order a demo plays them."""
    order = ["hours.yaml", "barge_in.yaml", "order_dtmf.yaml"]
    return [HERE / name for name in order]
