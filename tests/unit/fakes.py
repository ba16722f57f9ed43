"""Test doubles for the fast tier: a scriptable WeChat Pay client, a clock, a store with
hooks, a login function and a trade-bill builder.  No network, no subprocess.

`FakeWeChatPay` has the methods the services call (`jsapi_prepay`,
`request_payment_params`, `query_order`, `close_order`, `refund`, `query_refund`,
`trade_bill`).  Each call is recorded in `calls` as `Call(method, args, kwargs)`.
What a method answers, first match wins:

1. the next outcome queued with `then(method, *outcomes)` (used once each);
2. the outcome set with `always(method, outcome)`;
3. its default, from a small ledger: `mark_paid(...)` makes `query_order` report the
   payment and `close_order` refuse with ORDERPAID; `refund` answers PROCESSING;
   `query_refund` answers what `set_refund(...)` stored (else RESOURCE_NOT_EXISTS);
   `trade_bill` answers what `set_bill(...)` stored (else NO_STATEMENT_EXIST).

An outcome is an exception instance (raised), a callable (called with the method's
arguments; what it returns is the answer, what it raises is raised) or a value
(returned as a copy).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from shared.bill import fen_to_yuan
from shared.errors import WeChatPayRejected
from shared.store.memory import InMemoryOrderStore
from tests.keys import APPID, MCHID

CHINA = timezone(timedelta(hours=8))
# 2026-11-26T12:00:00+08:00: after 10:00 in UTC+8, so the daily bill step is due.
T0 = int(datetime(2026, 11, 26, 12, 0, 0, tzinfo=CHINA).timestamp()) * 1000

METHODS = ("jsapi_prepay", "request_payment_params", "query_order", "close_order", "refund",
           "query_refund", "trade_bill")


def rejected(code: str, http_status: int = 400, message: str | None = None) -> WeChatPayRejected:
    """WeChat Pay's error answer (a 4xx is a definite no; a 5xx's outcome is unknown)."""
    return WeChatPayRejected(code, message or f"WeChat Pay says {code}", http_status=http_status)


class FakeClock:
    """Epoch milliseconds that move only when a test says so."""

    def __init__(self, now: int = T0):
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        with self._lock:
            self.now += ms
            return self.now


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


class FakeWeChatPay:
    def __init__(self, *, appid: str = APPID, mchid: str = MCHID):
        self.appid, self.mchid = appid, mchid
        self.calls: list[Call] = []
        self.paid: dict[str, dict] = {}      # out_trade_no -> the transaction WeChat reports
        self.refunds: dict[str, dict] = {}   # out_refund_no -> the refund WeChat reports
        self.bills: dict[str, bytes] = {}    # bill_date -> bill bytes
        self.closed: list[str] = []
        self._queued: dict[str, deque] = {name: deque() for name in METHODS}
        self._always: dict[str, object] = {}
        self._lock = threading.Lock()
        self._prepay_ids: dict[str, str] = {}  # out_trade_no -> prepay_id (WeChat repeats it)
        self._refund_ids = 0

    # --- scripting ------------------------------------------------------------------------

    def then(self, method: str, *outcomes) -> FakeWeChatPay:
        """Queue one-shot outcomes for `method`, used in order before anything else."""
        self._check(method)
        with self._lock:
            self._queued[method].extend(outcomes)
        return self

    def always(self, method: str, outcome) -> FakeWeChatPay:
        """Answer every later call of `method` with `outcome` (after queued ones)."""
        self._check(method)
        self._always[method] = outcome
        return self

    def mark_paid(self, out_trade_no: str, total: int, *, transaction_id: str = "4200000001202611260000000001",
                  success_time: str = "2026-11-26T12:01:00+08:00", **fields) -> dict:
        """The user paid at WeChat Pay: queries report it, closing it is refused."""
        self.paid[out_trade_no] = transaction(out_trade_no, total, transaction_id=transaction_id,
                                              success_time=success_time, appid=self.appid,
                                              mchid=self.mchid, **fields)
        return self.paid[out_trade_no]

    def set_refund(self, out_refund_no: str, out_trade_no: str, amount: int, status: str = "SUCCESS",
                   total: int = 1000, **fields) -> dict:
        self.refunds[out_refund_no] = refund_result(out_refund_no, out_trade_no, amount, status, total=total,
                                                    mchid=self.mchid, **fields)
        return self.refunds[out_refund_no]

    def set_bill(self, bill_date: str, data: bytes) -> None:
        self.bills[bill_date] = data

    def default(self, method: str, *args, **kwargs):
        """What `method` answers when nothing is scripted (for outcomes that wrap it)."""
        self._check(method)
        return self._defaults()[method](*args, **kwargs)

    # --- what the tests read ----------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        self._check(method)
        with self._lock:
            return [call for call in self.calls if call.method == method]

    # --- the client's methods ---------------------------------------------------------

    def jsapi_prepay(self, *, out_trade_no: str, description: str, total_fee: int, openid: str,
                     time_expire: str, notify_url: str | None = None, attach: str | None = None) -> str:
        kwargs = {"out_trade_no": out_trade_no, "description": description, "total_fee": total_fee,
                  "openid": openid, "time_expire": time_expire}
        return self._answer("jsapi_prepay", (), kwargs)

    def request_payment_params(self, prepay_id: str) -> dict:
        return self._answer("request_payment_params", (prepay_id,), {})

    def query_order(self, out_trade_no: str) -> dict:
        return self._answer("query_order", (out_trade_no,), {})

    def close_order(self, out_trade_no: str) -> None:
        return self._answer("close_order", (out_trade_no,), {})

    def refund(self, *, out_trade_no: str, out_refund_no: str, refund: int, total: int,
               reason: str | None = None, notify_url: str | None = None) -> dict:
        kwargs = {"out_trade_no": out_trade_no, "out_refund_no": out_refund_no, "refund": refund,
                  "total": total, "reason": reason}
        return self._answer("refund", (), kwargs)

    def query_refund(self, out_refund_no: str) -> dict:
        return self._answer("query_refund", (out_refund_no,), {})

    def trade_bill(self, bill_date: str, bill_type: str = "ALL") -> bytes:
        return self._answer("trade_bill", (bill_date,), {})

    # --- machinery ---------------------------------------------------------------------

    @staticmethod
    def _check(method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"FakeWeChatPay has no method {method!r}")

    def _defaults(self) -> dict:
        return {"jsapi_prepay": self._default_prepay, "request_payment_params": self._default_payment,
                "query_order": self._default_query, "close_order": self._default_close,
                "refund": self._default_refund, "query_refund": self._default_query_refund,
                "trade_bill": self._default_bill}

    def _answer(self, method: str, args: tuple, kwargs: dict):
        default = self._defaults()[method]
        with self._lock:
            self.calls.append(Call(method, args, dict(kwargs)))
            queued = self._queued[method]
            outcome = queued.popleft() if queued else self._always.get(method, default)
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            return outcome(*args, **kwargs)
        return copy.deepcopy(outcome)

    def _default_prepay(self, *, out_trade_no: str, **_) -> str:
        """Like WeChat Pay: the same order (same parameters) gets the same prepay id again."""
        with self._lock:
            if out_trade_no not in self._prepay_ids:
                self._prepay_ids[out_trade_no] = f"wx2611fakeprepay{len(self._prepay_ids) + 1:06d}"
            return self._prepay_ids[out_trade_no]

    def _default_payment(self, prepay_id: str) -> dict:
        with self._lock:
            number = len(self.calls)
        return {"timeStamp": "1795665600", "nonceStr": f"nonce{number:08d}", "package": f"prepay_id={prepay_id}",
                "signType": "RSA", "paySign": f"fake-pay-sign-{number}"}

    def _default_query(self, out_trade_no: str) -> dict:
        if out_trade_no in self.paid:
            return copy.deepcopy(self.paid[out_trade_no])
        state = "CLOSED" if out_trade_no in self.closed else "NOTPAY"
        return {"appid": self.appid, "mchid": self.mchid, "out_trade_no": out_trade_no,
                "trade_state": state, "trade_state_desc": state}

    def _default_close(self, out_trade_no: str) -> None:
        if out_trade_no in self.paid:
            raise rejected("ORDERPAID", 400)
        self.closed.append(out_trade_no)

    def _default_refund(self, *, out_trade_no, out_refund_no, refund, total, reason=None) -> dict:
        with self._lock:
            self._refund_ids += 1
            refund_id = f"50300000012026112600000{self._refund_ids:05d}"
        return refund_result(out_refund_no, out_trade_no, refund, "PROCESSING", total=total,
                             refund_id=refund_id, mchid=self.mchid, success_time=None)

    def _default_query_refund(self, out_refund_no: str) -> dict:
        if out_refund_no not in self.refunds:
            raise rejected("RESOURCE_NOT_EXISTS", 404)
        return copy.deepcopy(self.refunds[out_refund_no])

    def _default_bill(self, bill_date: str) -> bytes:
        if bill_date not in self.bills:
            raise rejected("NO_STATEMENT_EXIST", 400)
        return self.bills[bill_date]


# --- data shapes (WeChat's field names) ----------------------------------------------------

def transaction(out_trade_no: str, total: int, *, transaction_id: str = "4200000001202611260000000001",
                success_time: str | None = "2026-11-26T12:01:00+08:00", **fields) -> dict:
    """A decrypted TRANSACTION.SUCCESS resource, or a query answer for a paid order."""
    data = {
        "appid": APPID, "mchid": MCHID, "out_trade_no": out_trade_no, "transaction_id": transaction_id,
        "trade_type": "JSAPI", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
        "bank_type": "OTHERS", "attach": "", "success_time": success_time,
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }
    data.update(fields)
    return data


def refund_result(out_refund_no: str, out_trade_no: str, amount: int, status: str = "SUCCESS", *,
                  total: int = 1000, notification: bool = False, **fields) -> dict:
    """A refund as WeChat reports it: a query/refund answer (`status`) or, with
    `notification=True`, a decrypted REFUND.* resource (`refund_status`)."""
    data = {
        "mchid": MCHID, "out_trade_no": out_trade_no, "transaction_id": "4200000001202611260000000001",
        "out_refund_no": out_refund_no, "refund_id": f"5030{out_refund_no}",
        "success_time": "2026-11-26T13:00:00+08:00" if status == "SUCCESS" else None,
        "user_received_account": "支付用户零钱",
        "amount": {"total": total, "refund": amount, "payer_total": total, "payer_refund": amount},
        ("refund_status" if notification else "status"): status,
    }
    data.update(fields)
    return data


_BILL_HEADER = ("交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
                "交易类型", "交易状态", "付款银行", "货币种类", "应结订单总金额", "代金券金额", "微信退款单号",
                "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
                "手续费", "费率", "订单金额", "申请退款金额", "费率备注")
_BILL_SUMMARY = ("总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
                 "申请退款总金额")


def bill_payment(out_trade_no: str, total_fee: int, trade_time: str, *,
                 transaction_id: str = "4200000001202611250000000001", appid: str = APPID,
                 mchid: str = MCHID, order_amount: int | None = None, coupon_fee: int = 0) -> dict:
    """A payment line of the trade bill (amounts in fen here, printed in yuan):
    `total_fee` is 应结订单金额, `order_amount` 订单金额 (default: the same), `coupon_fee`
    代金券金额."""
    return {"trade_time": trade_time, "appid": appid, "mchid": mchid, "transaction_id": transaction_id,
            "out_trade_no": out_trade_no, "state": "SUCCESS", "total_fee": total_fee, "refund_fee": 0,
            "out_refund_no": "0", "refund_id": "0", "refund_status": "",
            "order_amount": total_fee if order_amount is None else order_amount, "coupon_fee": coupon_fee}


def bill_refund(out_trade_no: str, refund_fee: int, trade_time: str, *, out_refund_no: str = "R1",
                transaction_id: str = "4200000001202611250000000001") -> dict:
    """A refund line of the trade bill."""
    return {"trade_time": trade_time, "appid": APPID, "mchid": MCHID, "transaction_id": transaction_id,
            "out_trade_no": out_trade_no, "state": "REFUND", "total_fee": 0, "refund_fee": refund_fee,
            "out_refund_no": out_refund_no, "refund_id": "50300000012026112500000001",
            "refund_status": "SUCCESS", "order_amount": 0, "coupon_fee": 0}


def bill_csv(lines: list[dict]) -> bytes:
    """A trade bill as WeChat prints it: header, backticked rows, summary header and row."""
    out = [",".join(_BILL_HEADER)]
    for line in lines:
        values = {
            "交易时间": line["trade_time"], "公众账号ID": line["appid"], "商户号": line["mchid"],
            "特约商户号": "0", "设备号": "", "微信订单号": line["transaction_id"],
            "商户订单号": line["out_trade_no"], "用户标识": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "交易类型": "JSAPI", "交易状态": line["state"], "付款银行": "OTHERS", "货币种类": "CNY",
            "应结订单总金额": fen_to_yuan(line["total_fee"]), "代金券金额": fen_to_yuan(line["coupon_fee"]),
            "微信退款单号": line["refund_id"], "商户退款单号": line["out_refund_no"],
            "退款金额": fen_to_yuan(line["refund_fee"]), "充值券退款金额": "0.00",
            "退款类型": "ORIGINAL" if line["refund_fee"] else "", "退款状态": line["refund_status"],
            "商品名称": "Tea x1", "商户数据包": "", "手续费": "0.00", "费率": "0.60%",
            "订单金额": fen_to_yuan(line["order_amount"]), "申请退款金额": fen_to_yuan(line["refund_fee"]),
            "费率备注": "",
        }
        out.append("`" + ",`".join(values[name] for name in _BILL_HEADER))
    total = sum(line["total_fee"] for line in lines)
    refunds = sum(line["refund_fee"] for line in lines)
    summary = {"总交易单数": str(len(lines)), "应结订单总金额": fen_to_yuan(total),
               "退款总金额": fen_to_yuan(refunds), "充值券退款总金额": "0.00", "手续费总金额": "0.00000",
               "订单总金额": fen_to_yuan(sum(line["order_amount"] for line in lines)),
               "申请退款总金额": fen_to_yuan(refunds)}
    out.append(",".join(_BILL_SUMMARY))
    out.append("`" + ",`".join(summary[name] for name in _BILL_SUMMARY))
    return ("\n".join(out) + "\n").encode("utf-8")


# --- the store and login -------------------------------------------------------------------

class HookedStore(InMemoryOrderStore):
    """InMemoryOrderStore that runs a test's hooks just before (or after) chosen business
    methods: the way to make something happen between a service's read and its write (a
    race, played deterministically), or to move the clock between two writes of one
    action.  `before("transition", hook, times=1)`; a hook gets the method's arguments."""

    HOOKABLE = ("find_order", "transition", "apply_unreserved_refund", "settle_refund", "reserve_refund",
                "insert_order", "update_order_fields", "insert_refund", "update_refund")

    def __init__(self, *, clock):
        super().__init__(clock=clock)
        self._hooks: dict[tuple[str, str], list[list]] = {}
        self._hooks_lock = threading.Lock()

    def __repr__(self) -> str:
        return "HookedStore()"

    def before(self, method: str, hook, *, times: int | None = 1) -> None:
        """Run `hook(*args, **kwargs)` before the next `times` calls (None: every call)."""
        self._add("before", method, hook, times)

    def after(self, method: str, hook, *, times: int | None = 1) -> None:
        """Run `hook(*args, **kwargs)` after the next `times` calls returned."""
        self._add("after", method, hook, times)

    def _add(self, when: str, method: str, hook, times: int | None) -> None:
        if method not in self.HOOKABLE:
            raise ValueError(f"cannot hook {method!r}")
        with self._hooks_lock:
            self._hooks.setdefault((when, method), []).append([hook, times])

    def _fire(self, when: str, method: str, args: tuple, kwargs: dict) -> None:
        due = []
        with self._hooks_lock:
            for entry in self._hooks.get((when, method), ()):
                if entry[1] is None or entry[1] > 0:
                    if entry[1] is not None:
                        entry[1] -= 1  # before running it: a hook may call the same method
                    due.append(entry[0])
        for hook in due:
            hook(*args, **kwargs)


