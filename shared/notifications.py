"""WeChat Pay's notifications (the article's `payCallBack`): verify, then apply once.

The answer tells WeChat Pay whether to retry, so it is given only after the store has
the outcome:
- 204: applied, already applied, or recorded as an anomaly for a human (amount,
  merchant or app mismatch, unknown or closed order).  Retrying cannot change those
  facts; the anomaly record keeps the money in sight, so we acknowledge.
- 401/400: signature, serial, timestamp, probe, decryption or format refused before
  any store access.  WeChat Pay retries; a forger gets nothing.
- 503: the store is unavailable.  WeChat Pay retries on its schedule.
"""

from __future__ import annotations

import time

from shared.errors import MalformedNotification
from shared.log import log
from shared.settlement import settle_transaction
from shared.wechatpay.notification import verify_notification

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
        notification = verify_notification(headers, body, keys=self.keys, apiv3_key=self.config.wechatpay_apiv3_key,
                                           now=self.clock())
        event_type = notification.get("event_type")
        resource = notification["resource"]
        if not isinstance(resource, dict):
            raise MalformedNotification("the resource is not a JSON object")
        if event_type == "TRANSACTION.SUCCESS":
            settled = settle_transaction(self.store, self.config, resource, source="notification")
            outcome, out_trade_no = settled.anomaly or settled.outcome, settled.out_trade_no
        elif isinstance(event_type, str) and event_type.startswith("REFUND."):
            from shared.refunds import RefundService  # refund notifications are the rare kind

            result = RefundService(self.config, self.store).apply_result(resource, source="notification")
            outcome, out_trade_no = result.anomaly or result.outcome, resource.get("out_trade_no")
        else:
            # Nothing we act on; record it so it is not silently lost, then acknowledge.
            self.store.record_anomaly("unknown_event_type", resource.get("out_trade_no"),
                                      {"eventType": str(event_type)[:64]},
                                      key=f"unknown_event_type:{notification.get('id')}")
            outcome, out_trade_no = "ignored", resource.get("out_trade_no")
        log("callback.notification", eventId=notification.get("id"), eventType=event_type,
            outTradeNo=out_trade_no, outcome=outcome, ms=int((time.monotonic() - started) * 1000))
        return 204, None
