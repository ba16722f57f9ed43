"""shared.settlement on InMemoryOrderStore: settle_transaction's rules and rfc3339_to_ms."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from shared import order_states as st
from shared import settlement
from shared.settlement import ALREADY_PAID, ANOMALY, NOT_PAID, PAID, rfc3339_to_ms, settle_transaction
from tests.keys import APPID, MCHID
from tests.unit.fakes import new_order, transaction

OTN = "261126120000unitSettle0001"
T1 = "4200000001202611260000000001"
T2 = "4200000001202611260000000002"
PAID_AT = 1_795_665_660_000  # 2026-11-26T12:01:00+08:00, the fakes' default success_time


@pytest.fixture
def order(store):
    return new_order(store, OTN, 1000)


# --- rfc3339_to_ms ------------------------------------------------------------------------

NOON_CHINA = 1_795_665_600_000  # 2026-11-26T12:00:00+08:00 == 2026-11-26T04:00:00Z


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-11-26T12:00:00+08:00", NOON_CHINA),
    ("2026-11-26T04:00:00Z", NOON_CHINA),
    ("2026-11-26T04:00:00+00:00", NOON_CHINA),
    ("2026-11-25T20:00:00-08:00", NOON_CHINA),
    ("2026-11-26T12:00:00.123+08:00", NOON_CHINA + 123),
    ("2026-11-26T04:00:00.123Z", NOON_CHINA + 123),
    ("2026-11-26T12:00:00.123456+08:00", NOON_CHINA + 123),
    ("2026-11-26T12:00:00.999999+08:00", NOON_CHINA + 999),  # truncated to the ms, never rounded up
    ("2026-11-26T12:00:00.001+08:00", NOON_CHINA + 1),
    # RFC 3339 allows any number of fraction digits (time-secfrac = "." 1*DIGIT).
    ("2026-11-26T12:00:00.123456789+08:00", NOON_CHINA + 123),
    ("2026-11-26T12:00:00.5+08:00", NOON_CHINA + 500),
])
def test_rfc3339_to_ms_reads_zones_and_fractions(value, expected):
    assert rfc3339_to_ms(value) == expected


@pytest.mark.parametrize("value", [
    "2026-11-26T12:00:00",          # naive: which day it is depends on the zone, so unreadable
    "2026-11-26T12:00:00.123",      # naive with a fraction
    "2026-11-26",                   # a date is not an instant
    "yesterday", "2026-13-01T00:00:00+08:00", "2026-11-26T25:00:00+08:00", "not-a-time-Z",
    "", None, 1795665600, b"2026-11-26T12:00:00+08:00",
])
def test_rfc3339_to_ms_refuses_naive_and_garbage(value):
    assert rfc3339_to_ms(value) is None


class _NoZuluDatetime(datetime):
    """datetime whose fromisoformat refuses a trailing "Z", as Python 3.10's does (SCF's
    runtime); Python 3.11+ accepts it, so without this the Z handling is untested here."""

    @classmethod
    def fromisoformat(cls, date_string):
        if date_string.endswith(("Z", "z")):
            raise ValueError(f"Invalid isoformat string: {date_string!r}")
        return datetime.fromisoformat(date_string)


def test_rfc3339_z_suffix_does_not_rely_on_a_parser_that_takes_z(monkeypatch):
    monkeypatch.setattr(settlement, "datetime", _NoZuluDatetime)
    assert rfc3339_to_ms("2026-11-26T04:00:00Z") == NOON_CHINA
    assert rfc3339_to_ms("2026-11-26T04:00:00.250Z") == NOON_CHINA + 250
    assert rfc3339_to_ms("2026-11-26T12:00:00+08:00") == NOON_CHINA


# --- settling ---------------------------------------------------------------------------

def test_first_report_marks_paid_with_the_facts(store, config, order, clock):
    clock.advance(60_000)
    result = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1, payer_total=900,
                                                           amount={"total": 1000, "payer_total": 900}),
                                source="notification")
    assert result.outcome == PAID and result.anomaly is None and result.out_trade_no == OTN
    paid = store.get_order(OTN)
    assert paid["payStatus"] == st.SUCCESS
    assert paid["transactionId"] == T1 and paid["paidAt"] == PAID_AT
    assert paid["payerTotal"] == 900 and paid["refundableFee"] == 1000
    assert paid["payerOpenid"] == "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" and paid["paidVia"] == "notification"
    assert paid["updateTime"] == clock.now and paid["createTime"] == clock.now - 60_000
    events = store.events_of(OTN)
    assert [(e["type"], e["transactionId"], e["totalFee"]) for e in events] == [("order.paid", T1, 1000)]
    assert store.list_anomalies() == []


def test_repeated_report_is_already_paid_and_changes_nothing(store, config, order, clock):
    first = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1), source="notification")
    assert first.outcome == PAID
    before = store.get_order(OTN)
    clock.advance(15_000)
    for source in ("notification", "query", "sweep"):
        again = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1), source=source)
        assert again.outcome == ALREADY_PAID and again.anomaly is None
    assert store.get_order(OTN) == before  # not even updateTime moved
    assert store.count_events("order.paid", OTN) == 1 and store.list_anomalies() == []


def test_paid_at_falls_back_to_the_clock_and_payer_total_to_total(store, config, order, clock):
    clock.advance(5_000)
    report = transaction(OTN, 1000, transaction_id=T1, success_time="garbage",
                         amount={"total": 1000, "currency": "CNY"})
    assert settle_transaction(store, config, report, source="query").outcome == PAID
    paid = store.get_order(OTN)
    assert paid["paidAt"] == clock.now and paid["payerTotal"] == 1000


@pytest.mark.parametrize("state", ["NOTPAY", "CLOSED", "REFUND", "PAYERROR", "USERPAYING", "REVOKED"])
def test_a_report_that_is_not_a_payment_changes_nothing(store, config, order, state):
    result = settle_transaction(store, config, transaction(OTN, 1000, trade_state=state), source="query")
    assert result.outcome == NOT_PAID
    assert store.get_order(OTN) == order
    assert store.events_of(OTN) == [] and store.list_anomalies() == []


@pytest.mark.parametrize(("changes", "kind"), [
    ({"mchid": "1900000999"}, "merchant_mismatch"),
    ({"mchid": None}, "merchant_mismatch"),
    ({"appid": "wx9999999999999999"}, "app_mismatch"),
    ({"amount": {"total": 999, "payer_total": 999}}, "amount_mismatch"),
    ({"amount": {"total": 1000.0}}, "amount_mismatch"),        # a float is not fen
    ({"amount": {"total": "1000"}}, "amount_mismatch"),
    ({"amount": None}, "amount_mismatch"),
    ({"transaction_id": ""}, "missing_transaction_id"),
])
def test_mismatches_are_anomalies_never_payments(store, config, order, clock, changes, kind):
    report = {**transaction(OTN, 1000, transaction_id=T1), **changes}
    clock.advance(1_000)
    for _ in range(3):  # WeChat's retries of the same report add no second record
        result = settle_transaction(store, config, report, source="notification")
        assert result.outcome == ANOMALY and result.anomaly == kind
    assert store.get_order(OTN) == order
    assert store.count_events("order.paid") == 0
    anomalies = store.list_anomalies(OTN)
    assert [a["kind"] for a in anomalies] == [kind] and anomalies[0]["status"] == "OPEN"
    evidence = anomalies[0]["evidence"]
    assert evidence["source"] == "notification" and evidence["orderTotalFee"] == 1000
    assert evidence["orderStatus"] == st.NOTPAY and anomalies[0]["createTime"] == clock.now


def test_order_appid_other_than_ours_is_an_app_mismatch(store, config, clock):
    new_order(store, OTN, 1000, appid="wx9999999999999999")
    result = settle_transaction(store, config, transaction(OTN, 1000), source="notification")
    assert result.anomaly == "app_mismatch"
    assert store.get_order(OTN)["payStatus"] == st.NOTPAY


def test_unknown_order_is_an_anomaly_with_the_evidence(store, config):
    result = settle_transaction(store, config, transaction("261126120000unitNoSuch0001", 500, transaction_id=T1),
                                source="notification")
    assert result.outcome == ANOMALY and result.anomaly == "unknown_order" and result.order is None
    [anomaly] = store.list_anomalies()
    assert anomaly["kind"] == "unknown_order" and anomaly["outTradeNo"] == "261126120000unitNoSuch0001"
    assert anomaly["evidence"]["transactionId"] == T1 and anomaly["evidence"]["total"] == 500
    assert anomaly["evidence"]["openid"] == "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    assert store.count_orders() == 0


def test_payment_for_a_closed_order_is_paid_after_close(store, config, order):
    store.transition(OTN, st.CLOSED)
    closed = store.get_order(OTN)
    result = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1), source="notification")
    assert result.outcome == ANOMALY and result.anomaly == "paid_after_close"
    assert store.get_order(OTN) == closed and store.count_events("order.paid") == 0
    assert [a["kind"] for a in store.list_anomalies(OTN)] == ["paid_after_close"]


# (2) An order paid under T1 that WeChat reports paid under T2 is a second payment: money to
# give back, never "already paid".

def test_second_transaction_for_a_paid_order_is_a_duplicate_payment(store, config, order, clock):
    assert settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1),
                              source="notification").outcome == PAID
    paid = store.get_order(OTN)
    clock.advance(30_000)
    for _ in range(2):
        result = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T2,
                                                               success_time="2026-11-26T12:05:00+08:00"),
                                    source="notification")
        assert result.outcome == ANOMALY and result.anomaly == "duplicate_payment"
    assert store.get_order(OTN) == paid  # still T1, its paidAt, its updateTime
    assert store.count_events("order.paid", OTN) == 1
    [anomaly] = store.list_anomalies(OTN)
    assert anomaly["kind"] == "duplicate_payment" and anomaly["evidence"]["transactionId"] == T2
    assert anomaly["evidence"]["orderStatus"] == st.SUCCESS


def test_second_transaction_after_a_refund_is_a_duplicate_payment_too(store, config, order):
    settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1), source="notification")
    assert store.reserve_refund(OTN, "R1", 100) is not None
    assert store.settle_refund(OTN, "R1", 100, "SUCCEEDED") is not None
    store.transition(OTN, st.REFUND)
    assert settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1),
                              source="query").outcome == ALREADY_PAID
    result = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T2), source="query")
    assert result.anomaly == "duplicate_payment"
    assert store.get_order(OTN)["transactionId"] == T1 and store.get_order(OTN)["payStatus"] == st.REFUND


# (1) The `except IllegalTransition` branch: the order looked payable when it was read and
# changed before the compare-and-set.

def test_race_paid_under_another_transaction_between_read_and_write(store, config, order, clock):
    def other_notification_wins(*_args, **_kwargs):
        clock.advance(10)
        assert settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1),
                                  source="notification").outcome == PAID

    store.before("transition", other_notification_wins)
    result = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T2), source="query")
    assert result.outcome == ANOMALY and result.anomaly == "duplicate_payment"
    assert result.order["payStatus"] == st.SUCCESS and result.order["transactionId"] == T1
    paid = store.get_order(OTN)
    assert paid["transactionId"] == T1 and paid["paidVia"] == "notification"
    assert store.count_events("order.paid", OTN) == 1
    [anomaly] = store.list_anomalies(OTN)
    assert anomaly["kind"] == "duplicate_payment"
    assert anomaly["evidence"]["transactionId"] == T2 and anomaly["evidence"]["orderStatus"] == st.SUCCESS
    assert anomaly["evidence"]["source"] == "query"


def test_race_closed_between_read_and_write_is_paid_after_close(store, config, order, clock):
    def sweep_closes_it(*_args, **_kwargs):
        clock.advance(10)
        assert store.transition(OTN, st.CLOSED, fields={"closedAt": clock.now}).applied

    store.before("transition", sweep_closes_it)
    result = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1), source="notification")
    assert result.outcome == ANOMALY and result.anomaly == "paid_after_close"
    closed = store.get_order(OTN)
    assert closed["payStatus"] == st.CLOSED and closed["transactionId"] is None and closed["paidAt"] is None
    assert store.count_events("order.paid") == 0 and store.count_events("order.closed", OTN) == 1
    [anomaly] = store.list_anomalies(OTN)
    assert anomaly["kind"] == "paid_after_close" and anomaly["evidence"]["orderStatus"] == st.CLOSED
    assert anomaly["evidence"]["transactionId"] == T1


# (3) PAYERROR -> SUCCESS: a failed prepay that WeChat Pay reports paid is paid.

def test_failed_prepay_reported_paid_becomes_success_once(store, config, order, clock):
    store.transition(OTN, st.PAYERROR, fields={"failure": "WECHATPAY_UNREACHABLE", "closeAtWeChat": True})
    clock.advance(120_000)
    for expected in (PAID, ALREADY_PAID):
        result = settle_transaction(store, config, transaction(OTN, 1000, transaction_id=T1), source="sweep")
        assert result.outcome == expected
    paid = store.get_order(OTN)
    assert paid["payStatus"] == st.SUCCESS and paid["transactionId"] == T1
    assert paid["refundableFee"] == 1000 and paid["updateTime"] == clock.now
    assert store.count_events("order.paid", OTN) == 1 and store.list_anomalies() == []


def test_concurrent_reports_of_one_payment_settle_once(store, config, order):
    report = transaction(OTN, 1000, transaction_id=T1)
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(lambda _: settle_transaction(store, config, report, source="notification").outcome,
                                 range(32)))
    assert outcomes.count(PAID) == 1 and outcomes.count(ALREADY_PAID) == 31
    assert store.count_events("order.paid", OTN) == 1 and store.list_anomalies() == []


def test_config_merchant_and_app_are_the_ones_checked(config):
    # The fixtures above rely on tests.keys' ids being the configured ones.
    assert (config.wechatpay_mchid, config.wechat_appid) == (MCHID, APPID)
