"""`says: {meaning: "..."}`: whether a reply conveys a meaning, judged by an OpenAI-compatible model.

On only when OPENAI_API_KEY is set (OPENAI_BASE_URL picks the server, IVR_JUDGE_MODEL the model,
default gpt-4o-mini); without a key those checks are skipped and reported as such. The model is
asked at temperature 0 for a JSON verdict; its reason is shown when a check fails.
"""

from __future__ import annotations

import os
import re

import orjson

from ivr.providers.openai_http import ApiConnectionError, ApiError, OpenAIHttp

DEFAULT_MODEL = "gpt-4o-mini"
INSTRUCTIONS = (
    "You check a telephone bot's reply for an automated test. You get the words the caller heard "
    "and a meaning the reply must convey. Judge the meaning, not the wording: a paraphrase holds, "
    "a reply that says something else, says less, or contradicts it does not. Answer with JSON "
    'only: {"holds": true or false, "reason": "one short sentence"}.'
)


class JudgeError(RuntimeError):
    pass


class Judge:
    def __init__(self, api_key: str, base_url: str, model: str = DEFAULT_MODEL) -> None:
        self.model = model
        self.client = OpenAIHttp(api_key, base_url)

    @classmethod
    def from_env(cls) -> "Judge | None":
        key = os.environ.get("OPENAI_API_KEY", "")
        if not key:
            return None
        base = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return cls(key, base, os.environ.get("IVR_JUDGE_MODEL") or DEFAULT_MODEL)

    async def __call__(self, meaning: str, heard: str) -> tuple[bool, str]:
        body = {
            "model": self.model,
            "stream": True,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": f"Meaning: {meaning}\nThe caller heard: {heard or '(nothing)'}"},
            ],
        }
        text = []
        try:
            async with self.client.chat_stream(body) as chunks:
                async for chunk in chunks:
                    for choice in chunk.get("choices") or []:
                        text.append((choice.get("delta") or {}).get("content") or "")
        except (ApiError, ApiConnectionError) as exc:
            raise JudgeError(f"the judge model failed: {exc}") from None
        return parse_verdict("".join(text))


def parse_verdict(text: str) -> tuple[bool, str]:
    """The model's JSON verdict; a bare yes/no is accepted too."""
    m = re.search(r"\{.*\}", text, re.S)
    if m:
        try:
            doc = orjson.loads(m.group(0))
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("holds"), bool):
            return doc["holds"], str(doc.get("reason") or "")
    word = text.strip().lower()
    if word.startswith(("yes", "true")):
        return True, text.strip()
    if word.startswith(("no", "false")):
        return False, text.strip()
    raise JudgeError(f"the judge model gave no verdict: {text[:200]!r}")
