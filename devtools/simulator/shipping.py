"""WeChat's mini-program order shipping service: upload_shipping_info, get_order, is_trade_managed.

    POST /wxa/sec/order/upload_shipping_info?access_token=   (发货信息录入)
    POST /wxa/sec/order/get_order?access_token=              (查询订单发货状态)
    POST /wxa/sec/order/is_trade_managed?access_token=       (查询小程序是否已开通发货信息管理服务)
         {"appid"} -> {"errcode": 0, "errmsg": "ok", "is_trade_managed": true|false}, the answer
         set with Simulator.configure(trade_managed=...)

Both answer HTTP 200 with `{"errcode", "errmsg"}` (0 / "ok" on success), as WeChat does; the
field rules and errcodes are in shipping_rules.py.  The service knows *paid* payments only
(the ledger's SUCCESS and REFUND orders): an unknown or unpaid one is 10060001 支付单不存在.

What an upload is checked for, in this order (first failure answered):
  body a JSON object, fields of the right JSON types ............. 47001 data format error
  order_key.order_number_type 1 or 2 ............................. 268485194
    2: transaction_id .............................................. 268485195
    1: mchid, out_trade_no ........................................ 268485196, 268485197
  logistics_type 1..4 ............................................. 10060005
  delivery_mode 1 or 2 ............................................ 268485224
  split delivery only with logistics_type 1 ....................... 10060006
  split delivery needs is_all_delivered ........................... 10060007
  shipping_list: unified exactly 1, split 1..15 ................... 268485228, 10060024 (10060014 if empty)
  each item: item_desc present, <= 120 characters ................. 10060008, 10060009
    express (1): tracking_no, express_company present ............. 268485226, 268485227
    tracking_no <= 128 bytes, express_company <= 128 bytes ......... 10060026, 10060025
    express (1): express_company a get_delivery_list code .......... 10060014 (choice)
    express_company SF: a consignor or receiver contact ........... 10060014 (choice)
    contacts masked, last 4 digits clear, <= 1024 characters ....... 10060014 (choice)
  upload_time RFC 3339 ............................................ 268485216
  payer.openid present ............................................ 10060014
  the payment (paid, mchid ours) .................................. 10060001
  payer.openid is the payer's ...................................... 10060031
  payment fully refunded (order_state 5) .......................... 10060004
  payment received/completed/settling (order_state 3, 4, 6) ....... 10060002
  already shipped and the one re-shipment used .................... 10060003
  upload_time not later than the last accepted upload, or the same
  shipping information again ....................................... 10060023 发货信息未更新 (choice)

State: the first upload that completes shipping (unified, or split with is_all_delivered true)
makes order_state 2 (已发货) and finish_shipping_count 1.  An upload on a shipped payment is the
re-shipment WeChat allows once (重新发货, 仅可重新发货一次): accepted, finish_shipping_count 2 if
it completes; any later upload is 10060003.  Split uploads with is_all_delivered false before
completion are accepted and replace the shipping list, without using the re-shipment.
order_state 3/4/6 (confirmed, completed, funds pending settlement) are set by the control API
(`set_shipping_state`); 5 (已退款) is computed: successful refunds equal the total.

Choices where WeChat's documentation is silent: the errcodes marked (choice) above; get_order
without transaction_id or merchant_id + merchant_trade_no answers 47001 (as a public fake of
this API claims the real one does); get_order's shipping_list[].upload_time is the upload's own
upload_time (epoch seconds); before any upload get_order shows finish_shipping false, count 0
and an empty shipping_list; non-express uploads may carry tracking_no / express_company (kept,
length-checked, not looked up; 同城配送 may name any company).
"""

from __future__ import annotations

import copy
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from devtools.simulator import shipping_rules as rules
from devtools.simulator.errors import SimError
from devtools.simulator.ledger import Ledger, Order
from devtools.simulator.timeutil import parse_rfc3339, rfc3339

SETTABLE_ORDER_STATES = (3, 4, 6)
KNOWN_EXPRESS_COMPANIES = {**rules.EXPRESS_COMPANIES, **rules.UNVERIFIED_EXPRESS_COMPANIES}


class Refused(Exception):
    """An answer `{"errcode": errcode, "errmsg": ...}` instead of success."""

    def __init__(self, errcode: int, detail: str = ""):
        super().__init__(f"{errcode} {detail}")
        self.errcode = errcode
        self.detail = detail


