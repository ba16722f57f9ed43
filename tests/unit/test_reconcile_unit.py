"""Reconciler on InMemoryOrderStore with a fake WeChat Pay: each sweep step and its counts,
outages and failures inside a sweep, and the daily bill."""

from __future__ import annotations

import pytest

from shared import order_states as st
from shared.errors import ArchiveUnavailable, BillFormatError, WeChatPayRejected, WeChatPayUnreachable
from shared.reconcile import Deadline, Reconciler, StepSummary, bill_day_bounds
from shared.refunds import RefundService
from shared.settlement import settle_transaction
from tests.unit.fakes import (
    T0,
    bill_csv,
    bill_payment,
    bill_refund,
    new_order,
    rejected,
    transaction,
)

MINUTE = 60_000
STEPS = ("close_expired", "close_failed", "recover_lost", "refunds", "notifications", "bill")


def otn(n: int) -> str:
    return f"261126120000unitRecon{n:05d}"


@pytest.fixture
def reconciler(config, store, wechat):
    return Reconciler(config, store, wechat)


def expired(store, n, total=1000):
    """NOTPAY, created 40 minutes ago, expired 10 minutes ago."""
    return new_order(store, otn(n), total, createTime=store.clock() - 40 * MINUTE,
                     expireTime=store.clock() - 10 * MINUTE)


def unpaid(store, n, age_ms, total=1000):
    """NOTPAY, created `age_ms` ago, payable for 30 minutes from its creation."""
    created = store.clock() - age_ms
    return new_order(store, otn(n), total, createTime=created, expireTime=created + 30 * MINUTE)


def failed(store, n, total=1000):
    order = new_order(store, otn(n), total, createTime=store.clock() - MINUTE)
    store.transition(otn(n), st.PAYERROR, fields={"failure": "WECHATPAY_UNREACHABLE", "closeAtWeChat": True})
    return order


class Expired:
    def expired(self) -> bool:
        return True


# --- close_expired ----------------------------------------------------------------------

def test_expired_orders_are_closed_once(reconciler, store, wechat, clock):
    expired(store, 1)
    expired(store, 2)
    unpaid(store, 3, age_ms=MINUTE)  # young and payable: none of the sweep's business
    clock.advance(5)
    report = reconciler.sweep(with_bill=False)
    assert report == {"close_expired": {"closed": 2}, "close_failed": {}, "recover_lost": {}, "refunds": {},
                      "notifications": {}}
    assert sorted(c.args[0] for c in wechat.calls_to("close_order")) == [otn(1), otn(2)]
    for n in (1, 2):
        order = store.get_order(otn(n))
        assert order["payStatus"] == st.CLOSED and order["closedAt"] == clock.now
        assert order["closeAtWeChat"] is False and order["updateTime"] == clock.now
        assert store.count_events("order.closed", otn(n)) == 1
    assert store.get_order(otn(3))["payStatus"] == st.NOTPAY
    assert reconciler.sweep(with_bill=False)["close_expired"] == {}
    assert len(wechat.calls_to("close_order")) == 2 and store.count_events("order.closed") == 2


def test_expired_order_paid_just_before_its_close_is_settled(reconciler, store, wechat, clock):
    expired(store, 1)
    wechat.mark_paid(otn(1), 1000)
    assert reconciler.sweep(with_bill=False)["close_expired"] == {"paid": 1}
    order = store.get_order(otn(1))
    assert order["payStatus"] == st.SUCCESS and order["paidVia"] == "sweep"
    assert order["updateTime"] == clock.now
    assert store.count_events("order.paid", otn(1)) == 1 and store.count_events("order.closed") == 0


@pytest.mark.parametrize("code", ["ORDER_NOT_EXIST", "ORDER_CLOSED", "ORDERCLOSED"])
def test_close_answers_that_mean_nothing_to_close(reconciler, store, wechat, code):
    expired(store, 1)
    wechat.then("close_order", rejected(code, 400))
    assert reconciler.sweep(with_bill=False)["close_expired"] == {"closed": 1}
    assert store.get_order(otn(1))["payStatus"] == st.CLOSED


