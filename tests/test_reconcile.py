"""The reconcile function: sweeps, the daily bill, refunds (issue 6).

Real peers: the WeChat Pay simulator, nx-27017, moto's S3 server (COS), and the
callback function behind the local gateway for refund notifications.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from shared import order_states as st
from shared.store.port import by
from tests.functions import load_function

CHINA = timezone(timedelta(hours=8))
TIMER = {"Type": "Timer", "TriggerName": "reconcile-every-5-minutes", "Time": "2026-11-26T02:00:00Z",
         "Message": ""}
CONTEXT = {"time_limit_in_ms": 60_000, "request_id": "sweep"}


@pytest.fixture
def reconcile(live_stack, function_env, cos_environ):
    function_env(**cos_environ)
    return load_function("reconcile")


def _age(store, out_trade_no, *, created_ms_ago=0, expired_ms_ago=None):
    now = store.clock()
    fields = {"createTime": now - created_ms_ago}
    if expired_ms_ago is not None:
        fields["expireTime"] = now - expired_ms_ago
    store.update_order_fields(out_trade_no, fields)


def _sweep(handler):
    result = handler(TIMER, CONTEXT)
    assert result["ok"] is True, result
    return result["sweep"]


# --- expiry ---------------------------------------------------------------------------

def test_expired_orders_closed_once_with_two_sweeps_racing(live_stack, reconcile):
    orders = [live_stack.create_order(code=f"test-x{i}")["outTradeNo"] for i in range(4)]
    for number in orders:
        _age(live_stack.store, number, created_ms_ago=3_600_000, expired_ms_ago=1_000)
        live_stack.simulator.expire(number)
    barrier = threading.Barrier(2)

    def sweep(_):
        barrier.wait()
        return _sweep(reconcile)

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(sweep, range(2)))
    closed = sum(r["close_expired"].get("closed", 0) for r in reports)
    assert closed == 4, reports
    for number in orders:
        assert live_stack.store.get_order(number)["payStatus"] == st.CLOSED
        assert live_stack.store.count_events("order.closed", number) == 1
        assert live_stack.simulator.order(number)["trade_state"] == "CLOSED"
    assert _sweep(reconcile)["close_expired"] == {}  # nothing left


def test_order_paid_just_before_its_close_is_settled_not_closed(live_stack, reconcile):
    number = live_stack.create_order()["outTradeNo"]
    live_stack.simulator.pay(number, notify="drop")
    _age(live_stack.store, number, created_ms_ago=3_600_000, expired_ms_ago=1_000)
    report = _sweep(reconcile)
    assert report["close_expired"] == {"paid": 1}, report
    order = live_stack.store.get_order(number)
    assert order["payStatus"] == st.SUCCESS and order["paidVia"] == "sweep"
    assert live_stack.store.count_events("order.paid", number) == 1
    assert live_stack.store.count_events("order.closed", number) == 0


def test_failed_prepay_orders_are_closed_at_wechat(live_stack, reconcile):
    live_stack.simulator.inject_fault(path="/v3/pay/transactions/jsapi", delay_ms=0, status=500,
                                      body={"code": "SYSTEM_ERROR", "message": "busy"}, count=1)
    from tests.functions import http_event, reply_json

    reply = live_stack.prepare(http_event("POST", "/orders", body={"code": "test-f", "items": [
        {"sku": "A1", "quantity": 1}]}), {})
    assert reply["statusCode"] == 502
    [failed] = live_stack.store.list_orders()
    number = failed["outTradeNo"]
    report = _sweep(reconcile)
    assert report["close_failed"] == {"closed": 1}, report  # the prepay never reached WeChat: 404
    order = live_stack.store.get_order(number)
    assert order["payStatus"] == st.CLOSED and order["closeAtWeChat"] is False, reply_json(reply)


# --- lost notifications ---------------------------------------------------------------------

def test_dropped_notifications_are_settled_by_the_sweep_once_each(live_stack, reconcile):
    numbers = [live_stack.create_order(code=f"test-d{i}")["outTradeNo"] for i in range(3)]
    fresh = live_stack.create_order(code="test-fresh")["outTradeNo"]
    for number in numbers + [fresh]:
        live_stack.simulator.pay(number, notify="drop")
    for number in numbers:
        _age(live_stack.store, number, created_ms_ago=10 * 60_000)
    report = _sweep(reconcile)
    assert report["recover_lost"] == {"paid": 3}, report
    _sweep(reconcile)  # a second sweep changes nothing
    for number in numbers:
        assert live_stack.store.get_order(number)["payStatus"] == st.SUCCESS
        assert live_stack.store.count_events("order.paid", number) == 1
    # Too young to query yet (its notification may still come).
    assert live_stack.store.get_order(fresh)["payStatus"] == st.NOTPAY


# --- the daily bill --------------------------------------------------------------------------

def _yesterday() -> tuple[str, str]:
    day = (datetime.now(CHINA) - timedelta(days=1)).date()
    return day.isoformat(), f"{day.isoformat()}T12:00:00+08:00"


def test_daily_bill_compared_archived_and_not_redone(live_stack, reconcile, cos_environ):
    bill_date, paid_time = _yesterday()
    store, sim = live_stack.store, live_stack.simulator
    matched = [live_stack.create_order(code=f"test-m{i}")["outTradeNo"] for i in range(2)]
    missed = live_stack.create_order(code="test-missed")["outTradeNo"]
    mismatch = live_stack.create_order(code="test-mismatch")["outTradeNo"]
    hidden = live_stack.create_order(code="test-hidden")["outTradeNo"]
    for number in matched + [mismatch, hidden]:
        sim.pay(number, success_time=paid_time)
    sim.pay(missed, success_time=paid_time, notify="drop")
    assert sim.wait_idle(10)
    sim.set_bill_override(mismatch, amount=1)
    sim.set_bill_override(hidden, hide=True)

    result = reconcile({"action": "reconcile", "billDate": bill_date}, CONTEXT)
    assert result["ok"] is True and result["status"] == "reconciled", result
    assert result["counts"] == {"matched": 2, "settled_from_bill": 1, "bill_amount_mismatch": 1,
                                "bill_missing": 1}, result
    kinds = sorted((a["kind"], a["outTradeNo"]) for a in store.list_anomalies())
    assert kinds == sorted([("bill_paid_not_recorded", missed), ("bill_amount_mismatch", mismatch),
                            ("bill_missing", hidden)])
    assert store.get_order(missed)["payStatus"] == st.SUCCESS
    assert store.count_events("order.paid", missed) == 1

    s3 = boto3.client("s3", endpoint_url=cos_environ["COS_ENDPOINT"], region_name=cos_environ["COS_REGION"],
                      aws_access_key_id=cos_environ["TENCENTCLOUD_SECRETID"],
                      aws_secret_access_key=cos_environ["TENCENTCLOUD_SECRETKEY"])
    stored = s3.get_object(Bucket=cos_environ["COS_BUCKET"], Key=result["archiveKey"])["Body"].read()
    import gzip

    assert missed.encode() in gzip.decompress(stored)

    again = reconcile({"action": "reconcile", "billDate": bill_date}, CONTEXT)
    assert again["status"] == "already_reconciled"
    assert len(store.list_anomalies()) == 3


def test_bill_for_a_day_without_payments_finds_our_stray_payment(live_stack, reconcile):
    """WeChat makes no bill for a day without transactions (NO_STATEMENT_EXIST): that is
    an empty bill, so a payment we recorded for that day is an anomaly."""
    day = (datetime.now(CHINA) - timedelta(days=3)).date()
    number = live_stack.create_order()["outTradeNo"]
    paid_at = int(datetime(day.year, day.month, day.day, 9, tzinfo=CHINA).timestamp()) * 1000
    live_stack.store.transition(number, st.SUCCESS, fields={"transactionId": "T", "paidAt": paid_at})
    result = reconcile({"action": "reconcile", "billDate": day.isoformat()}, CONTEXT)
    assert result["ok"] is True and result["counts"] == {"bill_missing": 1}, result
    assert result["archiveKey"] is None


@pytest.mark.parametrize("event, code", [
    ({"action": "reconcile", "billDate": "yesterday"}, "INVALID_BILL_DATE"),
    ({"action": "explode"}, "UNKNOWN_ACTION"),
    ({"action": "refund", "outTradeNo": "X", "amount": 1, "sneaky": True}, "UNKNOWN_FIELD"),
    ({"action": "refund", "amount": 1}, "INVALID_ORDER_NO"),
])
def test_bad_manual_events_are_named(reconcile, event, code):
    result = reconcile(event, CONTEXT)
    assert result == {"ok": False, "error": {"code": code, "message": result["error"]["message"]}}


# --- refunds -----------------------------------------------------------------------------------

@pytest.fixture
def paid_order(live_stack):
    number = live_stack.create_order(items=(("A1", 1),))["outTradeNo"]  # 1990 fen
    live_stack.simulator.pay(number)
    assert live_stack.simulator.wait_idle(10)
    assert live_stack.store.get_order(number)["payStatus"] == st.SUCCESS
    return number


def _refund(handler, number, amount, out_refund_no=None):
    event = {"action": "refund", "outTradeNo": number, "amount": amount, "reason": "test"}
    if out_refund_no:
        event["outRefundNo"] = out_refund_no
    return handler(event, CONTEXT)


def test_partial_then_full_refund_completed_by_notifications(live_stack, reconcile, paid_order):
    first = _refund(reconcile, paid_order, 500, "R-PART-1")
    assert first["ok"] is True and first["refund"]["status"] == "PROCESSING", first
    live_stack.simulator.complete_refund("R-PART-1")
    assert live_stack.simulator.wait_idle(10)
    order = live_stack.store.get_order(paid_order)
    assert (order["payStatus"], order["refundedFee"], order["refundableFee"]) == (st.REFUND, 500, 1490)

    rest = _refund(reconcile, paid_order, 1490, "R-PART-2")
    assert rest["ok"] is True
    live_stack.simulator.complete_refund("R-PART-2")
    assert live_stack.simulator.wait_idle(10)
    order = live_stack.store.get_order(paid_order)
    assert (order["refundedFee"], order["refundingFee"], order["refundableFee"]) == (1990, 0, 0)
    assert live_stack.store.count_events("refund.succeeded", paid_order) == 2


def test_over_refund_is_refused(reconcile, paid_order, live_stack):
    result = _refund(reconcile, paid_order, 1991)
    assert result["ok"] is False and result["error"]["code"] == "REFUND_EXCEEDS_PAID"
    assert live_stack.store.get_order(paid_order)["refundingFee"] == 0
    assert live_stack.simulator.refunds() == []  # never reached WeChat Pay


def test_concurrent_refunds_never_exceed_the_paid_amount(reconcile, paid_order, live_stack):
    barrier = threading.Barrier(8)

    def one(i):
        barrier.wait()
        return _refund(reconcile, paid_order, 600, f"R-RACE-{i}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    accepted = [r for r in results if r["ok"]]
    refused = [r for r in results if not r["ok"]]
    assert len(accepted) == 3, results  # 3 x 600 <= 1990 < 4 x 600
    assert {r["error"]["code"] for r in refused} == {"REFUND_EXCEEDS_PAID"}
    order = live_stack.store.get_order(paid_order)
    assert order["refundingFee"] == 1800 and order["refundableFee"] == 190
    assert sum(r["amount"]["refund"] for r in live_stack.simulator.refunds()) == 1800


def test_repeat_with_the_same_out_refund_no_is_the_same_refund(reconcile, paid_order, live_stack):
    first = _refund(reconcile, paid_order, 300, "R-SAME")
    second = _refund(reconcile, paid_order, 300, "R-SAME")
    assert first["ok"] and second["ok"] and first["refund"]["outRefundNo"] == second["refund"]["outRefundNo"]
    assert live_stack.store.get_order(paid_order)["refundingFee"] == 300
    different = _refund(reconcile, paid_order, 400, "R-SAME")
    assert different["ok"] is False and different["error"]["code"] == "REFUND_NO_REUSED"


def test_refund_of_an_unpaid_order_is_refused(live_stack, reconcile):
    number = live_stack.create_order()["outTradeNo"]
    result = _refund(reconcile, number, 100)
    assert result["ok"] is False and result["error"]["code"] == "ORDER_NOT_PAID"


def test_closed_refund_gives_the_amount_back(live_stack, reconcile, paid_order):
    assert _refund(reconcile, paid_order, 1990, "R-CLOSE")["ok"]
    live_stack.simulator.complete_refund("R-CLOSE", status="CLOSED")
    assert live_stack.simulator.wait_idle(10)
    order = live_stack.store.get_order(paid_order)
    assert (order["refundingFee"], order["refundableFee"], order["payStatus"]) == (0, 1990, st.SUCCESS)
    assert _refund(reconcile, paid_order, 1990, "R-AGAIN")["ok"]


def test_lost_refund_notification_is_completed_by_the_sweep(live_stack, reconcile, paid_order):
    assert _refund(reconcile, paid_order, 700, "R-LOST")["ok"]
    live_stack.simulator.complete_refund("R-LOST", notify="drop")
    live_stack.store._update_one("refunds", by(outRefundNo="R-LOST"), set={"updateTime": 0})  # 5 minutes pass
    report = _sweep(reconcile)
    assert report["refunds"] == {"succeeded": 1}, report
    assert live_stack.store.get_order(paid_order)["refundedFee"] == 700


def test_timer_reconciles_yesterdays_bill_once_after_ten(live_stack, reconcile):
    """The sweep's bill step: not before 10:00 (UTC+8), then once per day."""
    from shared import runtime
    from shared.reconcile import Reconciler
    from shared.store.mongo import MongoOrderStore

    bill_date, paid_time = _yesterday()
    number = live_stack.create_order()["outTradeNo"]
    live_stack.simulator.pay(number, success_time=paid_time)
    assert live_stack.simulator.wait_idle(10)
    today = datetime.now(CHINA).date()

    def at(hour):
        clock_ms = int(datetime(today.year, today.month, today.day, hour, tzinfo=CHINA).timestamp()) * 1000
        base = runtime.instance("reconcile").reconciler
        store = MongoOrderStore(base.store.uri, base.store.db_name, clock=lambda: clock_ms)
        return Reconciler(base.config, store, base.wechatpay, archive=base.archive)

    assert at(9).sweep(CONTEXT)["bill"] == {"not_due": 1}
    assert at(11).sweep(CONTEXT)["bill"] == {"matched": 1}
    assert at(11).sweep(CONTEXT)["bill"] == {"already_reconciled": 1}
    assert live_stack.store.find_bill_run(bill_date)["counts"] == {"matched": 1}


