"""WeChat Pay's rate limits (429 FREQUENCY_LIMITED), against the simulator.

The client backs off with jitter and retries a bounded number of times; a buyer whose
prepay is still refused gets a 502 naming the limit; the sweep stops querying for the
rest of its run instead of hammering, and the next run picks up where it stopped.
"""

from __future__ import annotations

import pytest

from shared import order_states as st
from shared.wechatpay.client import RATE_LIMIT_RETRIES
from tests.functions import http_event, load_function, reply_json

CONTEXT = {"time_limit_in_ms": 60_000, "request_id": "limits"}
TIMER = {"Type": "Timer", "TriggerName": "reconcile-every-5-minutes", "Time": "2026-12-01T02:00:00Z",
         "Message": ""}
QUERY = "/v3/pay/transactions/out-trade-no/*"


@pytest.fixture
def reconcile(live_stack):
    return load_function("reconcile")


def _calls(sim, prefix: str) -> int:
    return sum(n for name, n in sim.counters()["requests"].items() if name.split(" ", 1)[1].startswith(prefix))


def _lost_orders(live_stack, count: int, code: str) -> list[str]:
    """Orders paid at WeChat Pay whose notification never came, old enough for the sweep."""
    numbers = [live_stack.create_order(code=f"test-{code}{i}")["outTradeNo"] for i in range(count)]
    for number in numbers:
        live_stack.simulator.pay(number, notify="drop")
        live_stack.store.update_order_fields(number, {"createTime": live_stack.store.clock() - 10 * 60_000})
    return numbers


def test_a_prepay_limited_twice_succeeds_on_the_third_try(live_stack):
    sim = live_stack.simulator
    sim.inject_fault(path="/v3/pay/transactions/jsapi", rate_limited=True, count=2)
    order = live_stack.create_order(code="test-limited")
    assert order["payment"]["package"].startswith("prepay_id=")
    assert _calls(sim, "/v3/pay/transactions/jsapi") == 3
    assert live_stack.store.get_order(order["outTradeNo"])["payStatus"] == st.NOTPAY


def test_a_prepay_still_limited_after_the_retries_is_a_named_502(live_stack):
    sim = live_stack.simulator
    sim.inject_fault(path="/v3/pay/transactions/jsapi", rate_limited=True, count=100)
    reply = live_stack.prepare(http_event("POST", "/orders", body={"code": "test-busy", "items": [
        {"sku": "A1", "quantity": 1}]}), {})
    answer = reply_json(reply)
    assert reply["statusCode"] == 502 and answer["error"]["code"] == "WECHATPAY_FREQUENCY_LIMITED", answer
    assert _calls(sim, "/v3/pay/transactions/jsapi") == 1 + RATE_LIMIT_RETRIES
    [order] = live_stack.store.list_orders()
    assert order["payStatus"] == st.PAYERROR and order.get("prepayId") is None  # nothing payable


def test_the_sweep_slows_down_under_a_full_rate_limit_and_resumes_later(live_stack, reconcile):
    sim, store = live_stack.simulator, live_stack.store
    numbers = _lost_orders(live_stack, 12, "lost")
    sim.inject_fault(path=QUERY, rate_limited=True, count=1000)

    report = reconcile(TIMER, CONTEXT)["sweep"]
    assert report["recover_lost"] == {"error:WECHATPAY_FREQUENCY_LIMITED": 1, "deferred:rate_limited": 11}, report
    assert _calls(sim, "/v3/pay/transactions/out-trade-no/") == 1 + RATE_LIMIT_RETRIES  # not 12 x 4
    assert all(store.get_order(n)["payStatus"] == st.NOTPAY for n in numbers)

    sim.clear_faults()
    report = reconcile(TIMER, CONTEXT)["sweep"]
    assert report["recover_lost"] == {"paid": 12}, report
    assert all(store.get_order(n)["payStatus"] == st.SUCCESS for n in numbers)
    assert all(store.count_events("order.paid", n) == 1 for n in numbers)


def test_a_partial_rate_limit_is_absorbed_by_the_back_off(live_stack, reconcile):
    sim, store = live_stack.simulator, live_stack.store
    numbers = _lost_orders(live_stack, 10, "some")
    sim.inject_fault(path=QUERY, rate_limited=True, count=RATE_LIMIT_RETRIES)  # within one query's retries

    report = reconcile(TIMER, CONTEXT)["sweep"]
    assert report["recover_lost"] == {"paid": 10}, report
    assert all(store.get_order(n)["payStatus"] == st.SUCCESS for n in numbers)
    assert _calls(sim, "/v3/pay/transactions/out-trade-no/") == 10 + RATE_LIMIT_RETRIES
