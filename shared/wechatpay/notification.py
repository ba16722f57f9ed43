"""Verifying what WeChat Pay signs: payment/refund notifications and API responses.

Functions in the style of stripe's `WebhookSignature.verify_header`: the caller passes
the raw body, the headers, the keys and (for tests) the clock.  The keys are a
`shared.wechatpay.keys.KeySet`: the public key and/or platform certificates, each used
only for its own serial.  An unknown `Wechatpay-Serial` is rejected; in download mode
the set may look for new certificates first, at most once a minute (never once per
request: the wechatpayv3 amplification pitfall).

Order of checks (each failure has its own error class from `shared.errors`):

1. all four `Wechatpay-*` headers present and well-formed  -> MalformedNotification
2. signature is not a `WECHATPAY/SIGNTEST/` probe           -> SignatureProbe
3. serial is well-formed                                    -> UnknownSerial
4. |now - timestamp| <= tolerance (both directions)         -> TimestampOutOfRange
4b. serial names a key of the set (public key id, certificate) -> UnknownSerial
5. RSA-SHA256 over `ts\\nnonce\\n<raw body>\\n` verifies     -> SignatureInvalid
6. body is a notification JSON object                       -> MalformedNotification
7. resource decrypts (AEAD_AES_256_GCM, APIv3 key)          -> DecryptFailed
8. plaintext is a JSON object                               -> MalformedNotification

Error messages name the failed check and never carry key material, plaintext or the
signature itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from shared.errors import (
    DecryptFailed,
    MalformedNotification,
    SignatureInvalid,
    SignatureProbe,
    TimestampOutOfRange,
    UnknownSerial,
)
from shared.strict_json import JsonRejected, loads_object
from shared.wechatpay import signing

DEFAULT_TOLERANCE = 300
ALGORITHM = "AEAD_AES_256_GCM"

HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_SERIAL = "Wechatpay-Serial"
SIGNED_HEADERS = (HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SERIAL)

# Seconds since the epoch as plain ASCII digits: no sign, no fraction, no exponent,
# no surrounding spaces ("\d" would also admit non-ASCII digits).
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
# The nonce is embedded in the signed message between newlines, so a nonce with a line
# break could shift bytes between "nonce" and "body" of a genuinely signed message.
_NONCE_RE = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces or line breaks
_MAX_SIGNATURE = 1024  # base64 of a 4096-bit signature is 684 chars
# PUB_KEY_ID_... or a certificate serial (hex): printable, bounded, before any lookup.
_SERIAL_RE = re.compile(r"[0-9A-Za-z_]{1,80}")


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names folded to lower case; conflicting duplicates are refused."""
    folded: dict[str, str] = {}
    for name, value in headers.items():
        key = str(name).lower()
        if key in folded and folded[key] != value:
            raise MalformedNotification(f"header {name} appears twice with different values",
                                        details={"header": str(name)})
        folded[key] = value
    return folded


def _signed_headers(headers: Mapping[str, str]) -> tuple[str, str, str, str]:
    folded = _lower_headers(headers)
    values = []
    for name in SIGNED_HEADERS:
        value = folded.get(name.lower())
        if not isinstance(value, str) or not value.strip():
            raise MalformedNotification(f"missing header {name}", details={"header": name})
        values.append(value.strip())
    timestamp, nonce_str, signature, serial = values
    if not _NONCE_RE.fullmatch(nonce_str):
        raise MalformedNotification("Wechatpay-Nonce is malformed", details={"header": HEADER_NONCE})
    return timestamp, nonce_str, signature, serial


def _key_set(keys, public_key, public_key_id):
    if keys is not None:
        return keys
    from shared.wechatpay.keys import KeySet

    return KeySet(public_key=public_key, public_key_id=public_key_id)


