"""JSON logs: one object a line, the call's ids on every line made inside a call, numbers masked."""

import asyncio
import contextvars
import io
import logging

import orjson
import pytest

from ivr import logs
from ivr.config import ConfigError, Settings


@pytest.fixture
def captured():
    """A logger writing through the same handler set-up as `logs.setup(..., "json")`."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.CallContextFilter())
    logger = logging.getLogger("ivr.test.ops")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [orjson.loads(line) for line in out.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_call_lines_carry_ids_as_fields_not_text(captured):
    logger, lines = captured
    call = logs.CallLog(logger)

    def in_a_call() -> None:  # the server binds inside each stream's own task (its own context)
        call.info("before start")
        call.bind("CA" + "1" * 32, "MZ" + "2" * 32)
        call.warning("caller pressed %s", "5")

    contextvars.copy_context().run(in_a_call)
    first, second = lines()
    assert first["call_sid"] == "-" and first["msg"] == "before start"
    assert second == {
        "ts": second["ts"], "level": "warning", "logger": "ivr.test.ops",
        "call_sid": "CA" + "1" * 32, "stream_sid": "MZ" + "2" * 32, "msg": "caller pressed 5",
    }
    assert second["ts"].endswith("Z") and "T" in second["ts"]


async def test_lines_of_other_loggers_inside_a_call_task_get_its_ids(captured):
    logger, lines = captured

    async def one_call(n: int) -> None:
        logs.CallLog(logger).bind(f"CA{n}", f"MZ{n}")

        async def provider_work() -> None:  # a task the call starts: inherits the ids
            logger.info("provider line %d", n)

        await asyncio.create_task(provider_work())

    await asyncio.gather(one_call(1), one_call(2))
    logger.info("outside any call")
    by_msg = {line["msg"]: line for line in lines()}
    assert by_msg["provider line 1"]["call_sid"] == "CA1" and by_msg["provider line 1"]["stream_sid"] == "MZ1"
    assert by_msg["provider line 2"]["call_sid"] == "CA2"
    assert "call_sid" not in by_msg["outside any call"]


def test_numbers_are_masked_in_any_message(captured):
    logger, lines = captured
    logger.info("from %s to sip:%s@pbx.example.com", "+15550100123", "15550100999")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed for %s", "+442071838750")
    first, second = lines()
    assert "5550100123" not in first["msg"] and "15550100999" not in first["msg"]
    assert first["msg"] == "from +1********23 to sip:1********99@pbx.example.com"
    assert second["msg"] == "failed for +4*********50" and "ValueError: boom" in second["exc"]


def test_numbers_in_query_strings_are_masked(captured):
    logger, lines = captured
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "POST", "/twiml/voice?From=%2B15550100123&To=15550100999&x=1", "1.1", 403)
    logger.info("not valid for https://bot.example.com/twiml/voice?to=+15550100123")
    first, second = lines()
    assert first["msg"] == '127.0.0.1:5 - "POST /twiml/voice?From=%2B1********23&To=1********99&x=1 HTTP/1.1" 403'
    assert second["msg"] == "not valid for https://bot.example.com/twiml/voice?to=+1********23"


def test_call_sids_and_times_are_not_taken_for_numbers(captured):
    logger, lines = captured
    logger.info("call CA0123456789 ended after 12345678 ms at 2026-11-22")
    assert lines()[0]["msg"] == "call CA0123456789 ended after 12345678 ms at 2026-11-22"


def test_log_format_setting():
    assert Settings.from_env({}).log_format == "auto"
    assert Settings.from_env({"IVR_LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(ConfigError, match="IVR_LOG_FORMAT"):
        Settings.from_env({"IVR_LOG_FORMAT": "xml"})
