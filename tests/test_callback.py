"""The callback function through main_handler, against the wire-protocol MongoDB (issue 5).

Notifications here are built and signed by tests/keys.py; test_flow.py has the
simulator send them over HTTP through the local gateway.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import order_states as st
from tests.functions import http_event, load_function, reply_json
from tests.keys import APPID, MCHID, key_pair, make_notification, transaction

OTN = "T20261126000000000001"
TXN = "4200000001202611260000000001"


def refund_resource(out_refund_no="R1", amount=40, status="SUCCESS", out_trade_no=OTN, **fields):
    data = {"mchid": MCHID, "transaction_id": TXN, "out_trade_no": out_trade_no, "refund_id": "5030" + out_refund_no,
            "out_refund_no": out_refund_no, "refund_status": status, "success_time": "2026-11-26T12:00:00+08:00",
            "user_received_account": "支付用户零钱",
            "amount": {"total": 100, "refund": amount, "payer_total": 100, "payer_refund": amount}}
    data.update(fields)
    return data


@pytest.fixture
def callback(function_env):
    return load_function("callback")


@pytest.fixture
def order(env_store):
    env_store.insert_order({"outTradeNo": OTN, "openid": "oUser", "appid": APPID, "mchid": MCHID,
                            "items": [], "totalFee": 100, "description": "Tea x1",
                            "expireTime": env_store.clock() + 1_800_000})
    return env_store


def deliver(handler, headers, body, shape="url"):
    return handler(http_event("POST", "/callback", body=body, headers=headers, shape=shape), {})


@pytest.mark.parametrize("shape", ["url", "apigw"])
def test_payment_notification_marks_paid_once(callback, order, shape):
    headers, body = make_notification(transaction(OTN, total=100, transaction_id=TXN))
    reply = deliver(callback, headers, body, shape)
    assert reply["statusCode"] == 204 and reply["body"] == ""
    paid = order.get_order(OTN)
    assert paid["payStatus"] == st.SUCCESS and paid["transactionId"] == TXN
    assert paid["paidAt"] == 1_714_536_000_000  # success_time 2024-05-01T12:00:00+08:00
    assert paid["payerTotal"] == 100 and paid["refundableFee"] == 100
    assert order.count_events("order.paid", OTN) == 1
    # WeChat's retry of the same notification: success, nothing changes.
    assert deliver(callback, headers, body, shape)["statusCode"] == 204
    assert order.count_events("order.paid", OTN) == 1


def test_fifty_concurrent_deliveries_one_transition_one_event(callback, order):
    headers, body = make_notification(transaction(OTN, total=100, transaction_id=TXN))
    barrier = threading.Barrier(50)

    def one(_):
        barrier.wait()
        return deliver(callback, headers, body)["statusCode"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(one, range(50)))
    assert statuses == [204] * 50
    assert order.count_events("order.paid", OTN) == 1
    assert order.get_order(OTN)["payStatus"] == st.SUCCESS


def _reserialised(body: bytes) -> bytes:
    return json.dumps(json.loads(body), indent=2).encode()


def _tampered(body: bytes) -> bytes:
    return body.replace(b'"TRANSACTION.SUCCESS"', b'"TRANSACTION.SUCCESX"')


@pytest.mark.parametrize("case, build, status, code", [
    ("forged", lambda: make_notification(transaction(OTN), platform_key=key_pair("attacker").private_key),
     401, "SIGNATURE_INVALID"),
    ("reserialised", lambda: (lambda h, b: (h, _reserialised(b)))(*make_notification(transaction(OTN))),
     401, "SIGNATURE_INVALID"),
    ("tampered", lambda: (lambda h, b: (h, _tampered(b)))(*make_notification(transaction(OTN))),
     401, "SIGNATURE_INVALID"),
    ("old", lambda: make_notification(transaction(OTN), timestamp=int(time.time()) - 310), 401,
     "TIMESTAMP_OUT_OF_RANGE"),
    ("future", lambda: make_notification(transaction(OTN), timestamp=int(time.time()) + 310), 401,
     "TIMESTAMP_OUT_OF_RANGE"),
    ("serial", lambda: make_notification(transaction(OTN), serial="PUB_KEY_ID_0000000000OTHER"), 401,
     "UNKNOWN_SERIAL"),
    ("probe", lambda: make_notification(transaction(OTN), signature="WECHATPAY/SIGNTEST/abcdef=="), 401,
     "SIGNATURE_PROBE"),
    ("empty", lambda: make_notification({}, body=b""), 400, "MALFORMED_NOTIFICATION"),
    ("not json", lambda: make_notification({}, body=b"<xml>hello</xml>"), 400, "MALFORMED_NOTIFICATION"),
    ("wrong apiv3 key", lambda: make_notification(transaction(OTN), apiv3_key="x" * 32), 400,
     "DECRYPT_FAILED"),
    ("no headers", lambda: ({}, make_notification(transaction(OTN))[1]), 400, "MALFORMED_NOTIFICATION"),
])
def test_bad_notifications_are_refused_and_the_order_untouched(callback, order, case, build, status, code):
    headers, body = build()
    reply = deliver(callback, headers, body)
    assert reply["statusCode"] == status, (case, reply)
    assert reply_json(reply) == {"code": "FAIL", "message": reply_json(reply)["message"]}
    assert order.get_order(OTN)["payStatus"] == st.NOTPAY
    assert order.count_events("order.paid") == 0 and order.list_anomalies() == []


def test_giant_body_is_refused(callback, order):
    headers, body = make_notification(transaction(OTN), body=b"{" + b" " * 200_000 + b"}")
    reply = deliver(callback, headers, body)
    assert reply["statusCode"] == 413 and reply_json(reply)["code"] == "FAIL"


def test_rejections_touch_no_store(function_env):
    """Signature checks come first: with MongoDB unreachable a forgery still gets 401, fast."""
    function_env(MONGODB_URI="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=3000")
    handler = load_function("callback")
    headers, body = make_notification(transaction(OTN), platform_key=key_pair("attacker").private_key)
    started = time.monotonic()
    reply = deliver(handler, headers, body)
    assert reply["statusCode"] == 401 and time.monotonic() - started < 1.5


def test_get_is_not_a_notification(callback):
    assert callback(http_event("GET", "/callback"), {})["statusCode"] == 405


@pytest.mark.parametrize("resource, kind", [
    (transaction(OTN, total=1, transaction_id=TXN), "amount_mismatch"),
    (transaction(OTN, total=100, mchid="1900000999", transaction_id=TXN), "merchant_mismatch"),
    (transaction(OTN, total=100, appid="wx0000000000000000", transaction_id=TXN), "app_mismatch"),
    (transaction("T20261126UNKNOWN0001", total=100, transaction_id=TXN), "unknown_order"),
])
def test_mismatches_are_anomalies_not_payments(callback, order, resource, kind):
    headers, body = make_notification(resource)
    for _ in range(3):  # WeChat retries; the anomaly is recorded once
        assert deliver(callback, headers, body)["statusCode"] == 204
    assert order.get_order(OTN)["payStatus"] == st.NOTPAY
    assert order.count_events("order.paid") == 0
    anomalies = order.list_anomalies()
    assert [a["kind"] for a in anomalies] == [kind]
    assert anomalies[0]["evidence"]["transactionId"] == TXN


def test_payment_for_a_closed_order_is_an_anomaly(callback, order):
    order.transition(OTN, st.CLOSED)
    headers, body = make_notification(transaction(OTN, total=100, transaction_id=TXN))
    assert deliver(callback, headers, body)["statusCode"] == 204
    assert order.get_order(OTN)["payStatus"] == st.CLOSED
    assert [a["kind"] for a in order.list_anomalies(OTN)] == ["paid_after_close"]


def test_store_stopped_answers_503_then_the_retry_settles(function_env, private_mongo, db_name):
    """A real outage: the server is stopped while the notification arrives."""
    from shared.store.mongo import MongoOrderStore

    uri = f"{private_mongo.uri}/?serverSelectionTimeoutMS=700&connectTimeoutMS=700"
    function_env(MONGODB_URI=uri)
    store = MongoOrderStore(uri, db_name)
    store.insert_order({"outTradeNo": OTN, "openid": "oUser", "appid": APPID, "mchid": MCHID, "items": [],
                        "totalFee": 100, "description": "Tea x1", "expireTime": store.clock() + 1_800_000})
    handler = load_function("callback")
    headers, body = make_notification(transaction(OTN, total=100, transaction_id=TXN))

    private_mongo.stop()
    reply = deliver(handler, headers, body)
    assert reply["statusCode"] == 503
    assert reply_json(reply) == {"code": "FAIL", "message": "the order store is unavailable, try again shortly"}

    private_mongo.start()
    deadline = time.monotonic() + 10
    while (reply := deliver(handler, headers, body))["statusCode"] == 503:  # WeChat's retries
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert reply["statusCode"] == 204
    assert store.get_order(OTN)["payStatus"] == st.SUCCESS and store.count_events("order.paid", OTN) == 1


# --- refund notifications ------------------------------------------------------------------

@pytest.fixture
def paid(callback, order):
    headers, body = make_notification(transaction(OTN, total=100, transaction_id=TXN))
    assert deliver(callback, headers, body)["statusCode"] == 204
    return order


def _request_refund(store, out_refund_no, amount):
    """What RefundService.request_refund leaves behind before WeChat answers."""
    store.insert_refund({"outRefundNo": out_refund_no, "outTradeNo": OTN, "amount": amount,
                         "status": "PROCESSING", "source": "request", "createTime": 1, "updateTime": 1})
    assert store.reserve_refund(OTN, out_refund_no, amount) is not None


def test_refund_success_once(callback, paid):
    _request_refund(paid, "R1", 40)
    headers, body = make_notification(refund_resource("R1", 40), event_type="REFUND.SUCCESS")
    for _ in range(3):
        assert deliver(callback, headers, body)["statusCode"] == 204
    order = paid.get_order(OTN)
    assert order["payStatus"] == st.REFUND
    assert (order["refundedFee"], order["refundingFee"], order["refundableFee"]) == (40, 0, 60)
    assert paid.find_refund("R1")["status"] == "SUCCESS"
    assert paid.count_events("refund.succeeded", OTN) == 1
    # A replayed payment notification after the refund is "already done".
    headers, body = make_notification(transaction(OTN, total=100, transaction_id=TXN))
    assert deliver(callback, headers, body)["statusCode"] == 204
    assert paid.get_order(OTN)["payStatus"] == st.REFUND and paid.count_events("order.paid") == 1


def test_refund_closed_releases_the_reservation(callback, paid):
    _request_refund(paid, "R2", 100)
    headers, body = make_notification(refund_resource("R2", 100, "CLOSED"), event_type="REFUND.CLOSED")
    assert deliver(callback, headers, body)["statusCode"] == 204
    order = paid.get_order(OTN)
    assert (order["refundedFee"], order["refundingFee"], order["refundableFee"]) == (0, 0, 100)
    assert order["payStatus"] == st.SUCCESS and paid.find_refund("R2")["status"] == "CLOSED"
    assert paid.count_events("refund.succeeded") == 0


def test_refund_abnormal_keeps_the_reservation_and_tells_a_human(callback, paid):
    _request_refund(paid, "R3", 30)
    headers, body = make_notification(refund_resource("R3", 30, "ABNORMAL"), event_type="REFUND.ABNORMAL")
    assert deliver(callback, headers, body)["statusCode"] == 204
    assert deliver(callback, headers, body)["statusCode"] == 204
    order = paid.get_order(OTN)
    assert (order["refundingFee"], order["refundableFee"]) == (30, 70)
    assert paid.find_refund("R3")["status"] == "ABNORMAL"
    assert [a["kind"] for a in paid.list_anomalies(OTN)] == ["refund_abnormal"]


def test_refund_notification_before_the_refund_is_known_is_recorded(callback, paid):
    headers, body = make_notification(refund_resource("R-CONSOLE-1", 25), event_type="REFUND.SUCCESS")
    assert deliver(callback, headers, body)["statusCode"] == 204
    assert deliver(callback, headers, body)["statusCode"] == 204
    record = paid.find_refund("R-CONSOLE-1")
    assert record is not None and record["amount"] == 25 and record["status"] == "SUCCESS"
    order = paid.get_order(OTN)
    assert (order["refundedFee"], order["refundableFee"]) == (25, 75) and order["payStatus"] == st.REFUND
    assert paid.count_events("refund.succeeded", OTN) == 1


def test_refund_for_an_unknown_order_is_recorded_as_anomaly(callback, order):
    headers, body = make_notification(refund_resource("R9", 10, out_trade_no="T20261126NOSUCH0001"),
                                      event_type="REFUND.SUCCESS")
    assert deliver(callback, headers, body)["statusCode"] == 204
    assert order.find_refund("R9") is not None
    assert [a["kind"] for a in order.list_anomalies()] == ["refund_unmatched"]


def test_one_log_line_per_notification_without_keys(callback, order):
    import io
    import sys

    from shared import log as log_module
    from tests.keys import APIV3_KEY

    sink = io.StringIO()
    log_module.set_sink(sink)
    try:
        headers, body = make_notification(transaction(OTN, total=100, transaction_id=TXN, bank_type="CMB_DEBIT",
                                                      attach="secret-attach"))
        assert deliver(callback, headers, body)["statusCode"] == 204
    finally:
        log_module.set_sink(sys.stdout)
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    notes = [line for line in lines if line["event"] == "callback.notification"]
    assert len(notes) == 1
    assert {"eventId", "outTradeNo", "outcome", "ms"} <= set(notes[0]) and notes[0]["outcome"] == "paid"
    text = sink.getvalue()
    for secret in (APIV3_KEY, "CMB_DEBIT", "secret-attach", headers["Wechatpay-Signature"],
                   json.loads(body)["resource"]["ciphertext"][:40]):
        assert secret not in text
