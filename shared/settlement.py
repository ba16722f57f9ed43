"""Settling a payment WeChat Pay reports, however we learned it.

The callback (a verified notification), the status query of `prepare` and the reconcile
sweep all call `settle_transaction` with WeChat's transaction JSON (the decrypted
notification resource and the query answer have the same fields).  It checks the facts
against the stored order and either applies `-> SUCCESS` through the store's one
transition function (one `order.paid` event however many times it is called) or records
an anomaly for a human.  It never marks an order paid on a mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from shared import order_states
from shared.errors import IllegalTransition
from shared.log import log

PAID = "paid"                  # this call moved the order to SUCCESS
ALREADY_PAID = "already_paid"  # an earlier call did; nothing changed
ANOMALY = "anomaly"            # recorded for a human; the order was not marked paid
NOT_PAID = "not_paid"          # WeChat does not report a payment (NOTPAY, CLOSED, ...)


@dataclass(frozen=True)
class Settlement:
    outcome: str
    out_trade_no: str
    anomaly: str | None = None
    order: dict | None = None


# RFC 3339 date-time with a zone (section 5.6): any number of fraction digits, "Z" or an
# offset, "T"/"Z" in either case.  Parsed here, not by fromisoformat alone: Python 3.10's
# (SCF's runtime) takes neither "Z" nor fractions other than 3 or 6 digits.
_RFC3339_RE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?"
                         r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


def rfc3339_to_ms(value: str | None) -> int | None:
    """'2024-05-01T12:00:00+08:00' -> epoch ms, truncated (None when absent or unreadable)."""
    match = _RFC3339_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    day, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}.{(fraction or '').ljust(6, '0')[:6]}{zone}")
    except ValueError:  # e.g. month 13
        return None
    return int(parsed.timestamp()) * 1000 + parsed.microsecond // 1000


def coupon_fields(transaction: dict, total: int) -> dict:
    """What coupons did to a payment, from WeChat's `promotion_detail` (fen):
    - couponFee: all coupons together (the payer paid total - couponFee);
    - settlementFee: what the merchant is settled, total minus the coupons that are not
      pre-funded (type NOCASH, 免充值型): the bill's 应结订单金额.  WeChat Pay documents it
      as settlement_total_fee = total_fee - the amounts of type DISCOUNT (the v2 name of
      NOCASH) coupons (pay.weixin.qq.com/doc/v2/partner/4011984209).
    Empty when WeChat sent no promotions or ones we cannot read (the bill is then checked
    against its own coupon column)."""
    promotions = transaction.get("promotion_detail")
    if promotions is None:
        return {"couponFee": 0, "settlementFee": total}
    if not isinstance(promotions, list):
        return {}
    coupons = no_cash = 0
    for promotion in promotions:
        amount = promotion.get("amount") if isinstance(promotion, dict) else None
        kind = promotion.get("type") if isinstance(promotion, dict) else None
        if type(amount) is not int or amount < 0 or kind not in ("CASH", "NOCASH"):
            return {}
        coupons += amount
        no_cash += amount if kind == "NOCASH" else 0
    if coupons > total:
        return {}
    return {"couponFee": coupons, "settlementFee": total - no_cash}


def _amount(transaction: dict, key: str) -> int | None:
    amount = transaction.get("amount")
    value = amount.get(key) if isinstance(amount, dict) else None
    return value if type(value) is int else None


def settle_transaction(store, config, transaction: dict, *, source: str) -> Settlement:
    """Apply WeChat's report that `transaction` succeeded, or record why we cannot."""
    out_trade_no = str(transaction.get("out_trade_no") or "")
    transaction_id = str(transaction.get("transaction_id") or "")
    if transaction.get("trade_state") not in (None, order_states.SUCCESS):
        return Settlement(NOT_PAID, out_trade_no)

    evidence = {
        "source": source,
        "transactionId": transaction_id,
        "mchid": transaction.get("mchid"),
        "appid": transaction.get("appid"),
        "total": _amount(transaction, "total"),
        "payerTotal": _amount(transaction, "payer_total"),
        "successTime": transaction.get("success_time"),
        "openid": (transaction.get("payer") or {}).get("openid")
        if isinstance(transaction.get("payer"), dict) else None,
    }
    order = store.find_order(out_trade_no) if out_trade_no else None
    problem = _mismatch(config, order, evidence)
    if problem is None and order["payStatus"] == order_states.CLOSED:
        problem = "paid_after_close"
    if problem is not None:
        return _anomaly(store, problem, out_trade_no, transaction_id, evidence, order, source)

    fields = {
        "transactionId": transaction_id,
        "paidAt": rfc3339_to_ms(transaction.get("success_time")) or store.clock(),
        "payerTotal": evidence["payerTotal"] if evidence["payerTotal"] is not None else evidence["total"],
        "payerOpenid": evidence["openid"],
        "paidVia": source,
        # What refunds may take from; only a paid order has any.
        "refundableFee": order["totalFee"],
        **coupon_fields(transaction, order["totalFee"]),
    }
    try:
        result = store.transition(out_trade_no, order_states.SUCCESS, fields=fields,
                                  same={"transactionId": transaction_id})
    except IllegalTransition:
        # Paid under another transaction id, or closed meanwhile: money we cannot
        # attach to this order automatically.
        current = store.find_order(out_trade_no) or order
        kind = ("paid_after_close" if current.get("payStatus") == order_states.CLOSED
                else "duplicate_payment")
        return _anomaly(store, kind, out_trade_no, transaction_id, evidence, current, source)
    outcome = PAID if result.applied else ALREADY_PAID
    if result.applied:
        log("order.paid", outTradeNo=out_trade_no, source=source, totalFee=order["totalFee"])
    if config.shipping_mode == "virtual":
        # On both paths: a crash after the payment was stored is repaired by the retry.
        from shared.shipping import plan_after_payment

        plan_after_payment(store, config, result.order)
    return Settlement(outcome, out_trade_no, order=result.order)


def _mismatch(config, order: dict | None, evidence: dict) -> str | None:
    if order is None:
        return "unknown_order"
    if evidence["mchid"] != config.wechatpay_mchid:
        return "merchant_mismatch"
    if evidence["appid"] != order.get("appid") or evidence["appid"] != config.wechat_appid:
        return "app_mismatch"
    if evidence["total"] != order.get("totalFee"):
        return "amount_mismatch"
    if not evidence["transactionId"]:
        return "missing_transaction_id"
    return None


def _anomaly(store, kind: str, out_trade_no: str, transaction_id: str, evidence: dict,
             order: dict | None, source: str) -> Settlement:
    if order is not None:
        evidence = {**evidence, "orderTotalFee": order.get("totalFee"),
                    "orderStatus": order.get("payStatus")}
    # Keyed on the transaction: retries of the same notification add no second record.
    store.record_anomaly(kind, out_trade_no or None, evidence,
                         key=f"{kind}:{out_trade_no}:{transaction_id}")
    log("settlement.anomaly", level="warning", kind=kind, outTradeNo=out_trade_no, source=source)
    return Settlement(ANOMALY, out_trade_no, anomaly=kind, order=order)
