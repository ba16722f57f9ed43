"""WeChat Pay's notifications (the article's `payCallBack`): verify, then apply once.

The answer tells WeChat Pay whether to retry, so it is given only after the store has
the outcome:
- 204: applied, already applied, or recorded as an anomaly for a human (amount,
  merchant or app mismatch, unknown or closed order).  Retrying cannot change those
  facts; the anomaly record keeps the money in sight, so we acknowledge.
- 401/400: signature, serial, timestamp, probe, decryption or format refused before
  any store access.  WeChat Pay retries; a forger gets nothing.
- 503: the store is unavailable.  WeChat Pay retries on its schedule.

Every delivery whose signature verified is kept as it arrived (the verifying headers,
the raw body with its resource still encrypted, our answer) in the store's
`notifications` for 7 days, to be replayed (`devtools.replay`).  Keeping it never
changes the answer: a failure to keep is logged and the notification handled all the
same; after a store outage (503) it is not even tried, so the answer is not delayed.
"""

from __future__ import annotations

import time

from shared.errors import CloudPayError, MalformedNotification, StoreUnavailable
from shared.log import log
from shared.settlement import settle_transaction
from shared.wechatpay.notification import decrypt_notification, parse_notification, verify_signature

MAX_BODY = 64 * 1024  # real notifications are about 1 KB


def failure_body(error) -> dict:
    """WeChat Pay's failure shape."""
    return {"code": "FAIL", "message": error.message}


class NotificationService:
    """`store` may be a callable returning the store: it is then first built after a
    notification verified, so forgeries never open a database connection."""

    def __init__(self, config, store, clock=time.time, keys=None):
        from shared.wechatpay.keys import key_set_from_config

        self.config = config
        self._store = store
        self.clock = clock
        self.keys = keys if keys is not None else key_set_from_config(config)

    @property
    def store(self):
        if callable(self._store):
            self._store = self._store()
        return self._store

    def handle(self, headers: dict, body: bytes) -> tuple[int, None]:
        started = time.monotonic()
        verify_signature(headers, body, keys=self.keys, now=self.clock())
        # From here on the notification is WeChat Pay's own: it is kept, whatever follows.
        facts: dict = {}
        status, outcome, store_down = 500, "INTERNAL_ERROR", False
        try:
            envelope = parse_notification(body)
            facts.update(notification_id=envelope.get("id"), event_type=envelope.get("event_type"))
            notification = decrypt_notification(envelope, apiv3_key=self.config.wechatpay_apiv3_key)
            outcome, out_trade_no, out_refund_no = self._apply(notification)
            facts.update(out_trade_no=out_trade_no, out_refund_no=out_refund_no)
            status = 204
        except CloudPayError as error:
            status, outcome, store_down = error.status, error.code, isinstance(error, StoreUnavailable)
            raise
        finally:
            if not store_down:
                self._keep(headers, body, status, outcome, facts)
        log("callback.notification", eventId=facts["notification_id"], eventType=facts["event_type"],
            outTradeNo=facts["out_trade_no"], outcome=outcome, ms=int((time.monotonic() - started) * 1000))
        return 204, None

    def _apply(self, notification: dict) -> tuple[str, str | None, str | None]:
        """(outcome, outTradeNo, outRefundNo) of a verified, decrypted notification."""
        event_type = notification.get("event_type")
        resource = notification["resource"]
        if not isinstance(resource, dict):
            raise MalformedNotification("the resource is not a JSON object")
        if event_type == "TRANSACTION.SUCCESS":
            settled = settle_transaction(self.store, self.config, resource, source="notification")
            return settled.anomaly or settled.outcome, settled.out_trade_no, None
        if isinstance(event_type, str) and event_type.startswith("REFUND."):
            from shared.refunds import RefundService  # refund notifications are the rare kind

            result = RefundService(self.config, self.store).apply_result(resource, source="notification")
            return result.anomaly or result.outcome, resource.get("out_trade_no"), resource.get("out_refund_no")
        # Nothing we act on; record it so it is not silently lost, then acknowledge.
        self.store.record_anomaly("unknown_event_type", resource.get("out_trade_no"),
                                  {"eventType": str(event_type)[:64]},
                                  key=f"unknown_event_type:{notification.get('id')}")
        return "ignored", resource.get("out_trade_no"), None

    def _keep(self, headers: dict, body: bytes, status: int, outcome: str, facts: dict) -> None:
        """Keep this delivery for replays; never fatal (the order's outcome is what matters).
        Only our own order and refund numbers come from the decrypted resource."""
        try:
            self.store.record_notification(
                headers, body, status=status, outcome=outcome, notification_id=facts.get("notification_id"),
                event_type=facts.get("event_type"), out_trade_no=facts.get("out_trade_no"),
                out_refund_no=facts.get("out_refund_no"))
        except Exception as exc:  # a lost entry must not cost WeChat Pay its answer
            log("callback.notification_not_kept", level="warning", eventId=facts.get("notification_id"),
                status=status, error=exc.code if isinstance(exc, CloudPayError) else type(exc).__name__)
