"""The timeline page renders in a real browser (headless Chromium) with the call on it."""

from __future__ import annotations

import shutil

import pytest

from fakebot import FakeBot
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.report import build_report
from ivr.harness.run import write_outputs
from test_harness_report import SPEED, conversational_bot, script

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


async def test_timeline_renders_in_chromium(tmp_path):
    async with FakeBot(conversational_bot()) as bot:
        record = await TwilioEmulator(script(), ReplayOptions(url=bot.url, speed=SPEED)).run()
    out = write_outputs(record, build_report(record), tmp_path)

    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 800})
            requests, errors = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(out.html_path.as_uri())
            await page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            canvas = await page.query_selector("#timeline canvas")
            box = await canvas.bounding_box()
            rows = await page.locator("#turns tbody tr").all_inner_texts()
            # Something was drawn: the canvas is not blank.
            inked = await page.evaluate(
                """() => { const c = document.querySelector('#timeline canvas');
                           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                           let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
            )
            shot = tmp_path / "timeline.png"
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    assert not errors, errors
    # Self-contained: nothing fetched but the page itself (and its embedded data: URIs).
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert box["width"] > 500 and box["height"] > 200
    # Two spoken turns and the keypad entry "1#".
    assert len(rows) == 3 and "first question" in rows[0] and "keys 1#" in rows[2]
    assert inked > 10_000
    assert shot.stat().st_size > 10_000
