"""The simulator's books: orders and refunds, validated and ruled as WeChat Pay does.

Everything here is plain Python under one lock; the HTTP layer and the control API
both call it.  Failures raise `SimError` carrying WeChat's status, code and message.

Choices where WeChat Pay's documentation is silent or vague:
- an unpaid order past its `time_expire` still *queries* as NOTPAY (WeChat keeps it
  NOTPAY until the merchant closes it), but it can no longer be paid, and a prepay
  repeating it is refused with INVALID_REQUEST;
- `time_expire` is clamped to [now + 1 min, now + 90 days]; without it, 7 days;
- a refund's amount stays reserved while PROCESSING or ABNORMAL, and is released
  when it CLOSES; the order's trade_state is REFUND from the first refund on.

Coupons (`pay(..., coupons=[{"type": "CASH"|"NOCASH", "amount": fen, "name"}])`): the
payer pays total - their sum (a sum above the total is refused); the transaction shows
`promotion_detail` (scope GLOBAL, the merchant funds each coupon in full).  In the trade
bill every coupon is in 代金券金额, and a NOCASH (免充值, not pre-funded) one also lowers
应结订单金额; a CASH (充值, pre-funded) one does not.  The older `payer_total` (no coupons)
leaves no promotion_detail and counts as a pre-funded coupon in the bill.
"""

from __future__ import annotations

import re
import secrets
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlsplit

from devtools.simulator.bill import BillEntry
from devtools.simulator.errors import SimError, param_error
from devtools.simulator.timeutil import cst_compact, cst_date, parse_rfc3339, rfc3339

OUT_TRADE_NO_RE = re.compile(r"^[0-9A-Za-z_\-|*]{6,32}$")
OUT_REFUND_NO_RE = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PAYABLE_S = 7 * 24 * 3600
MIN_PAYABLE_S = 60
MAX_PAYABLE_S = 90 * 24 * 3600
PAID_STATES = ("SUCCESS", "REFUND")
TRADE_STATE_DESC = {
    "NOTPAY": "订单未支付",
    "SUCCESS": "支付成功",
    "REFUND": "订单发生过退款",
    "CLOSED": "订单已关闭",
    "PAYERROR": "支付失败，请重新下单支付",
}
REFUND_FINAL_STATES = ("SUCCESS", "CLOSED")
USER_RECEIVED_ACCOUNT = "支付用户零钱"
COUPON_TYPES = ("CASH", "NOCASH")
COUPON_NAMES = {"CASH": "充值型代金券", "NOCASH": "免充值型代金券"}
MAX_COUPONS = 20


@dataclass
class Order:
    out_trade_no: str
    appid: str
    mchid: str
    description: str
    total: int
    currency: str
    openid: str
    notify_url: str
    attach: str | None
    time_expire: float
    create_time: float
    request_fingerprint: tuple
    trade_state: str = "NOTPAY"
    prepay_ids: list[str] = field(default_factory=list)
    transaction_id: str | None = None
    success_time: float | None = None
    payer_total: int | None = None
    refund_nos: list[str] = field(default_factory=list)
    promotion_detail: list[dict] = field(default_factory=list)   # the coupons used, as WeChat shows them

    def nocash_coupon_fen(self) -> int:
        """What not-pre-funded coupons paid: the merchant is not settled for it."""
        return sum(c["amount"] for c in self.promotion_detail if c["type"] == "NOCASH")

    def coupon_fen(self) -> int:
        """What all coupons paid, i.e. what the payer did not (the bill's 代金券金额)."""
        return self.total - (self.payer_total if self.payer_total is not None else self.total)


@dataclass
class Refund:
    out_refund_no: str
    refund_id: str
    out_trade_no: str
    transaction_id: str
    refund: int
    total: int
    payer_total: int
    payer_refund: int
    notify_url: str | None
    reason: str | None
    create_time: float
    request_fingerprint: tuple
    status: str = "PROCESSING"
    success_time: float | None = None


