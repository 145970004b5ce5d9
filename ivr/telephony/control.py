"""Call control: how the bot hangs up or transfers a live call, whichever carrier carries it.

The media stream only carries audio; ending or moving the call itself is the carrier's REST API
(Twilio, Telnyx Call Control, Plivo, Vonage) or Asterisk's ARI. Each is one small adapter module
with the same two coroutines, so the conversation engine asks for a hang-up or a transfer and
never learns which carrier is on the line:

- `hang_up(call_id)`: end the call;
- `transfer(call_id, target, summary)`: send the caller to `target` (a phone number in E.164, or
  a `sip:` URI) with a short summary of the conversation where the carrier can carry one.

`call_id` is the id the carrier's stream gave the call (Twilio's CallSid, Telnyx's
call_control_id, Plivo's CallUUID, Vonage's call uuid, the Asterisk channel or AudioSocket UUID).
Every failure (refused, unreachable, too slow) raises `ControlError`; the engine then ends the
stream instead, and says so in the log.

Adapters are configured from environment variables only (`controls_from_env`); a carrier with
none configured has no adapter, and its calls end or move on by the stream ending (the carrier's
answer document or dialplan goes on). Secrets are never logged: errors name the request, not
the credentials.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Protocol

#: A caller is waiting on the line: a control request that takes longer has failed.
TIMEOUT_S = 5.0
#: How much of an error body goes into the log line (bodies may echo the request, never credentials).
ERROR_BODY_CHARS = 200


class ControlError(RuntimeError):
    """The carrier did not carry out a hang-up or transfer (refused, unreachable or too slow)."""


class CallControl(Protocol):
    #: Who is asked, for log lines ("Telnyx Call Control").
    name: str
    #: After a transfer the carrier itself ends the stream (Twilio: the call leaves
    #: `<Connect><Stream>`); otherwise the engine closes its side once the transfer is accepted.
    ends_stream_on_transfer: bool

    async def hang_up(self, call_id: str) -> None: ...

    async def transfer(self, call_id: str, target: str, summary: str) -> None: ...


def is_sip(target: str) -> bool:
    return target.startswith(("sip:", "sips:"))


def path_segment(value: str) -> str:
    """`value` as one URL path segment (a call id may hold `:` or `/`; `/` must not split it)."""
    from urllib.parse import quote

    return quote(value, safe="!$&'()*+,;=:@")


async def http_request(name: str, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                       json: Any = None, auth: tuple[str, str] | None = None,
                       params: Mapping[str, str] | None = None) -> bytes:
    """One request to a control API; its body on 2xx, else `ControlError`.

    A session per request: a call is controlled once or twice in its life, and a session made
    here belongs to whichever event loop runs the call."""
    import aiohttp

    basic = aiohttp.BasicAuth(*auth) if auth else None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
            async with session.request(method, url, headers=headers, json=json, auth=basic, params=params) as response:
                body = await response.read()
                if response.status >= 300:
                    detail = body[:ERROR_BODY_CHARS].decode("utf-8", "replace")
                    raise ControlError(f"{name}: {method} {_path(url)} answered HTTP {response.status} {detail}".rstrip())
                return body
    except ControlError:
        raise
    except TimeoutError:
        raise ControlError(f"{name}: {method} {_path(url)} took more than {TIMEOUT_S:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise ControlError(f"{name}: {method} {_path(url)} failed: {type(exc).__name__}: {exc}") from None


def _path(url: str) -> str:
    # The host and path, never a query string (ARI's carries the transfer target, fine, but a
    # URL with credentials in it must not reach the log).
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname or ''}{(':' + str(parts.port)) if parts.port else ''}{parts.path}"


def controls_from_env(env: Mapping[str, str] | None = None) -> dict[str, CallControl]:
    """Each carrier's call control that its environment variables configure, by carrier name
    (the names of ivr.telephony.carriers). Exotel has none: its Voicebot applet goes on to the
    next applet of the flow when the stream ends."""
    from ivr.telephony.asterisk_ari import AsteriskAri
    from ivr.telephony.plivo_control import PlivoControl
    from ivr.telephony.telnyx_control import TelnyxControl
    from ivr.telephony.twilio_control import TwilioControl
    from ivr.telephony.vonage_control import VonageControl

    env = os.environ if env is None else env
    controls: dict[str, CallControl] = {}
    for names, make in ((("twilio",), TwilioControl.from_env), (("telnyx",), TelnyxControl.from_env),
                        (("plivo",), PlivoControl.from_env), (("vonage",), VonageControl.from_env),
                        (("asterisk-ws", "audiosocket"), AsteriskAri.from_env)):
        control = make(env)
        if control is not None:
            controls.update(dict.fromkeys(names, control))
    return controls
