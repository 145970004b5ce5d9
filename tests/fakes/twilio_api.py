"""A fake of Twilio's REST API: the Calls resource, enough for transfers and hang-ups.

`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with form fields `Twiml` or
`Status`, HTTP Basic auth (account SID or API key as the user), answered with a call resource.
"""

from __future__ import annotations

import asyncio
import base64

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class FakeTwilioApi:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.updates: list[dict] = []
        self.updated = asyncio.Event()
        self.app = Starlette(routes=[Route("/2010-04-01/Accounts/{account}/Calls/{call}.json", self.update_call, methods=["POST"])])

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
        return JSONResponse(
            {
                "sid": call,
                "account_sid": account,
                "status": form.get("Status", "in-progress"),
                "uri": f"/2010-04-01/Accounts/{account}/Calls/{call}.json",
            }
        )
