"""WeChat Pay APIv3 cryptographic primitives (shared by the client and the simulator).

Pure functions over `cryptography` keys; no I/O, no clock.  Source: WeChat Pay's
signature rules, https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html
and https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter3_2_5.shtml (AES-256-GCM resources).
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
PROBE_PREFIX = "WECHATPAY/SIGNTEST/"


def nonce(length: int = 32) -> str:
    """A random nonce string of upper-case hex (WeChat allows up to 32 chars; 32 carry 128
    bits).  One call to the OS's random source, not one per character."""
    return secrets.token_hex((length + 1) // 2)[:length].upper()


def rsa_sign(private_key, message: bytes) -> str:
    """Base64(SHA256withRSA PKCS#1 v1.5 over message)."""
    signature = private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def rsa_verify(public_key, message: bytes, signature_b64: str) -> bool:
    """True when signature_b64 is a valid signature of message; never raises on bad input."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def request_message(method: str, url_path: str, timestamp: str, nonce_str: str, body: bytes) -> bytes:
    """The five-line message the merchant signs: METHOD, path?query, ts, nonce, body."""
    head = f"{method.upper()}\n{url_path}\n{timestamp}\n{nonce_str}\n".encode()
    return head + body + b"\n"


def response_message(timestamp: str, nonce_str: str, body: bytes) -> bytes:
    """The three-line message WeChat Pay signs on responses and notifications (raw body)."""
    return f"{timestamp}\n{nonce_str}\n".encode() + body + b"\n"


def authorization_header(mchid: str, serial_no: str, private_key, method: str, url_path: str,
                         body: bytes, timestamp: str, nonce_str: str) -> str:
    signature = rsa_sign(private_key, request_message(method, url_path, timestamp, nonce_str, body))
    return (f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce_str}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{serial_no}"')


def parse_authorization(header: str) -> dict[str, str]:
    """Split a WECHATPAY2-SHA256-RSA2048 Authorization header into its fields.

    Raises ValueError when the schema or a field is missing.
    """
    schema, _, rest = (header or "").strip().partition(" ")
    if schema != SCHEMA:
        raise ValueError("unknown authorization schema")
    out: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            raise ValueError("malformed authorization field")
        out[key] = value[1:-1]
    for key in ("mchid", "nonce_str", "signature", "timestamp", "serial_no"):
        if key not in out:
            raise ValueError(f"authorization lacks {key}")
    return out


def pay_sign(private_key, appid: str, timestamp: str, nonce_str: str, package: str) -> str:
    """`paySign` for wx.requestPayment (v3): appId, timeStamp, nonceStr, package, one per line."""
    message = f"{appid}\n{timestamp}\n{nonce_str}\n{package}\n".encode()
    return rsa_sign(private_key, message)


def aes_gcm_decrypt(apiv3_key: bytes, nonce_str: str, associated_data: str, ciphertext_b64: str) -> bytes:
    """Decrypt a notification `resource`.  Raises ValueError on any failure."""
    try:
        data = base64.b64decode(ciphertext_b64, validate=True)
        return AESGCM(apiv3_key).decrypt(nonce_str.encode("utf-8"), data,
                                         (associated_data or "").encode("utf-8"))
    except (binascii.Error, InvalidTag, ValueError, TypeError) as exc:
        raise ValueError("resource does not decrypt with the APIv3 key") from exc


def aes_gcm_encrypt(apiv3_key: bytes, nonce_str: str, associated_data: str, plaintext: bytes) -> str:
    """The inverse of aes_gcm_decrypt (the simulator encrypts notifications with it)."""
    data = AESGCM(apiv3_key).encrypt(nonce_str.encode("utf-8"), plaintext,
                                     (associated_data or "").encode("utf-8"))
    return base64.b64encode(data).decode("ascii")
