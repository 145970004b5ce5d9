"""The web phone in headless Chromium, with a fake microphone, against the real server and the
embedded engines: the greeting plays, the caller's words appear, the bot answers; then the call
viewer shows the call. Saves test-artifacts/webphone.png (and the viewer's pages).

Waits are on page conditions with time limits, never on the wall clock.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ivr.audio import resample
from ivr.call import CallFactory
from ivr.config import Settings
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "ivr" / "harness" / "samples"
ARTIFACTS = ROOT / "test-artifacts"
MIC_RATE = 48_000
#: The caller waits through the greeting ("Thanks for calling Sunrise Bakery.") and talks over
#: the menu that follows it, then stays silent while the bot answers.
LEAD_S, TAIL_S = 3.5, 25.0


#: Samples what comes out of the page's peer connection loop (the audio the <audio> element
#: plays) every 50 ms: the received track's RMS since the last sample (from its total energy and
#: duration), with the page's counts of the bot's media and clears by then.
WATCH_VOICE = """() => {
  const call = window.ivrPhone.call, out = (window.__voice = []);
  const t0 = performance.now();
  let energy = 0, duration = 0;
  setInterval(async () => {
    if (!call.loop || call.done) return;
    const counts = { ...window.ivrPhone.ui.counts };
    (await call.loop.rx.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp" || s.kind !== "audio" || !s.totalSamplesDuration) return;
      const dE = s.totalAudioEnergy - energy, dD = s.totalSamplesDuration - duration;
      energy = s.totalAudioEnergy;
      duration = s.totalSamplesDuration;
      if (dD > 0) out.push({ t: performance.now() - t0, rms: Math.sqrt(dE / dD), media: counts.media, clears: counts.clears });
    });
  }, 50);
}"""


def after_clears(heard: list[dict]) -> list[float]:
    """For each clear after which no bot audio came for 1 s: the loudest the loop played from
    0.8 s after the clear on (the audio in flight, and the stats' smoothing of the level, take a
    few hundred ms to die away)."""
    out = []
    for i, s in enumerate(heard):
        if i == 0 or s["clears"] == heard[i - 1]["clears"]:
            continue
        quiet = [q for q in heard[i:] if q["media"] == s["media"] and q["clears"] == s["clears"]]
        if quiet and quiet[-1]["t"] - s["t"] >= 1000:
            out.append(max(q["rms"] for q in quiet if q["t"] >= s["t"] + 800))
    return out


class RecordingFactory(CallFactory):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def __call__(self, line):
        call = super().__call__(line)
        self.calls.append(call)
        return call


def fake_mic_wav(path: Path) -> Path:
    """The caller's question between silences, as the 16-bit 48 kHz WAV Chromium's fake
    capture device reads."""
    pcm, rate = sf.read(SAMPLES / "hours-question.wav", dtype="int16")
    question = resample(pcm.tobytes(), rate, MIC_RATE)
    lead = bytes(2 * int(LEAD_S * MIC_RATE))
    tail = bytes(2 * int(TAIL_S * MIC_RATE))
    audio = np.frombuffer(lead + question + tail, dtype="<i2")
    sf.write(path, audio, MIC_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def providers():
    p = build(Settings.from_env({}))
    asyncio.run(p.load())
    return p


async def test_web_phone_call_in_chromium(providers, tmp_path):
    captures = tmp_path / "captures"
    factory = RecordingFactory(providers)
    app = create_app(Settings.from_env({}, capture_dir=str(captures)), handler_factory=factory)
    wav = fake_mic_wav(tmp_path / "caller.wav")
    ARTIFACTS.mkdir(exist_ok=True)
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]  # fmt: skip
    with serve(app) as base:
        async with playwright.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 820})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(base + "/phone")
                await page.wait_for_selector("body[data-ready='1']", timeout=10_000)
                await page.click("#call")
                await page.wait_for_selector("body[data-phone='in call']", timeout=15_000)
                await page.evaluate(WATCH_VOICE)
                # The greeting plays: its mark came back from the player, so it was heard.
                await page.wait_for_function(
                    """() => [...document.querySelectorAll('.line.bot .piece.played')]
                             .some(s => s.textContent.includes('Sunrise Bakery'))""",
                    timeout=30_000,
                )
                # The caller's words, as the bot's speech-to-text heard them.
                await page.wait_for_function(
                    """() => [...document.querySelectorAll('.line.caller .text')]
                             .some(s => /open/i.test(s.textContent))""",
                    timeout=60_000,
                )
                # The bot answers with the hours, and the answer plays out to its last mark.
                await page.wait_for_function(
                    """() => [...document.querySelectorAll('.line.bot')].some(l =>
                             /tuesday/i.test(l.textContent) && l.querySelector('.latency')
                             && l.querySelectorAll('.piece').length
                             === l.querySelectorAll('.piece.played').length)""",
                    timeout=60_000,
                )
                state = await page.evaluate(
                    """() => ({
                        callState: document.body.dataset.callState,
                        counts: window.ivrPhone.ui.counts,
                        latencyRows: document.querySelectorAll('#latencies tr').length,
                        struck: [...document.querySelectorAll('.line.interrupted s')].map(s => s.textContent),
                        audio: window.ivrPhone.call.ctx.state,
                        playback: window.ivrPhone.call.playback,
                        voice: (() => { const v = window.ivrPhone.ui.voice, s = v.srcObject;
                          return { stream: s instanceof MediaStream, live: !!s && s.getAudioTracks().some(t => t.readyState === 'live'),
                                   playing: !v.paused }; })(),
                        heard: window.__voice,
                    })"""
                )
                bottom = await page.evaluate("() => document.querySelector('main').getBoundingClientRect().bottom")
                await page.screenshot(path=str(ARTIFACTS / "webphone.png"), clip={"x": 0, "y": 0, "width": 1100, "height": bottom + 8})
                await page.click("#hangup")
                await page.wait_for_selector("body[data-phone='idle']", timeout=10_000)

                # The call viewer lists the call and draws its timeline.
                await page.goto(base + "/calls")
                await page.wait_for_selector("table.calls tbody tr", timeout=30_000)
                row = await page.inner_text("table.calls tbody tr")
                await page.screenshot(path=str(ARTIFACTS / "webphone-calls.png"), full_page=True)
                await page.click("table.calls tbody tr a")
                await page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                turns = await page.locator("#turns tbody tr").count()
                table = await page.inner_text("#turns")
                await page.screenshot(path=str(ARTIFACTS / "webphone-timeline.png"), full_page=True)
            finally:
                await browser.close()

    assert not errors, errors
    assert state["audio"] == "running"
    assert state["counts"]["media"] > 100 and state["counts"]["marks"] >= 3, state
    assert state["latencyRows"] >= 2, state  # the greeting's and the answer's
    call = factory.calls[-1]
    said = [text for role, text in call.history if role == "caller"]
    assert any("open" in text.lower() for text in said), said
    if call.stats.barge_ins:  # the caller talked over the menu: its unheard words are struck through
        assert state["struck"], state
    # The bot's voice plays from the <audio> element, through the page's peer connection.
    assert state["playback"] == "webrtc" and state["voice"] == {"stream": True, "live": True, "playing": True}, state
    heard = state["heard"]
    assert max(s["rms"] for s in heard) > 0.03, heard[-20:]
    if call.stats.barge_ins:  # a clear silences what the loop plays too, not only the player
        tails = after_clears(heard)
        assert tails and max(tails) < 0.003, (tails, heard)
    assert "hours-question" not in row and "1" in row  # a call with at least one turn
    assert turns >= 1
    assert "open" in table.lower() and "tuesday" in table.lower(), table  # caller and bot words
    assert (ARTIFACTS / "webphone.png").stat().st_size > 10_000


async def test_web_phone_without_webrtc_plays_through_web_audio(providers, tmp_path):
    """A browser without RTCPeerConnection still hears the bot, straight from Web Audio, and the
    page says that its voice is not kept out of the microphone."""
    app = create_app(Settings.from_env({}), handler_factory=CallFactory(providers))
    wav = fake_mic_wav(tmp_path / "caller.wav")
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required",
    ]  # fmt: skip
    with serve(app) as base:
        async with playwright.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.add_init_script("delete window.RTCPeerConnection;")
                await page.goto(base + "/phone")
                await page.wait_for_selector("body[data-ready='1']", timeout=10_000)
                await page.click("#call")
                await page.wait_for_selector("body[data-phone='in call']", timeout=15_000)
                await page.wait_for_function(
                    """() => [...document.querySelectorAll('.line.bot .piece.played')]
                             .some(s => s.textContent.includes('Sunrise Bakery'))""",
                    timeout=30_000,
                )
                state = await page.evaluate(
                    """() => ({ playback: window.ivrPhone.call.playback, voice: window.ivrPhone.ui.voice.srcObject,
                                notes: [...document.querySelectorAll('.line.note')].map(n => n.textContent) })"""
                )
                await page.click("#hangup")
            finally:
                await browser.close()
    assert not errors, errors
    assert state["playback"] == "webaudio" and state["voice"] is None, state
    assert any("Web Audio" in n and "headphones" in n for n in state["notes"]), state


async def test_worklet_codec_matches_ivr_audio():
    """The browser's mu-law encoder and decoder agree with the server's (ivr.audio), and its
    8 kHz resampler passes the phone band and stops what would alias."""
    from ivr.audio import pcm16_to_ulaw, ulaw_to_pcm16

    source = (ROOT / "ivr" / "web" / "static" / "phone-worklet.js").read_text()
    samples = list(range(-32768, 32768, 7)) + [32767]
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            await page.add_script_tag(content=source)
            encoded = await page.evaluate("(xs) => xs.map(globalThis.ivrCodec.linearToUlaw)", samples)
            decoded = await page.evaluate("() => Array.from(globalThis.ivrCodec.ULAW_TO_FLOAT, v => Math.round(v * 32768))")
            gains = await page.evaluate(
                """() => { const out = {};
                  for (const hz of [300, 1000, 3000, 5000, 9000]) {
                    const d = new globalThis.ivrCodec.Downsampler(48000), y = [];
                    const x = new Float32Array(48000);
                    for (let i = 0; i < x.length; i++) x[i] = Math.sin(2 * Math.PI * hz * i / 48000);
                    for (let i = 0; i < x.length; i += 128) d.push(x.subarray(i, i + 128), y);
                    const tail = y.slice(2000); let e = 0; for (const v of tail) e += v * v;
                    out[hz] = Math.sqrt(2 * e / tail.length); }
                  return out; }"""
            )
        finally:
            await browser.close()
    import numpy as np

    expected = pcm16_to_ulaw(np.array(samples, dtype="<i2").tobytes())
    assert bytes(encoded) == expected
    assert np.array_equal(np.array(decoded, dtype=np.int16), np.frombuffer(ulaw_to_pcm16(bytes(range(256))), dtype="<i2"))
    assert all(0.9 < gains[str(hz)] < 1.1 for hz in (300, 1000, 3000)), gains
    assert gains["5000"] < 0.01 and gains["9000"] < 0.01, gains