class Ledger:
    def __init__(self, appid: str, mchid: str, clock: Callable[[], float]):
        self.appid = appid
        self.mchid = mchid
        self._clock = clock
        self._lock = threading.RLock()
        self._orders: dict[str, Order] = {}
        self._transactions: dict[str, str] = {}   # transaction_id -> out_trade_no
        self._refunds: dict[str, Refund] = {}
        self._bill_overrides: dict[str, dict] = {}

    def reset(self) -> None:
        with self._lock:
            self._orders.clear()
            self._transactions.clear()
            self._refunds.clear()
            self._bill_overrides.clear()

    # --- WeChat Pay API -------------------------------------------------------------

    def prepay(self, body: object, auth_mchid: str) -> str:
        """POST /v3/pay/transactions/jsapi: a prepay_id, or SimError as WeChat answers."""
        request = _parse_prepay(body)
        if request["mchid"] != auth_mchid:
            raise param_error("mchid", "与请求头中的商户号不一致", request["mchid"])
        if request["appid"] != self.appid:
            raise SimError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        now = self._clock()
        with self._lock:
            existing = self._orders.get(request["out_trade_no"])
            if existing is not None:
                self._check_repeat_prepay(existing, request, now)
                prepay_id = _new_prepay_id(now)
                existing.prepay_ids.append(prepay_id)
                return prepay_id
            order = Order(out_trade_no=request["out_trade_no"], appid=request["appid"], mchid=request["mchid"],
                          description=request["description"], total=request["total"],
                          currency=request["currency"], openid=request["openid"],
                          notify_url=request["notify_url"], attach=request["attach"],
                          time_expire=_payable_until(request["time_expire"], now), create_time=now,
                          request_fingerprint=request["fingerprint"])
            order.prepay_ids.append(_new_prepay_id(now))
            self._orders[order.out_trade_no] = order
            return order.prepay_ids[-1]

    def _check_repeat_prepay(self, order: Order, request: dict, now: float) -> None:
        if order.trade_state in PAID_STATES:
            raise SimError(400, "ORDERPAID", "该订单已支付")
        if order.trade_state == "CLOSED":
            raise SimError(400, "ORDER_CLOSED", "订单已关闭")
        if order.request_fingerprint != request["fingerprint"]:
            raise SimError(400, "INVALID_REQUEST", "商户订单号重复，且请求参数与原订单不一致")
        if now > order.time_expire:
            raise SimError(400, "INVALID_REQUEST", "订单已超过支付截止时间(time_expire)")

    def query(self, out_trade_no: str, mchid: str | None) -> dict:
        """GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=..."""
        _check_query_mchid(mchid, self.mchid)
        with self._lock:
            return self.transaction_view(self._order_or_404(out_trade_no, "ORDER_NOT_EXIST"))

    def query_by_transaction_id(self, transaction_id: str, mchid: str | None) -> dict:
        """GET /v3/pay/transactions/id/{transaction_id}?mchid=..."""
        _check_query_mchid(mchid, self.mchid)
        with self._lock:
            out_trade_no = self._transactions.get(transaction_id)
            if out_trade_no is None:
                raise SimError(404, "ORDER_NOT_EXIST", "订单不存在")
            return self.transaction_view(self._orders[out_trade_no])

    def close(self, out_trade_no: str, body: object) -> None:
        """POST .../out-trade-no/{out_trade_no}/close: 204, or ORDERPAID."""
        if not isinstance(body, dict):
            raise param_error("body", "请求体必须是JSON对象")
        if body.get("mchid") != self.mchid:
            raise param_error("mchid", "与请求头中的商户号不一致", body.get("mchid"))
        with self._lock:
            order = self._order_or_404(out_trade_no, "ORDER_NOT_EXIST")
            if order.trade_state in PAID_STATES:
                raise SimError(400, "ORDERPAID", "订单已支付")
            order.trade_state = "CLOSED"   # closing a closed order is a no-op, as on WeChat

    def create_refund(self, body: object) -> tuple[dict, bool]:
        """POST /v3/refund/domestic/refunds: (refund view, created?)."""
        request = _parse_refund(body)
        now = self._clock()
        with self._lock:
            order = self._refund_target(request)
            fingerprint = (order.out_trade_no, request["refund"], request["total"], request["currency"])
            existing = self._refunds.get(request["out_refund_no"])
            if existing is not None:
                if existing.request_fingerprint != fingerprint:
                    raise SimError(400, "INVALID_REQUEST", "订单金额或退款金额与之前请求不一致，请核实后再试")
                return self.refund_view(existing), False
            if order.trade_state not in PAID_STATES:
                raise SimError(400, "INVALID_REQUEST", "交易未支付，不能退款")
            if request["total"] != order.total:
                raise SimError(400, "INVALID_REQUEST", "amount.total与原订单金额不一致")
            if request["refund"] > order.total - self._reserved(order):
                raise SimError(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            payer_total = order.payer_total if order.payer_total is not None else order.total
            refund = Refund(out_refund_no=request["out_refund_no"], refund_id=_new_refund_id(),
                            out_trade_no=order.out_trade_no, transaction_id=order.transaction_id or "",
                            refund=request["refund"], total=order.total, payer_total=payer_total,
                            # the payer gets back their share; integer arithmetic, rounded down
                            payer_refund=request["refund"] * payer_total // order.total,
                            notify_url=request["notify_url"], reason=request["reason"], create_time=now,
                            request_fingerprint=fingerprint)
            self._refunds[refund.out_refund_no] = refund
            order.refund_nos.append(refund.out_refund_no)
            order.trade_state = "REFUND"
            return self.refund_view(refund), True

    def _refund_target(self, request: dict) -> Order:
        by_transaction = None
        if request["transaction_id"] is not None:
            out_trade_no = self._transactions.get(request["transaction_id"])
            if out_trade_no is None:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
            by_transaction = self._orders[out_trade_no]
        if request["out_trade_no"] is not None:
            order = self._order_or_404(request["out_trade_no"], "RESOURCE_NOT_EXISTS")
            if by_transaction is not None and by_transaction is not order:
                raise param_error("transaction_id", "与out_trade_no不是同一笔订单", request["transaction_id"])
            return order
        return by_transaction

    def _reserved(self, order: Order) -> int:
        return sum(self._refunds[n].refund for n in order.refund_nos if self._refunds[n].status != "CLOSED")

    def refund(self, out_refund_no: str) -> dict:
        """GET /v3/refund/domestic/refunds/{out_refund_no}."""
        with self._lock:
            return self.refund_view(self._refund_or_404(out_refund_no))

    # --- control actions (what the payer, the bank and time do) -----------------------

    def pay(self, out_trade_no: str, *, payer_total: int | None = None,
            success_time: str | None = None, coupons: list[dict] | None = None) -> Order:
        now = self._clock()
        paid_at = now if success_time is None else parse_rfc3339(success_time)
        if paid_at is None:
            raise SimError(400, "BAD_REQUEST", "success_time must be RFC 3339, e.g. 2024-05-01T12:00:00+08:00")
        if coupons is not None and payer_total is not None:
            raise SimError(400, "BAD_REQUEST", "give coupons or payer_total, not both (coupons set payer_total)")
        promotion_detail = _parse_coupons(coupons)
        with self._lock:
            order = self._order_or_404(out_trade_no, "ORDER_NOT_EXIST")
            self._check_payable(order, now)
            if payer_total is not None and (not _is_int(payer_total) or not 0 <= payer_total <= order.total):
                raise SimError(400, "BAD_REQUEST", "payer_total must be an integer 0..total (fen)")
            discount = sum(c["amount"] for c in promotion_detail)
            if discount > order.total:
                raise SimError(400, "BAD_REQUEST", f"the coupons ({discount} fen) exceed the order total "
                                                   f"({order.total} fen)")
            if promotion_detail:
                payer_total = order.total - discount
            order.trade_state = "SUCCESS"
            order.transaction_id = _new_transaction_id(paid_at)
            order.success_time = paid_at
            order.payer_total = order.total if payer_total is None else payer_total
            order.promotion_detail = promotion_detail
            self._transactions[order.transaction_id] = order.out_trade_no
            return order

    def _check_payable(self, order: Order, now: float) -> None:
        if order.trade_state in PAID_STATES:
            raise SimError(409, "ORDERPAID", "the order is already paid")
        if order.trade_state == "CLOSED":
            raise SimError(409, "ORDER_CLOSED", "the order is closed; WeChat refuses to pay it")
        if now > order.time_expire:
            raise SimError(409, "ORDER_EXPIRED", "the order is past its time_expire; WeChat refuses to pay it")

    def fail(self, out_trade_no: str) -> Order:
        with self._lock:
            order = self._order_or_404(out_trade_no, "ORDER_NOT_EXIST")
            if order.trade_state in PAID_STATES:
                raise SimError(409, "ORDERPAID", "the order is already paid")
            if order.trade_state == "CLOSED":
                raise SimError(409, "ORDER_CLOSED", "the order is closed")
            order.trade_state = "PAYERROR"
            return order

    def expire(self, out_trade_no: str, *, close: bool = False) -> Order:
        """Time passes: the order can no longer be paid (and is CLOSED when `close`)."""
        now = self._clock()
        with self._lock:
            order = self._order_or_404(out_trade_no, "ORDER_NOT_EXIST")
            if order.trade_state in PAID_STATES:
                raise SimError(409, "ORDERPAID", "the order is already paid")
            order.time_expire = min(order.time_expire, now - 1)
            if close:
                order.trade_state = "CLOSED"
            return order

    def complete_refund(self, out_refund_no: str, status: str) -> Refund:
        if status not in ("SUCCESS", "ABNORMAL", "CLOSED"):
            raise SimError(400, "BAD_REQUEST", "status must be SUCCESS, ABNORMAL or CLOSED")
        with self._lock:
            refund = self._refund_or_404(out_refund_no)
            if refund.status in REFUND_FINAL_STATES:
                raise SimError(409, "REFUND_FINAL", f"the refund is already {refund.status}")
            refund.status = status
            if status == "SUCCESS":
                refund.success_time = self._clock()
            return refund

    def set_bill_override(self, out_trade_no: str, *, hide: bool | None = None, amount: int | None = None,
                          clear: bool = False) -> dict:
        """Make the bill disagree with the books: hide an order, or report another amount."""
        if amount is not None and (not _is_int(amount) or amount < 0):
            raise SimError(400, "BAD_REQUEST", "amount must be a non-negative integer (fen)")
        if hide is not None and not isinstance(hide, bool):
            raise SimError(400, "BAD_REQUEST", "hide must be true or false")
        with self._lock:
            self._order_or_404(out_trade_no, "ORDER_NOT_EXIST")
            if clear:
                self._bill_overrides.pop(out_trade_no, None)
                return {}
            override = self._bill_overrides.setdefault(out_trade_no, {})
            if hide is not None:
                override["hide"] = hide
            if amount is not None:
                override["amount"] = amount
            return dict(override)

    # --- views ---------------------------------------------------------------------

    def transaction_view(self, order: Order, amount_override: int | None = None) -> dict:
        """The order as WeChat Pay's query (and TRANSACTION notification) shows it."""
        paid = order.trade_state in PAID_STATES
        amount = {"total": order.total if amount_override is None else amount_override,
                  "currency": order.currency, "payer_currency": order.currency}
        view = {"appid": order.appid, "mchid": order.mchid, "out_trade_no": order.out_trade_no,
                "trade_type": "JSAPI", "trade_state": order.trade_state,
                "trade_state_desc": TRADE_STATE_DESC[order.trade_state],
                "payer": {"openid": order.openid}, "amount": amount}
        if paid:
            amount["payer_total"] = order.payer_total
            view.update({"transaction_id": order.transaction_id, "bank_type": "OTHERS",
                         "success_time": rfc3339(order.success_time), "attach": order.attach or ""})
            if order.promotion_detail:
                view["promotion_detail"] = [dict(coupon) for coupon in order.promotion_detail]
        return view

    def refund_view(self, refund: Refund) -> dict:
        """A refund as the refund API answers."""
        view = {
            "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
            "transaction_id": refund.transaction_id, "out_trade_no": refund.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": USER_RECEIVED_ACCOUNT,
            "create_time": rfc3339(refund.create_time), "status": refund.status, "funds_account": "AVAILABLE",
            "amount": {"total": refund.total, "refund": refund.refund, "payer_total": refund.payer_total,
                       "payer_refund": refund.payer_refund, "settlement_total": refund.total,
                       "settlement_refund": refund.refund, "discount_refund": refund.refund - refund.payer_refund,
                       "currency": "CNY", "refund_fee": 0, "from": []},
            "promotion_detail": [],
        }
        if refund.success_time is not None:
            view["success_time"] = rfc3339(refund.success_time)
        return view

    def refund_resource(self, refund: Refund) -> dict:
        """The decrypted `resource` of a REFUND.* notification."""
        resource = {
            "mchid": self.mchid, "transaction_id": refund.transaction_id, "out_trade_no": refund.out_trade_no,
            "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
            "refund_status": refund.status, "user_received_account": USER_RECEIVED_ACCOUNT,
            "amount": {"total": refund.total, "refund": refund.refund, "payer_total": refund.payer_total,
                       "payer_refund": refund.payer_refund},
        }
        if refund.success_time is not None:
            resource["success_time"] = rfc3339(refund.success_time)
        return resource

    def order_state(self, out_trade_no: str) -> dict:
        """Everything the simulator knows about an order (control API)."""
        with self._lock:
            order = self._order_or_404(out_trade_no, "ORDER_NOT_EXIST")
            return self._state_of(order)

    def _state_of(self, order: Order) -> dict:
        """What the query API shows, plus what only the simulator knows."""
        return {
            **self.transaction_view(order),
            "description": order.description,
            "expired": self._clock() > order.time_expire and order.trade_state not in PAID_STATES,
            "time_expire": rfc3339(order.time_expire), "create_time": rfc3339(order.create_time),
            "notify_url": order.notify_url, "prepay_ids": list(order.prepay_ids),
            "refunds": [self.refund_view(self._refunds[n]) for n in order.refund_nos],
            "bill_override": dict(self._bill_overrides.get(order.out_trade_no, {})),
        }

    def all_orders(self) -> list[dict]:
        with self._lock:
            return [self._state_of(order) for order in self._orders.values()]

    def all_refunds(self) -> list[dict]:
        with self._lock:
            return [self.refund_view(refund) for refund in self._refunds.values()]

    def order_record(self, out_trade_no: str) -> Order:
        with self._lock:
            return self._order_or_404(out_trade_no, "ORDER_NOT_EXIST")

    def paid_order(self, *, transaction_id: str | None = None, out_trade_no: str | None = None) -> Order | None:
        """The paid (SUCCESS or REFUND) order with that transaction_id or out_trade_no, else None:
        what WeChat's order shipping service knows (it sees payments, not unpaid orders)."""
        with self._lock:
            if transaction_id is not None:
                out_trade_no = self._transactions.get(transaction_id)
            order = self._orders.get(out_trade_no) if out_trade_no is not None else None
            return order if order is not None and order.trade_state in PAID_STATES else None

    def refunded_fen(self, order: Order) -> int:
        """What successful refunds gave back of the order, in fen."""
        with self._lock:
            return sum(self._refunds[n].refund for n in order.refund_nos if self._refunds[n].status == "SUCCESS")

    def refund_record(self, out_refund_no: str) -> Refund:
        with self._lock:
            return self._refund_or_404(out_refund_no)

    def bill_entries(self, day: date, bill_type: str) -> list[BillEntry]:
        """The rows of `day`'s trade bill (Beijing time), bill overrides applied."""
        entries: list[BillEntry] = []
        with self._lock:
            for order in self._orders.values():
                override = self._bill_overrides.get(order.out_trade_no, {})
                if order.success_time is None or override.get("hide"):
                    continue
                base = {"time": order.success_time, "appid": order.appid, "mchid": order.mchid,
                        "transaction_id": order.transaction_id or "", "out_trade_no": order.out_trade_no,
                        "openid": order.openid, "description": order.description, "attach": order.attach or "",
                        # 订单金额; 代金券金额 (all coupons); 应结 = 订单金额 - the NOCASH ones
                        "order_fen": override.get("amount", order.total),
                        "coupon_fen": order.coupon_fen(), "nocash_fen": order.nocash_coupon_fen()}
                if bill_type in ("ALL", "SUCCESS") and cst_date(order.success_time) == day:
                    entries.append(BillEntry(kind="payment", **base))
                if bill_type in ("ALL", "REFUND"):
                    entries.extend(self._refund_entries(order, base, day))
        return entries

    def _refund_entries(self, order: Order, base: dict, day: date) -> list[BillEntry]:
        entries = []
        for refund in (self._refunds[n] for n in order.refund_nos):
            if refund.status == "SUCCESS" and cst_date(refund.success_time) == day:
                entries.append(BillEntry(kind="refund", **{**base, "time": refund.success_time},
                                         refund_id=refund.refund_id, out_refund_no=refund.out_refund_no,
                                         refund_fen=refund.refund))
        return entries

    def _order_or_404(self, out_trade_no: str, code: str) -> Order:
        order = self._orders.get(out_trade_no)
        if order is None:
            raise SimError(404, code, "订单不存在")
        return order

    def _refund_or_404(self, out_refund_no: str) -> Refund:
        refund = self._refunds.get(out_refund_no)
        if refund is None:
            raise SimError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return refund


# --- request parsing (WeChat's field rules) -------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(body: dict, name: str, *, max_len: int, required: bool = True, pattern: re.Pattern | None = None,
          where: str | None = None) -> str | None:
    label = where or name
    value = body.get(name)
    if value is None:
        if required:
            raise param_error(label, "缺失")
        return None
    if not isinstance(value, str):
        raise param_error(label, "必须是字符串", value)
    if not value or len(value) > max_len:
        raise param_error(label, f"长度必须在1到{max_len}之间", value)
    if pattern is not None and not pattern.match(value):
        raise param_error(label, "格式不正确", value)
    return value


