"""Per-call tokens for carriers whose media socket carries no signature of its own.

Plivo and Vonage sign their HTTP webhooks but not the WebSocket their stream opens. ivr's signed
answer webhook therefore puts a token in the answer document (Plivo's `extraHeaders`, the
Vonage NCCO's `headers`), and the stream socket must bring it back: an HMAC of the call's id
with a secret only the server knows, so a socket opened by anyone else, or for another call,
is refused. Stateless, so any pod of a fleet can check a token another pod minted.
"""

from __future__ import annotations

import hashlib
import hmac


def mint(secret: str, call_id: str) -> str:
    return hmac.new(secret.encode(), call_id.encode(), hashlib.sha256).hexdigest()[:32]


def valid(secret: str, call_id: str, token: str) -> bool:
    return bool(token) and bool(call_id) and hmac.compare_digest(mint(secret, call_id), token)
