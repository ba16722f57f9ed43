"""One deadline for all the outbound work of an HTTP invocation (issue 14).

SCF passes `context["time_limit_in_ms"]`; the reply must leave at least 500 ms before it,
with the documented JSON error, and an order whose prepay ran out of time stays PAYERROR
so that the sweep closes it.  Real peers: the simulator (with delays), nx-27017, and a
MongoDB port nobody answers on.
"""

from __future__ import annotations

import socket
import time

import pytest

from shared import deadline
from shared import order_states as st
from tests.functions import http_event, load_function, reply_json

JSAPI = "/v3/pay/transactions/jsapi"
LOGIN = "/sns/jscode2session"
LIMIT_MS = 3_000
# The contract: the reply leaves at least 500 ms before the function's timeout.
LATEST_REPLY_S = (LIMIT_MS - 500) / 1000
CONTEXT = {"time_limit_in_ms": LIMIT_MS, "request_id": "deadline-test"}
ORDER = {"code": "test-slow", "items": [{"sku": "A1", "quantity": 1}]}


def _timed(handler, event, context):
    started = time.monotonic()
    reply = handler(event, context)
    return reply, time.monotonic() - started


def test_a_prepay_slower_than_the_function_answers_502_in_time_and_leaves_payerror(live_stack):
    live_stack.simulator.inject_fault(path=JSAPI, delay_ms=8_000, count=1)
    reply, took = _timed(live_stack.prepare, http_event("POST", "/orders", body=ORDER), CONTEXT)
    assert reply["statusCode"] == 502, reply
    assert reply_json(reply)["error"]["code"] == "WECHATPAY_UNREACHABLE"
    assert took < LATEST_REPLY_S, took
    [order] = live_stack.store.list_orders()
    assert order["payStatus"] == st.PAYERROR        # stays in the store for the sweep to close
    reconcile = load_function("reconcile")
    report = reconcile({"Type": "Timer", "TriggerName": "t", "Time": "", "Message": ""},
                       {"time_limit_in_ms": 60_000})
    assert report["sweep"]["close_failed"] == {"closed": 1}, report
    assert live_stack.store.get_order(order["outTradeNo"])["payStatus"] == st.CLOSED


def test_login_and_prepay_share_one_deadline(live_stack):
    # Each alone is within its own bound (login 3 s, prepay 8 s read); together they are
    # not within the function's 3 s, and the shared deadline stops the second in time.
    live_stack.simulator.inject_fault(path=LOGIN, delay_ms=800, count=1)
    live_stack.simulator.inject_fault(path=JSAPI, delay_ms=2_500, count=1)
    reply, took = _timed(live_stack.prepare, http_event("POST", "/orders", body=ORDER), CONTEXT)
    assert reply["statusCode"] == 502, reply
    assert took < LATEST_REPLY_S, took
    assert [o["payStatus"] for o in live_stack.store.list_orders()] == [st.PAYERROR]


def test_a_slow_login_answers_502_in_time_and_stores_nothing(live_stack):
    live_stack.simulator.inject_fault(path=LOGIN, delay_ms=8_000, count=1)
    reply, took = _timed(live_stack.prepare, http_event("POST", "/orders", body=ORDER), CONTEXT)
    assert reply["statusCode"] == 502, reply
    assert took < LATEST_REPLY_S, took
    assert live_stack.store.list_orders() == []


def test_without_a_time_limit_the_configured_timeout_applies(live_stack):
    # A 1.5 s login, then a prepay that would use its whole 8 s read bound: prepare's
    # 10 s timeout (serverless.yml) stops the prepay first, and the answer leaves in time.
    live_stack.simulator.inject_fault(path=LOGIN, delay_ms=1_500, count=1)
    live_stack.simulator.inject_fault(path=JSAPI, delay_ms=12_000, count=1)
    reply, took = _timed(live_stack.prepare, http_event("POST", "/orders", body=ORDER), {})
    assert reply["statusCode"] == 502, reply
    timeout = deadline.FUNCTION_TIMEOUT_S["prepare"]
    assert timeout - deadline.REPLY_MARGIN_S - deadline.STORE_RESERVE_S - 0.2 < took < timeout - 0.5, took


@pytest.fixture
def dead_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]   # closed again: connecting is refused


def test_a_store_outage_answers_503_before_the_timeout(simulator, sim_keys, function_env, db_name, dead_port):
    # The store's own selection timeout (3 s) is longer than what is left of a 2 s
    # function: the store is held to the invocation's deadline instead.
    uri = f"mongodb://127.0.0.1:{dead_port}"
    environ = sim_keys.function_environ(simulator.url, "http://127.0.0.1:9/callback", uri)
    function_env(**{**environ, "MONGODB_URI": uri, "MONGODB_DB": db_name})
    handler = load_function("prepare")
    reply, took = _timed(handler, http_event("POST", "/orders", body=ORDER), {"time_limit_in_ms": 2_000})
    assert reply["statusCode"] == 503, reply
    assert reply_json(reply)["error"]["code"] == "STORE_UNAVAILABLE"
    assert took < 1.5, took


def test_the_callback_answers_in_time_however_slow_the_shop(live_stack, function_env, shop):
    from shared.store.port import PENDING
    from tests.shop_receiver import SECRET, Answer

    function_env(FULFILMENT_WEBHOOK_URL=shop.url, FULFILMENT_WEBHOOK_SECRET=SECRET)
    shop.answer(Answer(200, delay=3.0))     # within the relay's own 3 s read bound
    live_stack.gateway.time_limit_ms = 2_000
    number = live_stack.create_order()["outTradeNo"]
    live_stack.simulator.pay(number, notify="drop")
    started = time.monotonic()
    results = live_stack.simulator.notify(url=f"{live_stack.gateway.url}/callback", out_trade_no=number,
                                          retry=False)
    took = time.monotonic() - started
    assert [d["status"] for d in results["deliveries"]] == [204], results
    assert took < 1.5, took
    assert live_stack.store.get_order(number)["payStatus"] == st.SUCCESS
    [delivery] = live_stack.store.deliveries_of(number)
    assert delivery["state"] == PENDING            # the sweep delivers it later


@pytest.mark.parametrize(("context", "seconds"), [
    ({"time_limit_in_ms": 3_000}, 3.0),
    ({}, 10.0), (None, 10.0),
    ({"time_limit_in_ms": True}, 10.0), ({"time_limit_in_ms": "3000"}, 10.0), ({"time_limit_in_ms": 0}, 10.0),
])
def test_the_time_limit_comes_from_the_context_else_the_configured_timeout(context, seconds):
    assert deadline.timeout_s(context, "prepare") == seconds


def test_outbound_calls_end_before_the_store_which_ends_before_the_reply():
    with deadline.for_http_invocation({"time_limit_in_ms": 5_000}, "callback", started=100.0):
        assert deadline.end() == pytest.approx(100.0 + 5.0 - deadline.REPLY_MARGIN_S - deadline.STORE_RESERVE_S)
        assert deadline.store_remaining(clock=lambda: 100.0) == pytest.approx(5.0 - deadline.REPLY_MARGIN_S)
    assert deadline.end() is None and deadline.store_remaining() is None
    assert deadline.REPLY_MARGIN_S >= 0.5


def test_every_function_timeout_leaves_room_for_its_work():
    for function, timeout in deadline.FUNCTION_TIMEOUT_S.items():
        assert timeout >= deadline.MIN_TIMEOUT_S[function], function
