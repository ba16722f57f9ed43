"""Throwaway keys, configuration and signed WeChat Pay messages for tests.

Two RSA-2048 key pairs are generated once per test session (module-level cache):
the *merchant* pair (we sign requests and paySign with it; WeChat Pay, or the test
server, verifies with its public half) and the *platform* pair (the "WeChat Pay public
key": WeChat Pay signs responses and notifications with its private half).

`make_notification(...)` builds a notification the way WeChat Pay does, with each part
overridable (timestamp, nonce, serial, signature, key, body), in the style of stripe's
`generate_header(**overrides)`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.config import load_config
from shared.wechatpay import signing

APPID = "wx8888888888888888"
MCHID = "1900000109"
CERT_SERIAL_NO = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"  # 40 hex, as in WeChat's docs
PUBLIC_KEY_ID = "PUB_KEY_ID_0119000001092025010100000000000001"
APIV3_KEY = "a7cde1ZJB1kG2e7VfTs3jQzaAa8cDE19"  # 32 chars
APPSECRET = "0123456789abcdef0123456789abcdef"
ORDER_TOKEN_SECRET = "test-order-token-secret-0123456789abcdef"


@dataclass(frozen=True)
class KeyPair:
    private_key: object   # RSAPrivateKey
    public_key: object    # RSAPublicKey
    private_pem: str      # PKCS#8 PEM
    public_pem: str       # SubjectPublicKeyInfo PEM


_keys: dict[str, KeyPair] = {}
_keys_lock = threading.Lock()


def _generate() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    return KeyPair(key, key.public_key(), private_pem, public_pem)


def key_pair(name: str) -> KeyPair:
    """The session's key pair called `name` ("merchant", "platform", or any other)."""
    with _keys_lock:
        if name not in _keys:
            _keys[name] = _generate()
        return _keys[name]


def merchant_keys() -> KeyPair:
    return key_pair("merchant")


def platform_keys() -> KeyPair:
    return key_pair("platform")


def make_environ(**overrides: str | None) -> dict[str, str]:
    """A complete, valid environment for every role; `NAME=None` removes a variable."""
    environ = {
        "MONGODB_URI": "mongodb://127.0.0.1:1",  # placeholder: nothing here connects
        "MONGODB_DB": "cloudpay_test",
        "WECHAT_APPID": APPID,
        "WECHAT_APPSECRET": APPSECRET,
        "WECHATPAY_MCHID": MCHID,
        "WECHATPAY_PRIVATE_KEY": merchant_keys().private_pem,
        "WECHATPAY_CERT_SERIAL_NO": CERT_SERIAL_NO,
        "WECHATPAY_APIV3_KEY": APIV3_KEY,
        "WECHATPAY_PUBLIC_KEY": platform_keys().public_pem,
        "WECHATPAY_PUBLIC_KEY_ID": PUBLIC_KEY_ID,
        "WECHATPAY_NOTIFY_URL": "http://127.0.0.1:9/notify",
        "WECHATPAY_API_BASE": "http://127.0.0.1:9",
        "WECHAT_API_BASE": "http://127.0.0.1:9",
        "ORDER_TOKEN_SECRET": ORDER_TOKEN_SECRET,
    }
    for name, value in overrides.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    # No backup domain unless a test names one: never WeChat Pay's real api2 from a test.
    if "WECHATPAY_API_BASE_BACKUP" not in overrides and "WECHATPAY_API_BASE" in environ:
        environ["WECHATPAY_API_BASE_BACKUP"] = environ["WECHATPAY_API_BASE"]
    return environ


def make_config(role: str = "prepare", **overrides: str | None):
    """`load_config(role, make_environ(**overrides))`: a fresh Config object each call."""
    return load_config(role, make_environ(**overrides))


def _private_key(key):
    if key is None:
        return platform_keys().private_key
    if isinstance(key, str):
        return serialization.load_pem_private_key(key.encode("ascii"), password=None)
    return key


def sign_response(body: bytes, *, platform_key=None, serial: str = PUBLIC_KEY_ID,
                  timestamp: int | str | None = None, nonce: str | None = None,
                  signature: str | None = None) -> dict[str, str]:
    """The `Wechatpay-*` headers WeChat Pay puts on a response or notification."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce_str = nonce if nonce is not None else signing.nonce()
    if signature is None:
        signature = signing.rsa_sign(_private_key(platform_key),
                                     signing.response_message(ts, nonce_str, body))
    return {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nonce_str,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": signing.SCHEMA,
    }


def encrypt_resource(resource: dict, *, apiv3_key: bytes | str = APIV3_KEY,
                     original_type: str = "transaction", associated_data: str = "transaction",
                     nonce: str = "fdasflkja484") -> dict:
    """The encrypted `resource` object of a notification."""
    key = apiv3_key.encode("utf-8") if isinstance(apiv3_key, str) else apiv3_key
    plaintext = json.dumps(resource, ensure_ascii=False).encode("utf-8")
    return {
        "original_type": original_type,
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": signing.aes_gcm_encrypt(key, nonce, associated_data, plaintext),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def make_notification(resource: dict, *, event_type: str = "TRANSACTION.SUCCESS",
                      platform_key=None, apiv3_key: bytes | str = APIV3_KEY,
                      timestamp: int | str | None = None, nonce: str | None = None,
                      serial: str = PUBLIC_KEY_ID, signature: str | None = None,
                      notification_id: str = "EV-2018022511223320873",
                      original_type: str | None = None, body: bytes | None = None,
                      ) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a notification as WeChat Pay sends it.

    Every part can be overridden: `timestamp`, `nonce`, `serial`, `signature` (a
    literal header value), `platform_key` (who signs), `apiv3_key` (who encrypts),
    `body` (signed as given, e.g. a non-JSON body).
    """
    if body is None:
        if original_type is None:
            original_type = "refund" if event_type.startswith("REFUND.") else "transaction"
        envelope = {
            "id": notification_id,
            "create_time": "2015-05-20T13:29:35+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": encrypt_resource(resource, apiv3_key=apiv3_key, original_type=original_type,
                                         associated_data=original_type),
        }
        body = json.dumps(envelope, ensure_ascii=False).encode("utf-8")
    headers = sign_response(body, platform_key=platform_key, serial=serial, timestamp=timestamp,
                            nonce=nonce, signature=signature)
    return headers, body


def transaction(out_trade_no: str = "T20240501000000001", total: int = 100, **fields) -> dict:
    """A decrypted TRANSACTION.SUCCESS resource with sensible defaults."""
    data = {
        "appid": APPID, "mchid": MCHID, "out_trade_no": out_trade_no,
        "transaction_id": "4200000001202405010000000001", "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
        "attach": "", "success_time": "2024-05-01T12:00:00+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }
    data.update(fields)
    return data


def full_config(**overrides: str | None):
    """Every field set, as if one function played every role (unit tests of the services:
    each real function reads only the variables it uses)."""
    from dataclasses import fields

    from shared.config import Config

    environ = make_environ(**overrides)
    merged: dict = {}
    for role in ("prepare", "callback", "reconcile"):
        config = load_config(role, environ)
        for field in fields(config):
            value = getattr(config, field.name)
            if field.name != "role" and value is not None:
                merged.setdefault(field.name, value)
    return Config(role="reconcile", **merged)