def verify_signature(headers: Mapping[str, str], body: bytes, *, keys=None, public_key=None,
                     public_key_id: str | None = None, now: float | None = None,
                     tolerance: int = DEFAULT_TOLERANCE) -> None:
    """Check the `Wechatpay-*` signature headers over the raw `body` (checks 1-5 above).

    `keys`: a KeySet (or give the single `public_key` and its `public_key_id`).  Used for
    notifications and, by the API client, for every 2xx response.  Returns None when
    everything holds; raises a `NotificationRejected` subclass otherwise.  `body` must be
    the bytes exactly as received: re-serialised JSON does not verify.
    """
    body = _as_bytes(body)
    keys = _key_set(keys, public_key, public_key_id)
    timestamp, nonce_str, signature, serial = _signed_headers(headers)

    if signature.startswith(signing.PROBE_PREFIX):
        # WeChat Pay's deliberate probe: it must be refused (never acknowledged).
        raise SignatureProbe("signature probe (WECHATPAY/SIGNTEST/) refused")
    if len(signature) > _MAX_SIGNATURE:
        raise SignatureInvalid("signature is too long")

    if not _SERIAL_RE.fullmatch(serial):
        raise UnknownSerial("Wechatpay-Serial is malformed", details={"serial": serial[:80]})
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise TimestampOutOfRange("Wechatpay-Timestamp is not a whole number of seconds")
    current = time.time() if now is None else now
    skew = current - int(timestamp)
    if abs(skew) > tolerance:
        raise TimestampOutOfRange(f"Wechatpay-Timestamp is {abs(int(skew))} s from now "
                                  f"(tolerance {tolerance} s)", details={"skewSeconds": int(skew)})

    # Last of the cheap checks: in download mode an unknown serial may make the set look.
    key = keys.key_for(serial)
    if key is None:
        raise UnknownSerial("Wechatpay-Serial names no key we hold (the WeChat Pay public key id or a valid "
                            "platform certificate)", details={"serial": serial[:80]})

    message = signing.response_message(timestamp, nonce_str, body)
    if not signing.rsa_verify(key, message, signature):
        raise SignatureInvalid("signature does not verify over the raw body")


def verify_notification(headers: Mapping[str, str], body: bytes, *, apiv3_key: bytes, keys=None,
                        public_key=None, public_key_id: str | None = None, now: float | None = None,
                        tolerance: int = DEFAULT_TOLERANCE) -> dict:
    """Verify, parse and decrypt a v3 notification; return it with `resource` decrypted.

    `headers`: the request headers (any letter case).  `body`: the raw request body as
    received (bytes; a str is encoded as UTF-8, which reproduces the bytes when the
    gateway decoded them as UTF-8).  `keys`: the KeySet (or `public_key`/`public_key_id`:
    the WeChat Pay public key and its `PUB_KEY_ID_...`).  `apiv3_key`: the 32-byte APIv3
    key.  `now`: epoch seconds (default `time.time()`), injectable for tests.

    The result is the notification object (`id`, `event_type`, `create_time`, ...) whose
    `resource` is the decrypted JSON (a transaction or a refund; `event_type` says which).
    """
    body = _as_bytes(body)
    verify_signature(headers, body, keys=_key_set(keys, public_key, public_key_id), now=now, tolerance=tolerance)
    return decrypt_notification(parse_notification(body), apiv3_key=apiv3_key)


def parse_notification(body: bytes) -> dict:
    """Check 6 alone: the body as a notification object (`id`, `event_type`, `resource`
    still encrypted).  Only for a body whose signature has been verified."""
    notification = _json_object(_as_bytes(body), "notification body")
    for field, kind in (("id", str), ("event_type", str), ("resource", dict)):
        if not isinstance(notification.get(field), kind):
            raise MalformedNotification(f"notification lacks a valid '{field}'",
                                        details={"field": field})
    return notification


def decrypt_notification(notification: dict, *, apiv3_key: bytes) -> dict:
    """Checks 7 and 8: a copy of the parsed `notification` with `resource` decrypted."""
    resource = notification["resource"]
    algorithm = resource.get("algorithm")
    if algorithm != ALGORITHM:
        raise DecryptFailed("unsupported resource algorithm", details={"algorithm": str(algorithm)[:40]})
    ciphertext, nonce_str = resource.get("ciphertext"), resource.get("nonce")
    associated_data = resource.get("associated_data") or ""
    if not (isinstance(ciphertext, str) and ciphertext and isinstance(nonce_str, str) and nonce_str
            and isinstance(associated_data, str)):
        raise MalformedNotification("resource lacks ciphertext, nonce or associated_data")
    try:
        plaintext = signing.aes_gcm_decrypt(apiv3_key, nonce_str, associated_data, ciphertext)
    except ValueError:
        # Deliberately not chained: nothing about the key or ciphertext is worth a trace.
        raise DecryptFailed("resource does not decrypt with the APIv3 key") from None

    decrypted = _json_object(plaintext, "decrypted resource")
    result = dict(notification)
    result["resource"] = decrypted
    return result


def _as_bytes(body) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError("body must be the raw request body (bytes)")


def _json_object(raw: bytes, what: str) -> dict:
    try:
        return loads_object(raw, what)
    except JsonRejected as rejected:
        raise MalformedNotification(str(rejected)) from None