def rid() -> str:
    """WeChat's request id look: 8-8-8 hex."""
    return "-".join(secrets.token_hex(4) for _ in range(3))


def errmsg(errcode: int, detail: str = "") -> str:
    meaning = rules.ERRCODES.get(errcode) or rules.COMMON_ERRCODES.get(errcode) or "simulated error"
    return f"{meaning}{'：' + detail if detail else ''} rid: {rid()}"


def error_answer(errcode: int, detail: str = "") -> dict:
    return {"errcode": errcode, "errmsg": errmsg(errcode, detail)}


@dataclass
class ShippingRecord:
    transaction_id: str
    out_trade_no: str
    uploads: list[dict] = field(default_factory=list)   # every attempt on this payment
    shipping: dict | None = None                         # the last accepted upload, parsed
    last_upload_time: float | None = None
    finish_shipping: bool = False
    finish_shipping_count: int = 0
    reship_used: bool = False
    state_override: int | None = None
    in_complaint: bool = False


# --- parsing ---------------------------------------------------------------------------------

def _get(obj: dict, name: str, kind: type | tuple, where: str) -> object:
    """obj[name] (None when absent); 47001 when present with another JSON type."""
    value = obj.get(name)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise Refused(47001, f"{where} 必须是数字")
    if not isinstance(value, kind):
        raise Refused(47001, f"{where} 类型错误")
    return value


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _masked_ok(contact: str) -> bool:
    """采用掩码传输，最后4位数字不能打掩码: a '*' and at least 4 digits after the last one."""
    if "*" not in contact:
        return False
    tail = contact.rsplit("*", 1)[1]
    return sum(ch.isdigit() for ch in tail) >= rules.CONTACT_CLEAR_DIGITS


def _parse_order_key(body: dict) -> dict:
    order_key = _get(body, "order_key", dict, "order_key") or {}
    number_type = _get(order_key, "order_number_type", int, "order_key.order_number_type")
    if number_type not in rules.ORDER_NUMBER_TYPES:
        raise Refused(268485194, f"order_number_type={number_type}")
    transaction_id = _get(order_key, "transaction_id", str, "order_key.transaction_id")
    mchid = _get(order_key, "mchid", str, "order_key.mchid")
    out_trade_no = _get(order_key, "out_trade_no", str, "order_key.out_trade_no")
    if number_type == rules.ORDER_BY_TRANSACTION_ID:
        if not transaction_id:
            raise Refused(268485195)
        return {"transaction_id": transaction_id}
    if not mchid:
        raise Refused(268485196)
    if not out_trade_no:
        raise Refused(268485197)
    return {"mchid": mchid, "out_trade_no": out_trade_no}


def _parse_contact(item: dict, where: str) -> dict | None:
    contact = _get(item, "contact", dict, f"{where}.contact")
    if contact is None:
        return None
    parsed = {}
    for name in ("consignor_contact", "receiver_contact"):
        value = _get(contact, name, str, f"{where}.contact.{name}")
        if not value:
            continue
        if len(value) > rules.MAX_CONTACT_CHARS:
            raise Refused(10060014, f"{where}.contact.{name} 超过{rules.MAX_CONTACT_CHARS}个字符")
        if not _masked_ok(value):
            raise Refused(10060014, f"{where}.contact.{name} 须掩码传输，最后4位数字不能打掩码")
        parsed[name] = value
    return parsed


