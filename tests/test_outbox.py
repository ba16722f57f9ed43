"""The outbox relay: every fact delivered to a real HTTP receiver (the shop), signed.

The functions run in-process behind the local gateway, against the simulator and
nx-27017; the shop is a real HTTP server that verifies each delivery with
`verify_webhook`.  Time is moved forward by giving a relay a clock ahead of the store's
(an hour later, a day later), never by sleeping.
"""

from __future__ import annotations

import threading
import time

import pytest

from shared import order_states as st
from shared import runtime
from shared.http import HttpClient
from shared.outbox import READ_TIMEOUT_S, Relay
from shared.reconcile import Deadline, StepSummary
from shared.store.port import DONE, FAILED, PENDING
from tests.functions import load_function
from tests.shop_receiver import SECRET, Answer

CONTEXT = {"time_limit_in_ms": 60_000, "request_id": "outbox"}
TIMER = {"Type": "Timer", "TriggerName": "reconcile-every-5-minutes", "Time": "2026-12-01T02:00:00Z",
         "Message": ""}
HOUR = 3_600_000



def _ten_minutes() -> Deadline:
    """A sweep's deadline that these tests never reach."""
    return Deadline({"time_limit_in_ms": 600_000})

@pytest.fixture
def shop_stack(live_stack, function_env, shop):
    """The live stack delivering to `shop`."""
    function_env(FULFILMENT_WEBHOOK_URL=shop.url, FULFILMENT_WEBHOOK_SECRET=SECRET)
    live_stack.shop = shop
    return live_stack


@pytest.fixture
def relay_at(shop_stack):
    """A relay (another instance: its own leases) whose clock runs `offset_ms` ahead."""
    made = []

    def make(offset_ms: int = 0) -> Relay:
        config = runtime.instance("reconcile").config()
        store = shop_stack.store
        relay = Relay(config, store, HttpClient(), clock=lambda: store.clock() + offset_ms, jitter=1.0)
        made.append(relay)
        return relay

    return make


def _paid(stack, code: str, *, items=(("A1", 2),)) -> str:
    number = stack.create_order(items=items, code=code)["outTradeNo"]
    stack.simulator.pay(number)
    assert stack.simulator.wait_idle(10)
    return number


def test_a_payment_is_delivered_signed_before_the_callback_answers(shop_stack):
    number = _paid(shop_stack, "test-hook")
    shop = shop_stack.shop
    # The callback made the attempt before answering WeChat Pay, so it is there already.
    [delivery] = shop.deliveries
    assert delivery.rejected is None and delivery.status == 200
    fact = delivery.fact
    assert fact["id"] == f"order.paid:{number}" and fact["type"] == "order.paid"
    assert isinstance(fact["createTime"], int)
    order = shop_stack.store.get_order(number)
    assert {k: fact["data"][k] for k in ("outTradeNo", "totalFee", "openid", "transactionId", "items")} == {
        "outTradeNo": number, "totalFee": 3980, "openid": order["openid"], "transactionId": order["transactionId"],
        "items": order["items"]}
    assert delivery.headers["Content-Type"].startswith("application/json")
    record = shop_stack.store.find_delivery(f"order.paid:{number}")
    assert (record["state"], record["attempts"], record["lastError"]) == (DONE, 1, None)
    assert [d["status"] for d in shop_stack.simulator.deliveries(number)] == [204]


def test_a_receiver_that_is_down_then_back_gets_the_fact_from_the_sweep(shop_stack, relay_at):
    shop = shop_stack.shop
    shop.stop()
    started = time.monotonic()
    number = _paid(shop_stack, "test-down")
    assert time.monotonic() - started < 5          # the payment was stored and acknowledged anyway
    assert shop_stack.store.get_order(number)["payStatus"] == st.SUCCESS
    record = shop_stack.store.find_delivery(f"order.paid:{number}")
    assert (record["state"], record["attempts"]) == (PENDING, 1) and record["lastError"] == "receiver connect"
    assert 27_000 <= record["nextAt"] - record["firstAttemptAt"] <= 33_000

    reconcile = load_function("reconcile")
    shop.start()
    assert reconcile(TIMER, CONTEXT)["sweep"]["deliveries"] == {}   # not due yet: nothing is hammered
    assert shop.deliveries == []
    summary = StepSummary()
    relay_at(HOUR).run(summary, _ten_minutes())                         # an hour later
    assert summary.counts == {"delivered": 1}
    assert shop.ids() == [f"order.paid:{number}"]
    assert shop_stack.store.find_delivery(f"order.paid:{number}")["state"] == DONE


