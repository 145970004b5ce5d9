"""The web phone through speakers: the bot's voice comes back into the microphone, and the
caller's first sentence is said over the greeting. Does the server hear the caller, or a mix?

The room is a PulseAudio daemon of the test's own: Chromium plays into a null sink, the caller's
recording is played into the same sink, and the sink's monitor is Chromium's microphone. No
fake capture device: Chromium's real capture path (echo cancellation, noise suppression, auto
gain) and its real output run, with the bot's voice at the microphone as loud as it is played.

Each call is placed twice over: with the page's WebRTC loop (the default) and with plain Web
Audio playback (RTCPeerConnection hidden from the page, its fallback), and each both with
Chromium's "chrome-wide" echo cancellation (which on Linux also hears Web Audio) and without it
(the browsers of crbug.com/687574, where only WebRTC's playback is taken out). Printed per call:
what the server heard, the microphone's level during the greeting before the caller speaks, and
the echo canceller's echoReturnLoss / echoReturnLossEnhancement.

    pytest -m slow -n 0 tests/test_webphone_echo.py -s

Run it alone: with the machine's other core busy, Chromium's audio path and its echo canceller
fall behind and the figures (and assertions) with them (ivr/web/README.md, "Echo").
"""

from __future__ import annotations

import asyncio
import math
import statistics
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ivr.bench.engines import normalize_words, word_errors
from ivr.call import CallFactory
from ivr.config import Settings
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PULSEAUDIO = shutil.which("pulseaudio")
PAPLAY = shutil.which("paplay")
playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(
        PULSEAUDIO is None or PAPLAY is None,
        reason="needs a PulseAudio room for Chromium to play into and hear from (apt-get install pulseaudio pulseaudio-utils)",
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
#: A recorded human voice (CMU ARCTIC), 3.3 s.
SENTENCE = ROOT / "tests" / "samples" / "arctic_a0009.wav"
WORDS = "He turned sharply, and faced Gregson across the table."
#: The caller starts this long after the greeting's first audio reached the page, well inside
#: "Thanks for calling Sunrise Bakery." (about 2 s, followed by the menu).
OVER_GREETING_S = 0.5


class Room:
    """A user PulseAudio daemon: one null sink that everything plays into, and a microphone
    that hears that sink. Chromium lists no monitor sources as microphones, so the microphone is
    a remap of the monitor."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ivr-pulse-")
        self.server = f"unix:{self.dir}/native"
        self.env = {**os.environ, "PULSE_SERVER": self.server, "HOME": self.dir, "XDG_RUNTIME_DIR": self.dir, "XDG_CONFIG_HOME": self.dir}
        Path(self.dir, "room.pa").write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.dir}/native\n"
            "load-module module-null-sink sink_name=room rate=48000 channels=1\n"
            "load-module module-remap-source master=room.monitor source_name=mic channels=1\n"
            "set-default-sink room\n"
            "set-default-source mic\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [PULSEAUDIO, "-n", "-F", f"{self.dir}/room.pa", "--daemonize=no", "--use-pid-file=no", "--exit-idle-time=-1",
             "--disallow-exit", "--log-target=stderr"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("pulseaudio did not start")
            time.sleep(0.1)

    def play(self, path: Path) -> subprocess.Popen:
        return subprocess.Popen([PAPLAY, "--device=room", str(path)], env=self.env)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def room():
    if shutil.which("pactl") is None:
        pytest.skip("needs pactl (apt-get install pulseaudio-utils)")
    r = Room()
    r.start()
    yield r
    r.close()


@pytest.fixture(scope="module")
def providers():
    p = build(Settings.from_env({}))
    asyncio.run(p.load())
    return p


#: Watches the call from inside the page: the level of each 20 ms frame sent to the server (what
#: the microphone gave after Chromium's processing) and the microphone track's media-source stats,
#: read through a pair of peer connections of the test's own that carry a clone of the track
#: (stats exist only for a sent track), made with the constructor saved before the page may hide it.
WATCH = """() => {
  const PC = window.__testPC, ui = window.ivrPhone.ui, call = window.ivrPhone.call;
  const w = (window.__watch = { frames: [], stats: [] });
  const level = ui.level.bind(ui);
  ui.level = (rms) => { w.frames.push({ t: performance.now(), rms, media: ui.counts.media }); level(rms); };
  const a = new PC(), b = new PC();
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
  a.addTrack(call.mic.getAudioTracks()[0].clone());
  (async () => {
    await a.setLocalDescription(); await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(); await a.setRemoteDescription(b.localDescription);
  })();
  w.timer = setInterval(async () => {
    (await a.getStats()).forEach((s) => {
      if (s.type === "media-source" && s.kind === "audio")
        w.stats.push({ t: performance.now(), level: s.audioLevel, erl: s.echoReturnLoss, erle: s.echoReturnLossEnhancement });
    });
  }, 250);
}"""
CALLER_LINES = "() => [...document.querySelectorAll('.line.caller .text')].map((e) => e.textContent)"
#: The bot is done talking: listening, with nothing left to play.
BOT_QUIET = "() => document.body.dataset.callState === 'listening' && document.getElementById('queued').textContent === '0 ms'"


def median_db(values: list[float]) -> float | None:
    """The median 20 ms frame's level, dBFS: the echo canceller lets the first tens of ms of the
    bot's voice through before it has found the echo, which a mean would be all about."""
    if not values:
        return None
    return round(20 * math.log10(max(statistics.median(values), 1e-5)), 1)


async def place_call(providers, room, *, loop: bool, chrome_wide: bool, init: str = "") -> dict:
    """The caller says the sentence over the greeting, then again once the bot is quiet.

    Without the loop the bot may hear itself and answer its own voice, turn after turn, and never
    be quiet: that call is only compared with the loop's, so it then ends without the second
    sentence and says so (`never_quiet`) rather than failing the test."""
    factory = CallFactory(providers)
    app = create_app(Settings.from_env({}), handler_factory=factory)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--use-fake-ui-for-media-stream"]
    if not chrome_wide:
        args.append("--disable-features=ChromeWideEchoCancellation")
    hide = "" if loop else "delete window.RTCPeerConnection;"
    with serve(app) as base:
        async with playwright.async_playwright() as p:
            # Playwright mutes a headless browser's audio output: here it is the room's loudspeaker.
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=args, ignore_default_args=["--mute-audio"], env=room.env)
            caller = None
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.add_init_script(f"window.__testPC = window.RTCPeerConnection; {hide} {init}")
                await page.goto(base + "/phone")
                await page.wait_for_selector("body[data-ready='1']", timeout=10_000)
                await page.click("#call")
                await page.wait_for_selector("body[data-phone='in call']", timeout=15_000)
                await page.evaluate(WATCH)
                await page.wait_for_function("() => window.ivrPhone.ui.counts.media > 0", timeout=30_000, polling=10)
                await asyncio.sleep(OVER_GREETING_S)
                caller = room.play(SENTENCE)
                await page.wait_for_function("() => document.querySelectorAll('.line.caller').length > 0", timeout=60_000)
                caller.wait(30)
                # The bot answers; once it is quiet, the same sentence again.
                try:
                    await page.wait_for_function(BOT_QUIET, timeout=60_000)
                    never_quiet = False
                    await asyncio.sleep(1.0)
                except playwright.TimeoutError:
                    if loop:
                        raise
                    never_quiet = True
                before = len(await page.evaluate(CALLER_LINES))
                if not never_quiet:
                    caller = room.play(SENTENCE)
                    await page.wait_for_function(
                        f"() => document.querySelectorAll('.line.caller').length > {before}", timeout=60_000
                    )
                    caller.wait(30)
                    await asyncio.sleep(2.0)
                lines = await page.evaluate(CALLER_LINES)
                watch = await page.evaluate(
                    "() => ({ playback: window.ivrPhone.call.playback, frames: window.__watch.frames, stats: window.__watch.stats })"
                )
                if await page.is_enabled("#hangup"):  # the bot may have hung up (on its own voice, without the loop)
                    await page.click("#hangup")
            finally:
                if caller is not None and caller.poll() is None:
                    caller.kill()
                await browser.close()
    call = factory.recent[-1]  # CallFactory keeps the latest calls
    over, later = " / ".join(lines[:before]), " / ".join(lines[before:])
    # The microphone while only the bot talks: from its first audio until the caller starts.
    first = next(f["t"] for f in watch["frames"] if f["media"] > 0)
    quiet = [f["rms"] for f in watch["frames"] if first + 100 <= f["t"] <= first + OVER_GREETING_S * 1000]
    erle = [s["erle"] for s in watch["stats"] if s["erle"] is not None]
    erl = [s["erl"] for s in watch["stats"] if s["erl"] is not None]

    def wer(text: str) -> float:
        errs, n = word_errors(WORDS, text)
        return round(errs / n, 2)

    return {
        "over": over,
        "later": later,
        "wer_over": wer(over),
        "wer_later": wer(later),
        "playback": watch["playback"],
        "barge_ins": call.stats.barge_ins,
        "never_quiet": never_quiet,
        "mic_db_greeting": median_db(quiet),
        "erle_max": round(max(erle), 1) if erle else None,
        "erl_max": round(max(erl), 1) if erl else None,
        "errors": errors,
    }