def test_the_command_line_runs_the_same_operations(live_stack, reconcile, paid_order, function_env):
    """python -m shared.admin, as a merchant runs it with the function's environment."""
    import json
    import os
    import subprocess
    import sys

    from tests.functions import ROOT

    def admin(*args):
        done = subprocess.run([sys.executable, "-m", "shared.admin", *args], cwd=ROOT,
                              env={**os.environ, **function_env()},
                              capture_output=True, text=True, timeout=60)
        return done.returncode, json.loads(done.stdout[done.stdout.index("{\n"):])

    code, result = admin("refund", paid_order, "100", "--out-refund-no", "R-CLI-1", "--reason", "cli")
    assert code == 0 and result["refund"]["status"] == "PROCESSING", result
    assert live_stack.store.get_order(paid_order)["refundingFee"] == 100
    code, result = admin("reconcile", "not-a-date")
    assert code == 1 and result["error"]["code"] == "INVALID_BILL_DATE"


def test_a_sweep_during_a_store_outage_reports_it_and_the_next_one_recovers(live_stack, function_env,
                                                                          private_mongo, db_name):
    """The store dies while the instance is warm: the sweep answers ok with the outage in
    its counts (no driver exception escapes), and the sweep after the restart does the work."""
    from shared.store.mongo import MongoOrderStore

    uri = f"{private_mongo.uri}/?serverSelectionTimeoutMS=500&connectTimeoutMS=500"
    function_env(MONGODB_URI=uri)
    store = MongoOrderStore(uri, db_name)
    store.upsert_product("A1", "Oolong tea", 1990)
    number = live_stack.create_order()["outTradeNo"]
    live_stack.simulator.pay(number, notify="drop")
    _age(store, number, created_ms_ago=600_000)
    reconcile = load_function("reconcile")
    warm = reconcile({"action": "sweep"}, CONTEXT)  # the instance is warm, its client connected
    assert warm["ok"] and warm["sweep"]["recover_lost"] == {"paid": 1}, warm
    second = live_stack.create_order(code="test-late")["outTradeNo"]
    live_stack.simulator.pay(second, notify="drop")
    _age(store, second, created_ms_ago=600_000)

    private_mongo.stop()
    during = reconcile(TIMER, CONTEXT)
    assert during["ok"] is True, during
    steps = during["sweep"]
    assert {name: counts for name, counts in steps.items() if name != "bill"} == {
        name: {"error:STORE_UNAVAILABLE": 1}
        for name in ("close_expired", "close_failed", "recover_lost", "refunds", "notifications")}

    private_mongo.start()
    deadline = time.monotonic() + 15
    while True:  # bounded: the driver reconnects on its own
        after = reconcile(TIMER, CONTEXT)
        if after["sweep"]["recover_lost"] != {"error:STORE_UNAVAILABLE": 1}:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.2)
    assert after["sweep"]["recover_lost"] == {"paid": 1}, after
    assert store.get_order(second)["payStatus"] == st.SUCCESS
    assert store.count_events("order.paid", second) == 1


def test_setup_creates_every_index_at_once(live_stack, reconcile, mongo_client, db_name):
    from shared.store import INDEXES

    result = reconcile({"action": "setup"}, CONTEXT)
    assert result["ok"] is True and set(result["indexes"]) == set(INDEXES)
    for name, indexes in INDEXES.items():
        information = mongo_client[db_name][name].index_information()
        existing = {tuple(f for f, _ in info["key"]) for info in information.values()}
        assert all(tuple(f for f, _ in index.fields) in existing for index in indexes), name