def _object(body: dict, name: str) -> dict:
    value = body.get(name)
    if value is None:
        raise param_error(name, "缺失")
    if not isinstance(value, dict):
        raise param_error(name, "必须是对象", value)
    return value


def _fen(amount: dict, name: str) -> int:
    value = amount.get(name)
    if value is None:
        raise param_error(f"amount.{name}", "缺失")
    if not _is_int(value):   # bool, float and strings are all refused, as WeChat does
        raise param_error(f"amount.{name}", "必须是整数(单位:分)", value)
    if value <= 0:
        raise param_error(f"amount.{name}", "必须大于0", value)
    return value


def _notify_url(body: dict, *, required: bool) -> str | None:
    value = _text(body, "notify_url", max_len=255, required=required)
    if value is None:
        return None
    parts = urlsplit(value)
    secure = parts.scheme == "https" and bool(parts.hostname)
    loopback = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    if not (secure or loopback):
        raise param_error("notify_url", "必须是https地址(模拟器另允许本机http)", value)
    if parts.query or parts.fragment:
        raise param_error("notify_url", "不能携带参数", value)
    return value


def _parse_prepay(body: object) -> dict:
    if not isinstance(body, dict):
        raise param_error("body", "请求体必须是JSON对象")
    request = {
        "appid": _text(body, "appid", max_len=32),
        "mchid": _text(body, "mchid", max_len=32),
        "description": _text(body, "description", max_len=127),
        "out_trade_no": _text(body, "out_trade_no", max_len=32, pattern=OUT_TRADE_NO_RE),
        "attach": _text(body, "attach", max_len=128, required=False),
        "notify_url": _notify_url(body, required=True),
    }
    time_expire = body.get("time_expire")
    if time_expire is not None and parse_rfc3339(time_expire) is None:
        raise param_error("time_expire", "必须符合rfc3339格式", time_expire)
    request["time_expire"] = time_expire
    amount = _object(body, "amount")
    request["total"] = _fen(amount, "total")
    request["currency"] = amount.get("currency", "CNY")
    if request["currency"] != "CNY":
        raise param_error("amount.currency", "仅支持CNY", request["currency"])
    payer = _object(body, "payer")
    request["openid"] = _text(payer, "openid", max_len=128, where="payer.openid")
    # What "the same parameters" means for a repeated prepay.
    request["fingerprint"] = (request["appid"], request["mchid"], request["description"], request["attach"],
                              request["notify_url"], time_expire, request["total"], request["currency"],
                              request["openid"])
    return request


