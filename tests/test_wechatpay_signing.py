"""shared.wechatpay.signing, cross-checked against wechatpayv3 (an independent implementation).

WeChat publishes no fixed test vector for the v3 RSA signatures, but RSA PKCS#1 v1.5 is
deterministic: the same key and message give the same signature in any correct
implementation, so ours must equal wechatpayv3's byte for byte.
"""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wechatpayv3 import utils as v3utils

from shared.wechatpay import signing
from tests.keys import APIV3_KEY, APPID, CERT_SERIAL_NO, MCHID, merchant_keys, platform_keys


def test_request_message_is_five_lines_each_ending_in_newline():
    message = signing.request_message("post", "/v3/pay/transactions/jsapi", "1554208460",
                                      "593BEC0C930BF1AFEB40B4A08C8FB242", b'{"a":1}')
    assert message == (b"POST\n/v3/pay/transactions/jsapi\n1554208460\n"
                       b"593BEC0C930BF1AFEB40B4A08C8FB242\n{\"a\":1}\n")


def test_request_message_with_empty_body_ends_in_an_empty_line():
    message = signing.request_message("GET", "/v3/refund/domestic/refunds/R1?x=1", "1", "N", b"")
    assert message == b"GET\n/v3/refund/domestic/refunds/R1?x=1\n1\nN\n\n"


def test_response_message_is_three_lines_over_the_raw_body():
    assert signing.response_message("1", "N", b"{ }") == b"1\nN\n{ }\n"
    assert signing.response_message("1", "N", b"") == b"1\nN\n\n"


def test_rsa_sign_equals_wechatpayv3_byte_for_byte():
    key = merchant_keys().private_key
    text = "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
    assert signing.rsa_sign(key, text.encode()) == v3utils.rsa_sign(key, text)


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=200))
def test_rsa_sign_equals_wechatpayv3_for_any_text(text):
    key = merchant_keys().private_key
    assert signing.rsa_sign(key, text.encode("utf-8")) == v3utils.rsa_sign(key, text)


def test_rsa_verify_accepts_wechatpayv3_signatures_and_rejects_others():
    keys = platform_keys()
    signature = v3utils.rsa_sign(keys.private_key, "1\nN\nbody\n")
    assert signing.rsa_verify(keys.public_key, b"1\nN\nbody\n", signature)
    assert v3utils.rsa_verify("1", "N", "body", signature, keys.public_key)
    assert not signing.rsa_verify(keys.public_key, b"1\nN\nbodY\n", signature)
    # Signed by the merchant key, not WeChat Pay's: the classic mix-up.
    other = v3utils.rsa_sign(merchant_keys().private_key, "1\nN\nbody\n")
    assert not signing.rsa_verify(keys.public_key, b"1\nN\nbody\n", other)


@pytest.mark.parametrize("garbage", ["", "not base64!", "QUJD", "=" * 8, "\u00e9\u00e9"])
def test_rsa_verify_never_raises_on_garbage(garbage):
    assert signing.rsa_verify(platform_keys().public_key, b"x", garbage) is False


def test_authorization_header_round_trips_and_verifies():
    keys = merchant_keys()
    header = signing.authorization_header(MCHID, CERT_SERIAL_NO, keys.private_key, "POST",
                                          "/v3/pay/transactions/jsapi", b'{"x":1}', "1700000000", "NONCE1")
    assert header.startswith('WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="NONCE1",')
    fields = signing.parse_authorization(header)
    assert fields["mchid"] == MCHID and fields["serial_no"] == CERT_SERIAL_NO
    assert fields["timestamp"] == "1700000000" and fields["nonce_str"] == "NONCE1"
    message = signing.request_message("POST", "/v3/pay/transactions/jsapi", "1700000000", "NONCE1",
                                      b'{"x":1}')
    assert signing.rsa_verify(keys.public_key, message, fields["signature"])
    # Same signature as wechatpayv3 computes for the same message.
    assert fields["signature"] == v3utils.rsa_sign(keys.private_key, message.decode())


