"""The TwiML documents ivr serves, built with the twilio library.

Each matches a file in the repository's `twiml/` folder (the same document in TwiML Bin form);
a test renders both and compares them.
"""

from __future__ import annotations

from urllib.parse import quote

from twilio.twiml.voice_response import Dial, VoiceResponse

FALLBACK_SAY = "Sorry, our assistant is not available right now. Please call again later. Goodbye."
BUSY_SAY = "All our lines are busy right now. Please call again in a few minutes. Goodbye."
TRANSFER_SAY = "Please hold while I transfer your call."
#: SIP header that carries a short summary of the conversation on a SIP transfer.
SUMMARY_HEADER = "X-Ivr-Summary"
#: SIP URI headers share the request line with the URI: keep them short.
MAX_SUMMARY_CHARS = 200


def answer(public_base: str, *, caller: str, callee: str, call_sid: str, extra: dict[str, str] | None = None) -> str:
    """Answer with a bidirectional stream to `<public_base>/media`.

    `public_base` is the https (or http, for local tests) base URL Twilio reaches us at; the
    stream URL is the same host with wss (ws). Twilio forbids a query string on the stream URL,
    so call data travels as <Parameter>s and comes back in `start.customParameters`.
    """
    stream_url = stream_url_for(public_base)
    response = VoiceResponse()
    connect = response.connect()
    stream = connect.stream(
        url=stream_url, status_callback=f"{public_base}/twiml/status", status_callback_method="POST"
    )
    stream.parameter(name="From", value=caller)
    stream.parameter(name="To", value=callee)
    stream.parameter(name="CallSid", value=call_sid)
    for name, value in (extra or {}).items():
        stream.parameter(name=name, value=value)
    response.redirect(f"{public_base}/twiml/fallback", method="POST")
    return str(response)


def stream_url_for(public_base: str) -> str:
    if public_base.startswith("https://"):
        return "wss://" + public_base[len("https://") :] + "/media"
    if public_base.startswith("http://"):
        return "ws://" + public_base[len("http://") :] + "/media"
    raise ValueError(f"public base URL must be http(s): {public_base!r}")


def fallback() -> str:
    response = VoiceResponse()
    response.say(FALLBACK_SAY)
    response.hangup()
    return str(response)


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def busy() -> str:
    response = VoiceResponse()
    response.say(BUSY_SAY)
    response.hangup()
    return str(response)


def transfer(target: str, summary: str = "") -> str:
    """The TwiML that hands the call to `target`: `<Dial><Sip>` for a SIP URI (with the summary),
    else `<Dial><Number>`."""
    if target.startswith(("sip:", "sips:")):
        return transfer_sip(target, summary)
    return transfer_number(target)


def transfer_number(number: str) -> str:
    response = VoiceResponse()
    response.say(TRANSFER_SAY)
    dial = Dial(answer_on_bridge=True)
    dial.number(number)
    response.append(dial)
    return str(response)


def transfer_sip(uri: str, summary: str = "") -> str:
    """`<Dial><Sip>` to `uri`, with the summary as a percent-encoded X- header on the URI."""
    if not uri.startswith(("sip:", "sips:")):
        raise ValueError(f"not a SIP URI: {uri!r}")
    target = uri
    if summary:
        sep = "&" if "?" in uri else "?"
        target = f"{uri}{sep}{SUMMARY_HEADER}={quote(summary[:MAX_SUMMARY_CHARS], safe='')}"
    response = VoiceResponse()
    response.say(TRANSFER_SAY)
    dial = Dial(answer_on_bridge=True)
    dial.sip(target)
    response.append(dial)
    return str(response)
