"""Signed fulfilment deliveries: how the relay signs them and how a shop verifies them.

Every delivery is a POST of one JSON fact with two headers:

    CloudPay-Timestamp: 1796178260
    CloudPay-Signature: v1=<lower-case hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

The scheme is Stripe's (`t=...,v1=...`, webhooks.constructEvent), split into two
headers: the timestamp is signed with the body, so an old delivery cannot be replayed
with a fresh timestamp, and the window (`tolerance`, both ways) bounds replays of the
same bytes.  A receiver should also remember the fact's `id`: the relay delivers at
least once, with the same id on every attempt.

`verify_webhook` uses only the standard library and `shared.errors`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from shared.errors import WebhookRejected

TIMESTAMP_HEADER = "CloudPay-Timestamp"
SIGNATURE_HEADER = "CloudPay-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300  # seconds
_MAX_SIGNATURES = 8      # several v1= entries: a receiver may hold two secrets while rotating


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def signature(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The lower-case hex HMAC-SHA256 of `<timestamp>.<body>`."""
    return hmac.new(_key(secret), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign_webhook(secret: str | bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two headers for a delivery of `body` (the exact bytes sent)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: f"{SCHEME}={signature(secret, ts, body)}"}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value if isinstance(value, str) else None
    return None


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str | bytes,
                   tolerance: int = DEFAULT_TOLERANCE, *, now: float | None = None) -> dict:
    """Check a delivery and return its fact (`{"id", "type", "createTime", "data"}`).

    Raises `WebhookRejected` (code WEBHOOK_UNSIGNED, WEBHOOK_TIMESTAMP,
    WEBHOOK_SIGNATURE_INVALID or WEBHOOK_BODY_INVALID) otherwise.  `body` must be the
    raw bytes received; `headers` any mapping (names are matched case-insensitively).
    Signatures are compared in constant time (`hmac.compare_digest`).
    """
    if not secret:
        raise ValueError("verify_webhook needs the shared secret")
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    timestamp, signed = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGNATURE_HEADER)
    if not timestamp or not signed:
        raise WebhookRejected("the CloudPay-Timestamp and CloudPay-Signature headers are required",
                              code="WEBHOOK_UNSIGNED")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise WebhookRejected("CloudPay-Timestamp is not a number of seconds", code="WEBHOOK_TIMESTAMP")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        raise WebhookRejected(f"CloudPay-Timestamp is more than {tolerance} s from now",
                              code="WEBHOOK_TIMESTAMP")
    expected = signature(secret, timestamp, raw)
    candidates = [part.strip()[len(SCHEME) + 1:] for part in signed.split(",")[:_MAX_SIGNATURES]
                  if part.strip().startswith(SCHEME + "=")]
    # compare_digest on every candidate (no early exit), so timing says nothing.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate.encode("ascii", "replace"), expected.encode("ascii"))
    if not matched:
        raise WebhookRejected("CloudPay-Signature does not match the body", code="WEBHOOK_SIGNATURE_INVALID")
    try:
        fact = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected("the body is not JSON", code="WEBHOOK_BODY_INVALID") from None
    if not isinstance(fact, dict) or not isinstance(fact.get("id"), str) or not isinstance(fact.get("type"), str):
        raise WebhookRejected("the body is not a CloudPay fact", code="WEBHOOK_BODY_INVALID")
    return fact
