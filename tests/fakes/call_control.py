"""Fakes of the carriers' call-control APIs, served over real HTTP on 127.0.0.1.

Each checks what the vendor documents (authentication, method, path, body) and answers as the
vendor does, including its errors; every request it accepted is kept in `requests` for the test
to assert on, and `fail_with` makes the next requests fail with that HTTP status.

- `FakeTelnyx`: Call Control v2, `POST /v2/calls/{call_control_id}/actions/{hangup|transfer}`,
  `Authorization: Bearer KEY`, JSON bodies; 200 `{"data": {"result": "ok"}}`, 401/422 with
  `{"errors": [{"code", "title", "detail"}]}`.
- `FakePlivo`: `DELETE /v1/Account/{auth_id}/Call/{call_uuid}/` (204) and `POST` of the same URL
  with `{"legs": "aleg", "aleg_url", "aleg_method"}` (202 `{"api_id", "message": "call
  transferred"}`), Basic auth. A transfer fetches `aleg_url` as Plivo would (POST, the call's
  parameters, a V3 signature) and keeps the XML it got in `documents`.
- `FakeVonage`: `PUT /v1/calls/{uuid}` with `{"action": "hangup"}` or `{"action": "transfer",
  "destination": {"type": "ncco", "ncco": [...]}}`, a Bearer application JWT (RS256, verified
  with the application's public key, `application_id` claim); 204, 401, 400.
- `FakeAri`: Asterisk's `/ari/channels` list, `/channels/{id}` DELETE, `/channels/{id}/variable`
  GET and POST, `/channels/{id}/continue` POST, Basic auth; channels outside Stasis answer 409
  to what only a Stasis channel may do, as Asterisk does (res/ari/resource_channels.c).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class _Fake:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        #: The next requests fail with this HTTP status (None: they succeed).
        self.fail_with: int | None = None

    async def _keep(self, request: Request, **extra) -> dict:
        body = await request.body()
        entry = {"method": request.method, "path": request.url.path, "query": dict(request.query_params),
                 "json": orjson.loads(body) if body and request.headers.get("content-type", "").startswith("application/json") else None,
                 **extra}
        self.requests.append(entry)
        return entry


def _basic(request: Request) -> tuple[str, str] | None:
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    return user, password


class FakeTelnyx(_Fake):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        self.app = Starlette(routes=[Route("/v2/calls/{call_control_id:path}/actions/{action}", self.action, methods=["POST"])])

    @staticmethod
    def _error(status: int, code: str, title: str, detail: str) -> JSONResponse:
        return JSONResponse({"errors": [{"code": code, "title": title, "detail": detail}]}, status_code=status)

    async def action(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "10009", "Authentication failed", "The API key is missing or not valid.")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return self._error(422, "10015", "Bad Request", "The body must be JSON.")
        entry = await self._keep(request, call_control_id=request.path_params["call_control_id"],
                                 action=request.path_params["action"])
        if self.fail_with:
            return self._error(self.fail_with, "90018", "Call has already ended", "This call is no longer active.")
        if entry["action"] == "transfer" and not (entry["json"] or {}).get("to"):
            return self._error(422, "10015", "Invalid value for to", "The 'to' parameter is required.")
        if entry["action"] not in ("hangup", "transfer"):
            return self._error(404, "10005", "Resource not found", "Unknown action.")
        return JSONResponse({"data": {"result": "ok"}})


class FakePlivo(_Fake):
    def __init__(self, auth_id: str, auth_token: str) -> None:
        super().__init__()
        self.auth_id = auth_id
        self.auth_token = auth_token
        #: (aleg_url, the XML our server answered) for each transfer.
        self.documents: list[tuple[str, str]] = []
        self.app = Starlette(routes=[
            Route("/v1/Account/{auth_id}/Call/{call_uuid}/", self.call, methods=["POST", "DELETE"]),
        ], )
        self.app.router.redirect_slashes = False  # Plivo's paths end with "/": others are not found

    async def call(self, request: Request) -> Response:
        if _basic(request) != (self.auth_id, self.auth_token) or request.path_params["auth_id"] != self.auth_id:
            return JSONResponse({"api_id": secrets.token_hex(8), "error": "Authentication credentials invalid."}, status_code=401)
        entry = await self._keep(request, call_uuid=request.path_params["call_uuid"])
        if self.fail_with:
            return JSONResponse({"api_id": secrets.token_hex(8), "error": "call not found"}, status_code=self.fail_with)
        if request.method == "DELETE":
            return Response(status_code=204)
        body = entry["json"] or {}
        if body.get("legs") != "aleg" or not body.get("aleg_url"):
            return JSONResponse({"api_id": secrets.token_hex(8), "error": "aleg_url is required for legs=aleg"}, status_code=400)
        await self._fetch(body["aleg_url"], body.get("aleg_method", "POST"), entry["call_uuid"])
        return JSONResponse({"api_id": secrets.token_hex(8), "message": "call transferred"}, status_code=202)

    async def _fetch(self, url: str, method: str, call_uuid: str) -> None:
        """Plivo asks the new URL for XML, signed with V3 over the URL and its POST parameters."""
        from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

        params = {"CallUUID": call_uuid, "From": "+15550100001", "To": "+15550100999", "Direction": "inbound"}
        nonce = secrets.token_hex(10)
        signature = get_signature_v3(self.auth_token.encode(), construct_post_url(url, dict(params)).decode(), nonce.encode())
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.request(method, url, data=params, headers={
                "X-Plivo-Signature-V3": signature.decode(), "X-Plivo-Signature-V3-Nonce": nonce})
        self.documents.append((url, response.text if response.status_code == 200 else f"HTTP {response.status_code}"))


class FakeVonage(_Fake):
    def __init__(self, application_id: str, public_key_pem: str) -> None:
        super().__init__()
        self.application_id = application_id
        self.public_key = public_key_pem
        self.app = Starlette(routes=[Route("/v1/calls/{uuid}", self.update, methods=["PUT"])])

    def _claims(self, request: Request) -> dict | None:
        import jwt

        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return None
        try:
            claims = jwt.decode(auth[7:], self.public_key, algorithms=["RS256"], options={"require": ["iat", "exp", "jti"]})
        except jwt.PyJWTError:
            return None
        return claims if claims.get("application_id") == self.application_id else None

    async def update(self, request: Request) -> Response:
        claims = self._claims(request)
        if claims is None:
            return JSONResponse({"type": "https://developer.nexmo.com/api-errors#unauthorized", "title": "Unauthorized",
                                 "detail": "You did not provide correct credentials."}, status_code=401)
        entry = await self._keep(request, uuid=request.path_params["uuid"], claims=claims)
        if self.fail_with:
            return JSONResponse({"type": "https://developer.nexmo.com/api-errors/voice#not-found", "title": "Not Found",
                                 "detail": "Call not found"}, status_code=self.fail_with)
        body = entry["json"] or {}
        if body.get("action") == "hangup":
            return Response(status_code=204)
        destination = body.get("destination") or {}
        if body.get("action") == "transfer" and destination.get("type") == "ncco" and isinstance(destination.get("ncco"), list):
            return Response(status_code=204)
        return JSONResponse({"type": "https://developer.nexmo.com/api-errors#bad-request", "title": "Bad Request",
                             "detail": "Invalid action"}, status_code=400)


@dataclass
class AriChannel:
    variables: dict[str, str] = field(default_factory=dict)
    #: In a Stasis application: only then may ARI continue it or set its variables.
    stasis: bool = True
    name: str = "PJSIP/trunk-00000001"
    state: str = "Up"


class FakeAri(_Fake):
    def __init__(self, user: str, password: str) -> None:
        super().__init__()
        self.user, self.password = user, password
        self.channels: dict[str, AriChannel] = {}
        self.app = Starlette(routes=[
            Route("/ari/channels", self.list_channels, methods=["GET"]),
            Route("/ari/channels/{channel_id}", self.hangup, methods=["DELETE"]),
            Route("/ari/channels/{channel_id}/variable", self.get_variable, methods=["GET"]),
            Route("/ari/channels/{channel_id}/variable", self.set_variable, methods=["POST"]),
            Route("/ari/channels/{channel_id}/continue", self.continue_in_dialplan, methods=["POST"]),
        ])

    def _refused(self, request: Request) -> Response | None:
        if _basic(request) != (self.user, self.password):
            return JSONResponse({"message": "Authentication required"}, status_code=401)
        if self.fail_with:
            return JSONResponse({"message": "Internal Server Error"}, status_code=self.fail_with)
        return None

    def _find(self, request: Request, stasis: bool) -> tuple[str, AriChannel | None, Response | None]:
        channel_id = request.path_params["channel_id"]
        channel = self.channels.get(channel_id)
        if channel is None:
            return channel_id, None, JSONResponse({"message": "Channel not found"}, status_code=404)
        if stasis and not channel.stasis:
            return channel_id, None, JSONResponse({"message": "Channel not in Stasis application"}, status_code=409)
        return channel_id, channel, None

    async def list_channels(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        await self._keep(request)
        return JSONResponse([{"id": cid, "name": c.name, "state": c.state, "creationtime": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000")}
                             for cid, c in self.channels.items()])

    async def hangup(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        channel_id, channel, error = self._find(request, stasis=False)
        await self._keep(request, channel=channel_id)
        if error is not None:
            return error
        del self.channels[channel_id]
        return Response(status_code=204)

    async def get_variable(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        channel_id, channel, error = self._find(request, stasis=False)
        await self._keep(request, channel=channel_id)
        if error is not None:
            return JSONResponse({"message": "Provided channel was not found"}, status_code=404)
        name = request.query_params.get("variable", "")
        if not name:
            return JSONResponse({"message": "Variable name is required"}, status_code=400)
        if name not in channel.variables:
            return JSONResponse({"message": "Provided variable was not found"}, status_code=404)
        return JSONResponse({"value": channel.variables[name]})

    async def set_variable(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        channel_id, channel, error = self._find(request, stasis=True)
        await self._keep(request, channel=channel_id)
        if error is not None:
            return error
        name = request.query_params.get("variable", "")
        if not name:
            return JSONResponse({"message": "Variable name is required"}, status_code=400)
        channel.variables[name] = request.query_params.get("value", "")
        return Response(status_code=204)

    async def continue_in_dialplan(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        channel_id, channel, error = self._find(request, stasis=True)
        await self._keep(request, channel=channel_id)
        if error is not None:
            return error
        channel.stasis = False  # it left the application for the dialplan
        return Response(status_code=204)
