"""shared.wechatpay.notification.verify_notification: each rejection has its own class.

The clock is injected (`now=`), so timestamp windows are exact.  Cross-checks: our
notifications are accepted by wechatpayv3's `callback`, and a notification signed with
wechatpayv3's utils is accepted by ours.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3 import utils as v3utils

from shared.errors import (
    DecryptFailed,
    MalformedNotification,
    NotificationRejected,
    SignatureInvalid,
    SignatureProbe,
    TimestampOutOfRange,
    UnknownSerial,
)
from shared.wechatpay import signing
from shared.wechatpay.notification import verify_notification, verify_signature
from tests.keys import (
    APIV3_KEY,
    APPID,
    CERT_SERIAL_NO,
    MCHID,
    PUBLIC_KEY_ID,
    key_pair,
    make_notification,
    merchant_keys,
    platform_keys,
    transaction,
)

NOW = 1_714_536_000  # 2024-05-01T04:00:00Z


APIV3_KEY_BYTES = APIV3_KEY.encode()


def verify(headers, body, *, now=NOW, apiv3_key=APIV3_KEY_BYTES, **kwargs):
    return verify_notification(headers, body, public_key=platform_keys().public_key,
                               public_key_id=PUBLIC_KEY_ID, apiv3_key=apiv3_key, now=now, **kwargs)


def test_valid_notification_is_decrypted():
    resource = transaction(out_trade_no="T20240501ABC", total=8800)
    headers, body = make_notification(resource, timestamp=NOW)
    result = verify(headers, body)
    assert result["resource"] == resource
    assert result["event_type"] == "TRANSACTION.SUCCESS"
    assert result["id"] == "EV-2018022511223320873"
    assert result["resource_type"] == "encrypt-resource"


def test_refund_notification_is_decrypted():
    resource = {"mchid": MCHID, "out_trade_no": "T20240501ABC", "out_refund_no": "R1",
                "refund_status": "SUCCESS", "amount": {"total": 100, "refund": 40}}
    headers, body = make_notification(resource, event_type="REFUND.SUCCESS", timestamp=NOW)
    result = verify(headers, body)
    assert result["event_type"] == "REFUND.SUCCESS" and result["resource"] == resource


@pytest.mark.parametrize("fold", [str.lower, str.upper, lambda name: name.replace("Wechatpay", "WeChatPay")])
def test_header_names_are_case_insensitive(fold):
    headers, body = make_notification(transaction(), timestamp=NOW)
    assert verify({fold(k): v for k, v in headers.items()}, body)["resource"]["out_trade_no"]


def test_str_body_is_accepted_as_utf8():
    headers, body = make_notification(transaction(), timestamp=NOW)
    assert verify(headers, body.decode("utf-8"))["resource"] == transaction()


# --- tampering ------------------------------------------------------------------------

def test_tampered_body_is_signature_invalid():
    headers, body = make_notification(transaction(total=100), timestamp=NOW)
    tampered = body.replace(b'"TRANSACTION.SUCCESS"', b'"TRANSACTION.SUCCESs"')
    assert tampered != body
    with pytest.raises(SignatureInvalid):
        verify(headers, tampered)


def test_reserialised_json_body_is_signature_invalid():
    """Frameworks that parse and re-dump the JSON break the signature: raw bytes only."""
    headers, body = make_notification(transaction(), timestamp=NOW)
    for redumped in (json.dumps(json.loads(body)).encode(),               # ASCII escapes, spaces
                     json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode(),
                     json.dumps(json.loads(body), ensure_ascii=False, indent=1).encode()):
        assert redumped != body and json.loads(redumped) == json.loads(body)
        with pytest.raises(SignatureInvalid):
            verify(headers, redumped)


def test_trailing_newline_in_body_is_signature_invalid():
    headers, body = make_notification(transaction(), timestamp=NOW)
    with pytest.raises(SignatureInvalid):
        verify(headers, body + b"\n")


def test_signed_by_another_key_is_signature_invalid():
    attacker = key_pair("attacker").private_key
    headers, body = make_notification(transaction(), timestamp=NOW, platform_key=attacker)
    with pytest.raises(SignatureInvalid):
        verify(headers, body)


def test_signed_by_merchant_key_is_signature_invalid():
    headers, body = make_notification(transaction(), timestamp=NOW, platform_key=merchant_keys().private_key)
    with pytest.raises(SignatureInvalid):
        verify(headers, body)


@pytest.mark.parametrize("signature", ["not base64 at all", "QUJD", "A" * 2000])
def test_garbage_signature_is_signature_invalid(signature):
    headers, body = make_notification(transaction(), timestamp=NOW, signature=signature)
    with pytest.raises(SignatureInvalid):
        verify(headers, body)


def test_timestamp_header_swapped_after_signing_is_signature_invalid():
    headers, body = make_notification(transaction(), timestamp=NOW)
    headers["Wechatpay-Timestamp"] = str(NOW + 1)
    with pytest.raises(SignatureInvalid):
        verify(headers, body)


def test_nonce_header_swapped_after_signing_is_signature_invalid():
    headers, body = make_notification(transaction(), timestamp=NOW, nonce="NONCE_A")
    headers["Wechatpay-Nonce"] = "NONCE_B"
    with pytest.raises(SignatureInvalid):
        verify(headers, body)


# --- probes, serials, timestamps ------------------------------------------------------

def test_probe_signature_is_refused_as_probe():
    headers, body = make_notification(transaction(), timestamp=NOW,
                                      signature="WECHATPAY/SIGNTEST/" + "A" * 300)
    with pytest.raises(SignatureProbe) as info:
        verify(headers, body)
    assert info.value.status >= 400


def test_wrong_serial_is_unknown_serial_and_never_fetches(monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("verification must not touch the network")

    monkeypatch.setattr(requests.Session, "request", no_network)
    headers, body = make_notification(transaction(), timestamp=NOW, serial="PUB_KEY_ID_0119999999999")
    with pytest.raises(UnknownSerial):
        verify(headers, body)


def test_platform_certificate_serial_is_unknown_in_public_key_mode():
    headers, body = make_notification(transaction(), timestamp=NOW, serial=CERT_SERIAL_NO)
    with pytest.raises(UnknownSerial):
        verify(headers, body)


@pytest.mark.parametrize("offset", [-299, 0, 299, 300, -300])
def test_timestamp_within_tolerance_is_accepted(offset):
    headers, body = make_notification(transaction(), timestamp=NOW + offset)
    assert verify(headers, body)["resource"]["out_trade_no"]


@pytest.mark.parametrize("offset", [-301, 301, -86400, 86400])
def test_stale_and_future_timestamps_are_out_of_range(offset):
    headers, body = make_notification(transaction(), timestamp=NOW + offset)
    with pytest.raises(TimestampOutOfRange):
        verify(headers, body)


def test_tolerance_is_configurable():
    headers, body = make_notification(transaction(), timestamp=NOW - 61)
    with pytest.raises(TimestampOutOfRange):
        verify(headers, body, tolerance=60)
    assert verify(headers, body, tolerance=61)


@pytest.mark.parametrize("timestamp", ["1714536000.0", "+1714536000", "1.714536e9", "-5", "abc",
                                       "1714536000 1", "\u0661\u0667\u0661\u0664"])
def test_non_integer_timestamp_is_out_of_range(timestamp):
    headers, body = make_notification(transaction(), timestamp=timestamp)
    with pytest.raises(TimestampOutOfRange):
        verify(headers, body)


def test_default_clock_is_now():
    headers, body = make_notification(transaction())  # signed "now"
    assert verify(headers, body, now=None)["resource"] == transaction()
    headers, body = make_notification(transaction(), timestamp=NOW)  # 2024: long ago
    with pytest.raises(TimestampOutOfRange):
        verify(headers, body, now=None)


# --- missing and malformed ------------------------------------------------------------

@pytest.mark.parametrize("missing", ["Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature",
                                     "Wechatpay-Serial"])
def test_missing_header_is_malformed(missing):
    headers, body = make_notification(transaction(), timestamp=NOW)
    del headers[missing]
    with pytest.raises(MalformedNotification) as info:
        verify(headers, body)
    assert missing in info.value.message


def test_no_headers_at_all_is_malformed():
    _, body = make_notification(transaction(), timestamp=NOW)
    with pytest.raises(MalformedNotification):
        verify({}, body)


def test_conflicting_duplicate_headers_are_malformed():
    headers, body = make_notification(transaction(), timestamp=NOW)
    headers["wechatpay-serial"] = "PUB_KEY_ID_OTHER"
    with pytest.raises(MalformedNotification):
        verify(headers, body)


@pytest.mark.parametrize("nonce", ["a\nb", "a b", "x" * 65])
def test_malformed_nonce_is_malformed(nonce):
    headers, body = make_notification(transaction(), timestamp=NOW, nonce=nonce)
    with pytest.raises(MalformedNotification):
        verify(headers, body)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe", b""])
def test_signed_body_that_is_not_a_json_object_is_malformed(raw):
    headers, body = make_notification({}, timestamp=NOW, body=raw)
    with pytest.raises(MalformedNotification):
        verify(headers, body)


@pytest.mark.parametrize("drop", ["id", "event_type", "resource"])
def test_signed_body_missing_a_field_is_malformed(drop):
    _, body = make_notification(transaction(), timestamp=NOW)
    envelope = json.loads(body)
    del envelope[drop]
    headers, body = make_notification({}, timestamp=NOW, body=json.dumps(envelope).encode())
    with pytest.raises(MalformedNotification):
        verify(headers, body)


def test_resource_without_ciphertext_is_malformed():
    _, body = make_notification(transaction(), timestamp=NOW)
    envelope = json.loads(body)
    del envelope["resource"]["ciphertext"]
    headers, body = make_notification({}, timestamp=NOW, body=json.dumps(envelope).encode())
    with pytest.raises(MalformedNotification):
        verify(headers, body)


def test_decrypted_plaintext_that_is_not_json_is_malformed():
    _, body = make_notification(transaction(), timestamp=NOW)
    envelope = json.loads(body)
    envelope["resource"]["ciphertext"] = signing.aes_gcm_encrypt(APIV3_KEY.encode(), "fdasflkja484",
                                                                 "transaction", b"not json")
    headers, body = make_notification({}, timestamp=NOW, body=json.dumps(envelope).encode())
    with pytest.raises(MalformedNotification):
        verify(headers, body)


# --- decryption -----------------------------------------------------------------------

def test_wrong_apiv3_key_is_decrypt_failed():
    headers, body = make_notification(transaction(), timestamp=NOW)
    with pytest.raises(DecryptFailed) as info:
        verify(headers, body, apiv3_key=b"0" * 32)
    assert APIV3_KEY not in str(info.value) and "0" * 32 not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_encrypted_with_another_key_is_decrypt_failed():
    headers, body = make_notification(transaction(), timestamp=NOW, apiv3_key="Z" * 32)
    with pytest.raises(DecryptFailed):
        verify(headers, body)


def test_unsupported_algorithm_is_decrypt_failed():
    _, body = make_notification(transaction(), timestamp=NOW)
    envelope = json.loads(body)
    envelope["resource"]["algorithm"] = "AEAD_SM4_GCM"
    headers, body = make_notification({}, timestamp=NOW, body=json.dumps(envelope).encode())
    with pytest.raises(DecryptFailed):
        verify(headers, body)


def test_every_rejection_is_a_notification_rejected_without_secrets():
    headers, body = make_notification(transaction(), timestamp=NOW)
    cases = [({**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/x"}, body),
             ({**headers, "Wechatpay-Serial": "PUB_KEY_ID_NOPE"}, body),
             ({**headers, "Wechatpay-Timestamp": str(NOW - 1000)}, body),
             (headers, body + b" ")]
    for case_headers, case_body in cases:
        with pytest.raises(NotificationRejected) as info:
            verify(case_headers, case_body)
        text = str(info.value)
        assert headers["Wechatpay-Signature"] not in text and APIV3_KEY not in text


def test_verify_signature_alone_accepts_an_empty_signed_body():
    """API responses such as close's 204 are signed over an empty body."""
    headers, body = make_notification({}, timestamp=NOW, body=b"")
    verify_signature(headers, body, public_key=platform_keys().public_key, public_key_id=PUBLIC_KEY_ID,
                     now=NOW)


