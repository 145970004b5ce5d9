"""A fake of Twilio's REST API for account set-up: IncomingPhoneNumbers and SIP Domains.

The routes, parameters and JSON shapes of api.twilio.com/2010-04-01 that `ivr twilio setup` uses,
with HTTP Basic auth (account SID and auth token):
- GET  /Accounts/{AC}/IncomingPhoneNumbers.json?PhoneNumber=+1…   (a page: `incoming_phone_numbers`)
- POST /Accounts/{AC}/IncomingPhoneNumbers/{PN}.json             (form fields VoiceUrl, StatusCallback…)
- GET  /Accounts/{AC}/SIP/Domains.json                           (a page: `domains`)
- POST /Accounts/{AC}/SIP/Domains.json                           (create: DomainName, VoiceUrl…)
- POST /Accounts/{AC}/SIP/Domains/{SD}.json                      (update)
Form fields are Twilio's PascalCase names; JSON answers use snake_case, as Twilio's do.
"""

from __future__ import annotations

import base64
import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PREFIX = "/2010-04-01/Accounts/{account}"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class FakeTwilioAccount:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.numbers: dict[str, dict] = {}
        self.domains: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, form)
        self.app = Starlette(routes=[
            Route(PREFIX + "/IncomingPhoneNumbers.json", self.list_numbers, methods=["GET"]),
            Route(PREFIX + "/IncomingPhoneNumbers/{sid}.json", self.update_number, methods=["POST"]),
            Route(PREFIX + "/SIP/Domains.json", self.list_domains, methods=["GET"]),
            Route(PREFIX + "/SIP/Domains.json", self.create_domain, methods=["POST"]),
            Route(PREFIX + "/SIP/Domains/{sid}.json", self.update_domain, methods=["POST"]),
        ])

    # --- fixtures -------------------------------------------------------------------------------

    def add_number(self, phone_number: str, **fields) -> dict:
        sid = "PN" + format(len(self.numbers) + 1, "032x")
        self.numbers[sid] = {
            "sid": sid, "account_sid": self.account_sid, "phone_number": phone_number, "friendly_name": phone_number,
            "voice_url": "https://demo.twilio.com/welcome/voice/", "voice_method": "POST", "voice_fallback_url": None,
            "status_callback": "", "status_callback_method": "POST", "voice_application_sid": None, "trunk_sid": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json", **fields,
        }
        return self.numbers[sid]

    def add_domain(self, domain_name: str, **fields) -> dict:
        sid = "SD" + format(len(self.domains) + 1, "032x")
        self.domains[sid] = {
            "sid": sid, "account_sid": self.account_sid, "domain_name": domain_name, "friendly_name": domain_name,
            "voice_url": None, "voice_method": "POST", "voice_status_callback_url": None,
            "voice_status_callback_method": "POST", "voice_fallback_url": None, "sip_registration": False,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/SIP/Domains/{sid}.json", **fields,
        }
        return self.domains[sid]

    # --- the API --------------------------------------------------------------------------------

    def _refuse(self, request: Request) -> JSONResponse | None:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization", "") != expected:
            return JSONResponse({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}, status_code=401)
        if request.path_params["account"] != self.account_sid:
            return self._not_found(request)
        return None

    @staticmethod
    def _not_found(request: Request) -> JSONResponse:
        return JSONResponse({"code": 20404, "message": f"The requested resource {request.url.path} was not found", "status": 404}, status_code=404)

    async def _form(self, request: Request) -> dict:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.requests.append((request.method, request.url.path, form))
        return form

    def _page(self, request: Request, key: str, items: list[dict]) -> JSONResponse:
        return JSONResponse({
            key: items, "page": 0, "page_size": 50, "start": 0, "end": max(len(items) - 1, 0),
            "uri": request.url.path, "first_page_uri": request.url.path, "next_page_uri": None, "previous_page_uri": None,
        })

    async def list_numbers(self, request: Request) -> JSONResponse:
        if (refused := self._refuse(request)) is not None:
            return refused
        self.requests.append(("GET", request.url.path, dict(request.query_params)))
        wanted = request.query_params.get("PhoneNumber")
        items = [n for n in self.numbers.values() if wanted in (None, n["phone_number"])]
        return self._page(request, "incoming_phone_numbers", items)

    async def update_number(self, request: Request) -> JSONResponse:
        if (refused := self._refuse(request)) is not None:
            return refused
        number = self.numbers.get(request.path_params["sid"])
        if number is None:
            return self._not_found(request)
        for name, value in (await self._form(request)).items():
            number[_snake(name)] = value or None
        return JSONResponse(number)

    async def list_domains(self, request: Request) -> JSONResponse:
        if (refused := self._refuse(request)) is not None:
            return refused
        self.requests.append(("GET", request.url.path, dict(request.query_params)))
        return self._page(request, "domains", list(self.domains.values()))

    async def create_domain(self, request: Request) -> JSONResponse:
        if (refused := self._refuse(request)) is not None:
            return refused
        form = await self._form(request)
        if "DomainName" not in form:
            return JSONResponse({"code": 21201, "message": "DomainName is required", "status": 400}, status_code=400)
        domain = self.add_domain(form.pop("DomainName"))
        for name, value in form.items():
            domain[_snake(name)] = value
        return JSONResponse(domain, status_code=201)

    async def update_domain(self, request: Request) -> JSONResponse:
        if (refused := self._refuse(request)) is not None:
            return refused
        domain = self.domains.get(request.path_params["sid"])
        if domain is None:
            return self._not_found(request)
        for name, value in (await self._form(request)).items():
            domain[_snake(name)] = value or None
        return JSONResponse(domain)
