"""A fake of OpenAI's chat completions API, streaming (`POST /v1/chat/completions`, `stream: true`),
plus `GET /v1/models`.

Answers are Server-Sent Events as the API sends them: `data: {chat.completion.chunk}` lines (a
first chunk with `role`, content deltas, tool-call deltas with `index`, `id`, `type` and
`function.name` on the first piece and `function.arguments` in fragments, a last chunk with
`finish_reason`), then `data: [DONE]`. Errors are HTTP statuses with `{"error": {message, type,
param, code}}` (401 for a bad key, 429 with `retry-after`), or a mid-stream `data: {"error": ...}`.

What to answer is the test's: `responder(request_body) -> Reply`. Faults for the next requests
are queued in `faults`: "429", "500", "stall" (headers, then silence), "stall_first" (the role
chunk, then silence), "error_first" (the role chunk, then an error event), "error_after_text" (the
first two words, then an error event), "stall_after_text" (two words, then silence).
`first_token_delay_s` delays every first token (benchmarks). Each request's client port is kept (`client_ports`: a reused connection keeps its port) and a
stream the client left before its end is counted (`streams_left`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


@dataclass
class Reply:
    text: str = ""
    tools: list[tuple[str, dict]] = field(default_factory=list)  # (name, arguments)


def bakery(body: dict) -> Reply:
    """A small deterministic "model" for the sample calls."""
    last = body["messages"][-1]["content"].lower()
    if "open" in last or "time" in last:
        return Reply("We're open Tuesday to Sunday, from seven until three. Anything else?")
    if "where" in last or "located" in last:
        return Reply("We're at twelve Market Street, next to the post office, and there's parking behind the shop. "
                     "Is there anything else I can help you with today?")
    if "person" in last or "someone" in last or "[the caller pressed the keys 0]" in last:
        return Reply("Of course, putting you through now.", [("transfer", {"target": "staff", "summary": "Caller asked for a person."})])
    if "no thank" in last or "that's all" in last or "bye" in last:
        return Reply("Thanks for calling Sunrise Bakery. Goodbye!", [("hangup", {})])
    return Reply("Sorry, could you say that again?")


def varied() -> Callable[[dict], Reply]:
    """A responder whose every answer is new text (numbered), so none can come from a cache."""
    counter = itertools.count(1)
    return lambda body: Reply(f"Answer {next(counter)}: we're open Tuesday to Sunday, from seven until three.")


class FakeOpenAI:
    def __init__(self, api_key: str = "sk-test", responder: Callable[[dict], Reply] = bakery,
                 first_token_delay_s: float = 0.0, lifespan=None) -> None:
        self.api_key = api_key
        self.responder = responder
        self.first_token_delay_s = first_token_delay_s
        self.faults: deque[str] = deque()
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.client_ports: list[int] = []
        self.streams_left = 0
        #: (request received, first token sent), monotonic seconds: for latency benchmarks.
        self.timings: list[tuple[float, float]] = []
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ], lifespan=lifespan)

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _error(status: int, message: str, kind: str, code: str | None, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                            status_code=status, headers=headers)

    async def models(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return JSONResponse({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "system"}]})

    async def completions(self, request: Request):
        received = time.monotonic()
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.client_ports.append(request.client.port if request.client else 0)
        if not body.get("stream"):
            return self._error(400, "this fake only streams", "invalid_request_error", None)
        fault = self.faults.popleft() if self.faults else ""
        if fault == "429":
            return self._error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", {"retry-after": "1"})
        if fault == "500":
            return self._error(500, "The server had an error while processing your request.", "server_error", None)
        reply = self.responder(body)
        return StreamingResponse(self._events(body, reply, fault, received), media_type="text/event-stream")

    async def _events(self, body: dict, reply: Reply, fault: str, received: float):
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", "gpt-4o-mini"), "system_fingerprint": "fp_fake"}

        def chunk(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                               "finish_reason": finish}]}) + "\n\n"

        error = 'data: {"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}\n\n'
        finished = False
        try:
            async for event in self._chunks(chunk, error, reply, fault, received):
                yield event
            finished = True
        finally:
            if not finished:
                self.streams_left += 1

    async def _chunks(self, chunk, error: str, reply: Reply, fault: str, received: float):
        if fault == "stall":
            await asyncio.sleep(3600)
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        if fault == "stall_first":
            await asyncio.sleep(3600)
        if fault == "error_first":
            yield error
            return
        if self.first_token_delay_s:
            await asyncio.sleep(self.first_token_delay_s)
        first = True
        words = reply.text.split(" ") if reply.text else []
        for i, word in enumerate(words):
            if first:
                self.timings.append((received, time.monotonic()))
                first = False
            yield chunk({"content": word + (" " if i < len(words) - 1 else "")})
            if fault == "error_after_text" and i == 1:
                yield error
                return
            if fault == "stall_after_text" and i == 1:
                await asyncio.sleep(3600)
        for index, (name, args) in enumerate(reply.tools):
            if first:
                self.timings.append((received, time.monotonic()))
                first = False
            text = json.dumps(args)
            yield chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                         "function": {"name": name, "arguments": ""}}]})
            for at in range(0, len(text), 7):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": text[at:at + 7]}}]})
        yield chunk({}, "tool_calls" if reply.tools else "stop")
        yield "data: [DONE]\n\n"


if __name__ == "__main__":  # python tests/fakes/openai_api.py --port P (benchmarks)
    import argparse
    import contextlib
    import gc

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--key", default="sk-test")
    parser.add_argument("--first-token-delay-ms", type=float, default=0)
    parser.add_argument("--varied", action="store_true", help="a new answer every time (nothing from a prompt cache)")
    parser.add_argument("--timings", help="write (request received, first token sent) times (monotonic s) here on exit")
    args = parser.parse_args()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        gc.freeze()  # short collector passes: its pauses would count as the server's time
        yield
        # Here, not after uvicorn.run(): uvicorn re-raises SIGTERM once it has shut down.
        if args.timings:
            with open(args.timings, "w") as f:
                json.dump({"requests": fake.timings}, f)

    fake = FakeOpenAI(args.key, responder=varied() if args.varied else bakery,
                      first_token_delay_s=args.first_token_delay_ms / 1000, lifespan=lifespan)
    # Keep-alive like a real API front end (uvicorn closes idle connections after 5 s).
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning", timeout_keep_alive=120)
