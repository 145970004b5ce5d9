"""10,000 random and mutated messages at one live call: the server must not die nor drop the call."""

import asyncio
import base64
import json
import random

import httpx
import websockets
from prometheus_client import REGISTRY

import twilio_messages as tm
from ivr.config import Settings
from ivr.server import create_app
from ivr.session import ListeningHandler
from live_server import serve

N_MESSAGES = 10_000


class Recorder(ListeningHandler):
    last = None

    def __init__(self, line):
        super().__init__(line)
        self.events = []
        self.errors = 0
        Recorder.last = self

    async def on_event(self, event):
        self.events.append(event)
        await super().on_event(event)


def valid_messages(i: int) -> list[str]:
    return [tm.media(i, i, 20 * i), tm.dtmf(i, "1"), tm.mark(i, f"m{i}"), tm.CONNECTED]


def mutate(rng: random.Random, text: str) -> str | bytes:
    choice = rng.randrange(10)
    if choice == 0:  # flip characters
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 0x2FF))
        return "".join(chars)
    if choice == 1:  # truncate
        return text[: rng.randrange(len(text))]
    if choice == 2:  # binary frame
        return text.encode()[: rng.randrange(1, 200)]
    if choice == 3:  # random bytes as text
        codes = (rng.randrange(0, 0x10FFFF) for _ in range(rng.randrange(1, 50)))
        return "".join(chr(c) for c in codes if not 0xD800 <= c < 0xE000)  # surrogates are not text
    msg = json.loads(text)
    if choice == 4:  # drop a field, at any depth
        target = msg
        while True:
            key = rng.choice(list(target))
            if isinstance(target[key], dict) and target[key] and rng.random() < 0.5:
                target = target[key]
                continue
            del target[key]
            break
    elif choice == 5:  # change a value's type
        key = rng.choice(list(msg))
        msg[key] = rng.choice([None, 7, -1, 3.5, [], {}, True, "", "x" * rng.randrange(100)])
    elif choice == 6 and "media" in msg:  # bad audio
        msg["media"]["payload"] = rng.choice(["", "====", "a", base64.b64encode(b"\xff" * 9000).decode(), "%%%"])
    elif choice == 7:  # wrong numbers
        msg["sequenceNumber"] = rng.choice(["-3", "1e5", "0x10", "", "999999999999999999999", " 4"])
    elif choice == 8:  # unknown event or a second start
        msg = rng.choice([{"event": "bogus"}, json.loads(tm.start())])
    else:  # huge message
        msg["pad"] = "y" * rng.randrange(60_000, 200_000)
    return json.dumps(msg)


async def fuzz_call(ws_url: str) -> None:
    rng = random.Random(20261122)
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(tm.CONNECTED)
        await ws.send(tm.start())
        seq = 2
        for n in range(N_MESSAGES):
            base = rng.choice(valid_messages(seq))
            msg = base if rng.random() < 0.2 else mutate(rng, base)
            await ws.send(msg)
            seq += 1
        # The same call still works: audio is heard, marks come back through the line.
        await ws.send(tm.media(seq, 10**6, 10**8, b"\x42" * 160))
        await ws.send(tm.stop(seq + 1))
        await asyncio.wait_for(ws.wait_closed(), 10)


def test_ten_thousand_bad_messages_do_not_drop_the_call():
    errors_before = sum(s.value for m in REGISTRY.collect() if m.name == "ivr_protocol_errors" for s in m.samples if s.name.endswith("_total"))
    app = create_app(Settings.from_env({}), handler_factory=Recorder)
    with serve(app) as base:
        asyncio.run(fuzz_call(base.replace("http", "ws") + "/media"))
        assert httpx.get(base + "/healthz").status_code == 200
    rec = Recorder.last
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds[0] == "Start" and kinds[-1] == "Stop", kinds[-3:]
    assert rec.events[-2].payload == b"\x42" * 160  # the last good frame was heard
    errors_after = sum(s.value for m in REGISTRY.collect() if m.name == "ivr_protocol_errors" for s in m.samples if s.name.endswith("_total"))
    assert errors_after - errors_before > N_MESSAGES * 0.5  # most of the mutations were caught and counted