def test_one_failing_order_never_stops_the_rest(reconciler, store, wechat):
    for n in (1, 2, 3, 4):
        expired(store, n)
    wechat.then("close_order", rejected("SYSTEM_ERROR", 500), RuntimeError("a bug"), WeChatPayUnreachable("x"))
    assert reconciler.sweep(with_bill=False)["close_expired"] == {
        "error:WECHATPAY_SYSTEM_ERROR": 1, "error:INTERNAL_ERROR": 1, "error:WECHATPAY_UNREACHABLE": 1, "closed": 1}
    assert [store.get_order(otn(n))["payStatus"] for n in (1, 2, 3, 4)] == [st.NOTPAY] * 3 + [st.CLOSED]
    # The next sweep takes the three again.
    assert reconciler.sweep(with_bill=False)["close_expired"] == {"closed": 3}


def test_order_paid_while_we_closed_it_is_left_paid(reconciler, store, wechat, config):
    expired(store, 1)

    def paid_meanwhile(out_trade_no):
        settle_transaction(store, config, transaction(out_trade_no, 1000), source="notification")

    wechat.then("close_order", paid_meanwhile)
    assert reconciler.sweep(with_bill=False)["close_expired"] == {"changed_meanwhile": 1}
    assert store.get_order(otn(1))["payStatus"] == st.SUCCESS and store.count_events("order.closed") == 0


def test_order_closed_by_an_overlapping_sweep_is_already_closed(reconciler, store, wechat):
    expired(store, 1)
    wechat.then("close_order", lambda out_trade_no: store.transition(out_trade_no, st.CLOSED) and None)
    assert reconciler.sweep(with_bill=False)["close_expired"] == {"already_closed": 1}
    assert store.count_events("order.closed", otn(1)) == 1


def test_batch_limits_each_step(config, store, wechat):
    for n in range(5):
        expired(store, n)
    small = Reconciler(config, store, wechat, batch=2)
    assert small.sweep(with_bill=False)["close_expired"] == {"closed": 2}
    assert small.sweep(with_bill=False)["close_expired"] == {"closed": 2}
    assert small.sweep(with_bill=False)["close_expired"] == {"closed": 1}


# --- close_failed -------------------------------------------------------------------------

def test_failed_prepays_are_closed_at_wechat_once(reconciler, store, wechat, clock):
    failed(store, 1)
    clock.advance(MINUTE)
    assert reconciler.sweep(with_bill=False)["close_failed"] == {"closed": 1}
    assert [c.args for c in wechat.calls_to("close_order")] == [(otn(1),)]
    order = store.get_order(otn(1))
    assert order["payStatus"] == st.CLOSED and order["closeAtWeChat"] is False
    assert order["updateTime"] == clock.now
    assert reconciler.sweep(with_bill=False)["close_failed"] == {}
    assert len(wechat.calls_to("close_order")) == 1


def test_failed_prepay_that_was_paid_after_all_is_settled(reconciler, store, wechat, clock):
    failed(store, 1)
    wechat.mark_paid(otn(1), 1000)
    clock.advance(MINUTE)
    assert reconciler.sweep(with_bill=False)["close_failed"] == {"paid": 1}
    order = store.get_order(otn(1))
    assert order["payStatus"] == st.SUCCESS and order["updateTime"] == clock.now
    assert store.count_events("order.paid", otn(1)) == 1 and store.list_anomalies() == []


# --- recover_lost ------------------------------------------------------------------------

def test_lost_callbacks_are_recovered_by_querying(reconciler, store, wechat, clock):
    unpaid(store, 1, age_ms=4 * MINUTE)   # paid, notification lost
    unpaid(store, 2, age_ms=4 * MINUTE)   # not paid yet
    unpaid(store, 3, age_ms=4 * MINUTE)   # WeChat never heard of it
    unpaid(store, 4, age_ms=4 * MINUTE)   # paid another amount
    unpaid(store, 5, age_ms=2 * MINUTE)   # too young to ask about
    unpaid(store, 6, age_ms=4 * MINUTE)   # WeChat Pay fails to answer
    wechat.mark_paid(otn(1), 1000)
    wechat.mark_paid(otn(4), 999)
    errors = {otn(3): rejected("ORDER_NOT_EXIST", 404), otn(6): rejected("SYSTEM_ERROR", 500)}

    def query(out_trade_no):
        if out_trade_no in errors:
            raise errors[out_trade_no]
        return wechat.default("query_order", out_trade_no)

    wechat.always("query_order", query)
    report = reconciler.sweep(with_bill=False)
    assert report["recover_lost"] == {"paid": 1, "wechat_notpay": 1, "not_at_wechat": 1, "amount_mismatch": 1,
                                      "error:WECHATPAY_SYSTEM_ERROR": 1}
    assert sorted(c.args[0] for c in wechat.calls_to("query_order")) == [otn(n) for n in (1, 2, 3, 4, 6)]
    assert store.get_order(otn(1))["payStatus"] == st.SUCCESS
    assert store.get_order(otn(1))["updateTime"] == clock.now
    assert [store.get_order(otn(n))["payStatus"] for n in (2, 3, 4, 5, 6)] == [st.NOTPAY] * 5
    assert [a["kind"] for a in store.list_anomalies()] == ["amount_mismatch"]
    # The paid one is no longer looked at; the others are asked again.
    assert reconciler.sweep(with_bill=False)["recover_lost"] == {
        "wechat_notpay": 1, "not_at_wechat": 1, "amount_mismatch": 1, "error:WECHATPAY_SYSTEM_ERROR": 1}
    assert store.count_events("order.paid") == 1 and len(store.list_anomalies()) == 1