def _parse_item(item: object, where: str, logistics_type: int) -> dict:
    if not isinstance(item, dict):
        raise Refused(47001, f"{where} 必须是对象")
    item_desc = _get(item, "item_desc", str, f"{where}.item_desc")
    if not item_desc:
        raise Refused(10060008)
    if len(item_desc) > rules.MAX_ITEM_DESC_CHARS:
        raise Refused(10060009, f"{len(item_desc)}个字，限{rules.MAX_ITEM_DESC_CHARS}个字以内")
    tracking_no = _get(item, "tracking_no", str, f"{where}.tracking_no")
    express_company = _get(item, "express_company", str, f"{where}.express_company")
    express = logistics_type == rules.LOGISTICS_EXPRESS
    if express and not tracking_no:
        raise Refused(268485226)
    if express and not express_company:
        raise Refused(268485227)
    if tracking_no and _nbytes(tracking_no) > rules.MAX_TRACKING_NO_BYTES:
        raise Refused(10060026)
    if express_company and _nbytes(express_company) > rules.MAX_EXPRESS_COMPANY_BYTES:
        raise Refused(10060025)
    if express and express_company not in KNOWN_EXPRESS_COMPANIES:
        raise Refused(10060014, f"express_company {express_company} 不在运力id列表(get_delivery_list)中")
    contact = _parse_contact(item, where)
    if express and express_company == rules.SF_CODE and not contact:
        raise Refused(10060014, "物流公司为顺丰时联系方式必填，收件人或寄件人联系方式二选一")
    return {"tracking_no": tracking_no or "", "express_company": express_company or "", "item_desc": item_desc,
            "contact": contact}


def parse_upload(body: object) -> dict:
    """The upload's fields, checked in WeChat's order (raises Refused)."""
    if not isinstance(body, dict):
        raise Refused(47001, "请求体必须是JSON对象")
    order_key = _parse_order_key(body)
    logistics_type = _get(body, "logistics_type", int, "logistics_type")
    if logistics_type not in rules.LOGISTICS_TYPES:
        raise Refused(10060005, f"logistics_type={logistics_type}")
    delivery_mode = _get(body, "delivery_mode", int, "delivery_mode")
    if delivery_mode not in rules.DELIVERY_MODES:
        raise Refused(268485224, f"delivery_mode={delivery_mode}")
    is_all_delivered = _get(body, "is_all_delivered", bool, "is_all_delivered")
    split = delivery_mode == rules.DELIVERY_SPLIT
    if split and logistics_type != rules.LOGISTICS_EXPRESS:
        raise Refused(10060006)
    if split and is_all_delivered is None:
        raise Refused(10060007)
    shipping_list = _get(body, "shipping_list", list, "shipping_list")
    count = len(shipping_list or [])
    if not split and count != 1:
        raise Refused(268485228, f"shipping_list 有{count}项")
    if count > rules.MAX_SHIPPING_LIST:
        raise Refused(10060024, f"shipping_list 有{count}项，不可大于{rules.MAX_SHIPPING_LIST}")
    if count == 0:
        raise Refused(10060014, "shipping_list 不能为空")
    items = [_parse_item(item, f"shipping_list[{n}]", logistics_type) for n, item in enumerate(shipping_list)]
    upload_time_text = _get(body, "upload_time", str, "upload_time")
    upload_time = parse_rfc3339(upload_time_text)
    if upload_time is None:
        raise Refused(268485216, f"upload_time={upload_time_text}")
    payer = _get(body, "payer", dict, "payer") or {}
    openid = _get(payer, "openid", str, "payer.openid")
    if not openid or _nbytes(openid) > rules.MAX_OPENID_BYTES:
        raise Refused(10060014, "payer.openid 必填，字符字节限制[1, 128]")
    return {"order_key": order_key, "logistics_type": logistics_type, "delivery_mode": delivery_mode,
            "finish": not split or bool(is_all_delivered), "shipping_list": items,
            "upload_time": upload_time, "openid": openid}


# --- the book ------------------------------------------------------------------------------