def _refund_all(stack, number: str, out_refund_no: str) -> None:
    reconcile = load_function("reconcile")
    order = stack.store.get_order(number)
    result = reconcile({"action": "refund", "outTradeNo": number, "amount": order["totalFee"],
                        "outRefundNo": out_refund_no}, CONTEXT)
    assert result["ok"], result
    stack.simulator.complete_refund(out_refund_no)
    assert stack.simulator.wait_idle(10)
    assert stack.store.get_order(number)["payStatus"] == st.REFUND


def test_the_facts_of_an_order_are_delivered_in_the_order_they_happened(shop_stack, relay_at):
    shop = shop_stack.shop
    shop.answer(500)                                  # the first attempt of order.paid fails
    number = _paid(shop_stack, "test-order")
    _refund_all(shop_stack, number, "R-ORDER-1")
    # order.refunded and refund.succeeded wait behind order.paid: not even attempted.
    assert [d.fact["id"] for d in shop.deliveries] == [f"order.paid:{number}"]
    waiting = {r["eventId"]: r["attempts"] for r in shop_stack.store.deliveries_of(number)}
    assert waiting == {f"order.paid:{number}": 1, f"order.refunded:{number}": 0, "refund.succeeded:R-ORDER-1": 0}

    summary = StepSummary()
    relay_at(HOUR).run(summary, _ten_minutes())
    assert summary.counts == {"delivered": 3}
    assert shop.ids() == [f"order.paid:{number}", f"order.paid:{number}", f"order.refunded:{number}",
                          "refund.succeeded:R-ORDER-1"]
    refund = shop.facts()[-1]["data"]
    assert (refund["outRefundNo"], refund["amount"], refund["outTradeNo"]) == ("R-ORDER-1", 3980, number)


def test_a_fact_failing_for_a_day_is_an_anomaly_and_the_later_ones_go_on(shop_stack, relay_at):
    shop = shop_stack.shop
    shop.answer(then=503)
    number = _paid(shop_stack, "test-day")
    _refund_all(shop_stack, number, "R-DAY-1")
    paid_id = f"order.paid:{number}"
    for hours in (1, 3, 6, 10, 16, 23):
        relay_at(hours * HOUR).run(StepSummary(), _ten_minutes())
        record = shop_stack.store.find_delivery(paid_id)
        assert record["state"] == PENDING, hours
    assert shop_stack.store.list_anomalies(kind="fulfilment_failed") == []
    summary = StepSummary()
    shop.answer(503, then=200)
    relay_at(25 * HOUR).run(summary, _ten_minutes())
    assert summary.counts == {"failed": 1, "delivered": 2}, summary.counts
    record = shop_stack.store.find_delivery(paid_id)
    assert record["state"] == FAILED and record["lastError"] == "receiver answered 503"
    [anomaly] = shop_stack.store.list_anomalies(kind="fulfilment_failed")
    assert anomaly["outTradeNo"] == number and anomaly["evidence"]["eventId"] == paid_id
    assert anomaly["evidence"]["attempts"] == record["attempts"]
    assert shop.ids()[-2:] == [f"order.refunded:{number}", "refund.succeeded:R-DAY-1"]
    relay_at(30 * HOUR).run(StepSummary(), _ten_minutes())                  # failed for good: no more tries
    assert shop_stack.store.find_delivery(paid_id)["attempts"] == record["attempts"]

    # A person replays it, by the reconcile action.
    reconcile = load_function("reconcile")
    replay = reconcile({"action": "redeliver", "eventId": paid_id}, CONTEXT)
    assert replay == {"ok": True, "delivery": {"eventId": paid_id, "outcome": "delivered", "state": DONE,
                                               "attempts": record["attempts"] + 1, "lastError": None}}
    assert shop.ids()[-1] == paid_id


