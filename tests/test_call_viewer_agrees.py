"""The call viewer (/calls, from the server's capture) and `ivr replay`'s report of the same call
agree on barge-ins and latencies, also when the replay runs faster than real time.

Both build their figures with ivr.harness.report.build_report; the viewer rebuilds the call from
the capture on the caller's clock (ivr.web.calls.CallerClock), the clock the replay keeps.
"""

import html
import re
from pathlib import Path

import httpx
import pytest

from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.report import build_report
from ivr.harness.sources import load_call
from ops_server import ServeProcess

SAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "harness" / "samples"
#: The two sides stamp the same moments on two clocks a loopback hop apart.
TOLERANCE_MS = 100

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROW = re.compile(r"<tr><td><a href=\"/calls/[^\"]+\">.*?</td><td>[\d.]+ s</td><td>(\d+)</td><td>(\d+)</td>"
                 r"<td>([^<]*)</td><td>([^<]*)</td>")


def numbers(cell: str) -> list[float]:
    return [float(v) for v in html.unescape(cell).split(",") if v.strip() not in ("", "–")]


@pytest.mark.parametrize("speed", [1.0, 2.0])
async def test_viewer_and_replay_report_agree(tmp_path, speed):
    server = ServeProcess({"IVR_CAPTURE_DIR": str(tmp_path)})
    await server.start()
    try:
        plan = await load_call(SAMPLES / "barge_in.yaml")
        record = await TwilioEmulator(plan, ReplayOptions(url=server.media_url, speed=speed, max_call_s=120)).run()
        await server.wait_for(lambda r: r.get("msg", "").startswith("call ended"), 30)
        async with httpx.AsyncClient(base_url=server.base) as http:
            page = (await http.get("/calls")).text
    finally:
        await server.stop()
    assert not record.errors, record.errors
    report = build_report(record)
    [(turns, barge_ins, greeting, latencies)] = ROW.findall(page)
    assert int(barge_ins) == len(report["barge_ins"]) >= 1  # the sample barges in
    replayed = [t["response_latency_ms"] for t in report["turns"] if t["response_latency_ms"] is not None]
    viewed = numbers(latencies)
    assert len(viewed) == len(replayed) >= 1, (viewed, replayed)
    assert all(abs(v - r) <= TOLERANCE_MS for v, r in zip(viewed, replayed)), (viewed, replayed)
    assert abs(numbers(greeting)[0] - report["greeting"]["bot_first_audio_ms"]) <= TOLERANCE_MS
