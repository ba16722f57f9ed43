"""NotificationService on InMemoryOrderStore, with real verification: every notification
here is encrypted and signed by tests/keys.make_notification, as WeChat Pay does it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import order_states as st
from shared.errors import (
    DecryptFailed,
    MalformedNotification,
    SignatureInvalid,
    SignatureProbe,
    StoreUnavailable,
    TimestampOutOfRange,
    UnknownSerial,
)
from shared.notifications import NotificationService, failure_body
from tests.keys import key_pair, make_notification
from tests.unit.fakes import new_order, refund_result, transaction

OTN = "261126120000unitNotify0001"
T1 = "4200000001202611260000000001"
T2 = "4200000001202611260000000002"


@pytest.fixture
def order(store):
    return new_order(store, OTN, 1000)


@pytest.fixture
def service(config, store):
    return NotificationService(config, store)


def payment(total=1000, transaction_id=T1, **fields):
    return make_notification(transaction(OTN, total, transaction_id=transaction_id, **fields))


def test_payment_notification_marks_paid_once(service, order, store, clock):
    headers, body = payment()
    clock.advance(30_000)
    for _ in range(3):  # WeChat's retries of one notification
        assert service.handle(headers, body) == (204, None)
    paid = store.get_order(OTN)
    assert paid["payStatus"] == st.SUCCESS and paid["transactionId"] == T1
    assert paid["paidVia"] == "notification" and paid["updateTime"] == clock.now
    assert paid["paidAt"] == 1_795_665_660_000
    assert store.count_events("order.paid", OTN) == 1 and store.list_anomalies() == []


def test_concurrent_deliveries_apply_once(service, order, store):
    headers, body = payment()
    start = threading.Barrier(8)

    def deliver(_):
        start.wait(5)
        return service.handle(headers, body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(deliver, range(16))) == {(204, None)}
    assert store.count_events("order.paid", OTN) == 1


@pytest.mark.parametrize(("changes", "kind"), [
    ({"total": 999}, "amount_mismatch"),
    ({"mchid": "1900000999"}, "merchant_mismatch"),
    ({"appid": "wx9999999999999999"}, "app_mismatch"),
])
def test_mismatch_is_acknowledged_and_recorded_never_paid(service, order, store, changes, kind):
    total = changes.pop("total", 1000)
    headers, body = payment(total, **changes)
    assert service.handle(headers, body) == (204, None)
    assert service.handle(headers, body) == (204, None)
    assert store.get_order(OTN) == order
    assert [a["kind"] for a in store.list_anomalies(OTN)] == [kind]


def test_second_transaction_for_a_paid_order_is_a_duplicate_payment(service, order, store):
    service.handle(*payment(transaction_id=T1))
    paid = store.get_order(OTN)
    assert service.handle(*payment(transaction_id=T2)) == (204, None)
    assert store.get_order(OTN) == paid
    [anomaly] = store.list_anomalies(OTN)
    assert anomaly["kind"] == "duplicate_payment" and anomaly["evidence"]["transactionId"] == T2
    assert store.count_events("order.paid") == 1


def test_payment_for_a_failed_prepay_is_applied(service, order, store, clock):
    store.transition(OTN, st.PAYERROR, fields={"failure": "WECHATPAY_UNREACHABLE", "closeAtWeChat": True})
    clock.advance(1_000)
    assert service.handle(*payment()) == (204, None)
    paid = store.get_order(OTN)
    assert paid["payStatus"] == st.SUCCESS and paid["updateTime"] == clock.now
    assert store.count_events("order.paid", OTN) == 1


def test_refund_notifications_apply_once(service, order, store, clock):
    service.handle(*payment())
    assert store.reserve_refund(OTN, "R1", 400) is not None
    store.insert_refund({"outRefundNo": "R1", "outTradeNo": OTN, "amount": 400, "status": "PROCESSING",
                         "source": "request", "createTime": clock.now, "updateTime": clock.now})
    clock.advance(60_000)
    headers, body = make_notification(refund_result("R1", OTN, 400, "SUCCESS", notification=True),
                                      event_type="REFUND.SUCCESS")
    for _ in range(2):
        assert service.handle(headers, body) == (204, None)
    order = store.get_order(OTN)
    assert (order["refundableFee"], order["refundingFee"], order["refundedFee"]) == (600, 0, 400)
    assert order["payStatus"] == st.REFUND and order["updateTime"] == clock.now
    assert store.find_refund("R1")["status"] == "SUCCESS" and store.find_refund("R1")["updateTime"] == clock.now
    assert store.count_events("refund.succeeded", OTN) == 1


def test_console_refund_notification_is_recorded_not_dropped(service, order, store):
    service.handle(*payment())
    headers, body = make_notification(refund_result("R-CONSOLE-1", OTN, 250, "SUCCESS", notification=True),
                                      event_type="REFUND.SUCCESS")
    assert service.handle(headers, body) == (204, None)
    assert store.find_refund("R-CONSOLE-1")["status"] == "SUCCESS"
    assert store.get_order(OTN)["refundedFee"] == 250 and store.list_anomalies() == []


def test_unknown_event_type_is_recorded_once_per_notification(service, order, store):
    headers, body = make_notification(transaction(OTN, 1000), event_type="TRANSACTION.SOMETHING",
                                      notification_id="EV-1")
    for _ in range(2):
        assert service.handle(headers, body) == (204, None)
    [anomaly] = store.list_anomalies()
    assert anomaly["kind"] == "unknown_event_type" and anomaly["evidence"] == {"eventType": "TRANSACTION.SOMETHING"}
    assert store.get_order(OTN) == order


def _tampered(headers_body):
    headers, body = headers_body
    return headers, body.replace(b'"event_type"', b'"event_type" ', 1)


@pytest.mark.parametrize(("build", "error"), [
    (lambda: _tampered(payment()), SignatureInvalid),
    (lambda: make_notification(transaction(OTN, 1000), platform_key=key_pair("intruder").private_key),
     SignatureInvalid),
    (lambda: make_notification(transaction(OTN, 1000), serial="PUB_KEY_ID_OTHER"), UnknownSerial),
    (lambda: make_notification(transaction(OTN, 1000), timestamp=int(time.time()) - 310), TimestampOutOfRange),
    (lambda: make_notification(transaction(OTN, 1000), timestamp=int(time.time()) + 310), TimestampOutOfRange),
    (lambda: make_notification(transaction(OTN, 1000), signature="WECHATPAY/SIGNTEST/abc"), SignatureProbe),
    (lambda: ({}, b"{}"), MalformedNotification),
], ids=["body-tampered", "foreign-key", "serial", "old", "future", "probe", "no-headers"])
def test_refused_notifications_never_open_the_store(config, store, order, build, error):
    opened = []

    def open_store():
        opened.append(True)
        return store

    service = NotificationService(config, open_store)
    headers, body = build()
    with pytest.raises(error) as caught:
        service.handle(headers, body)
    assert caught.value.status in (400, 401)
    assert failure_body(caught.value) == {"code": "FAIL", "message": caught.value.message}
    assert opened == [] and store.get_order(OTN) == order


@pytest.mark.parametrize(("build", "error", "event_type"), [
    (lambda: make_notification(transaction(OTN, 1000), apiv3_key="b" * 32), DecryptFailed, "TRANSACTION.SUCCESS"),
    (lambda: make_notification({}, body=b'{"id": "EV-1"}'), MalformedNotification, None),
], ids=["apiv3-key", "no-resource"])
def test_signed_but_unreadable_notifications_are_kept_and_change_nothing(config, store, order, build, error,
                                                                         event_type):
    """WeChat Pay signed them (so not a forgery): refused, and kept as received for a replay
    once the cause (e.g. our APIv3 key) is fixed; the order is not touched."""
    service = NotificationService(config, store)
    headers, body = build()
    with pytest.raises(error) as caught:
        service.handle(headers, body)
    assert caught.value.status == 400 and store.get_order(OTN) == order
    [kept] = store.list_notifications()
    assert (kept["status"], kept["outcome"], kept["eventType"], kept["outTradeNo"]) == (
        400, caught.value.code, event_type, None)


def test_store_built_only_after_a_notification_verified(config, store, order):
    opened = []

    def open_store():
        opened.append(True)
        return store

    service = NotificationService(config, open_store)
    service.handle(*payment())
    service.handle(*payment())
    assert opened == [True] and store.get_order(OTN)["payStatus"] == st.SUCCESS


def test_store_outage_raises_for_a_retry_that_then_settles(service, order, store):
    headers, body = payment()
    store.available = False
    with pytest.raises(StoreUnavailable) as caught:
        service.handle(headers, body)
    assert caught.value.status == 503
    store.available = True
    assert store.get_order(OTN) == order
    assert service.handle(headers, body) == (204, None)  # WeChat's retry
    assert store.get_order(OTN)["payStatus"] == st.SUCCESS and store.count_events("order.paid") == 1