def test_a_sweep_two_relays_and_the_callback_racing_deliver_a_fact_once(shop_stack, function_env, relay_at):
    shop = shop_stack.shop
    function_env(FULFILMENT_WEBHOOK_URL=None)     # paid while no webhook was set: the fact waits
    numbers = [_paid(shop_stack, f"test-race{i}") for i in range(3)]
    function_env(FULFILMENT_WEBHOOK_URL=shop.url, FULFILMENT_WEBHOOK_SECRET=SECRET)
    shop.answer(then=Answer(200, delay=0.3))
    relays = [relay_at(0) for _ in range(3)] + [runtime.instance("callback").relay]
    barrier = threading.Barrier(len(relays) + 1)
    results = []

    def deliver(relay):
        barrier.wait()
        results.append(relay.deliver_order(numbers[0]))

    def sweep():
        barrier.wait()
        results.append(load_function("reconcile")(TIMER, CONTEXT)["sweep"]["deliveries"])

    threads = [threading.Thread(target=deliver, args=(relay,)) for relay in relays] + [threading.Thread(target=sweep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(shop.ids()) == sorted(f"order.paid:{n}" for n in numbers)   # each once, none twice
    assert all(shop_stack.store.find_delivery(f"order.paid:{n}")["attempts"] == 1 for n in numbers)


def test_many_facts_with_two_sweeps_in_parallel_are_each_delivered_once(shop_stack, function_env, relay_at):
    shop = shop_stack.shop
    function_env(FULFILMENT_WEBHOOK_URL=None)
    numbers = [_paid(shop_stack, f"test-many{i}", items=(("B2", 1),)) for i in range(30)]
    function_env(FULFILMENT_WEBHOOK_URL=shop.url, FULFILMENT_WEBHOOK_SECRET=SECRET)
    summaries = [StepSummary(), StepSummary()]
    threads = [threading.Thread(target=relay_at(0).run, args=(summary, _ten_minutes())) for summary in summaries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = shop.ids()
    assert len(ids) == 30 and set(ids) == {f"order.paid:{n}" for n in numbers}
    assert sum(s.counts.get("delivered", 0) for s in summaries) == 30
    assert all(s.counts.get("delivered", 0) > 0 for s in summaries)   # both did work


def test_a_redirect_is_a_failure_and_is_not_followed(shop_stack):
    shop = shop_stack.shop
    shop.answer(Answer(302, location="/elsewhere"))
    number = _paid(shop_stack, "test-redirect")
    record = shop_stack.store.find_delivery(f"order.paid:{number}")
    assert (record["state"], record["lastError"]) == (PENDING, "receiver answered 302")
    assert shop.redirect_hits == 0


def test_a_slow_receiver_is_a_failure_and_the_relay_moves_on(shop_stack, function_env, relay_at):
    shop = shop_stack.shop
    function_env(FULFILMENT_WEBHOOK_URL=None)
    first, second = _paid(shop_stack, "test-slow"), _paid(shop_stack, "test-fast")
    function_env(FULFILMENT_WEBHOOK_URL=shop.url, FULFILMENT_WEBHOOK_SECRET=SECRET)
    shop.answer(Answer(200, delay=READ_TIMEOUT_S + 12), then=200)
    summary = StepSummary()
    started = time.monotonic()
    relay_at(0).run(summary, _ten_minutes())
    # Far less than the receiver's 15 s: the relay gave up at its read timeout and went on.
    assert time.monotonic() - started < READ_TIMEOUT_S + 7
    assert summary.counts == {"retry": 1, "delivered": 1}
    # Orders are taken in a shuffled order: whichever came first met the slow answer.
    outcomes = sorted((d["state"], d.get("lastError")) for d in (
        shop_stack.store.find_delivery(f"order.paid:{number}") for number in (first, second)))
    assert outcomes == sorted([(DONE, None), (PENDING, "receiver timeout")]), outcomes


def test_redeliver_refuses_what_it_cannot_do(shop_stack, function_env):
    reconcile = load_function("reconcile")
    unknown = reconcile({"action": "redeliver", "eventId": "order.paid:T20261201NOSUCH"}, CONTEXT)
    assert unknown["ok"] is False and unknown["error"]["code"] == "EVENT_NOT_FOUND"
    bad = reconcile({"action": "redeliver", "eventId": 12}, CONTEXT)
    assert bad["error"]["code"] == "INVALID_EVENT_ID"
    extra = reconcile({"action": "redeliver", "eventId": "x", "now": True}, CONTEXT)
    assert extra["error"]["code"] == "UNKNOWN_FIELD"
    function_env(FULFILMENT_WEBHOOK_URL=None)
    off = load_function("reconcile")({"action": "redeliver", "eventId": "order.paid:X"}, CONTEXT)
    assert off["error"]["code"] == "FULFILMENT_NOT_CONFIGURED"


def test_the_admin_command_redelivers(shop_stack, capsys):
    from shared.admin import main

    number = _paid(shop_stack, "test-cli")
    assert main(["redeliver", f"order.paid:{number}"]) == 0
    assert shop_stack.shop.ids() == [f"order.paid:{number}"] * 2
    assert main(["redeliver", "order.paid:T20261201NOSUCH"]) == 1
    assert "EVENT_NOT_FOUND" in capsys.readouterr().out


def test_without_a_webhook_facts_wait_and_nothing_is_sent(live_stack, shop):
    number = _paid(live_stack, "test-quiet")
    assert shop.deliveries == []
    record = live_stack.store.find_delivery(f"order.paid:{number}")
    assert (record["state"], record["attempts"]) == (PENDING, 0)
    assert "deliveries" not in load_function("reconcile")(TIMER, CONTEXT)["sweep"]