def show(name: str, r: dict) -> None:
    print(
        f"\n{name}: over the greeting {r['over']!r} (WER {r['wer_over']}), later {r['later']!r} (WER {r['wer_later']}); "
        f"microphone over the greeting {r['mic_db_greeting']} dBFS; ERL max {r['erl_max']} dB, ERLE max {r['erle_max']} dB; "
        f"barge-ins {r['barge_ins']}" + ("; the bot was never quiet for a minute (it answered its own voice)" if r["never_quiet"] else "")
    )


#: Words of the bot's greeting ("Thanks for calling Sunrise Bakery."), menu and answers: none may
#: reach the server as the caller's. ("Thank you" is left out: the recogniser makes it up from noise.)
BOT_WORDS = {"calling", "sunrise", "bakery", "hours", "press", "order", "person", "sorry"}


@pytest.mark.parametrize("chrome_wide", [False, True], ids=["webrtc-echo-canceller", "chrome-wide-echo-canceller"])
async def test_first_sentence_over_the_greeting_through_speakers(providers, room, chrome_wide):
    loop = await place_call(providers, room, loop=True, chrome_wide=chrome_wide)
    show("WebRTC loop", loop)
    plain = await place_call(providers, room, loop=False, chrome_wide=chrome_wide)
    show("Web Audio", plain)
    assert not loop["errors"] and not plain["errors"], (loop["errors"], plain["errors"])
    assert loop["playback"] == "webrtc" and plain["playback"] == "webaudio"
    # Through the loop the echo canceller takes the bot's voice out: the server hears next to
    # nothing while only the bot talks, none of its words come back as the caller's, and it
    # does not cut itself off for its own voice.
    assert loop["mic_db_greeting"] < -40, loop
    assert not BOT_WORDS & set(normalize_words(loop["over"] + " " + loop["later"])), loop
    assert loop["barge_ins"] == 1, loop
    # The caller is heard: the sentence said when the bot is quiet, and, over the greeting, the
    # words after the bot stopped for it. Its first words, said while the bot talked, are partly
    # lost to the echo canceller's double-talk suppression (README, "Echo").
    assert loop["wer_later"] <= 0.25, loop
    assert {"across", "table"} <= set(normalize_words(loop["over"])), loop
    if not chrome_wide:
        # Without the loop, the same browser does not take the bot's voice out at all.
        assert plain["mic_db_greeting"] > -30, plain