def test_authorization_matches_wechatpayv3_build_authorization(monkeypatch):
    keys = merchant_keys()
    monkeypatch.setattr(v3utils.time, "time", lambda: 1700000000.5)
    body = '{"mchid":"1900000109"}'
    theirs = v3utils.build_authorization("/v3/pay/transactions/out-trade-no/T1/close", "POST", MCHID,
                                         CERT_SERIAL_NO, keys.private_key, data=body, nonce_str="ABC")
    ours = signing.authorization_header(MCHID, CERT_SERIAL_NO, keys.private_key, "POST",
                                        "/v3/pay/transactions/out-trade-no/T1/close", body.encode(),
                                        "1700000000", "ABC")
    assert ours == theirs


@pytest.mark.parametrize("header", [
    "", "Bearer abc", 'WECHATPAY2-SHA256-RSA2048 mchid="1"',
    'WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str="a",signature="b",timestamp="c",serial_no="d"',
])
def test_parse_authorization_rejects_malformed_headers(header):
    with pytest.raises(ValueError):
        signing.parse_authorization(header)


def test_pay_sign_equals_wechatpayv3_sign():
    """paySign for wx.requestPayment: wechatpayv3's `WeChatPay.sign([...])` is the reference."""
    from wechatpayv3 import WeChatPay, WeChatPayType

    keys = merchant_keys()
    wxpay = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=MCHID, private_key=keys.private_pem,
                      cert_serial_no=CERT_SERIAL_NO, appid=APPID, apiv3_key=APIV3_KEY,
                      public_key=platform_keys().public_pem, public_key_id="PUB_KEY_ID_X")
    package = "prepay_id=wx201410272009395522657a690389285100"
    nonce_str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
    ours = signing.pay_sign(keys.private_key, APPID, "1414561699", nonce_str, package)
    theirs = wxpay.sign([APPID, "1414561699", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS", package])
    assert ours == theirs
    message = f"{APPID}\n1414561699\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\n{package}\n".encode()
    assert signing.rsa_verify(keys.public_key, message, ours)


def test_aes_gcm_round_trip_and_wechatpayv3_decrypts_ours():
    key = APIV3_KEY.encode()
    ciphertext = signing.aes_gcm_encrypt(key, "fdasflkja484", "transaction", '{"a":"支付"}'.encode())
    assert signing.aes_gcm_decrypt(key, "fdasflkja484", "transaction", ciphertext) == '{"a":"支付"}'.encode()
    assert v3utils.aes_decrypt("fdasflkja484", ciphertext, "transaction", APIV3_KEY) == '{"a":"支付"}'
    # Layout: base64(ciphertext || 16-byte tag).
    assert len(base64.b64decode(ciphertext)) == len('{"a":"支付"}'.encode()) + 16


def test_aes_gcm_empty_associated_data():
    key = APIV3_KEY.encode()
    ciphertext = signing.aes_gcm_encrypt(key, "n" * 12, "", b"{}")
    assert signing.aes_gcm_decrypt(key, "n" * 12, None, ciphertext) == b"{}"


@pytest.mark.parametrize("change", ["key", "nonce", "aad", "ciphertext", "not_base64"])
def test_aes_gcm_decrypt_raises_value_error_on_any_change(change):
    key = APIV3_KEY.encode()
    ciphertext = signing.aes_gcm_encrypt(key, "fdasflkja484", "transaction", b'{"a":1}')
    args = {"apiv3_key": key, "nonce_str": "fdasflkja484", "associated_data": "transaction",
            "ciphertext_b64": ciphertext}
    if change == "key":
        args["apiv3_key"] = b"0" * 32
    elif change == "nonce":
        args["nonce_str"] = "fdasflkja485"
    elif change == "aad":
        args["associated_data"] = "refund"
    elif change == "ciphertext":
        raw = bytearray(base64.b64decode(ciphertext))
        raw[0] ^= 1
        args["ciphertext_b64"] = base64.b64encode(bytes(raw)).decode()
    else:
        args["ciphertext_b64"] = "%%%"
    with pytest.raises(ValueError):
        signing.aes_gcm_decrypt(**args)


def test_nonce_is_32_uppercase_alphanumerics_and_random():
    values = {signing.nonce() for _ in range(50)}
    assert len(values) == 50
    allowed = set(string.ascii_uppercase + string.digits)
    assert all(len(v) == 32 and set(v) <= allowed for v in values)
    assert len(signing.nonce(16)) == 16
