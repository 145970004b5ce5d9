"""The shared state (ivr.fleet), the same tests for both implementations: one process's memory,
and Redis shared by three "pods" (three clients with their own pod names) on a real
redis-server. Then losing Redis: every operation still answers, from the pod's memory, and the
pod goes back to Redis when it returns."""

import asyncio
import logging
import time

import pytest
from prometheus_client import REGISTRY

from ivr.admission import Admission
from ivr.fleet import take_turn
from ivr.fleet.memory import MemoryState
from ivr.fleet.redis_state import RedisState
from redis_server import redis_server  # noqa: F401  (a fixture)


@pytest.fixture(params=["memory", "redis"])
async def pods(request):
    """(A, B, C): three pods' views of the shared state (one and the same in memory)."""
    if request.param == "memory":
        state = MemoryState()
        yield state, state, state
        return
    server = request.getfixturevalue("redis_server")
    states = [RedisState(server.url, pod=f"pod-{name}") for name in "abc"]
    for s in states:
        await s.start()
        assert s.up and s.degraded() == ""
    yield tuple(states)
    for s in states:
        await s.aclose()


async def test_a_planned_outcome_is_taken_once_by_any_pod(pods):
    a, b, _ = pods
    await a.put_outcome("CA1", "<Response><Dial>+15550100123</Dial></Response>")
    assert await b.take_outcome("CA1") == "<Response><Dial>+15550100123</Dial></Response>"
    assert await a.take_outcome("CA1") is None and await b.take_outcome("CA1") is None


async def test_a_verdict_reaches_the_pod_waiting_for_it_and_is_kept_for_one_that_asks_later(pods):
    a, b, c = pods
    waiting = asyncio.create_task(b.wait_verdict("CA-wait", 30))
    await asyncio.sleep(0)  # let the waiter register before the verdict is posted
    await c.post_verdict("CA-wait", "machine_end_beep")
    assert await asyncio.wait_for(waiting, 10) == "machine_end_beep"

    await c.post_verdict("CA-early", "human")  # before the stream opened anywhere
    assert await a.wait_verdict("CA-early", 10) == "human"
    assert await b.wait_verdict("CA-none", 0.05) is None  # none came: the caller takes it as a person


async def test_a_line_reserved_on_one_pod_is_claimed_once_by_the_pod_that_takes_the_stream(pods):
    a, b, c = pods
    assert await a.reserve_line("CA1", free_lines=1)
    assert await a.reserve_line("CA1", free_lines=1)  # Twilio asking again: the same line
    assert await a.lines_reserved() == 1
    shared_memory = a is b
    if not shared_memory:
        assert not await a.reserve_line("CA2", free_lines=1)  # a's only line is held
        assert await b.reserve_line("CA2", free_lines=1)  # b's lines are its own
        assert await b.claim_line("CA2")
    assert await b.claim_line("CA1")  # the stream came to b: counted once, on b
    assert await a.lines_reserved() == 0
    assert not await c.claim_line("CA1")  # its end, seen by c: nothing left to release
    assert await a.reserve_line("CA3", free_lines=1)


async def test_admission_counts_a_call_whose_stream_reaches_another_pod_once(pods):
    a, b, _ = pods
    if a is b:
        pytest.skip("one process: nothing crosses")
    on_a, on_b = Admission(1, shared=a), Admission(1, shared=b)
    assert await on_a.reserve("CA1")
    assert not await on_a.reserve("CA2")  # a's line is promised to CA1
    assert await on_b.enter("ws-1", "CA1")  # the stream came to b, which takes it
    assert on_b.active == 1 and on_a.active == 0
    assert await on_a.reserve("CA2")  # a's line is free again
    await on_b.ended("CA2")  # CA2 hung up while ringing: its status callback reached b
    assert await on_a.reserve("CA3")


class Bracketed:
    """A pod's shared state whose `pace` notes, for each turn it took, the local times just
    before its request went and just after its answer came: the turn was taken, on Redis's
    clock, somewhere in between."""

    def __init__(self, state, taken: list[tuple[float, float]]):
        self.state, self.taken = state, taken

    async def pace(self, key, rate):
        before = time.monotonic()
        wait = await self.state.pace(key, rate)
        if wait <= 0:
            self.taken.append((before, time.monotonic()))
        return wait


