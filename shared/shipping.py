"""Shipping information for WeChat's mini-program order shipping rule (发货信息管理).

WeChat holds a paid order's funds until its shipping information is uploaded
(developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/order-shipping/order-shipping.html).
Each paid order gets at most one upload (the fact `order.shipped`), plus the one
correction WeChat allows (with a later `upload_time`: the fact `order.shipping_updated`).

- SHIPPING_MODE=virtual: settlement plans an upload for every paid order
  (`logistics_type` 3, virtual goods, `item_desc` from the order's description); the
  sweep uploads it.  `callback` therefore needs no app secret.
- SHIPPING_MODE=manual: the merchant calls the reconcile action `ship`, which plans and
  uploads at once.
- Uploads are claimed with a lease (`shipments`), so however many sweeps run, an order is
  uploaded once.  A failure is retried by the sweep with a growing back-off; after 24
  hours the shipment is `failed` and the anomaly `shipping_failed` is recorded.  After an
  attempt whose outcome is unknown (a timeout), the next one first asks WeChat
  (`get_order`) whether the order is already shipped.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta, timezone

from shared import order_states
from shared.errors import BadRequest, Conflict, NotFound, WeChatApiRejected, WeChatApiUnavailable
from shared.log import log
from shared.outbox import GIVE_UP_AFTER_MS, back_off_ms
from shared.shipping_rules import (
    ALREADY_SHIPPED,
    EXPRESS,
    LOGISTICS_TYPES,
    MAX_CONTACT_CHARS,
    MAX_EXPRESS_COMPANY_BYTES,
    MAX_ITEM_DESC_CHARS,
    MAX_SHIPPING_LIST,
    MAX_TRACKING_NO_BYTES,
    NOT_UPDATED,
    RETRYABLE,
    SF_EXPRESS,
    SHIPPED_ORDER_STATES,
    VIRTUAL,
)
from shared.store.port import DONE, FAILED

CHINA = timezone(timedelta(hours=8))
LEASE_MS = 30_000
BATCH = 50
UPLOAD_PATH = "/wxa/sec/order/upload_shipping_info"
QUERY_PATH = "/wxa/sec/order/get_order"
_SHIP_FIELDS = frozenset({"action", "outTradeNo", "logisticsType", "shipping", "update"})
_ITEM_FIELDS = frozenset({"trackingNo", "expressCompany", "itemDesc", "receiverContact", "consignorContact"})


def plan_after_payment(store, config, order: dict) -> None:
    """Virtual mode: plan the upload of a paid order (once; safe to call on every retry)."""
    if config.shipping_mode != "virtual" or not order.get("transactionId"):
        return
    description = (order.get("description") or "virtual goods")[:MAX_ITEM_DESC_CHARS]
    store.plan_shipment(order["outTradeNo"], {
        "transactionId": order["transactionId"], "openid": order.get("openid"), "mode": "virtual",
        "logisticsType": VIRTUAL, "shippingList": [{"itemDesc": description}], "correction": False})


def parse_ship(event: dict, express_companies=None) -> tuple[str, int, list[dict], bool]:
    """Validate a `ship` action: (outTradeNo, logisticsType, shipping list, update).
    `express_companies()` gives WeChat's codes (asked only for express delivery)."""
    unknown = sorted(set(event) - _SHIP_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", code="UNKNOWN_FIELD")
    out_trade_no = event.get("outTradeNo")
    if not isinstance(out_trade_no, str) or not 6 <= len(out_trade_no) <= 32:
        raise BadRequest("outTradeNo must be an order number", code="INVALID_ORDER_NO")
    logistics_type = event.get("logisticsType")
    if type(logistics_type) is not int or logistics_type not in LOGISTICS_TYPES:
        raise BadRequest("logisticsType must be 1 (express), 2 (same-city), 3 (virtual) or 4 (self-pickup)",
                         code="INVALID_LOGISTICS_TYPE")
    update = event.get("update", False)
    if type(update) is not bool:
        raise BadRequest("update must be true or false", code="INVALID_UPDATE")
    shipping = event.get("shipping")
    most = MAX_SHIPPING_LIST if logistics_type == EXPRESS else 1  # only express deliveries are split
    if not isinstance(shipping, list) or not 1 <= len(shipping) <= most:
        raise BadRequest(f"shipping must list 1 to {most} parcel(s) for logisticsType {logistics_type}",
                         code="INVALID_SHIPPING")
    parsed = [_parse_item(item, logistics_type, n) for n, item in enumerate(shipping)]
    if logistics_type == EXPRESS:
        known = express_companies() if express_companies is not None else {}
        for n, item in enumerate(parsed):
            if item["expressCompany"] not in known:
                raise BadRequest(f"shipping[{n}].expressCompany {item['expressCompany']!r} is not one of WeChat's "
                                 "delivery company codes (get_delivery_list), e.g. SF, ZTO, YTO, STO, YD",
                                 code="INVALID_EXPRESS_COMPANY")
    return out_trade_no, logistics_type, parsed, update


def _parse_item(item, logistics_type: int, n: int) -> dict:
    where = f"shipping[{n}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object", code="INVALID_SHIPPING")
    unknown = sorted(set(item) - _ITEM_FIELDS)
    if unknown:
        raise BadRequest(f"{where}: unknown field {unknown[0]!r}", code="UNKNOWN_FIELD")
    description = item.get("itemDesc")
    if not isinstance(description, str) or not description.strip() or len(description) > MAX_ITEM_DESC_CHARS:
        raise BadRequest(f"{where}.itemDesc must be 1 to {MAX_ITEM_DESC_CHARS} characters", code="INVALID_ITEM_DESC")
    parsed = {"itemDesc": description.strip()}
    tracking, company = item.get("trackingNo"), item.get("expressCompany")
    if logistics_type == EXPRESS:
        if not isinstance(tracking, str) or not tracking.strip() or not tracking.isascii() \
                or len(tracking.encode()) > MAX_TRACKING_NO_BYTES or not tracking.isprintable():
            raise BadRequest(f"{where}.trackingNo must be 1 to {MAX_TRACKING_NO_BYTES} printable ASCII characters "
                             "(express delivery needs one)", code="INVALID_TRACKING_NO")
        if not isinstance(company, str) or not company or len(company.encode()) > MAX_EXPRESS_COMPANY_BYTES:
            raise BadRequest(f"{where}.expressCompany must be WeChat's delivery company code (e.g. SF, ZTO, YTO)",
                             code="INVALID_EXPRESS_COMPANY")
        parsed.update(trackingNo=tracking.strip(), expressCompany=company)
        for contact in ("receiverContact", "consignorContact"):
            value = item.get(contact)
            if value is not None:
                if not isinstance(value, str) or not value.strip() or len(value) > MAX_CONTACT_CHARS:
                    raise BadRequest(f"{where}.{contact} must be a masked phone number like 189****1234",
                                     code="INVALID_CONTACT")
                parsed[contact] = value.strip()
        if company == SF_EXPRESS and "receiverContact" not in parsed and "consignorContact" not in parsed:
            raise BadRequest(f"{where}: SF express needs receiverContact or consignorContact "
                             "(a masked phone number, e.g. 189****1234)", code="INVALID_CONTACT")
    elif tracking is not None or company is not None:
        raise BadRequest(f"{where}: trackingNo and expressCompany are for express delivery (logisticsType 1) only",
                         code="INVALID_SHIPPING")
    return parsed


