"""The call viewer: recent calls from the capture directory, and each call's timeline page.

A capture written by the server holds what arrived (`msg`), what the server sent (`out`) and the
engine's events (`event`): see ivr.harness.capture. From them this rebuilds the `CallRecord` the
harness would have made (the caller's track, and Twilio's playout of the bot's audio modelled by
`TwilioPlayback`, with the marks' real echo times), then the harness's own report and timeline.
Everything here is blocking file and numpy work: the routes run it in a thread.

The list is the capture directory's files together with the index of recent calls (ivr.fleet,
in Redis with IVR_REDIS_URL), so behind a load balancer every pod lists every pod's calls; a
call whose capture file is not on this pod's disk says where it was taken (put IVR_CAPTURE_DIR
on storage every pod mounts to open each one from any pod).
"""

from __future__ import annotations

import html
import re
import threading
import time
from pathlib import Path

import orjson

from ivr.audio import ULAW_SILENCE
from ivr.harness.capture import CaptureFormatError
from ivr.harness.record import CallRecord
from ivr.harness.report import build_report
from ivr.harness.voice import Utterance
from ivr.telephony.twilio import Dtmf, Mark, Media, OutClear, OutMark, OutMedia, ProtocolError, Start, Stop, StreamParser, parse_outbound

MAX_LISTED = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.jsonl")
_STAMP = re.compile(r"(\d{8}T\d{6}Z)")


class CaptureNotFound(LookupError):
    pass


def capture_path(directory: str, name: str) -> Path:
    """The capture called `name` inside `directory`, refusing anything that is not one."""
    if not directory or not _NAME.fullmatch(name):
        raise CaptureNotFound(name)
    root = Path(directory).resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        raise CaptureNotFound(name)
    return path