# --- refunds -------------------------------------------------------------------------------

@pytest.fixture
def paid(store, config):
    for n in (1, 2):
        new_order(store, otn(n), 1000)
        settle_transaction(store, config, transaction(otn(n), 1000, transaction_id=f"42000000012026112600000{n:05d}"),
                           source="notification")
    return store


def test_pending_refunds_are_asked_about_and_applied(reconciler, paid, store, wechat, config, clock):
    service = RefundService(config, store, wechat)
    service.request_refund(otn(1), 300, out_refund_no="R1")                    # PROCESSING
    service.request_refund(otn(1), 200, out_refund_no="R2")                    # PROCESSING
    wechat.then("refund", WeChatPayUnreachable("timed out"), WeChatPayUnreachable("timed out"))
    for number in ("R3", "R4"):                                               # REQUESTED
        with pytest.raises(WeChatPayUnreachable):
            service.request_refund(otn(2), 100, out_refund_no=number)
    clock.advance(6 * MINUTE)
    service.request_refund(otn(2), 50, out_refund_no="R5")                     # too recent to ask about
    wechat.set_refund("R1", otn(1), 300, "SUCCESS")
    wechat.set_refund("R2", otn(1), 200, "CLOSED")
    wechat.set_refund("R3", otn(2), 100, "SUCCESS")
    # R4: WeChat Pay never got it -> released.
    report = reconciler.sweep(with_bill=False)
    assert report["refunds"] == {"succeeded": 2, "released": 1, "released_unsent": 1}
    assert sorted(c.args[0] for c in wechat.calls_to("query_refund")) == ["R1", "R2", "R3", "R4"]
    first, second = store.get_order(otn(1)), store.get_order(otn(2))
    assert (first["refundableFee"], first["refundingFee"], first["refundedFee"]) == (700, 0, 300)
    assert (second["refundableFee"], second["refundingFee"], second["refundedFee"]) == (850, 50, 100)
    assert first["payStatus"] == second["payStatus"] == st.REFUND
    assert first["updateTime"] == second["updateTime"] == clock.now
    assert [store.find_refund(r)["status"] for r in ("R1", "R2", "R3", "R4", "R5")] == [
        "SUCCESS", "CLOSED", "SUCCESS", "REFUSED", "PROCESSING"]
    assert all(store.find_refund(r)["updateTime"] == clock.now for r in ("R1", "R2", "R3", "R4"))
    assert reconciler.sweep(with_bill=False)["refunds"] == {}


def test_refund_query_failures_are_counted_and_retried(reconciler, paid, store, wechat, config, clock):
    service = RefundService(config, store, wechat)
    service.request_refund(otn(1), 300, out_refund_no="R1")  # PROCESSING: WeChat has it
    service.request_refund(otn(1), 300, out_refund_no="R2")
    clock.advance(6 * MINUTE)
    wechat.then("query_refund", rejected("RESOURCE_NOT_EXISTS", 404), WeChatPayUnreachable("down"))
    assert reconciler.sweep(with_bill=False)["refunds"] == {
        "error:WECHATPAY_RESOURCE_NOT_EXISTS": 1, "error:WECHATPAY_UNREACHABLE": 1}
    order = store.get_order(otn(1))
    assert (order["refundableFee"], order["refundingFee"]) == (400, 600)  # a PROCESSING refund is never released
    assert store.find_refund("R1")["status"] == store.find_refund("R2")["status"] == "PROCESSING"


