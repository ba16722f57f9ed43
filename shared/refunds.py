"""Refunds: requesting them (reconcile's manual action) and applying WeChat's results
(refund notifications in `callback`, refund queries in the sweep).

Money moves on the order document only, in one compare-and-set per step
(`OrderStore.reserve_refund` / `settle_refund` / `apply_unreserved_refund`), keyed by
`outRefundNo` in the order's `refundStates`; so concurrent refunds never exceed what
was paid and a repeated notification never counts twice.  The `refunds` collection and
the `refund.succeeded` event are idempotent projections, written again on every retry.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from shared import order_states
from shared.errors import BadRequest, Conflict, StoreConflict, WeChatPayRejected
from shared.log import log
from shared.settlement import rfc3339_to_ms
from shared.store import REFUND_RELEASED, REFUND_SUCCEEDED

# Status of a document in `refunds`.
REQUESTED = "REQUESTED"    # reserved on the order; WeChat Pay has not answered yet
PROCESSING = "PROCESSING"  # accepted by WeChat Pay
SUCCESS = "SUCCESS"
ABNORMAL = "ABNORMAL"      # WeChat could not pay it back (e.g. card closed): a human acts
CLOSED = "CLOSED"
REFUSED = "REFUSED"        # WeChat Pay (or our own check) said no; nothing reserved

_REFUND_NO_RE = re.compile(r"^[0-9A-Za-z_|*@-]{1,64}$")
MAX_REASON = 80


@dataclass(frozen=True)
class RefundOutcome:
    outcome: str            # "succeeded", "already", "released", "abnormal", "anomaly", "pending"
    out_refund_no: str
    anomaly: str | None = None


def new_out_refund_no(now_ms: int) -> str:
    return f"R{now_ms}{secrets.token_hex(6).upper()}"


class RefundService:
    def __init__(self, config, store, wechatpay=None):
        self.config = config
        self.store = store
        self.wechatpay = wechatpay

    # --- requesting ------------------------------------------------------------------

    def request_refund(self, out_trade_no: str, amount, reason: str | None = None,
                       out_refund_no: str | None = None) -> dict:
        """Refund `amount` fen of a paid order, idempotent on `out_refund_no`."""
        if type(amount) is not int or amount < 1:
            raise BadRequest("amount must be a whole number of fen, at least 1", code="INVALID_AMOUNT")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise BadRequest(f"reason must be text of at most {MAX_REASON} characters", code="INVALID_REASON")
        if out_refund_no is None:
            out_refund_no = new_out_refund_no(self.store.clock())
        elif not isinstance(out_refund_no, str) or not _REFUND_NO_RE.match(out_refund_no):
            raise BadRequest("outRefundNo must be 1..64 of [0-9A-Za-z_-|*@]", code="INVALID_REFUND_NO")

        order = self.store.get_order(out_trade_no)
        record = {"outRefundNo": out_refund_no, "outTradeNo": out_trade_no, "amount": amount,
                  "reason": reason, "status": REQUESTED, "source": "request",
                  "createTime": self.store.clock(), "updateTime": self.store.clock()}
        try:
            self.store.insert_refund(record)
        except StoreConflict:
            return self._repeat(out_refund_no, out_trade_no, amount, order)
        if not order_states.is_paid(order["payStatus"]):
            self._set_status(out_refund_no, REFUSED, failure="ORDER_NOT_PAID")
            raise Conflict(f"order is {order['payStatus']}; only paid orders can be refunded",
                           code="ORDER_NOT_PAID")
        if self.store.reserve_refund(out_trade_no, out_refund_no, amount) is None:
            self._set_status(out_refund_no, REFUSED, failure="EXCEEDS_REFUNDABLE")
            current = self.store.get_order(out_trade_no)
            raise Conflict(f"refund of {amount} fen exceeds what is refundable "
                           f"({current.get('refundableFee', 0)} fen)", code="REFUND_EXCEEDS_PAID")
        return self._send(out_refund_no, out_trade_no, amount, order["totalFee"], reason)

    def _repeat(self, out_refund_no: str, out_trade_no: str, amount: int, order: dict) -> dict:
        existing = self.store.find_refund(out_refund_no)
        if existing["outTradeNo"] != out_trade_no or existing["amount"] != amount:
            raise Conflict("this outRefundNo was used for a different refund", code="REFUND_NO_REUSED")
        if existing["status"] == REQUESTED and order["refundStates"].get(out_refund_no) == "RESERVED":
            # The first attempt did not hear back from WeChat Pay: ask again (WeChat Pay
            # is idempotent on out_refund_no).
            return self._send(out_refund_no, out_trade_no, amount, order["totalFee"], existing.get("reason"))
        return _public(existing)

    def _send(self, out_refund_no: str, out_trade_no: str, amount: int, total: int,
              reason: str | None) -> dict:
        try:
            answer = self.wechatpay.refund(out_trade_no=out_trade_no, out_refund_no=out_refund_no,
                                           refund=amount, total=total, reason=reason)
        except WeChatPayRejected as error:
            if not error.outcome_unknown:  # a definite no: give the reservation back
                self.store.settle_refund(out_trade_no, out_refund_no, amount, REFUND_RELEASED)
                self._set_status(out_refund_no, REFUSED, failure=error.wechat_code)
            raise
        # Unreachable or a 5xx: stays REQUESTED and reserved; the sweep (or a repeat
        # with the same outRefundNo) asks WeChat Pay again.
        status = answer.get("status")
        self._set_status(out_refund_no, PROCESSING, refundId=answer.get("refund_id"))
        if status in (SUCCESS, CLOSED, ABNORMAL):
            self.apply_result(answer, source="refund_answer")
        log("refund.requested", outTradeNo=out_trade_no, outRefundNo=out_refund_no, amount=amount,
            status=status)
        return _public(self.store.find_refund(out_refund_no))

    def release_unsent(self, record: dict) -> None:
        """WeChat Pay has never heard of this refund: give the reservation back."""
        self.store.settle_refund(record["outTradeNo"], record["outRefundNo"], record["amount"],
                                 REFUND_RELEASED)
        self._set_status(record["outRefundNo"], REFUSED, failure="NOT_AT_WECHAT")

    # --- applying WeChat's results ----------------------------------------------------

    def apply_result(self, refund: dict, *, source: str) -> RefundOutcome:
        """Apply a refund result (decrypted REFUND.* notification or a refund query).

        Field names are WeChat's: out_refund_no, out_trade_no, refund_id, refund_status
        (notification) or status (query), amount.refund, success_time.
        """
        out_refund_no = str(refund.get("out_refund_no") or "")
        out_trade_no = str(refund.get("out_trade_no") or "")
        status = refund.get("refund_status") or refund.get("status")
        amounts = refund.get("amount")
        amount = amounts.get("refund") if isinstance(amounts, dict) else None
        evidence = {"source": source, "status": status, "amount": amount,
                    "refundId": refund.get("refund_id"), "mchid": refund.get("mchid")}
        if not _REFUND_NO_RE.match(out_refund_no) or type(amount) is not int or amount < 1:
            return self._anomaly("refund_malformed", out_trade_no, out_refund_no, evidence)
        if refund.get("mchid") not in (None, self.config.wechatpay_mchid):
            return self._anomaly("refund_merchant_mismatch", out_trade_no, out_refund_no, evidence)
        known = self.store.find_refund(out_refund_no)
        if known is None:
            # Before we knew it (refunded in the merchant console, or our request's
            # record is not written yet): record it, never drop it.
            self._upsert_refund(out_refund_no, out_trade_no, amount, status or "UNKNOWN",
                                source=source, refund_id=refund.get("refund_id"))
            known = {"outTradeNo": out_trade_no, "amount": amount}
        if known["outTradeNo"] != out_trade_no or known["amount"] != amount:
            return self._anomaly("refund_mismatch", out_trade_no, out_refund_no,
                                 {**evidence, "expectedAmount": known["amount"],
                                  "expectedOutTradeNo": known["outTradeNo"]})
        if status == SUCCESS:
            return self._succeeded(out_trade_no, out_refund_no, amount, refund, evidence)
        if status == CLOSED:
            released = self.store.settle_refund(out_trade_no, out_refund_no, amount, REFUND_RELEASED)
            self._set_status(out_refund_no, CLOSED)
            return RefundOutcome("released" if released else "already", out_refund_no)
        if status == ABNORMAL:
            self._set_status(out_refund_no, ABNORMAL)
            return self._anomaly("refund_abnormal", out_trade_no, out_refund_no, evidence, outcome="abnormal")
        return RefundOutcome("pending", out_refund_no)

    def _succeeded(self, out_trade_no, out_refund_no, amount, refund, evidence) -> RefundOutcome:
        order = self.store.settle_refund(out_trade_no, out_refund_no, amount, REFUND_SUCCEEDED)
        outcome = "succeeded"
        if order is None:
            current = self.store.find_order(out_trade_no)
            state = (current or {}).get("refundStates", {}).get(out_refund_no)
            if state == REFUND_SUCCEEDED:
                outcome = "already"
            elif current is not None and state is None:
                if self.store.apply_unreserved_refund(out_trade_no, out_refund_no, amount) is None:
                    # A concurrent copy of this same report may have applied it first: that
                    # is a retry, not an anomaly.  Anything else is money we cannot place.
                    again = self.store.find_order(out_trade_no) or {}
                    if again.get("refundStates", {}).get(out_refund_no) != REFUND_SUCCEEDED:
                        return self._anomaly("refund_unmatched", out_trade_no, out_refund_no, evidence)
                    outcome = "already"
            else:  # unknown order, or a refund we released (refused/closed) now reported paid
                return self._anomaly("refund_unmatched", out_trade_no, out_refund_no,
                                     {**evidence, "orderRefundState": state})
        # Only a paid order holds a settled refund, so this cannot be refused; a second
        # refund on an order that is already REFUND is "already done".
        self.store.transition(out_trade_no, order_states.REFUND)
        self._set_status(out_refund_no, SUCCESS, refundId=refund.get("refund_id"),
                         successTime=rfc3339_to_ms(refund.get("success_time")))
        self.store.append_event("refund.succeeded", out_trade_no, key=f"refund.succeeded:{out_refund_no}",
                                outRefundNo=out_refund_no, amount=amount)
        if outcome == "succeeded":
            log("refund.succeeded", outTradeNo=out_trade_no, outRefundNo=out_refund_no, amount=amount)
        return RefundOutcome(outcome, out_refund_no)

    # --- records --------------------------------------------------------------------------

    def _upsert_refund(self, out_refund_no, out_trade_no, amount, status, *, source, refund_id) -> None:
        now = self.store.clock()
        self.store.insert_refund_if_absent({
            "outRefundNo": out_refund_no, "outTradeNo": out_trade_no, "amount": amount,
            "status": status, "source": source, "refundId": refund_id, "reason": None,
            "createTime": now, "updateTime": now})

    def _set_status(self, out_refund_no: str, status: str, **fields) -> None:
        self.store.update_refund(out_refund_no, {"status": status, **fields})

    def _anomaly(self, kind, out_trade_no, out_refund_no, evidence, outcome="anomaly") -> RefundOutcome:
        self.store.record_anomaly(kind, out_trade_no or None, {**evidence, "outRefundNo": out_refund_no},
                                  key=f"{kind}:{out_refund_no}:{evidence.get('status')}")
        log("refund.anomaly", level="warning", kind=kind, outTradeNo=out_trade_no, outRefundNo=out_refund_no)
        return RefundOutcome(outcome, out_refund_no, anomaly=kind)


def _public(record: dict) -> dict:
    return {k: record.get(k) for k in ("outRefundNo", "outTradeNo", "amount", "status", "refundId",
                                       "reason", "failure", "createTime", "successTime")}