def _parse_refund(body: object) -> dict:
    if not isinstance(body, dict):
        raise param_error("body", "请求体必须是JSON对象")
    request = {
        "out_refund_no": _text(body, "out_refund_no", max_len=64, pattern=OUT_REFUND_NO_RE),
        "transaction_id": _text(body, "transaction_id", max_len=32, required=False),
        "out_trade_no": _text(body, "out_trade_no", max_len=32, required=False, pattern=OUT_TRADE_NO_RE),
        "reason": _text(body, "reason", max_len=80, required=False),
        "notify_url": _notify_url(body, required=False),
    }
    if request["transaction_id"] is None and request["out_trade_no"] is None:
        raise param_error("out_trade_no", "transaction_id和out_trade_no必须二选一")
    amount = _object(body, "amount")
    request["refund"] = _fen(amount, "refund")
    request["total"] = _fen(amount, "total")
    request["currency"] = amount.get("currency")
    if request["currency"] != "CNY":
        raise param_error("amount.currency", "必须为CNY", request["currency"])
    return request


def _parse_coupons(coupons: object) -> list[dict]:
    """The control API's coupons as WeChat's promotion_detail entries (SimError 400 if malformed)."""
    if coupons is None:
        return []
    if not isinstance(coupons, list) or len(coupons) > MAX_COUPONS:
        raise SimError(400, "BAD_REQUEST", f"coupons must be a list of at most {MAX_COUPONS} coupons")
    detail = []
    for number, coupon in enumerate(coupons, start=1):
        where = f"coupons[{number - 1}]"
        if not isinstance(coupon, dict):
            raise SimError(400, "BAD_REQUEST", f"{where} must be an object {{type, amount, name}}")
        unknown = set(coupon) - {"type", "amount", "name"}
        if unknown:
            raise SimError(400, "BAD_REQUEST", f"{where}: unknown fields {sorted(unknown)}")
        kind, amount, name = coupon.get("type"), coupon.get("amount"), coupon.get("name")
        if kind not in COUPON_TYPES:
            raise SimError(400, "BAD_REQUEST", f"{where}.type must be CASH or NOCASH")
        if not _is_int(amount) or amount <= 0:
            raise SimError(400, "BAD_REQUEST", f"{where}.amount must be a positive integer (fen)")
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 64):
            raise SimError(400, "BAD_REQUEST", f"{where}.name must be a string of 1..64 characters")
        detail.append({
            "coupon_id": _digits(11), "name": name or COUPON_NAMES[kind], "scope": "GLOBAL", "type": kind,
            "amount": amount, "stock_id": _digits(8), "wechatpay_contribute": 0, "merchant_contribute": amount,
            "other_contribute": 0, "currency": "CNY",
        })
    return detail


def _check_query_mchid(mchid: str | None, expected: str) -> None:
    if not mchid:
        raise param_error("mchid", "缺失", location="query")
    if mchid != expected:
        raise param_error("mchid", "与请求头中的商户号不一致", mchid, location="query")


def _payable_until(time_expire: str | None, now: float) -> float:
    if time_expire is None:
        return now + DEFAULT_PAYABLE_S
    requested = parse_rfc3339(time_expire)
    return min(max(requested, now + MIN_PAYABLE_S), now + MAX_PAYABLE_S)


def _digits(count: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(count))


def _new_prepay_id(now: float) -> str:
    """`wx` + Beijing time + 20 hex chars, 36 chars like WeChat's."""
    return "wx" + cst_compact(now) + secrets.token_hex(10)


def _new_transaction_id(paid_at: float) -> str:
    """28 digits starting 4200, the success date in the middle, as WeChat's look."""
    return "42000" + _digits(5) + cst_compact(paid_at)[:8] + _digits(10)


def _new_refund_id() -> str:
    """29 digits starting 50."""
    return "50" + _digits(27)