# --- time budget ----------------------------------------------------------------------------

def test_steps_defer_work_when_the_time_is_up(reconciler, store, wechat, paid, config, clock):
    expired(store, 5)
    failed(store, 6)
    unpaid(store, 7, age_ms=4 * MINUTE)
    RefundService(config, store, wechat).request_refund(otn(1), 100, out_refund_no="R1")
    clock.advance(6 * MINUTE)
    before = {n: store.get_order(otn(n)) for n in (5, 6, 7)}
    calls = len(wechat.calls)
    for step in (reconciler.close_expired, reconciler.close_failed, reconciler.recover_lost,
                 reconciler.check_refunds):
        summary = StepSummary()
        step(summary, Expired())
        assert summary.counts == {"deferred": 1}
    assert len(wechat.calls) == calls
    assert {n: store.get_order(otn(n)) for n in (5, 6, 7)} == before
    assert store.find_refund("R1")["status"] == "PROCESSING"


def test_deadline_keeps_a_safety_margin():
    now = [100.0]
    deadline = Deadline({"time_limit_in_ms": 10_000}, monotonic=lambda: now[0])
    now[0] = 106.9
    assert not deadline.expired()
    now[0] = 107.0  # 10 s budget minus the 3 s safety margin
    assert deadline.expired()
    short = Deadline({"time_limit_in_ms": 2_000}, monotonic=lambda: now[0])  # never below 1 s of work
    now[0] = 107.9
    assert not short.expired()
    now[0] = 108.0
    assert short.expired()


# --- outages and bugs ------------------------------------------------------------------------

def test_the_sweep_deletes_the_notifications_kept_past_seven_days(reconciler, store, clock):
    headers = {"Wechatpay-Nonce": "n", "Content-Type": "application/json"}
    store.record_notification(headers, b'{"id":"EV-OLD"}', status=204, notification_id="EV-OLD")
    clock.advance(86_400_000)
    store.record_notification(headers, b'{"id":"EV-YOUNG"}', status=204, notification_id="EV-YOUNG")
    clock.advance(7 * 86_400_000 - 1)   # EV-OLD is 8 days old, EV-YOUNG a millisecond short of 7
    assert reconciler.sweep(with_bill=False)["notifications"] == {"expired": 1}
    assert [doc["notificationId"] for doc in store.list_notifications()] == ["EV-YOUNG"]
    assert reconciler.sweep(with_bill=False)["notifications"] == {}


def test_sweep_during_a_store_outage_reports_and_the_next_one_works(reconciler, store, wechat):
    expired(store, 1)
    store.available = False
    report = reconciler.sweep()
    assert report == {step: {"error:STORE_UNAVAILABLE": 1} for step in STEPS}
    assert wechat.calls == []
    store.available = True
    report = reconciler.sweep()
    assert report["close_expired"] == {"closed": 1} and report["bill"] == {}
    assert store.get_order(otn(1))["payStatus"] == st.CLOSED
    assert store.find_bill_run("2026-11-25") is not None


def test_store_lost_in_the_middle_of_a_step(reconciler, store, wechat):
    expired(store, 1)
    expired(store, 2)

    def outage_starts(out_trade_no):
        store.available = False

    wechat.then("close_order", outage_starts)
    report = reconciler.sweep(with_bill=False)
    # The first order's close at WeChat went through; storing it failed, and so did the
    # second order and every later step; nothing raised.
    assert report == {"close_expired": {"error:STORE_UNAVAILABLE": 2}, "close_failed": {"error:STORE_UNAVAILABLE": 1},
                      "recover_lost": {"error:STORE_UNAVAILABLE": 1}, "refunds": {"error:STORE_UNAVAILABLE": 1},
                      "notifications": {"error:STORE_UNAVAILABLE": 1}}
    store.available = True
    assert [store.get_order(otn(n))["payStatus"] for n in (1, 2)] == [st.NOTPAY, st.NOTPAY]
    assert reconciler.sweep(with_bill=False)["close_expired"] == {"closed": 2}
    assert store.count_events("order.closed") == 2