def _hooked(name: str):
    def method(self, *args, **kwargs):
        self._fire("before", name, args, kwargs)
        result = getattr(InMemoryOrderStore, name)(self, *args, **kwargs)
        self._fire("after", name, args, kwargs)
        return result

    method.__name__ = name
    return method


for _name in HookedStore.HOOKABLE:
    setattr(HookedStore, _name, _hooked(_name))


def openid_of(name: str) -> str:
    return f"oUnit_{name}_0000000000000"[:28]


def fake_login(code: str) -> str:
    """`test-<name>` logs in a stable user, as the simulator's code2session does."""
    from shared.errors import LoginFailed

    if not code.startswith("test-"):
        raise LoginFailed("invalid code")
    return openid_of(code[len("test-"):])


def new_order(store, out_trade_no: str, total_fee: int = 1000, *, openid: str | None = None,
              ttl_ms: int = 1_800_000, **fields) -> dict:
    """An order as CheckoutService stores it (NOTPAY, payable for `ttl_ms`)."""
    now = store.clock()
    order = {"outTradeNo": out_trade_no, "openid": openid or openid_of("alice"), "appid": APPID,
             "mchid": MCHID, "items": [{"sku": "A1", "name": "Tea", "quantity": 1, "price": total_fee,
                                        "lineFee": total_fee}],
             "totalFee": total_fee, "description": "Tea x1", "createTime": now, "updateTime": now,
             "expireTime": now + ttl_ms, "requestHash": "h"}
    order.update(fields)
    return store.insert_order(order)
