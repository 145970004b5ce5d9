"""The real server under uvicorn, reached by a real WebSocket client, as Twilio reaches it."""

import asyncio

import pytest
import websockets
from twilio.request_validator import RequestValidator

import twilio_messages as tm
from ivr.config import Settings
from ivr.server import create_app
from ivr.session import ListeningHandler
from live_server import serve

TOKEN = "abcdefabcdefabcdefabcdefabcdef12"


async def open_call(url: str, headers: dict) -> list[str]:
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(tm.CONNECTED)
        await ws.send(tm.start())
        await ws.send(tm.stop(2))
        await asyncio.wait_for(ws.wait_closed(), 5)
    return []


def test_signed_upgrade_behind_a_tls_proxy_is_accepted_and_unsigned_refused():
    """No IVR_PUBLIC_URL: the URL is rebuilt from Host and a trusted X-Forwarded-Proto."""
    app = create_app(Settings.from_env({}, twilio_auth_token=TOKEN), handler_factory=ListeningHandler)
    with serve(app) as base:
        host = base.removeprefix("http://")
        signed_url = f"wss://{host}/media"
        sig = RequestValidator(TOKEN).compute_signature(signed_url, {})
        ws_url = base.replace("http", "ws") + "/media"
        asyncio.run(open_call(ws_url, {"X-Twilio-Signature": sig, "X-Forwarded-Proto": "https"}))
        with pytest.raises(websockets.InvalidStatus) as info:
            asyncio.run(open_call(ws_url, {"X-Twilio-Signature": sig}))  # signed for wss, seen as ws
        assert info.value.response.status_code == 403
        with pytest.raises(websockets.InvalidStatus) as info:
            asyncio.run(open_call(ws_url, {"X-Forwarded-Proto": "https"}))
        assert info.value.response.status_code == 403


def test_configured_public_url_is_what_the_signature_covers():
    app = create_app(Settings.from_env({}, twilio_auth_token=TOKEN, public_url="https://voice.example.com"), handler_factory=ListeningHandler)
    with serve(app) as base:
        ws_url = base.replace("http", "ws") + "/media"
        sig = RequestValidator(TOKEN).compute_signature("wss://voice.example.com/media", {})
        asyncio.run(open_call(ws_url, {"X-Twilio-Signature": sig}))
        wrong = RequestValidator("0" * 32).compute_signature("wss://voice.example.com/media", {})
        with pytest.raises(websockets.InvalidStatus):
            asyncio.run(open_call(ws_url, {"X-Twilio-Signature": wrong}))
