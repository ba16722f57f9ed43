"""RefundService on InMemoryOrderStore: reserve on request, settle or release on WeChat's
result, refunds we never requested, and the anomalies for what cannot be placed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import order_states as st
from shared.errors import BadRequest, Conflict, StoreNotFound, WeChatPayRejected, WeChatPayUnreachable
from shared.refunds import RefundService
from shared.settlement import settle_transaction
from tests.unit.fakes import new_order, refund_result, rejected, transaction

OTN = "261126120000unitRefund0001"
REFUND_SUCCESS_AT = 1_795_669_200_000  # 2026-11-26T13:00:00+08:00, refund_result's success_time


@pytest.fixture
def paid(store, config):
    new_order(store, OTN, 1000)
    assert settle_transaction(store, config, transaction(OTN, 1000), source="notification").outcome == "paid"
    return store


@pytest.fixture
def refunds(config, paid, wechat):
    return RefundService(config, paid, wechat)


def money(store):
    order = store.get_order(OTN)
    return order["refundableFee"], order["refundingFee"], order["refundedFee"]


def notified(out_refund_no, amount, status="SUCCESS", out_trade_no=OTN, **fields):
    return refund_result(out_refund_no, out_trade_no, amount, status, notification=True, **fields)


# --- requesting -----------------------------------------------------------------------------

def test_request_reserves_the_amount_and_asks_wechat(refunds, store, wechat, clock):
    clock.advance(60_000)
    asked_at = clock.now

    def wechat_answers_later(**kwargs):
        clock.advance(800)
        return wechat.default("refund", **kwargs)

    wechat.then("refund", wechat_answers_later)
    answer = refunds.request_refund(OTN, 300, reason="damaged", out_refund_no="R1")
    assert answer["outRefundNo"] == "R1" and answer["status"] == "PROCESSING" and answer["amount"] == 300
    assert answer["refundId"] == store.find_refund("R1")["refundId"] and answer["refundId"].startswith("5030")
    [call] = wechat.calls_to("refund")
    assert call.kwargs == {"out_trade_no": OTN, "out_refund_no": "R1", "refund": 300, "total": 1000,
                           "reason": "damaged"}
    order = store.get_order(OTN)
    assert money(store) == (700, 300, 0) and order["refundStates"] == {"R1": "RESERVED"}
    assert order["payStatus"] == st.SUCCESS and order["updateTime"] == asked_at  # the reservation
    record = store.find_refund("R1")
    assert record["status"] == "PROCESSING" and record["source"] == "request"
    assert record["createTime"] == asked_at and record["updateTime"] == asked_at + 800  # WeChat's answer
    assert store.count_events("refund.succeeded") == 0


def test_generated_refund_number_when_none_is_given(refunds, store):
    answer = refunds.request_refund(OTN, 100)
    assert answer["outRefundNo"].startswith("R") and store.find_refund(answer["outRefundNo"]) is not None


def test_refund_answered_success_at_once_is_applied_at_once(refunds, store, wechat, clock):
    wechat.then("refund", refund_result("R1", OTN, 1000, "SUCCESS"))
    clock.advance(1_000)
    answer = refunds.request_refund(OTN, 1000, out_refund_no="R1")
    assert answer["status"] == "SUCCESS" and answer["successTime"] == REFUND_SUCCESS_AT
    order = store.get_order(OTN)
    assert money(store) == (0, 0, 1000) and order["payStatus"] == st.REFUND
    assert order["refundStates"] == {"R1": "SUCCEEDED"} and order["updateTime"] == clock.now
    assert store.count_events("refund.succeeded", OTN) == 1


@pytest.mark.parametrize("amount", [0, -1, 1.5, True, "100", None])
def test_amount_must_be_whole_positive_fen(refunds, store, wechat, amount):
    with pytest.raises(BadRequest) as caught:
        refunds.request_refund(OTN, amount, out_refund_no="R1")
    assert caught.value.code == "INVALID_AMOUNT"
    assert store.find_refund("R1") is None and wechat.calls == [] and money(store) == (1000, 0, 0)


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"reason": "x" * 81}, "INVALID_REASON"), ({"reason": 5}, "INVALID_REASON"),
    ({"out_refund_no": "R 1"}, "INVALID_REFUND_NO"), ({"out_refund_no": "R.1"}, "INVALID_REFUND_NO"),
    ({"out_refund_no": "x" * 65}, "INVALID_REFUND_NO"), ({"out_refund_no": ""}, "INVALID_REFUND_NO"),
])
def test_bad_reason_or_refund_number(refunds, wechat, kwargs, code):
    with pytest.raises(BadRequest) as caught:
        refunds.request_refund(OTN, 100, **kwargs)
    assert caught.value.code == code and wechat.calls == []


def test_refund_of_an_unknown_order(refunds, wechat):
    with pytest.raises(StoreNotFound):
        refunds.request_refund("261126120000unitNoSuch0001", 100, out_refund_no="R1")
    assert wechat.calls == []


@pytest.mark.parametrize("state", [st.NOTPAY, st.CLOSED, st.PAYERROR])
def test_refund_of_an_unpaid_order_is_refused_and_recorded(config, store, wechat, clock, state):
    new_order(store, OTN, 1000)
    if state != st.NOTPAY:
        store.transition(OTN, state)
    store.after("insert_refund", lambda *_a, **_k: clock.advance(1_000))
    with pytest.raises(Conflict) as caught:
        RefundService(config, store, wechat).request_refund(OTN, 100, out_refund_no="R1")
    assert caught.value.code == "ORDER_NOT_PAID"
    record = store.find_refund("R1")
    assert record["status"] == "REFUSED" and record["failure"] == "ORDER_NOT_PAID"
    assert record["updateTime"] == clock.now == record["createTime"] + 1_000
    assert wechat.calls == [] and store.get_order(OTN)["refundStates"] == {}


def test_refunds_together_never_exceed_what_was_paid(refunds, store, wechat, clock):
    refunds.request_refund(OTN, 600, out_refund_no="R1")
    store.before("reserve_refund", lambda *_a, **_k: clock.advance(1_000))
    with pytest.raises(Conflict) as caught:
        refunds.request_refund(OTN, 401, out_refund_no="R2")
    assert caught.value.code == "REFUND_EXCEEDS_PAID"
    record = store.find_refund("R2")
    assert record["status"] == "REFUSED" and record["failure"] == "EXCEEDS_REFUNDABLE"
    assert record["updateTime"] == clock.now == record["createTime"] + 1_000
    assert money(store) == (400, 600, 0) and len(wechat.calls_to("refund")) == 1
    assert refunds.request_refund(OTN, 400, out_refund_no="R3")["status"] == "PROCESSING"
    assert money(store) == (0, 1000, 0)


def test_concurrent_requests_reserve_at_most_the_total(refunds, store, wechat):
    start = threading.Barrier(10)

    def request(n):
        start.wait(5)
        try:
            return refunds.request_refund(OTN, 300, out_refund_no=f"RC{n}")["status"]
        except Conflict as error:
            return error.code

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(request, range(10)))
    assert outcomes.count("PROCESSING") == 3 and outcomes.count("REFUND_EXCEEDS_PAID") == 7
    assert money(store) == (100, 900, 0) and len(wechat.calls_to("refund")) == 3


def test_repeat_with_the_same_refund_number_is_the_same_refund(refunds, store, wechat):
    first = refunds.request_refund(OTN, 300, out_refund_no="R1")
    again = refunds.request_refund(OTN, 300, out_refund_no="R1")
    assert again == first and len(wechat.calls_to("refund")) == 1 and money(store) == (700, 300, 0)
    for other in ({"amount": 301}, {"out_trade_no": "261126120000unitRefund0002"}):
        if "out_trade_no" in other:
            new_order(store, other["out_trade_no"], 1000)
        with pytest.raises(Conflict) as caught:
            refunds.request_refund(other.get("out_trade_no", OTN), other.get("amount", 300), out_refund_no="R1")
        assert caught.value.code == "REFUND_NO_REUSED"
    assert money(store) == (700, 300, 0)


def test_definite_refusal_gives_the_reservation_back(refunds, store, wechat, clock):
    def refused_later(**_):
        clock.advance(1_000)
        raise rejected("NOT_ENOUGH", 403)

    wechat.then("refund", refused_later)
    with pytest.raises(WeChatPayRejected) as caught:
        refunds.request_refund(OTN, 300, out_refund_no="R1")
    assert caught.value.code == "WECHATPAY_NOT_ENOUGH"
    order = store.get_order(OTN)
    assert money(store) == (1000, 0, 0) and order["refundStates"] == {"R1": "RELEASED"}
    assert order["updateTime"] == clock.now  # the release, after WeChat's answer
    record = store.find_refund("R1")
    assert record["status"] == "REFUSED" and record["failure"] == "NOT_ENOUGH"
    assert record["updateTime"] == clock.now == record["createTime"] + 1_000


@pytest.mark.parametrize("error", [rejected("SYSTEM_ERROR", 500), WeChatPayUnreachable("timed out")])
def test_unknown_outcome_keeps_the_reservation_and_a_repeat_asks_again(refunds, store, wechat, clock, error):
    wechat.then("refund", error)
    with pytest.raises(type(error)):
        refunds.request_refund(OTN, 300, out_refund_no="R1")
    assert store.find_refund("R1")["status"] == "REQUESTED" and money(store) == (700, 300, 0)
    clock.advance(30_000)
    again = refunds.request_refund(OTN, 300, out_refund_no="R1")
    assert again["status"] == "PROCESSING" and len(wechat.calls_to("refund")) == 2
    assert store.find_refund("R1")["updateTime"] == clock.now
    assert money(store) == (700, 300, 0)  # reserved once, asked twice


def test_release_unsent_gives_the_reservation_back(refunds, store, wechat, clock):
    wechat.then("refund", WeChatPayUnreachable("timed out"))
    with pytest.raises(WeChatPayUnreachable):
        refunds.request_refund(OTN, 300, out_refund_no="R1")
    clock.advance(600_000)
    refunds.release_unsent(store.find_refund("R1"))
    record = store.find_refund("R1")
    assert record["status"] == "REFUSED" and record["failure"] == "NOT_AT_WECHAT"
    assert record["updateTime"] == clock.now and store.get_order(OTN)["updateTime"] == clock.now
    assert money(store) == (1000, 0, 0)


# --- applying WeChat's results ----------------------------------------------------------

@pytest.fixture
def requested(refunds, store, clock):
    refunds.request_refund(OTN, 300, out_refund_no="R1")
    clock.advance(120_000)
    return refunds


def test_success_settles_once(requested, store, clock):
    outcome = requested.apply_result(notified("R1", 300), source="notification")
    assert outcome.outcome == "succeeded" and outcome.anomaly is None
    order = store.get_order(OTN)
    assert money(store) == (700, 0, 300) and order["payStatus"] == st.REFUND
    assert order["refundStates"] == {"R1": "SUCCEEDED"} and order["updateTime"] == clock.now
    record = store.find_refund("R1")
    assert record["status"] == "SUCCESS" and record["successTime"] == REFUND_SUCCESS_AT
    assert record["refundId"] == "5030R1" and record["updateTime"] == clock.now
    events = [e for e in store.events_of(OTN) if e["type"] == "refund.succeeded"]
    assert [(e["outRefundNo"], e["amount"]) for e in events] == [("R1", 300)]
    assert store.count_events("order.refunded", OTN) == 1
    for source in ("notification", "sweep"):
        assert requested.apply_result(notified("R1", 300), source=source).outcome == "already"
    assert money(store) == (700, 0, 300) and store.count_events("refund.succeeded") == 1
    assert store.list_anomalies() == []


def test_second_refund_on_a_refunded_order(requested, store, clock):
    requested.apply_result(notified("R1", 300), source="notification")
    requested.request_refund(OTN, 200, out_refund_no="R2")
    clock.advance(60_000)
    assert requested.apply_result(notified("R2", 200), source="notification").outcome == "succeeded"
    order = store.get_order(OTN)
    assert money(store) == (500, 0, 500) and order["payStatus"] == st.REFUND
    assert order["updateTime"] == clock.now  # REFUND already: only the refund's own write moved it
    assert store.count_events("refund.succeeded", OTN) == 2 and store.count_events("order.refunded") == 1


def test_closed_releases_the_reservation_once(requested, store, clock):
    assert requested.apply_result(notified("R1", 300, "CLOSED"), source="notification").outcome == "released"
    order = store.get_order(OTN)
    assert money(store) == (1000, 0, 0) and order["refundStates"] == {"R1": "RELEASED"}
    assert order["payStatus"] == st.SUCCESS and order["updateTime"] == clock.now
    record = store.find_refund("R1")
    assert record["status"] == "CLOSED" and record["updateTime"] == clock.now
    clock.advance(1_000)
    assert requested.apply_result(notified("R1", 300, "CLOSED"), source="sweep").outcome == "already"
    assert money(store) == (1000, 0, 0)
    assert store.count_events("refund.succeeded") == 0 and store.list_anomalies() == []


def test_abnormal_keeps_the_reservation_and_tells_a_human_once(requested, store, clock):
    for _ in range(2):
        outcome = requested.apply_result(notified("R1", 300, "ABNORMAL"), source="notification")
        assert outcome.outcome == "abnormal" and outcome.anomaly == "refund_abnormal"
    assert money(store) == (700, 300, 0)
    record = store.find_refund("R1")
    assert record["status"] == "ABNORMAL" and record["updateTime"] == clock.now
    [anomaly] = store.list_anomalies(OTN)
    assert anomaly["kind"] == "refund_abnormal" and anomaly["evidence"]["outRefundNo"] == "R1"


def test_processing_is_pending(requested, store):
    before = store.get_order(OTN)
    assert requested.apply_result(notified("R1", 300, "PROCESSING"), source="sweep").outcome == "pending"
    assert store.get_order(OTN) == before


def test_released_refund_reported_successful_is_unmatched(requested, store):
    requested.apply_result(notified("R1", 300, "CLOSED"), source="notification")
    outcome = requested.apply_result(notified("R1", 300), source="notification")
    assert outcome.outcome == "anomaly" and outcome.anomaly == "refund_unmatched"
    assert money(store) == (1000, 0, 0) and store.get_order(OTN)["payStatus"] == st.SUCCESS
    [anomaly] = store.list_anomalies(OTN)
    assert anomaly["evidence"]["orderRefundState"] == "RELEASED"


@pytest.mark.parametrize(("report", "kind"), [
    (notified("R1", 200), "refund_mismatch"),
    (notified("R1", 300, out_trade_no="261126120000unitRefund0002"), "refund_mismatch"),
    ({**notified("R1", 300), "amount": {"refund": 300.0}}, "refund_malformed"),
    ({**notified("R1", 300), "amount": None}, "refund_malformed"),
    (notified("R 1", 300), "refund_malformed"),
    (notified("R1", 300, mchid="1900000999"), "refund_merchant_mismatch"),
])
def test_results_that_do_not_match_our_records_are_anomalies(requested, store, report, kind):
    outcome = requested.apply_result(report, source="notification")
    assert outcome.outcome == "anomaly" and outcome.anomaly == kind
    assert money(store) == (700, 300, 0) and store.find_refund("R1")["status"] == "PROCESSING"
    assert [a["kind"] for a in store.list_anomalies()] == [kind]


# --- refunds we never requested (merchant console) ------------------------------------------

def test_console_refund_is_recorded_and_applied_once(refunds, store, clock):
    clock.advance(60_000)
    assert refunds.apply_result(notified("R-CONSOLE-1", 250), source="notification").outcome == "succeeded"
    record = store.find_refund("R-CONSOLE-1")
    assert record["amount"] == 250 and record["status"] == "SUCCESS" and record["source"] == "notification"
    assert record["createTime"] == clock.now and record["updateTime"] == clock.now
    order = store.get_order(OTN)
    assert money(store) == (750, 0, 250) and order["payStatus"] == st.REFUND
    assert order["refundStates"] == {"R-CONSOLE-1": "SUCCEEDED"} and order["updateTime"] == clock.now
    clock.advance(1_000)
    assert refunds.apply_result(notified("R-CONSOLE-1", 250), source="sweep").outcome == "already"
    assert money(store) == (750, 0, 250) and store.count_events("refund.succeeded", OTN) == 1
    assert store.list_anomalies() == []


def test_console_refund_reported_twice_concurrently_applies_once_without_anomaly(refunds, store):
    # Both copies have read "not on the order yet" before either applies it: a real race,
    # forced with a barrier in front of the compare-and-set.
    both_read = threading.Barrier(2)
    store.before("apply_unreserved_refund", lambda *_a, **_k: both_read.wait(5), times=2)
    report = notified("R-CONSOLE-2", 400)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(refunds.apply_result, report, source="notification") for _ in range(2)]
        outcomes = sorted(f.result(timeout=10).outcome for f in futures)
    assert outcomes == ["already", "succeeded"]
    assert store.list_anomalies() == []
    order = store.get_order(OTN)
    assert money(store) == (600, 0, 400) and order["refundStates"] == {"R-CONSOLE-2": "SUCCEEDED"}
    assert order["payStatus"] == st.REFUND and store.find_refund("R-CONSOLE-2")["status"] == "SUCCESS"
    assert store.count_events("refund.succeeded", OTN) == 1


def test_console_refund_larger_than_refundable_is_unmatched(refunds, store):
    refunds.request_refund(OTN, 800, out_refund_no="R1")
    outcome = refunds.apply_result(notified("R-CONSOLE-3", 300), source="notification")
    assert outcome.anomaly == "refund_unmatched"
    assert money(store) == (200, 800, 0) and "R-CONSOLE-3" not in store.get_order(OTN)["refundStates"]


def test_refund_for_an_unknown_order_is_recorded_and_unmatched(refunds, store):
    outcome = refunds.apply_result(notified("R9", 10, out_trade_no="261126120000unitNoSuch0001"),
                                   source="notification")
    assert outcome.anomaly == "refund_unmatched"
    assert store.find_refund("R9")["outTradeNo"] == "261126120000unitNoSuch0001"
    assert [a["kind"] for a in store.list_anomalies()] == ["refund_unmatched"]
