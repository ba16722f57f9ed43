"""verify_webhook: what a shop's receiver accepts and refuses (no network)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from shared.errors import WebhookRejected
from shared.outbox import fact_body
from shared.webhook import sign_webhook, verify_webhook

SECRET = "a-shared-secret-of-at-least-32-bytes!"
NOW = 1_796_178_260
BODY = fact_body({"key": "order.paid:T20261201000001", "type": "order.paid", "createTime": NOW * 1000,
                  "outTradeNo": "T20261201000001", "totalFee": 3980, "items": [{"sku": "A1", "quantity": 2}]})


def _refused(headers, body=BODY, secret=SECRET, **kwargs) -> str:
    with pytest.raises(WebhookRejected) as caught:
        verify_webhook(headers, body, secret, now=NOW, **kwargs)
    assert caught.value.status == 400
    return caught.value.code


def test_a_signed_delivery_verifies_and_returns_the_fact():
    headers = sign_webhook(SECRET, BODY, timestamp=NOW)
    fact = verify_webhook(headers, BODY, SECRET, now=NOW)
    assert fact == {"id": "order.paid:T20261201000001", "type": "order.paid", "createTime": NOW * 1000,
                    "data": {"outTradeNo": "T20261201000001", "totalFee": 3980,
                             "items": [{"sku": "A1", "quantity": 2}]}}


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body_in_lower_hex():
    headers = sign_webhook(SECRET, BODY, timestamp=NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {"CloudPay-Timestamp": str(NOW), "CloudPay-Signature": f"v1={expected}"}


def test_header_names_are_matched_in_any_case_and_bytes_or_text_secrets_agree():
    headers = {k.lower(): v for k, v in sign_webhook(SECRET, BODY, timestamp=NOW).items()}
    assert verify_webhook(headers, BODY.decode(), SECRET.encode(), now=NOW)["type"] == "order.paid"


def test_tampered_bodies_and_wrong_secrets_are_refused():
    headers = sign_webhook(SECRET, BODY, timestamp=NOW)
    tampered = BODY.replace(b"3980", b"1")
    assert _refused(headers, tampered) == "WEBHOOK_SIGNATURE_INVALID"
    assert _refused(headers, secret="another-secret-of-at-least-32-bytes") == "WEBHOOK_SIGNATURE_INVALID"
    # The timestamp is signed: a fresh timestamp on old bytes does not verify.
    moved = {**headers, "CloudPay-Timestamp": str(NOW + 1)}
    assert _refused(moved) == "WEBHOOK_SIGNATURE_INVALID"


@pytest.mark.parametrize("offset", [301, -301, 86_400, -86_400])
def test_stale_and_future_timestamps_are_refused_both_ways(offset):
    headers = sign_webhook(SECRET, BODY, timestamp=NOW + offset)
    assert _refused(headers) == "WEBHOOK_TIMESTAMP"


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_timestamps_inside_the_window_are_accepted(offset):
    assert verify_webhook(sign_webhook(SECRET, BODY, timestamp=NOW + offset), BODY, SECRET, now=NOW)


def test_the_window_is_the_callers():
    headers = sign_webhook(SECRET, BODY, timestamp=NOW - 100)
    assert _refused(headers, tolerance=60) == "WEBHOOK_TIMESTAMP"


@pytest.mark.parametrize("headers", [
    {},
    {"CloudPay-Timestamp": str(NOW)},
    {"CloudPay-Signature": "v1=00"},
    {"CloudPay-Timestamp": "", "CloudPay-Signature": "v1=00"},
])
def test_unsigned_deliveries_are_refused(headers):
    assert _refused(headers) == "WEBHOOK_UNSIGNED"


@pytest.mark.parametrize("timestamp", ["abc", "1.5", "-1", "１２３", "9" * 13])
def test_malformed_timestamps_are_refused(timestamp):
    headers = {**sign_webhook(SECRET, BODY, timestamp=NOW), "CloudPay-Timestamp": timestamp}
    assert _refused(headers) == "WEBHOOK_TIMESTAMP"


@pytest.mark.parametrize("signature", ["v1=", "v0=abc", "sha256=abc", "v1=" + "0" * 64, "v1=ZZ"])
def test_wrong_signature_values_are_refused(signature):
    headers = {**sign_webhook(SECRET, BODY, timestamp=NOW), "CloudPay-Signature": signature}
    assert _refused(headers) == "WEBHOOK_SIGNATURE_INVALID"


def test_one_of_several_signatures_may_match_while_a_secret_rotates():
    good = sign_webhook(SECRET, BODY, timestamp=NOW)["CloudPay-Signature"]
    headers = {"CloudPay-Timestamp": str(NOW), "CloudPay-Signature": "v1=" + "0" * 64 + ", " + good}
    assert verify_webhook(headers, BODY, SECRET, now=NOW)["id"].startswith("order.paid:")


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"type": "order.paid"}',
                                  "\udcff".encode("utf-8", "surrogatepass")])
def test_a_signed_body_that_is_not_a_fact_is_refused(body):
    headers = sign_webhook(SECRET, body, timestamp=NOW)
    assert _refused(headers, body) == "WEBHOOK_BODY_INVALID"


def test_the_body_is_compact_sorted_utf8_json_with_stable_fields():
    body = fact_body({"key": "refund.succeeded:R1", "type": "refund.succeeded", "createTime": 5,
                      "outTradeNo": "T1", "outRefundNo": "R1", "amount": 500, "_id": "internal", "note": "退款"})
    assert body == '{"createTime":5,"data":{"amount":500,"note":"退款","outRefundNo":"R1","outTradeNo":"T1"},'\
                   '"id":"refund.succeeded:R1","type":"refund.succeeded"}'.encode()
    assert json.loads(body)["data"]["note"] == "退款"


def test_an_empty_secret_is_a_programming_error():
    with pytest.raises(ValueError):
        verify_webhook(sign_webhook(SECRET, BODY), BODY, "")