def load_record(path: Path) -> tuple[CallRecord, list[tuple[float, str]], list[dict]]:
    """(The call as the harness would record it, (ms, bot words heard) pairs, engine events).

    Call time 0 is when `start` arrived; the caller's audio is laid out from its first media
    message by the media counters (lost chunks as silence), as the server heard it. Everything
    else runs on that same clock, the caller's (see `CallerClock`), as in the record `ivr replay`
    keeps of the same call: so this report and the replay's agree, whatever the pace the media
    came at (a replay at --speed 2, a network that stalls and bursts).
    """
    parser = StreamParser()
    record = CallRecord(name=path.stem, kind="capture", source=path.name, url="", speed=1.0,
                        call_sid="", stream_sid="", params={}, started_at=_started_at(path.name))
    playback = record.playback
    track = bytearray()
    origin: float | None = None
    echoes: dict[str, float] = {}
    events: list[dict] = []
    texts: dict[str, str] = {}
    cut_texts: list[tuple[float, str]] = []
    stopped = False
    last = 0.0
    clock = CallerClock()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                entry = orjson.loads(raw)
                t = float(entry["t_ms"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise CaptureFormatError(f"{path.name}:{number}: not a capture line") from None
            if origin is None and "msg" not in entry:
                continue  # nothing before `start` is on the call clock
            now = clock.at(t - origin) if origin is not None else 0.0
            last = max(last, now)
            if "msg" in entry:
                try:
                    event = parser.parse(entry["msg"])
                except ProtocolError:
                    continue
                if isinstance(event, Start):
                    origin = t
                    record.call_sid, record.stream_sid = event.call_sid, event.stream_sid
                    record.params = dict(event.custom_parameters)
                    record.connected = True
                elif origin is None:
                    continue
                elif isinstance(event, Media):
                    if not track:
                        track += ULAW_SILENCE * (max(0, int(now) - event.timestamp_ms) * 8)
                    track += ULAW_SILENCE * event.gap_bytes
                    clock.media(t - origin, len(track) / 8)
                    track += event.payload
                elif isinstance(event, Dtmf):
                    record.dtmf.append((event.digit, now))
                elif isinstance(event, Stop):
                    stopped = True
                elif isinstance(event, Mark):  # an echo: when the caller's side played it
                    echoes.setdefault(event.name, now)
            elif "out" in entry:
                playback.due_marks(now)
                try:
                    out = parse_outbound(entry["out"], record.stream_sid)
                except ProtocolError:
                    continue
                if isinstance(out, OutMedia):
                    playback.on_media(now, out.payload)
                elif isinstance(out, OutMark):
                    playback.on_mark(now, out.name)
                elif isinstance(out, OutClear):
                    playback.on_clear(now)
            elif isinstance(entry.get("event"), dict):
                ev = entry["event"]
                events.append({**ev, "t_ms": round(now, 1)})
                if ev.get("type") == "bot":
                    texts[str(ev.get("mark"))] = str(ev.get("text", ""))
                elif ev.get("type") == "cut":
                    for piece in ev.get("pieces", []):
                        texts[str(piece.get("mark"))] = str(piece.get("heard", ""))
                    partial = [p for p in ev.get("pieces", []) if p.get("heard") and p.get("heard") != p.get("text")]
                    cut_texts += [(now, str(p["heard"])) for p in partial]
    playback.due_marks(last)
    playback.finish()
    for mark in playback.marks:
        if mark.name in echoes and mark.outcome == "played":
            mark.echoed_ms = echoes[mark.name]
    record.caller = track
    record.utterances = [Utterance(bytes(track), segmentation="detect", label=path.name, start_sample=0)]
    record.end_ms = max(last, len(track) / 8)
    record.ended_by = "caller" if stopped else "bot"
    heard = [(m.echoed_ms if m.outcome == "played" else m.sent_ms, texts[m.name]) for m in playback.marks if m.name in texts]
    heard = [(t, text) for t, text in heard + cut_texts if t is not None and text]
    heard.sort(key=lambda item: item[0])
    return record, heard, events


class CallerClock:
    """Capture time -> call time on the caller's clock, the one the caller's audio is laid out on.

    The capture stamps each message with the server's clock. The caller's audio, though, is
    placed by its media counters (20 ms a frame), so a caller whose frames come faster or slower
    than real time (a replay at --speed 2; a network that stalls, then bursts) runs on another
    clock. Each media frame pins the two together; between frames, call time runs with the
    server's, and it never goes back.
    """

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None  # (capture ms, call ms) of the last frame
        self._last = 0.0

    def media(self, capture_ms: float, call_ms: float) -> None:
        """A frame that arrived at `capture_ms` sits at `call_ms` of the caller's audio."""
        self._anchor = (capture_ms, call_ms)

    def at(self, capture_ms: float) -> float:
        if self._anchor is not None:
            capture_ms = self._anchor[1] + capture_ms - self._anchor[0]
        self._last = max(self._last, capture_ms)
        return self._last


def call_report(path: Path) -> tuple[CallRecord, dict, list[dict]]:
    record, heard, events = load_record(path)

    def bot_text(a: float, b: float) -> str | None:
        said = [text for t, text in heard if a <= t < b + 1]
        return " ".join(said) or None

    report = build_report(record, bot_text)
    _add_caller_texts(report, events)
    return record, report, events


def _add_caller_texts(report: dict, events: list[dict]) -> None:
    """What the bot's speech-to-text heard, on the turn (found by energy) it ended."""
    turns = report["turns"]
    for ev in events:
        if ev.get("type") != "caller":
            continue
        ended = [t for t in turns if not t.get("caller_keys") and t["caller_speech_end_ms"] is not None
                 and t["caller_speech_end_ms"] <= ev["t_ms"]]
        if ended and not ended[-1]["caller_text"]:
            ended[-1]["caller_text"] = ev["text"]


def _started_at(name: str) -> str:
    m = _STAMP.match(name)
    if not m:
        return ""
    s = m.group(1)
    return f"{s[0:4]}-{s[4:6]}-{s[6:8]} {s[9:11]}:{s[11:13]}:{s[13:15]} UTC"


# --- the list -------------------------------------------------------------------------------

_cache: dict[Path, tuple[tuple[int, int], dict]] = {}
_cache_lock = threading.Lock()


def summary(path: Path) -> dict:
    """Duration, turns, barge-ins and latencies of one call; cached until the file changes."""
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        record, report, events = call_report(path)
        latencies = [t["response_latency_ms"] for t in report["turns"] if t["response_latency_ms"] is not None]
        server = [e["total_ms"] for e in events if e.get("type") == "latency" and not e.get("greeting") and e.get("total_ms") is not None]
        first_caller = next((e["text"] for e in events if e.get("type") == "caller"), None)
        item = {
            "name": path.name,
            "started_at": record.started_at,
            "caller": record.params.get("From", ""),
            "duration_ms": report["call"]["duration_ms"],
            "turns": len(report["turns"]),
            "barge_ins": len(report["barge_ins"]),
            "latencies_ms": latencies,
            "server_latencies_ms": server,
            "greeting_ms": report["greeting"]["bot_first_audio_ms"],
            "first_words": first_caller,
            "live": time.time() - stat.st_mtime < 5 and not any(e.get("type") == "ended" for e in events),
            "error": None,
        }
    except (OSError, CaptureFormatError, ValueError) as exc:
        item = {"name": path.name, "error": str(exc)}
    with _cache_lock:
        _cache[path] = (key, item)
        if len(_cache) > 4 * MAX_LISTED:
            _cache.pop(next(iter(_cache)))
    return item


def recent(directory: str, limit: int = MAX_LISTED, indexed: list[dict] = ()) -> list[dict]:
    """The latest calls, newest first: files here, and `indexed` entries ({name, pod}) from
    the shared index, which may have been captured on another pod."""
    root = Path(directory)
    names = {p.name: None for p in root.glob("*.jsonl") if _NAME.fullmatch(p.name)} if root.is_dir() else {}
    for entry in indexed:
        name = str(entry.get("name", ""))
        if _NAME.fullmatch(name) and names.get(name) is None:
            names[name] = entry
    listed = []
    # Names begin with the UTC time the call started: newest first.
    for name in sorted(names, reverse=True)[:limit]:
        path = root / name
        if path.is_file():
            listed.append(summary(path))
        else:
            pod = (names[name] or {}).get("pod") or "another pod"
            listed.append({"name": name, "error": f"captured on {pod}: its file is not on this pod's storage"})
    return listed


def _fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def calls_page(directory: str, indexed: list[dict] = ()) -> str:
    if not directory:
        body = ("<p>Capture is off, so there are no calls to show. Start the server with "
                "<code>ivr serve --capture DIR</code> (or <code>IVR_CAPTURE_DIR</code>).</p>")
        return _page("Recent calls", body)
    rows = []
    for c in recent(directory, indexed=indexed):
        name = html.escape(c["name"])
        if c.get("error"):
            rows.append(f'<tr><td colspan="7">{name}: {html.escape(c["error"])}</td></tr>')
            continue
        lat = ", ".join(_fmt_ms(v) for v in c["latencies_ms"]) or "–"
        server = ", ".join(_fmt_ms(v) for v in c["server_latencies_ms"]) or "–"
        words = html.escape(c["first_words"] or "")
        live = ' <span class="live">live</span>' if c["live"] else ""
        rows.append(
            f'<tr><td><a href="/calls/{name}">{html.escape(c["started_at"] or c["name"])}</a>{live}'
            f'<div class="sub">{html.escape(c["caller"])} {words and "· “" + words + "”"}</div></td>'
            f'<td>{c["duration_ms"] / 1000:.1f} s</td><td>{c["turns"]}</td><td>{c["barge_ins"]}</td>'
            f'<td>{_fmt_ms(c["greeting_ms"])}</td><td>{lat}</td><td>{server}</td></tr>'
        )
    table = (
        '<table class="calls"><thead><tr><th>call</th><th>duration</th><th>turns</th><th>barge-ins</th>'
        "<th>greeting (ms)</th><th>answer latency, as heard (ms)</th><th>server latency (ms)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows else "<p>No calls captured yet.</p>"
    )
    note = ("<p class=\"sub\">Latency as heard: from the end of the caller's speech to the bot's first "
            "audible audio, measured on the capture like <code>ivr replay</code>. Server latency: from "
            "the end of speech to the first audio sent, by the engine's own clock.</p>")
    return _page("Recent calls", table + note)


def timeline_page(directory: str, name: str) -> str:
    from ivr.harness.timeline import render_timeline

    path = capture_path(directory, name)
    record, report, _events = call_report(path)
    return render_timeline(record, report)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} - ivr</title><style>"
        "body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}"
        "header{background:#fff;border-bottom:1px solid #dde1e7;padding:.7rem 1.2rem;display:flex;gap:1rem}"
        "h1{font-size:1.15rem;margin:0}main{padding:1.2rem}"
        "table{border-collapse:collapse;background:#fff;border:1px solid #dde1e7}"
        "th,td{text-align:left;padding:.35rem .7rem;border-bottom:1px solid #eceff3;vertical-align:top}"
        "th{color:#687385;font-weight:500}.sub{color:#687385;font-size:.85rem}"
        ".live{background:#1f9d55;color:#fff;border-radius:6px;padding:0 .35rem;font-size:.75rem}"
        "</style></head><body>"
        f'<header><h1>{html.escape(title)}</h1><a href="/phone">web phone</a></header><main>{body}</main></body></html>'
    )
