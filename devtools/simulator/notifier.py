"""Notifications as WeChat Pay sends them: encrypted, signed, POSTed, retried.

Body: `{"id": "EV-...", "create_time", "resource_type": "encrypt-resource", "event_type",
"summary", "resource": {"original_type", "algorithm": "AEAD_AES_256_GCM", "ciphertext",
"associated_data", "nonce"}}`, the resource encrypted with the APIv3 key.  Headers:
`Wechatpay-Timestamp/-Nonce/-Signature/-Serial/-Signature-Type`, the signature over
`timestamp\\nnonce\\nbody\\n`, signed afresh for every attempt with the key the key mode
chooses (signer.py: the public key, PUB_KEY_ID_..., or a platform certificate, whose
serial is then Wechatpay-Serial; in switch mode each attempt draws again).  The
deliveries log records the `serial` that signed each attempt.

Retries: after a non-2xx answer or a connection error, WeChat Pay tries again after
15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h ("24h4m in total").  Each interval
is the wait before one retry, so a notification is tried at most 1 + 15 = 16 times:
that is the reading under which the intervals add up to the documented 24h4m.  The
intervals are multiplied by `retry_factor` (0.001 turns 15 s into 15 ms).  Each
attempt waits at most 5 s for the answer, as WeChat Pay does.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from devtools.simulator.background import Background
from devtools.simulator.errors import SimError
from devtools.simulator.signer import Signer, SigningKey
from devtools.simulator.timeutil import rfc3339
from shared.wechatpay import signing

log = logging.getLogger("devtools.simulator")

RETRY_SCHEDULE_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
ATTEMPT_TIMEOUT_S = 5.0
USER_AGENT = "Mozilla/4.0"
MAX_COPIES = 100   # concurrent copies of one notification (threads)
MAX_DELIVERY_LOG = 10_000
TAMPER_KINDS = ("body", "signature", "serial", "timestamp_old", "timestamp_future", "ciphertext")
# A stale or future timestamp is 10 minutes off: well past the 5-minute window.
SKEW_S = 600
SUMMARIES = {
    "TRANSACTION.SUCCESS": "支付成功",
    "REFUND.SUCCESS": "退款成功",
    "REFUND.ABNORMAL": "退款异常",
    "REFUND.CLOSED": "退款关闭",
}


@dataclass(frozen=True)
class Notification:
    """One notification: what is signed (`body`) and what is sent (`wire_body`)."""

    id: str
    event_type: str
    url: str
    body: bytes
    wire_body: bytes
    out_trade_no: str | None = None
    out_refund_no: str | None = None
    probe: bool = False
    tamper: str | None = None


class Notifier:
    def __init__(self, keys, clock: Callable[[], float], background: Background, *,
                 retry_factor: float = 1.0, max_retries: int = len(RETRY_SCHEDULE_S),
                 attempt_timeout: float = ATTEMPT_TIMEOUT_S, signer: Signer | None = None):
        if retry_factor < 0:
            raise ValueError("retry_factor must be >= 0")
        if not 0 <= max_retries <= len(RETRY_SCHEDULE_S):
            raise ValueError(f"max_retries must be 0..{len(RETRY_SCHEDULE_S)}")
        self._keys = keys
        self._signer = signer or Signer(keys)
        self._clock = clock
        self._background = background
        self.retry_factor = retry_factor
        self.max_retries = max_retries
        self.attempt_timeout = attempt_timeout
        self._lock = threading.Lock()
        self._deliveries: list[dict] = []
        self._ids = itertools.count(1)

    # --- building ---------------------------------------------------------------------

    def build(self, *, url: str, event_type: str, resource: dict | None = None, raw_body: str | None = None,
              out_trade_no: str | None = None, out_refund_no: str | None = None, probe: bool = False,
              tamper: str | None = None) -> Notification:
        """A notification of `event_type` carrying `resource` (encrypted), or a raw body."""
        if tamper is not None and tamper not in TAMPER_KINDS:
            raise SimError(400, "BAD_REQUEST", f"tamper must be one of {', '.join(TAMPER_KINDS)}")
        _check_url(url)
        notification_id = self._new_id()
        if raw_body is not None:
            body = raw_body.encode("utf-8")
        else:
            body = self._envelope(notification_id, event_type, resource or {}, tamper)
        wire_body = _tampered_body(body) if tamper == "body" else body
        return Notification(id=notification_id, event_type=event_type, url=url, body=body, wire_body=wire_body,
                            out_trade_no=out_trade_no, out_refund_no=out_refund_no, probe=probe, tamper=tamper)

    def _envelope(self, notification_id: str, event_type: str, resource: dict, tamper: str | None) -> bytes:
        original_type = "refund" if event_type.startswith("REFUND.") else "transaction"
        apiv3_key = self._keys.apiv3_key.encode("ascii")
        if tamper == "ciphertext":   # encrypted with a key the merchant does not have
            apiv3_key = secrets.token_hex(16).encode("ascii")
        resource_nonce = signing.nonce(12)
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        envelope = {
            "id": notification_id,
            "create_time": rfc3339(self._clock()),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": SUMMARIES.get(event_type, "通知"),
            "resource": {
                "original_type": original_type,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": signing.aes_gcm_encrypt(apiv3_key, resource_nonce, original_type, plaintext),
                "associated_data": original_type,
                "nonce": resource_nonce,
            },
        }
        return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _new_id(self) -> str:
        return f"EV-{int(self._clock())}{next(self._ids):06d}{secrets.randbelow(10**6):06d}"

    def headers(self, notification: Notification) -> dict[str, str]:
        """The headers of one attempt, signed now (or broken as the notification asks)."""
        return self._signed_headers(notification)[0]

    def _signed_headers(self, notification: Notification) -> tuple[dict[str, str], SigningKey]:
        """(headers, the key that signed them); with tamper "serial" the header names an
        unknown key of the same kind."""
        timestamp = int(self._clock())
        if notification.tamper == "timestamp_old":
            timestamp -= SKEW_S
        elif notification.tamper == "timestamp_future":
            timestamp += SKEW_S
        ts, nonce_str = str(timestamp), signing.nonce(32)
        signed = notification.body + (b" " if notification.tamper == "signature" else b"")
        key = self._signer.choose()
        signature = self._signer.sign(key, signing.response_message(ts, nonce_str, signed))
        if notification.probe:
            signature = signing.PROBE_PREFIX + base64.b64encode(secrets.token_bytes(48)).decode("ascii")
        serial = key.unknown_serial if notification.tamper == "serial" else key.serial
        return {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Wechatpay-Nonce": nonce_str,
            "Wechatpay-Signature": signature,
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature-Type": signing.SCHEMA,
        }, key

    # --- delivering -------------------------------------------------------------------

    def deliver(self, notification: Notification, *, copies: int = 1, retry: bool = True,
                delay_s: float = 0.0) -> None:
        """Send in the background: `copies` concurrent deliveries, each retried on schedule."""
        _check_copies(copies)
        for copy_no in range(1, copies + 1):
            def work(cancelled: threading.Event, copy_no: int = copy_no) -> None:
                self._deliver_copy(notification, copy_no, retry, delay_s, cancelled)
            self._background.spawn(f"notify-{notification.id}-{copy_no}", work)

    def deliver_now(self, notification: Notification, *, copies: int = 1) -> list[dict]:
        """One attempt per copy, concurrently, waiting for the answers (no retries)."""
        _check_copies(copies)
        done = threading.Event()   # never set: the synchronous path cannot be cancelled
        results: list[dict] = []
        threads = [threading.Thread(target=lambda n=n: results.append(self._attempt(notification, n, 1, done)),
                                    daemon=True) for n in range(1, copies + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.attempt_timeout + 5)
        return sorted(results, key=lambda record: record["copy"])

    def _deliver_copy(self, notification: Notification, copy_no: int, retry: bool, delay_s: float,
                      cancelled: threading.Event) -> None:
        if delay_s > 0 and cancelled.wait(delay_s):
            return
        attempts = 1 + (self.max_retries if retry else 0)
        for attempt in range(1, attempts + 1):
            if attempt > 1 and cancelled.wait(self.retry_gap(attempt)):
                return
            record = self._attempt(notification, copy_no, attempt, cancelled)
            if record["status"] is not None and 200 <= record["status"] < 300:
                return

    def retry_gap(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (2, 3, ...)."""
        return RETRY_SCHEDULE_S[attempt - 2] * self.retry_factor

    def _attempt(self, notification: Notification, copy_no: int, attempt: int,
                 cancelled: threading.Event) -> dict:
        headers, key = self._signed_headers(notification)
        started = time.monotonic()
        status, error, answer = _post(notification.url, headers, notification.wire_body, self.attempt_timeout)
        record = {
            "id": notification.id, "event_type": notification.event_type, "url": notification.url,
            "out_trade_no": notification.out_trade_no, "out_refund_no": notification.out_refund_no,
            "copy": copy_no, "attempt": attempt, "status": status, "error": error,
            "response": answer[:200].decode("utf-8", "replace"), "time": self._clock(),
            "elapsed_ms": int((time.monotonic() - started) * 1000),
            "probe": notification.probe, "tamper": notification.tamper,
            "serial": key.serial, "sent_serial": headers["Wechatpay-Serial"],
        }
        if not cancelled.is_set():   # a reset forgot this delivery: do not log it into the new state
            with self._lock:
                if len(self._deliveries) < MAX_DELIVERY_LOG:
                    self._deliveries.append(record)
        log.info("notify %s %s copy %d attempt %d -> %s", notification.event_type, notification.url,
                 copy_no, attempt, status if status is not None else error)
        return record

    def deliveries(self, out_trade_no: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._deliveries if out_trade_no in (None, r["out_trade_no"])]

    def forget(self) -> None:
        with self._lock:
            self._deliveries.clear()


def _check_copies(copies: object) -> None:
    if not isinstance(copies, int) or isinstance(copies, bool) or not 1 <= copies <= MAX_COPIES:
        raise SimError(400, "BAD_REQUEST", f"copies must be 1..{MAX_COPIES} (duplicates 0..{MAX_COPIES - 1})")


def _check_url(url: object) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SimError(400, "BAD_REQUEST", "the notification url must be an http(s) URL")


def _tampered_body(body: bytes) -> bytes:
    """The same notification with its summary changed after signing (a raw body: one more byte)."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return body + b" "
    if not isinstance(envelope, dict):
        return body + b" "
    envelope["summary"] = str(envelope.get("summary", "")) + "(篡改)"
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _post(url: str, headers: dict[str, str], body: bytes, timeout: float) -> tuple[int | None, str | None, bytes]:
    """(status, None, answer) or (None, error, b"") for a connection failure or timeout."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, None, response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}", b""
    finally:
        connection.close()