def _upload_time(now_ms: int) -> str:
    """RFC 3339 in Beijing time with milliseconds, as WeChat's examples write it."""
    moment = datetime.fromtimestamp(now_ms / 1000, CHINA)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now_ms % 1000:03d}+08:00"


class ShippingService:
    def __init__(self, config, store, api, *, clock=None, jitter=None):
        self.config = config
        self.store = store
        self._api = api                       # () -> shared.wechat_api.WeChatApi, built when first used
        self._clock = clock or store.clock
        self._jitter = jitter
        self.owner = secrets.token_hex(8)

    # --- the merchant's `ship` ------------------------------------------------------------

    def ship(self, event: dict) -> dict:
        out_trade_no, logistics_type, shipping, update = parse_ship(event, lambda: self._api().express_companies())
        order = self.store.find_order(out_trade_no)
        if order is None:
            raise NotFound("no such order", code="ORDER_NOT_FOUND")
        if not order_states.is_paid(order["payStatus"]) or not order.get("transactionId"):
            raise Conflict("only a paid order can be shipped", code="ORDER_NOT_PAID",
                           public={"payStatus": order["payStatus"]})
        details = {"logisticsType": logistics_type, "shippingList": shipping, "mode": "manual"}
        current = self.store.find_shipment(out_trade_no)
        if current is None:
            self.store.plan_shipment(out_trade_no, {**details, "transactionId": order["transactionId"],
                                                    "openid": order.get("openid"), "correction": False})
            current = self.store.find_shipment(out_trade_no)
        elif current["state"] == DONE:
            if not update:
                raise Conflict("this order's shipping information is already uploaded; send \"update\": true "
                               "to correct it (WeChat allows one correction)", code="SHIPPING_ALREADY_UPLOADED")
            if current.get("corrections", 0) >= 1:
                raise Conflict("WeChat allows one correction per payment, and it was used",
                               code="SHIPPING_CORRECTION_USED")
            current = self.store.replan_shipment(out_trade_no, {**details, "correction": True}, state=DONE)
        else:  # still pending (e.g. planned by virtual mode) or failed: these details replace it
            current = self.store.replan_shipment(out_trade_no, {**details, "correction": current.get("correction")
                                                                 or False}, state=current["state"])
        if current is None:
            raise Conflict("the shipment is being uploaded right now; try again in a minute",
                           code="SHIPPING_BUSY")
        outcome = self._attempt(current)
        shipment = self.store.find_shipment(out_trade_no) or current
        return {"outTradeNo": out_trade_no, "outcome": outcome, "state": shipment["state"],
                "lastError": shipment.get("lastError")}

    # --- the sweep -------------------------------------------------------------------

    def run(self, summary, deadline) -> None:
        for shipment in self.store.due_shipments(self._clock(), BATCH):
            if deadline.expired():
                summary.add("deferred")
                continue
            summary.add(self._attempt(shipment))

    # --- one attempt -------------------------------------------------------------------

    def _attempt(self, shipment: dict) -> str:
        out_trade_no = shipment["outTradeNo"]
        claimed = self.store.claim_shipment(out_trade_no, self.owner, self._clock(), LEASE_MS)
        if claimed is None:
            return "busy"
        started = time.monotonic()
        error, unknown = None, False
        try:
            if claimed.get("outcomeUnknown") and not claimed.get("correction") and self._shipped_at_wechat(claimed):
                outcome = self._done(claimed, already=True)
            else:
                self._upload(claimed)
                outcome = self._done(claimed)
        except WeChatApiRejected as rejected:
            correction = bool(claimed.get("correction"))
            if (rejected.errcode in ALREADY_SHIPPED and not correction) or \
                    (rejected.errcode in NOT_UPDATED and claimed.get("outcomeUnknown")):
                # Entered by hand in the admin console, or our own earlier try that timed out.
                outcome = self._done(claimed, already=True)
            else:
                error = f"errcode {rejected.errcode}"
                outcome = self._failed(claimed, error, unknown=False, final=rejected.errcode not in RETRYABLE)
        except WeChatApiUnavailable as unavailable:
            error, unknown = unavailable.message[:120], True
            outcome = self._failed(claimed, error, unknown=unknown)
        log("shipping.upload", outTradeNo=out_trade_no, outcome=outcome, attempt=claimed["attempts"] + 1,
            error=error, ms=int((time.monotonic() - started) * 1000))
        return outcome

    def _upload(self, shipment: dict) -> None:
        shipping_list = []
        for item in shipment["shippingList"]:
            entry = {"item_desc": item["itemDesc"]}
            if "trackingNo" in item:
                entry.update(tracking_no=item["trackingNo"], express_company=item["expressCompany"])
            contact = {key: item[name] for key, name in (("receiver_contact", "receiverContact"),
                                                          ("consignor_contact", "consignorContact")) if name in item}
            if contact:
                entry["contact"] = contact
            shipping_list.append(entry)
        payload = {
            "order_key": {"order_number_type": 2, "transaction_id": shipment["transactionId"]},
            "logistics_type": shipment["logisticsType"],
            # One parcel: unified delivery; several: split delivery, all of it shipped now.
            "delivery_mode": 1 if len(shipping_list) == 1 else 2,
            "shipping_list": shipping_list,
            "upload_time": _upload_time(self._clock()),
            "payer": {"openid": shipment["openid"]},
        }
        if len(shipping_list) > 1:
            payload["is_all_delivered"] = True
        self._api().call(UPLOAD_PATH, payload, what="upload_shipping_info")

    def _shipped_at_wechat(self, shipment: dict) -> bool:
        answer = self._api().call(QUERY_PATH, {"transaction_id": shipment["transactionId"]}, what="get_order")
        order = answer.get("order")
        return isinstance(order, dict) and order.get("order_state") in SHIPPED_ORDER_STATES

    def _done(self, shipment: dict, *, already: bool = False) -> str:
        now = self._clock()
        out_trade_no = shipment["outTradeNo"]
        correction = bool(shipment.get("correction"))
        fields = {"state": DONE, "doneAt": now, "lastError": None, "outcomeUnknown": False,
                  "firstAttemptAt": shipment.get("firstAttemptAt") or now, "correction": False}
        if correction:
            fields["corrections"] = shipment.get("corrections", 0) + 1
        if self.store.settle_shipment(out_trade_no, self.owner, fields) is None:
            return "lease_lost"
        fact = "order.shipping_updated" if correction else "order.shipped"
        self.store.append_event(fact, out_trade_no, key=f"{fact}:{out_trade_no}",
                                transactionId=shipment.get("transactionId"), logisticsType=shipment["logisticsType"],
                                shippingList=shipment["shippingList"], alreadyAtWeChat=already or None)
        return "already_shipped" if already else ("updated" if correction else "uploaded")

    def _failed(self, shipment: dict, error: str, *, unknown: bool, final: bool = False) -> str:
        now = self._clock()
        first = shipment.get("firstAttemptAt") or now
        if final or now - first >= GIVE_UP_AFTER_MS:
            fields, outcome = {"state": FAILED, "lastError": error, "firstAttemptAt": first}, "failed"
        else:
            fields = {"nextAt": now + back_off_ms(shipment["attempts"] + 1, self._jitter), "lastError": error,
                      "firstAttemptAt": first, "outcomeUnknown": unknown or bool(shipment.get("outcomeUnknown"))}
            outcome = "retry"
        if self.store.settle_shipment(shipment["outTradeNo"], self.owner, fields) is None:
            return "lease_lost"
        if outcome == "failed":
            self.store.record_anomaly("shipping_failed", shipment["outTradeNo"], {
                "transactionId": shipment.get("transactionId"), "attempts": shipment["attempts"] + 1,
                "firstAttemptAt": first, "lastError": error}, key=f"shipping_failed:{shipment['outTradeNo']}:{first}")
        return outcome