def test_a_bug_in_one_step_does_not_stop_the_others(reconciler, store, monkeypatch):
    expired(store, 1)
    failed(store, 2)

    def broken(*_args, **_kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(store, "expired_unpaid", broken)
    report = reconciler.sweep(with_bill=False)
    assert report["close_expired"] == {"error:INTERNAL_ERROR": 1}
    assert report["close_failed"] == {"closed": 1}
    assert store.get_order(otn(2))["payStatus"] == st.CLOSED


# --- the daily bill -------------------------------------------------------------------------

DAY = "2026-11-25"


def paid_on(store, config, n, total, success_time="2026-11-25T15:00:00+08:00"):
    new_order(store, otn(n), total, createTime=T0 - 86_400_000)
    result = settle_transaction(store, config, transaction(otn(n), total, transaction_id=f"42000000012026112500{n:06d}",
                                                           success_time=success_time), source="notification")
    assert result.outcome == "paid"


def test_bill_day_bounds_are_utc8_days():
    start, end = bill_day_bounds(DAY)
    assert start == T0 - 86_400_000 - 12 * 3_600_000  # 2026-11-25T00:00:00+08:00
    assert end - start == 86_400_000


def test_bill_is_not_due_before_ten(config, store, wechat, clock):
    clock.now = T0 - 2 * 3_600_000 - 1  # 09:59:59.999 in UTC+8
    reconciler = Reconciler(config, store, wechat)
    assert reconciler.sweep()["bill"] == {"not_due": 1}
    assert wechat.calls_to("trade_bill") == []
    clock.advance(1)
    assert reconciler.sweep()["bill"] == {}
    assert [c.args for c in wechat.calls_to("trade_bill")] == [(DAY,)]
    assert reconciler.sweep()["bill"] == {"already_reconciled": 1}
    assert len(wechat.calls_to("trade_bill")) == 1


def test_timer_sweep_counts_the_bill(reconciler, store, wechat, config):
    paid_on(store, config, 1, 1000)
    wechat.set_bill(DAY, bill_csv([bill_payment(otn(1), 1000, "2026-11-25 15:00:00")]))
    assert reconciler.sweep()["bill"] == {"matched": 1}
    assert store.find_bill_run(DAY)["counts"] == {"matched": 1}


def test_bill_row_with_an_unreadable_time_is_settled_at_the_clock(reconciler, store, wechat, clock):
    new_order(store, otn(1), 500)
    clock.advance(MINUTE)
    wechat.set_bill(DAY, bill_csv([bill_payment(otn(1), 500, "25/11/2026 15:00")]))
    assert reconciler.reconcile_bill(DAY)["counts"] == {"settled_from_bill": 1}
    assert store.get_order(otn(1))["paidAt"] == clock.now


def test_bill_compared_with_the_store(reconciler, store, wechat, config):
    paid_on(store, config, 1, 1000)                 # matched
    paid_on(store, config, 2, 1000)                 # the bill says 9.00 yuan
    new_order(store, otn(3), 500)                   # unpaid here, paid at WeChat: settled from the bill
    paid_on(store, config, 4, 700)                  # not on the bill
    paid_on(store, config, 5, 300, success_time="2026-11-26T00:00:00+08:00")  # the next day: not expected
    new_order(store, otn(6), 200)
    store.transition(otn(6), st.CLOSED)              # closed here, paid at WeChat
    wechat.set_bill(DAY, bill_csv([
        bill_payment(otn(1), 1000, "2026-11-25 15:00:00", transaction_id="420000000120261125000001"),
        bill_payment(otn(2), 900, "2026-11-25 15:00:00", transaction_id="420000000120261125000002"),
        bill_payment(otn(3), 500, "2026-11-25 16:30:00", transaction_id="420000000120261125000003"),
        bill_payment(otn(9), 100, "2026-11-25 17:00:00", transaction_id="420000000120261125000009"),
        bill_payment(otn(6), 200, "2026-11-25 18:00:00", transaction_id="420000000120261125000006"),
        bill_refund(otn(1), 300, "2026-11-25 19:00:00"),
    ]))
    result = reconciler.reconcile_bill(DAY)
    counts = {"matched": 1, "bill_amount_mismatch": 1, "settled_from_bill": 1, "bill_unknown_order": 1,
              "paid_after_close": 1, "bill_missing": 1}
    assert result == {"billDate": DAY, "status": "reconciled", "counts": counts, "archiveKey": None}
    settled = store.get_order(otn(3))
    assert settled["payStatus"] == st.SUCCESS and settled["paidVia"] == "bill"
    assert settled["transactionId"] == "420000000120261125000003"
    assert settled["paidAt"] == T0 - 86_400_000 + 4 * 3_600_000 + 30 * MINUTE  # 2026-11-25 16:30 UTC+8
    assert settled["updateTime"] == store.clock()
    kinds = sorted((a["kind"], a["outTradeNo"]) for a in store.list_anomalies())
    assert kinds == sorted([("bill_amount_mismatch", otn(2)), ("bill_paid_not_recorded", otn(3)),
                            ("bill_unknown_order", otn(9)), ("paid_after_close", otn(6)),
                            ("bill_missing", otn(4))])
    run = store.find_bill_run(DAY)
    assert run["counts"] == counts and run["rows"] == 6
    # Done once; a forced re-run recounts and adds no second anomaly.
    assert reconciler.reconcile_bill(DAY) == {"billDate": DAY, "status": "already_reconciled", "counts": counts}
    assert len(wechat.calls_to("trade_bill")) == 1
    again = reconciler.reconcile_bill(DAY, force=True)
    assert again["counts"] == {**{k: v for k, v in counts.items() if k != "settled_from_bill"}, "matched": 2}
    assert len(store.list_anomalies()) == 5 and store.count_events("order.paid", otn(3)) == 1


def _paid_with_coupons(store, config, n, total, promotions):
    new_order(store, otn(n), total, createTime=T0 - 86_400_000)
    payer_total = total - sum(p["amount"] for p in promotions if isinstance(p, dict) and "amount" in p)
    result = settle_transaction(store, config, transaction(
        otn(n), total, transaction_id=f"42000000012026112500{n:06d}", success_time="2026-11-25T15:00:00+08:00",
        promotion_detail=promotions, amount={"total": total, "payer_total": payer_total, "currency": "CNY",
                                             "payer_currency": "CNY"}), source="notification")
    assert result.outcome == "paid"


def test_coupon_orders_are_compared_column_by_meaning(reconciler, store, wechat, config):
    """应结订单金额 = 订单金额 - the coupons that are not pre-funded; 代金券金额 holds all."""
    _paid_with_coupons(store, config, 1, 1000, [{"type": "NOCASH", "amount": 100, "coupon_id": "C1"}])
    _paid_with_coupons(store, config, 2, 1000, [{"type": "CASH", "amount": 200, "coupon_id": "C2"}])
    _paid_with_coupons(store, config, 3, 1000, [{"type": "NOCASH", "amount": 100, "coupon_id": "C3"}])
    _paid_with_coupons(store, config, 4, 1000, [{"type": "NOCASH", "amount": 100, "coupon_id": "C4"}])
    _paid_with_coupons(store, config, 5, 1000, [{"type": "SURPRISE", "amount": 100}])  # unreadable details
    _paid_with_coupons(store, config, 6, 1000, [{"type": "SURPRISE", "amount": 100}])
    assert store.get_order(otn(1))["settlementFee"] == 900 and store.get_order(otn(2))["settlementFee"] == 1000
    assert store.get_order(otn(1))["payerTotal"] == 900 and store.get_order(otn(2))["payerTotal"] == 800
    assert "settlementFee" not in store.get_order(otn(5))
    wechat.set_bill(DAY, bill_csv([
        bill_payment(otn(1), 900, "2026-11-25 15:00:00", order_amount=1000, coupon_fee=100),   # not pre-funded
        bill_payment(otn(2), 1000, "2026-11-25 15:00:00", order_amount=1000, coupon_fee=200),  # pre-funded
        bill_payment(otn(3), 800, "2026-11-25 15:00:00", order_amount=1000, coupon_fee=100),   # settled short
        bill_payment(otn(4), 900, "2026-11-25 15:00:00", order_amount=1100, coupon_fee=100),   # total differs
        bill_payment(otn(5), 950, "2026-11-25 15:00:00", order_amount=1000, coupon_fee=100),   # within bounds
        bill_payment(otn(6), 850, "2026-11-25 15:00:00", order_amount=1000, coupon_fee=100),   # below bounds
    ]))
    result = reconciler.reconcile_bill(DAY)
    assert result["counts"] == {"matched": 3, "bill_amount_mismatch": 3}
    mismatches = {a["outTradeNo"]: a for a in store.list_anomalies() if a["kind"] == "bill_amount_mismatch"}
    assert set(mismatches) == {otn(3), otn(4), otn(6)}
    assert {k: mismatches[otn(3)]["evidence"][k] for k in ("billTotal", "billSettled", "orderSettlementFee")} == \
        {"billTotal": 1000, "billSettled": 800, "orderSettlementFee": 900}


def test_a_coupon_order_paid_only_at_wechat_is_settled_with_its_coupons(reconciler, store, wechat):
    new_order(store, otn(1), 1000)
    wechat.set_bill(DAY, bill_csv([bill_payment(otn(1), 900, "2026-11-25 15:00:00", order_amount=1000,
                                                coupon_fee=300)]))
    assert reconciler.reconcile_bill(DAY)["counts"] == {"settled_from_bill": 1}
    order = store.get_order(otn(1))
    assert (order["totalFee"], order["couponFee"], order["settlementFee"]) == (1000, 300, 900)
    assert reconciler.reconcile_bill(DAY, force=True)["counts"] == {"matched": 1}


def test_day_without_a_bill_finds_our_stray_payment(reconciler, store, wechat, config):
    paid_on(store, config, 1, 1000)
    result = reconciler.reconcile_bill(DAY)  # the fake answers NO_STATEMENT_EXIST
    assert result["status"] == "reconciled" and result["counts"] == {"bill_missing": 1}
    assert [a["kind"] for a in store.list_anomalies(otn(1))] == ["bill_missing"]
    assert store.find_bill_run(DAY)["rows"] == 0


@pytest.mark.parametrize(("failure", "error_code"), [
    (rejected("SYSTEM_ERROR", 500), "WECHATPAY_SYSTEM_ERROR"),
    (WeChatPayUnreachable("down"), "WECHATPAY_UNREACHABLE"),
    (b"not a bill", "BILL_FORMAT"),
])
def test_bill_that_cannot_be_had_is_not_recorded_as_done(reconciler, store, wechat, failure, error_code):
    wechat.then("trade_bill", failure)
    with pytest.raises((WeChatPayRejected, WeChatPayUnreachable, BillFormatError)) as caught:
        reconciler.reconcile_bill(DAY)
    assert caught.value.code == error_code
    assert store.find_bill_run(DAY) is None
    wechat.then("trade_bill", failure)
    assert reconciler.sweep()["bill"] == {f"error:{error_code}": 1}
    assert store.find_bill_run(DAY) is None
    assert reconciler.sweep()["bill"] == {}  # WeChat answers again: reconciled
    assert store.find_bill_run(DAY) is not None


class FakeArchive:
    def __init__(self, error=None):
        self.error = error
        self.bills: dict[str, bytes] = {}

    def put_bill(self, bill_date: str, data: bytes) -> str:
        if self.error is not None:
            raise self.error
        self.bills[bill_date] = data
        return f"bills/{bill_date}.csv"


def test_bill_is_archived(config, store, wechat):
    paid_on(store, config, 1, 1000)
    data = bill_csv([bill_payment(otn(1), 1000, "2026-11-25 15:00:00")])
    wechat.set_bill(DAY, data)
    archive = FakeArchive()
    result = Reconciler(config, store, wechat, archive).reconcile_bill(DAY)
    assert result["archiveKey"] == f"bills/{DAY}.csv" and archive.bills == {DAY: data}
    assert result["counts"] == {"matched": 1} and store.find_bill_run(DAY)["archiveKey"] == f"bills/{DAY}.csv"


def test_archive_failure_still_compares_and_tells_a_human(config, store, wechat):
    paid_on(store, config, 1, 1000)
    wechat.set_bill(DAY, bill_csv([bill_payment(otn(1), 1000, "2026-11-25 15:00:00")]))
    archive = FakeArchive(ArchiveUnavailable("COS is down"))
    result = Reconciler(config, store, wechat, archive).reconcile_bill(DAY)
    assert result["counts"] == {"archive_failed": 1, "matched": 1} and result["archiveKey"] is None
    [anomaly] = store.list_anomalies()
    assert anomaly["kind"] == "bill_archive_failed" and anomaly["evidence"] == {"billDate": DAY,
                                                                              "code": "ARCHIVE_UNAVAILABLE"}