# --- cross-checks with wechatpayv3 ------------------------------------------------------

def _wechatpayv3() -> WeChatPay:
    return WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=MCHID,
                     private_key=merchant_keys().private_pem, cert_serial_no=CERT_SERIAL_NO, appid=APPID,
                     apiv3_key=APIV3_KEY, public_key=platform_keys().public_pem, public_key_id=PUBLIC_KEY_ID)


def test_wechatpayv3_callback_accepts_our_notification():
    resource = transaction(out_trade_no="T20240501XYZ", total=1)
    headers, body = make_notification(resource)
    theirs = _wechatpayv3().callback(headers, body)
    ours = verify(headers, body, now=None)
    assert theirs is not None and theirs == ours and theirs["resource"] == resource


def test_we_accept_a_notification_signed_with_wechatpayv3_utils():
    platform = platform_keys()
    resource = transaction(out_trade_no="T20240501V3U")
    plaintext = json.dumps(resource).encode()
    ciphertext = base64.b64encode(AESGCM(APIV3_KEY.encode()).encrypt(b"0123456789ab", plaintext,
                                                                     b"transaction")).decode()
    body = json.dumps({"id": "EV-1", "create_time": "2024-05-01T12:00:00+08:00",
                       "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
                       "summary": "ok", "resource": {"original_type": "transaction",
                                                     "algorithm": "AEAD_AES_256_GCM",
                                                     "ciphertext": ciphertext,
                                                     "associated_data": "transaction",
                                                     "nonce": "0123456789ab"}})
    signature = v3utils.rsa_sign(platform.private_key, f"{NOW}\nNONCE123\n{body}\n")
    headers = {"wechatpay-timestamp": str(NOW), "wechatpay-nonce": "NONCE123",
               "wechatpay-signature": signature, "wechatpay-serial": PUBLIC_KEY_ID,
               "wechatpay-signature-type": "WECHATPAY2-SHA256-RSA2048"}
    assert verify(headers, body.encode())["resource"] == resource
    # And wechatpayv3's own decryption agrees with the plaintext.
    assert json.loads(v3utils.aes_decrypt("0123456789ab", ciphertext, "transaction", APIV3_KEY)) == resource


def test_wechatpayv3_is_laxer_than_us_on_timestamps():
    """Documents why we check freshness ourselves: wechatpayv3 accepts a 2024 timestamp."""
    headers, body = make_notification(transaction(), timestamp=NOW)
    assert _wechatpayv3().callback(headers, body) is not None
    with pytest.raises(TimestampOutOfRange):
        verify(headers, body, now=None)
