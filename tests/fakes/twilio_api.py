"""A fake of Twilio's REST API: the Calls resource, enough for transfers, hang-ups and placing calls.

`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with form fields `Twiml` or
`Status`, HTTP Basic auth (account SID or API key as the user), answered with a call resource.

`POST …/Calls.json` creates a call and then plays Twilio (see `FakeTwilioApi.create_call`): signed
status callbacks, the `Callee` who answers, and for an answered call with `<Connect><Stream>`
TwiML the media stream itself, with the harness emulator playing the callee, and the async AMD
verdict at the call time the callee sets. `GET …/Calls/{CallSid}.json` fetches a call.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import CallPlan


@dataclass
class Callee:
    """Who (or what) answers a call the fake places.

    `answer`: "answered" (a person or a machine picks up), "busy", "no-answer" or "failed".
    An answered call with `<Connect><Stream>` TwiML and a `plan` gets its media stream, the
    plan played by the harness emulator; without a plan it lasts `hold_s` seconds, or until
    hung up through the API. `answered_by` is the AMD verdict, posted at `amd_at_ms` of call time.
    """

    answer: str = "answered"
    plan: CallPlan | None = None
    answered_by: str = "human"
    amd_at_ms: float = 0.0
    hold_s: float = 0.0


class _CalleeEmulator(TwilioEmulator):
    """The emulator, with a hook on its call clock for the AMD verdict."""

    def __init__(self, plan, options, amd_at_ms: float, on_amd) -> None:
        super().__init__(plan, options)
        self._amd_at_ms = amd_at_ms
        self._on_amd = on_amd

    def _notify_tick(self) -> None:
        super()._notify_tick()
        if self._on_amd is not None and self.clock.now_ms() >= self._amd_at_ms:
            fire, self._on_amd = self._on_amd, None
            asyncio.get_running_loop().create_task(fire())


class FakeTwilioApi:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.updates: list[dict] = []
        self.updated = asyncio.Event()
        #: Placing calls: each create request's form (lists for repeated fields) and time.
        self.created: list[dict] = []
        self.callees: dict[str, Callee] = {}
        self.default_callee = Callee()
        self.speed = 2.0
        self.calls: dict[str, dict] = {}
        self.records: dict = {}  # call SID -> the emulator's CallRecord
        self.callbacks: list[dict] = []  # {"url", "params", "status_code"}
        self.active = 0
        self.max_active = 0
        #: Fail creates for these numbers with Twilio's error 21211 (invalid 'To').
        self.refuse: set[str] = set()
        self._hangups: dict[str, asyncio.Event] = {}
        #: Set once a call's last status callback has been answered (tests wait on it: another thread).
        self.done: dict[str, threading.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self._seq = itertools.count(1)
        self._http: httpx.AsyncClient | None = None
        self.app = Starlette(routes=[
            Route("/2010-04-01/Accounts/{account}/Calls.json", self.create_call, methods=["POST"]),
            Route("/2010-04-01/Accounts/{account}/Calls/{call}.json", self.update_call, methods=["POST"]),
            Route("/2010-04-01/Accounts/{account}/Calls/{call}.json", self.fetch_call, methods=["GET"]),
        ])

    def _authorised(self, request: Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("authorization", "") == expected

    async def update_call(self, request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if auth != expected:
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        account, call = request.path_params["account"], request.path_params["call"]
        if account != self.account_sid:
            return JSONResponse({"code": 20404, "message": "not found", "status": 404}, status_code=404)
        form = dict(await request.form())
        self.updates.append({"call_sid": call, **form})
        self.updated.set()
        if form.get("Status") == "completed" and call in self._hangups:
            self._hangups[call].set()
        return JSONResponse(
            {
                "sid": call,
                "account_sid": account,
                "status": form.get("Status", "in-progress"),
                "uri": f"/2010-04-01/Accounts/{account}/Calls/{call}.json",
            }
        )

    # --- placing calls -------------------------------------------------------------------------

    def _resource(self, sid: str) -> dict:
        call = self.calls[sid]
        return {"sid": sid, "account_sid": self.account_sid, "to": call["to"], "from": call["from"],
                "status": call["status"], "direction": "outbound-api", "answered_by": call.get("answered_by"),
                "duration": call.get("duration"), "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json"}

    async def create_call(self, request: Request) -> JSONResponse:
        if not self._authorised(request) or request.path_params["account"] != self.account_sid:
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        form = await request.form()
        fields = {k: (form.getlist(k) if len(form.getlist(k)) > 1 or k == "StatusCallbackEvent" else form[k]) for k in form}
        self.created.append({"t": time.monotonic(), **fields})
        to = form.get("To", "")
        if to in self.refuse:
            return JSONResponse({"code": 21211, "message": f"The 'To' number {to} is not a valid phone number.",
                                 "status": 400}, status_code=400)
        sid = "CA" + secrets.token_hex(16)
        self.calls[sid] = {"to": to, "from": form.get("From", ""), "status": "queued", "form": fields}
        self._hangups[sid] = asyncio.Event()
        self.done[sid] = threading.Event()
        task = asyncio.create_task(self._dial(sid, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return JSONResponse(self._resource(sid), status_code=201)

    async def fetch_call(self, request: Request) -> JSONResponse:
        call = request.path_params["call"]
        if not self._authorised(request) or call not in self.calls:
            return JSONResponse({"code": 20404, "message": "not found", "status": 404}, status_code=404)
        return JSONResponse(self._resource(call))

    async def _callback(self, url: str | None, params: dict) -> None:
        if not url:
            return
        headers = {"X-Twilio-Signature": RequestValidator(self.auth_token).compute_signature(url, params)}
        if self._http is None:  # one client (made on the server's loop): keep-alive, like Twilio
            self._http = httpx.AsyncClient(timeout=30)
        reply = await self._http.post(url, data=params, headers=headers)
        self.callbacks.append({"url": url, "params": params, "status_code": reply.status_code})

    async def _progress(self, sid: str, form: dict, status: str, event: str, **extra) -> None:
        call = self.calls[sid]
        call["status"] = status
        if event not in form.get("StatusCallbackEvent", []):
            return
        params = {"AccountSid": self.account_sid, "CallSid": sid, "CallStatus": status, "From": call["from"],
                  "To": call["to"], "Direction": "outbound-api", "ApiVersion": "2010-04-01",
                  "CallbackSource": "call-progress-events", "SequenceNumber": str(next(self._seq)), **extra}
        await self._callback(form.get("StatusCallback"), params)

    async def _dial(self, sid: str, form: dict) -> None:
        callee = self.callees.get(form.get("To", ""), self.default_callee)
        call = self.calls[sid]
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        t0 = time.monotonic()
        final, extra = callee.answer, {}
        try:
            await self._progress(sid, form, "initiated", "initiated")
            await self._progress(sid, form, "ringing", "ringing")
            if callee.answer == "answered":
                final = "completed"
                await self._progress(sid, form, "in-progress", "answered")
                stream = _stream_of(form.get("Twiml", ""))
                if callee.plan is not None and stream is not None:
                    await self._stream(sid, form, callee, *stream)
                else:
                    if form.get("AsyncAmd") == "true":
                        await self._amd(sid, form, callee)
                    try:
                        async with asyncio.timeout(callee.hold_s):
                            await self._hangups[sid].wait()
                    except TimeoutError:
                        pass
                extra["CallDuration"] = str(round(time.monotonic() - t0))
                if call.get("answered_by"):
                    extra["AnsweredBy"] = call["answered_by"]
        finally:
            call["duration"] = extra.get("CallDuration", "0")
            self.active -= 1
        # Twilio reports busy / no-answer / failed through the `completed` event, with that status.
        try:
            await self._progress(sid, form, final, "completed", **extra)
        finally:
            self.done[sid].set()

    def wait_done(self, sid: str, timeout: float = 60.0) -> None:
        if not self.done[sid].wait(timeout):
            raise TimeoutError(f"call {sid} did not end")

    async def _amd(self, sid: str, form: dict, callee: Callee) -> None:
        self.calls[sid]["answered_by"] = callee.answered_by
        await self._callback(form.get("AsyncAmdStatusCallback"), {
            "AccountSid": self.account_sid, "CallSid": sid, "AnsweredBy": callee.answered_by,
            "MachineDetectionDuration": str(int(callee.amd_at_ms))})

    async def _stream(self, sid: str, form: dict, callee: Callee, url: str, params: dict) -> None:
        options = ReplayOptions(url=url, speed=self.speed, params=params, auth_token=self.auth_token, sign_url=url,
                                account_sid=self.account_sid, call_sid=sid, max_call_s=120)
        amd = (lambda: self._amd(sid, form, callee)) if form.get("AsyncAmd") == "true" else None
        emulator = _CalleeEmulator(callee.plan, options, callee.amd_at_ms, amd)
        self.records[sid] = await emulator.run()


def _stream_of(doc: str) -> tuple[str, dict] | None:
    """The `<Connect><Stream url>` of a TwiML document and its `<Parameter>`s, if it has one."""
    if not doc:
        return None
    stream = ET.fromstring(doc).find("./Connect/Stream")
    if stream is None:
        return None
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