class ShippingBook:
    def __init__(self, ledger: Ledger, mchid: str, clock: Callable[[], float]):
        self._ledger = ledger
        self._mchid = mchid
        self._clock = clock
        self._lock = threading.RLock()
        self._records: dict[str, ShippingRecord] = {}
        self._attempts: list[dict] = []   # every upload request, whether it named a payment or not
        self.trade_managed = True         # what is_trade_managed answers (Simulator.configure)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._attempts.clear()
            self.trade_managed = True

    def is_trade_managed(self, body: object, appid: str) -> dict:
        """POST /wxa/sec/order/is_trade_managed {"appid"}: whether the mini-program is enrolled in
        the order shipping management service.  An appid that is not ours: 40013 (choice)."""
        if not isinstance(body, dict) or not isinstance(body.get("appid"), str) or not body["appid"]:
            return error_answer(47001, "appid 必填")
        if body["appid"] != appid:
            return error_answer(40013)
        return {"errcode": 0, "errmsg": "ok", "is_trade_managed": self.trade_managed}

    def _find(self, *, transaction_id: str | None = None, mchid: str | None = None,
              out_trade_no: str | None = None) -> Order:
        if transaction_id is None and mchid != self._mchid:
            raise Refused(10060001, "mchid 与支付单不一致")
        order = self._ledger.paid_order(transaction_id=transaction_id, out_trade_no=out_trade_no)
        if order is None:
            raise Refused(10060001)
        return order

    def _record(self, order: Order) -> ShippingRecord:
        record = self._records.get(order.transaction_id)
        if record is None:
            record = ShippingRecord(order.transaction_id, order.out_trade_no)
            self._records[order.transaction_id] = record
        return record

    def _order_state(self, order: Order, record: ShippingRecord | None) -> int:
        if self._ledger.refunded_fen(order) >= order.total:
            return 5
        if record is not None and record.state_override is not None:
            return record.state_override
        if record is not None and record.finish_shipping_count > 0:
            return 2
        return 1

    # --- WeChat API ----------------------------------------------------------------------

    def upload(self, body: object) -> dict:
        """POST /wxa/sec/order/upload_shipping_info: {"errcode": 0, "errmsg": "ok"} or the refusal."""
        received_at = self._clock()
        with self._lock:
            record = None
            try:
                upload = parse_upload(body)
                order = self._find(**upload["order_key"])
                record = self._record(order)
                self._accept(order, record, upload)
                answer = {"errcode": 0, "errmsg": "ok"}
            except Refused as refused:
                answer = error_answer(refused.errcode, refused.detail)
            attempt = {"received_at": rfc3339(received_at), "body": copy.deepcopy(body),
                       "transaction_id": record.transaction_id if record else None,
                       "errcode": answer["errcode"], "errmsg": answer["errmsg"]}
            self._attempts.append(attempt)
            if record is not None:
                record.uploads.append(attempt)
            return answer

    def _accept(self, order: Order, record: ShippingRecord, upload: dict) -> None:
        if upload["openid"] != order.openid:
            raise Refused(10060031)
        state = self._order_state(order, record)
        if state == 5:
            raise Refused(10060004, "支付单已退款")
        if state in SETTABLE_ORDER_STATES:
            raise Refused(10060002, f"order_state={state}")
        reshipment = record.finish_shipping_count > 0
        if reshipment and record.reship_used:
            raise Refused(10060003)
        shipping = {key: upload[key] for key in ("logistics_type", "delivery_mode", "shipping_list")}
        if record.last_upload_time is not None and upload["upload_time"] <= record.last_upload_time:
            raise Refused(10060023, "upload_time 必须比之前的请求更新")
        if record.shipping == shipping and record.finish_shipping == upload["finish"]:
            raise Refused(10060023, "与已录入的发货信息相同")
        record.shipping = shipping
        record.last_upload_time = upload["upload_time"]
        record.finish_shipping = upload["finish"]
        if reshipment:
            record.reship_used = True
        if upload["finish"]:
            record.finish_shipping_count += 1

    def get_order(self, body: object) -> dict:
        """POST /wxa/sec/order/get_order: {"errcode": 0, "errmsg": "ok", "order": {...}}."""
        try:
            if not isinstance(body, dict):
                raise Refused(47001, "请求体必须是JSON对象")
            transaction_id = _get(body, "transaction_id", str, "transaction_id")
            merchant_id = _get(body, "merchant_id", str, "merchant_id")
            merchant_trade_no = _get(body, "merchant_trade_no", str, "merchant_trade_no")
            with self._lock:
                if transaction_id:
                    order = self._find(transaction_id=transaction_id)
                elif merchant_id and merchant_trade_no:
                    order = self._find(mchid=merchant_id, out_trade_no=merchant_trade_no)
                else:
                    raise Refused(47001, "需要 transaction_id，或 merchant_id 和 merchant_trade_no")
                return {"errcode": 0, "errmsg": "ok", "order": self._order_view(order)}
        except Refused as refused:
            return error_answer(refused.errcode, refused.detail)

    def _order_view(self, order: Order) -> dict:
        record = self._records.get(order.transaction_id)
        description = order.description
        if len(description) > rules.MAX_DESCRIPTION_CHARS:
            description = description[:rules.MAX_DESCRIPTION_CHARS - 3] + "..."
        shipping: dict = {"finish_shipping": False, "goods_desc": "", "finish_shipping_count": 0, "shipping_list": []}
        if record is not None and record.shipping is not None:
            upload_time = int(record.last_upload_time)
            shipping = {
                "delivery_mode": record.shipping["delivery_mode"],
                "logistics_type": record.shipping["logistics_type"],
                "finish_shipping": record.finish_shipping, "goods_desc": "",
                "finish_shipping_count": record.finish_shipping_count,
                "shipping_list": [
                    {"tracking_no": item["tracking_no"], "express_company": item["express_company"],
                     "goods_desc": item["item_desc"], "upload_time": upload_time,
                     **({"contact": dict(item["contact"])} if item["contact"] else {})}
                    for item in record.shipping["shipping_list"]],
            }
        return {
            "transaction_id": order.transaction_id, "merchant_id": order.mchid, "sub_merchant_id": "",
            "merchant_trade_no": order.out_trade_no, "description": description,
            "paid_amount": order.payer_total if order.payer_total is not None else order.total,
            "openid": order.openid, "trade_create_time": int(order.create_time),
            "pay_time": int(order.success_time or 0), "order_state": self._order_state(order, record),
            "in_complaint": bool(record and record.in_complaint), "shipping": shipping,
        }

    # --- control --------------------------------------------------------------------------

    def _view(self, order: Order) -> dict:
        record = self._records.get(order.transaction_id) or ShippingRecord(order.transaction_id, order.out_trade_no)
        return {
            "transaction_id": order.transaction_id, "out_trade_no": order.out_trade_no,
            "order_state": self._order_state(order, record),
            "order_state_desc": rules.ORDER_STATES[self._order_state(order, record)],
            "finish_shipping": record.finish_shipping, "finish_shipping_count": record.finish_shipping_count,
            "reship_used": record.reship_used, "state_override": record.state_override,
            "in_complaint": record.in_complaint,
            "uploads": copy.deepcopy(record.uploads),
            "accepted": sum(1 for upload in record.uploads if upload["errcode"] == 0),
        }

    def record(self, transaction_id: str) -> dict:
        """What the simulator knows of one payment's shipping (a paid payment, else SimError 404)."""
        with self._lock:
            order = self._ledger.paid_order(transaction_id=transaction_id)
            if order is None:
                raise SimError(404, "NOT_FOUND", f"no paid payment with transaction_id {transaction_id}")
            return self._view(order)

    def records(self) -> list[dict]:
        """Every payment the shipping API has seen an upload for, or whose state was set."""
        with self._lock:
            views = []
            for transaction_id in list(self._records):
                order = self._ledger.paid_order(transaction_id=transaction_id)
                if order is not None:
                    views.append(self._view(order))
            return views

    def attempts(self) -> list[dict]:
        """Every upload request since the reset, oldest first, with the payment it named (or None)."""
        with self._lock:
            return copy.deepcopy(self._attempts)

    def set_state(self, transaction_id: str, *, order_state: int | None = None, in_complaint: bool | None = None,
                  clear: bool = False) -> dict:
        """What the user and WeChat do after shipping: confirm receipt (3), complete (4), funds
        pending settlement (6); `clear` goes back to the computed state; `in_complaint` a dispute."""
        if order_state is not None and order_state not in SETTABLE_ORDER_STATES:
            raise SimError(400, "BAD_REQUEST", "order_state must be 3 (确认收货), 4 (交易完成) or 6 (资金待结算); "
                                               "1, 2 and 5 follow from uploads and refunds")
        if in_complaint is not None and not isinstance(in_complaint, bool):
            raise SimError(400, "BAD_REQUEST", "in_complaint must be true or false")
        if not isinstance(clear, bool) or (clear and order_state is not None):
            raise SimError(400, "BAD_REQUEST", "clear must be true or false, and not given with order_state")
        with self._lock:
            order = self._ledger.paid_order(transaction_id=transaction_id)
            if order is None:
                raise SimError(404, "NOT_FOUND", f"no paid payment with transaction_id {transaction_id}")
            record = self._record(order)
            if clear:
                record.state_override = None
            if order_state is not None:
                record.state_override = order_state
            if in_complaint is not None:
                record.in_complaint = in_complaint
            return self._view(order)