async def test_calls_are_placed_at_the_rate_of_all_pods_together(pods):
    a, b, _ = pods
    rate, per_pod = 50.0, 15
    taken: list[tuple[float, float]] = []

    async def pod(state):
        for _ in range(per_pod):
            assert await take_turn(Bracketed(state, taken), "campaign:test", rate)

    await asyncio.gather(pod(a), pod(b))
    assert len(taken) == 2 * per_pod
    taken.sort()
    overall = (len(taken) - 1) / (taken[-1][1] - taken[0][0])
    print(f"two pods: {len(taken)} turns at about {overall:.1f}/s (limit {rate:g})")
    # A round trip answered late on a loaded machine makes a turn look later than it was, so
    # gaps between the times the answers came say nothing exact. Brackets do: of two turns, the
    # later one was taken before its answer came and the earlier one after its request went, so
    # that span is at least their true gap, and the true gap is at least 1/rate.
    # (Redis's clock is the wall clock, this is the monotonic one: allow 1 % for slewing.)
    for i, (sent_i, answered_i) in enumerate(taken):
        for sent_j, answered_j in taken[i + 1:]:
            assert max(answered_j - sent_i, answered_i - sent_j) >= 1 / rate * 0.99
    # A turn taken makes the next wait: at 0.1 a second it is 10 s away, however slow the machine.
    assert await take_turn(a, "campaign:slow", 0.1) and not await take_turn(b, "campaign:slow", 0.1, max_wait_s=0)


async def test_each_number_of_a_campaign_is_claimed_by_one_runner(pods):
    a, b, _ = pods
    numbers = [f"+1555700{i:04d}" for i in range(40)]
    won_a, won_b = await asyncio.gather(
        asyncio.gather(*(a.claim_number("reminders", n) for n in numbers)),
        asyncio.gather(*(b.claim_number("reminders", n) for n in numbers)),
    )
    assert all(x != y for x, y in zip(won_a, won_b))  # exactly one of the two, each time
    await a.unclaim_number("reminders", numbers[0])  # refused by Twilio: a resume may try it
    assert await b.claim_number("reminders", numbers[0])
    assert await a.claim_number("other-campaign", numbers[0])


async def test_the_index_of_recent_calls_lists_every_pods_calls(pods):
    a, b, _ = pods
    await a.index_call({"name": "20261206T100000Z-CA1.jsonl", "pod": "pod-a"})
    await b.index_call({"name": "20261206T100001Z-CA2.jsonl", "pod": "pod-b"})
    names = [e["name"] for e in await a.recent_calls(10)]
    assert names == ["20261206T100001Z-CA2.jsonl", "20261206T100000Z-CA1.jsonl"]


def gauge(name):
    return REGISTRY.get_sample_value(name)


async def test_without_redis_a_pod_serves_itself_warns_once_and_goes_back_when_redis_returns(redis_server, caplog):
    a = RedisState(redis_server.url, pod="pod-a", probe_s=0.05)
    b = RedisState(redis_server.url, pod="pod-b", probe_s=0.05)
    await a.start()
    await b.start()
    try:
        assert gauge("ivr_redis_up") == 1
        redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="ivr.fleet"):
            # Every operation still answers, from the pod's own memory.
            await a.put_outcome("CA1", "<Response><Hangup/></Response>")
            assert await a.take_outcome("CA1") == "<Response><Hangup/></Response>"
            assert await a.reserve_line("CA2", free_lines=1) and not await a.reserve_line("CA3", free_lines=1)
            assert await a.claim_line("CA2")
            assert await take_turn(a, "api", 10.0)
            assert await a.claim_number("c", "+15550001111")
            await a.post_verdict("CA4", "human")
            assert await a.wait_verdict("CA4", 5) == "human"
            await a.index_call({"name": "20261206T100000Z-CA1.jsonl", "pod": "pod-a"})
            assert [e["name"] for e in await a.recent_calls(5)] == ["20261206T100000Z-CA1.jsonl"]
            assert not a.up and "unreachable" in a.degraded() and gauge("ivr_redis_up") == 0
            assert REGISTRY.get_sample_value("ivr_redis_fallbacks_total", {"op": "outcome"}) >= 1
            warnings = [r for r in caplog.records if "unreachable" in r.getMessage() and r.name == "ivr.fleet"]
            assert len(warnings) <= 2  # one per pod at most, not one per operation

            redis_server.start()
            await asyncio.wait_for(asyncio.gather(a.wait_up(), b.wait_up()), 30)
        assert a.degraded() == "" and gauge("ivr_redis_up") == 1
        assert any("answers again" in r.getMessage() for r in caplog.records)
        # Shared again: an outcome put on one pod is found on the other.
        await a.put_outcome("CA5", "<Response><Hangup/></Response>")
        assert await b.take_outcome("CA5") == "<Response><Hangup/></Response>"
        # And a verdict published by one reaches the other's subscriber, resubscribed.
        waiting = asyncio.create_task(b.wait_verdict("CA6", 30))
        await asyncio.sleep(0)
        await a.post_verdict("CA6", "machine_end_silence")
        assert await asyncio.wait_for(waiting, 10) == "machine_end_silence"
    finally:
        await a.aclose()
        await b.aclose()
