"""Server-sent events decoding (ivr.providers.sse), checked by hand and against the openai SDK's decoder."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from openai._streaming import SSEDecoder  # the SDK's own decoder, as the reference

from ivr.providers.sse import SseDecoder


def decode(stream: bytes) -> list[tuple[str, str]]:
    """The events of a whole stream, fed line by line as aiohttp's reader gives them (split after
    each LF, the LF kept; a last line without one as it is)."""
    decoder = SseDecoder()
    pieces = stream.split(b"\n")
    lines = [p + b"\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    return [e for line in lines if (e := decoder.line(line)) is not None]


def test_openai_style_stream():
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert decode(stream) == [("", '{"a": 1}'), ("", '{"b": 2}'), ("", "[DONE]")]


def test_field_rules():
    stream = (b": keep-alive comment\r\n"
              b"event: error\r\ndata:no space\r\ndata:  two spaces\r\nid: 7\r\nretry: 100\r\n\r\n"
              b"data\n\n"  # a field name alone: empty data
              b"\n\n"  # blank lines with nothing pending dispatch nothing
              b"data: not closed by a blank line")
    assert decode(stream) == [("error", "no space\n two spaces"), ("", "")]


def test_the_event_name_does_not_leak_into_the_next_event():
    assert decode(b"event: ping\ndata: 1\n\ndata: 2\n\n") == [("ping", "1"), ("", "2")]


_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
_name = st.sampled_from(["data", "event", "id", "retry", "other", ""])
_line = st.one_of(
    st.tuples(_name, _value).map(lambda t: f"{t[0]}:{t[1]}"),  # a field, or a comment when the name is empty
    _name,  # a field name alone
    st.just(""),  # the end of an event
)


@settings(deadline=None)
@given(st.lists(_line, max_size=30), st.sampled_from(["\n", "\r\n"]))
def test_same_events_as_the_openai_sdk(lines, newline):
    sdk = SSEDecoder()
    expected = []
    for line in lines:
        # The SDK also dispatches events that carry only `id` or `retry`: nothing an API client
        # reads, and ours does not produce them. So only events with a name or data compare.
        carries = bool(sdk._event or sdk._data)
        event = sdk.decode(line)
        if event is not None and carries:
            expected.append((event.event or "", event.data))
    assert decode("".join(line + newline for line in lines).encode()) == expected
