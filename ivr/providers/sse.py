"""Server-sent events: the line format OpenAI-compatible APIs stream their chunks in.

Pure parsing, no I/O: feed it the response's lines, get `(event, data)` back at each blank line.
Follows the WHATWG EventSource rules that matter for an API stream: `field: value` with one
optional space after the colon, several `data` lines joined by newlines, comment lines (`:`)
ignored, CRLF or LF line ends (the reader splits on LF), and an event not closed by a blank line
when the stream ends is dropped, as the spec and the SDK do. Written here because the `openai` SDK's decoder lives in a private
module (`openai._streaming`) and aiohttp has none.
"""

from __future__ import annotations


class SseDecoder:
    __slots__ = ("_event", "_data")

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def line(self, raw: bytes) -> tuple[str, str] | None:
        """One line (with or without its line end); an event when this line ends one."""
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if not self._data and not self._event:
                return None
            event = (self._event, "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if text[0] == ":":
            return None
        name, _, value = text.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        # `id` and `retry` only matter to a browser reconnecting; an API stream is not resumed.
        return None
