"""The mini-program side of payment (the article's `wxPay`): create an order, report its status.

Order of work in `create_order`, and why:
1. validate the body (prices are never accepted from the client);
2. openid from `code2session` (never from the client);
3. price from the `products` catalog, in integer fen;
4. insert the order as NOTPAY *before* asking WeChat Pay, so a payment can never
   arrive for an order we have no record of;
5. prepay with `time_expire` = the order's expiry, then store the prepay_id;
6. if WeChat Pay refuses or cannot be reached, the order becomes PAYERROR (never
   payable through us) and the client gets 502 with WeChat's reason; the reconcile
   sweep closes it at WeChat Pay in case the prepay did land there.

Idempotency: `idemKey` = HMAC(openid, idempotencyKey) is stored on the order with a
unique index, so concurrent retries race on the index, not on hope.  A key whose order
is no longer payable (closed, failed, expired) is retired so the same key can start a
new order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import datetime, timedelta, timezone

from shared import order_states
from shared.errors import (
    BadRequest,
    CatalogInvalid,
    CloudPayError,
    Conflict,
    Forbidden,
    IllegalTransition,
    StoreConflict,
    Unauthorized,
    WeChatPayError,
)
from shared.log import log

MAX_ITEMS = 50
MAX_QUANTITY = 999
MAX_IDEMPOTENCY_KEY = 64
MAX_DESCRIPTION = 127  # WeChat Pay's limit on `description`
ALLOWED_FIELDS = frozenset({"code", "items", "idempotencyKey"})
ALLOWED_ITEM_FIELDS = frozenset({"sku", "quantity"})
# A client that sends one of these is trying to set the price: refuse, never use.
# Compared after lower-casing and dropping "_" and "-".
PRICE_FIELDS = frozenset({"totalfee", "price", "amount", "total", "fee", "unitprice", "payertotal",
                          "cost", "sum"})
# A product code: letters, digits, "_", "." and "-", 1 to 64 of them (README, "products").
SKU_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_IDEM_RE = re.compile(r"^[\x21-\x7e]{1,64}$")
_CODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ORDER_NO_RE = re.compile(r"^[0-9A-Za-z_|*-]{6,32}$")
_CHINA = timezone(timedelta(hours=8))
_MAX_CREATE_ATTEMPTS = 4


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _random_alnum(count: int) -> str:
    """`count` uniformly random letters and digits: one read of the OS's random source
    (bytes >= 248 are dropped, so every character is equally likely)."""
    chars: list[str] = []
    while len(chars) < count:
        chars.extend(_ALNUM[b % 62] for b in secrets.token_bytes(2 * count) if b < 248)
    return "".join(chars[:count])


def new_out_trade_no(now_ms: int) -> str:
    """26 chars: a UTC+8 time prefix (sorts by creation) + 14 random letters and digits
    (~83 bits)."""
    prefix = datetime.fromtimestamp(now_ms // 1000, _CHINA).strftime("%y%m%d%H%M%S")
    return prefix + _random_alnum(14)


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, _CHINA).isoformat(timespec="seconds")


def order_token(secret: bytes, out_trade_no: str, openid: str) -> str:
    mac = hmac.new(secret, f"order-token\x00{out_trade_no}\x00{openid}".encode(), hashlib.sha256)
    return mac.hexdigest()


def _idempotency_key(secret: bytes, openid: str, client_key: str) -> str:
    mac = hmac.new(secret, f"idempotency\x00{openid}\x00{client_key}".encode(), hashlib.sha256)
    return mac.hexdigest()


# --- validation ----------------------------------------------------------------------

def _refuse_unknown(fields, allowed: frozenset, where: str) -> None:
    for name in fields:
        if str(name).lower().replace("_", "").replace("-", "") in PRICE_FIELDS:
            raise BadRequest(f"'{name}' is not accepted: prices come from the catalog",
                             code="PRICE_NOT_ACCEPTED")
    unknown = sorted(str(name) for name in fields if name not in allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) in {where}: {', '.join(unknown)[:200]}", code="UNKNOWN_FIELD")


def parse_order_request(body: dict) -> tuple[str, list[dict], str | None]:
    """(code, items, idempotencyKey) from the POST body, or BadRequest saying what is wrong."""
    _refuse_unknown(body.keys(), ALLOWED_FIELDS, "the request")
    code = body.get("code")
    if not isinstance(code, str) or not _CODE_RE.match(code):
        raise BadRequest("'code' must be the string from wx.login()", code="INVALID_CODE")
    key = body.get("idempotencyKey")
    if key is not None and (not isinstance(key, str) or not _IDEM_RE.match(key)):
        raise BadRequest(f"'idempotencyKey' must be 1..{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
                         code="INVALID_IDEMPOTENCY_KEY")
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise BadRequest(f"'items' must be a list of 1..{MAX_ITEMS} items", code="INVALID_ITEMS")
    parsed, seen = [], set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"items[{index}] must be an object", code="INVALID_ITEMS")
        _refuse_unknown(item.keys(), ALLOWED_ITEM_FIELDS, f"items[{index}]")
        sku, quantity = item.get("sku"), item.get("quantity")
        if not isinstance(sku, str) or not SKU_RE.match(sku):
            raise BadRequest(f"items[{index}].sku must be a product code", code="INVALID_SKU")
        if type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
            raise BadRequest(f"items[{index}].quantity must be a whole number 1..{MAX_QUANTITY}",
                             code="INVALID_QUANTITY")
        if sku in seen:
            raise BadRequest(f"sku {sku} appears twice; send one line with the total quantity",
                             code="DUPLICATE_SKU")
        seen.add(sku)
        parsed.append({"sku": sku, "quantity": quantity})
    return code, parsed, key


def price_items(products: dict[str, dict], items: list[dict], max_total: int) -> tuple[list[dict], int, str]:
    """Catalog prices for the items: (priced items, total fen, description)."""
    priced, total = [], 0
    for item in items:
        product = products.get(item["sku"])
        if product is None:
            raise BadRequest(f"unknown sku {item['sku']}", code="UNKNOWN_SKU")
        if product.get("active") is not True:
            raise BadRequest(f"sku {item['sku']} is not on sale", code="SKU_INACTIVE")
        price, name = product.get("price"), product.get("name")
        if type(price) is not int or price < 1 or not isinstance(name, str) or not name:
            # Our data, not the customer's fault: 500, and the operator is told which sku.
            log("catalog.invalid", level="error", sku=item["sku"], price=repr(price)[:40],
                hint="prices are integer fen >= 1 and every product has a name")
            raise CatalogInvalid(f"the catalog entry for sku {item['sku']} is invalid",
                                 details={"sku": item["sku"]})
        line = price * item["quantity"]
        total += line
        priced.append({"sku": item["sku"], "name": name, "quantity": item["quantity"],
                       "price": price, "lineFee": line})
    if total < 1 or total > max_total:
        raise BadRequest(f"the order total must be between 1 and {max_total} fen", code="TOTAL_OUT_OF_RANGE")
    description = ", ".join(f"{p['name']} x{p['quantity']}" for p in priced)
    if len(description) > MAX_DESCRIPTION:
        description = description[:MAX_DESCRIPTION - 1] + "…"
    return priced, total, description


def _request_hash(items: list[dict]) -> str:
    canonical = json.dumps(sorted(items, key=lambda i: i["sku"]), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the service ---------------------------------------------------------------------------

class CheckoutService:
    """Depends on: the store, a WeChat Pay client, a login function (code -> openid)."""

    def __init__(self, config, store, wechatpay, login):
        self.config = config
        self.store = store
        self.wechatpay = wechatpay
        self.login = login

    def create_order(self, body: dict) -> dict:
        code, items, client_key = parse_order_request(body)
        openid = self.login(code)
        request_hash = _request_hash(items)

        for _ in range(_MAX_CREATE_ATTEMPTS):
            if client_key:
                idem_key = _idempotency_key(self.config.order_token_secret, openid, client_key)
                existing = self.store.find_order_by_idem_key(idem_key)
                if existing is not None:
                    answer = self._reuse(existing, request_hash)
                    if answer is not None:
                        return answer
                    continue  # that order is spent and its key retired: start a new one
            else:
                idem_key = "once:" + secrets.token_hex(16)
            order = self._new_order(openid, items, request_hash, idem_key)
            try:
                self.store.insert_order(order)
            except StoreConflict:
                continue  # a concurrent retry with the same key won, or (rarely) the number
            answer = self._prepay(order)
            if answer is not None:
                return answer
        raise Conflict("the order could not be created; retry with the same idempotencyKey",
                       code="CREATE_CONTENDED")

    def _new_order(self, openid: str, items: list[dict], request_hash: str, idem_key: str) -> dict:
        products = self.store.get_products(i["sku"] for i in items)
        priced, total, description = price_items(products, items, self.config.order_max_total_fee)
        now = self.store.clock()
        return {
            "outTradeNo": new_out_trade_no(now), "openid": openid,
            "appid": self.config.wechat_appid, "mchid": self.config.wechatpay_mchid,
            "items": priced, "totalFee": total, "description": description,
            "payStatus": order_states.NOTPAY, "createTime": now, "updateTime": now,
            "expireTime": now + self.config.order_ttl_seconds * 1000,
            "idemKey": idem_key, "requestHash": request_hash,
        }

    def _reuse(self, order: dict, request_hash: str) -> dict | None:
        """The answer for a retry, or None when the old order is spent (its key is then
        retired, so the caller can start a new order under the same key)."""
        if order["requestHash"] != request_hash:
            raise Conflict("this idempotencyKey was used for a different order",
                           code="IDEMPOTENCY_KEY_REUSED")
        status = order["payStatus"]
        if order_states.is_paid(status):
            raise self._already_paid(order)
        payable = status == order_states.NOTPAY and order["expireTime"] > self.store.clock()
        if payable:
            # Prepay is idempotent at WeChat Pay for the same parameters, so a retry
            # racing the first request (no prepayId yet) may ask for it as well.
            answer = self._prepay(order)
            if answer is not None:
                return answer
        # Spent: free the key (compare-and-set on the key itself) and start a new order.
        self.store.update_order_fields(order["outTradeNo"], {"idemKey": f"retired:{order['outTradeNo']}"},
                                       where={"idemKey": order["idemKey"]})
        return None

    def _already_paid(self, order: dict) -> Conflict:
        # The caller's own order (same user, same key): it may learn which one it is.
        return Conflict("this order is already paid", code="ORDER_ALREADY_PAID",
                        public={"outTradeNo": order["outTradeNo"], "orderToken": self._token(order)})

    def _token(self, order: dict) -> str:
        return order_token(self.config.order_token_secret, order["outTradeNo"], order["openid"])

    def _prepay(self, order: dict) -> dict | None:
        """The 200 answer, always with `payment`; None when the order stopped being
        payable meanwhile (a racing request's prepay failed, or it was closed).  Raises
        ORDER_ALREADY_PAID when it was paid meanwhile."""
        out_trade_no = order["outTradeNo"]
        prepay_id = order.get("prepayId")
        if not prepay_id:
            try:
                prepay_id = self.wechatpay.jsapi_prepay(
                    out_trade_no=out_trade_no, description=order["description"],
                    total_fee=order["totalFee"], openid=order["openid"],
                    time_expire=rfc3339(order["expireTime"]))
            except WeChatPayError as error:
                self._mark_failed(out_trade_no, error)
                raise
            updated = self.store.update_order_fields(out_trade_no, {"prepayId": prepay_id},
                                                     where={"payStatus": order_states.NOTPAY})
            if updated is None:  # changed meanwhile: this prepay id must never be handed out
                current = self.store.get_order(out_trade_no)
                if order_states.is_paid(current["payStatus"]):
                    raise self._already_paid(current)
                return None
            order = updated
        return self._answer(order, payment=self.wechatpay.request_payment_params(prepay_id))

    def _mark_failed(self, out_trade_no: str, error: WeChatPayError) -> None:
        # PAYERROR: no client ever gets a prepay_id for this order.  The reconcile
        # sweep closes it at WeChat Pay in case the request landed there after all.
        # Only while no prepay id is stored: a concurrent retry with the same key may
        # have got one (WeChat accepted the same order), and that order stays payable.
        try:
            self.store.transition(out_trade_no, order_states.PAYERROR,
                                  fields={"failure": error.code, "closeAtWeChat": True},
                                  where={"prepayId": None})
        except IllegalTransition:
            log("checkout.prepay_failed_but_payable", level="warning", outTradeNo=out_trade_no, code=error.code)
            return
        except CloudPayError as exc:  # the WeChat error is the one the client must see
            log("checkout.mark_failed_failed", level="error", outTradeNo=out_trade_no, code=exc.code)
        log("checkout.prepay_failed", level="warning", outTradeNo=out_trade_no, code=error.code)

    def _answer(self, order: dict, payment: dict | None) -> dict:
        return {
            "outTradeNo": order["outTradeNo"], "totalFee": order["totalFee"],
            "payStatus": order["payStatus"],
            "orderToken": self._token(order),
            "expiresAt": order["expireTime"], "payment": payment,
        }

    # --- status ------------------------------------------------------------------------

    def order_status(self, out_trade_no: str, token: str | None) -> dict:
        if not token:
            raise Unauthorized("send the order's X-Order-Token header", code="ORDER_TOKEN_MISSING")
        order = self.store.find_order(out_trade_no) if _ORDER_NO_RE.match(out_trade_no or "") else None
        expected = order_token(self.config.order_token_secret, out_trade_no,
                               order["openid"] if order else "\x00no-order")
        # Same answer for an unknown order and a wrong token: reveal nothing.
        if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace")) or order is None:
            raise Forbidden("the order token does not match this order", code="ORDER_TOKEN_INVALID")
        if order["payStatus"] in (order_states.NOTPAY, order_states.PAYERROR):
            order = self._ask_wechat(order)
        return {"outTradeNo": order["outTradeNo"], "payStatus": order["payStatus"],
                "totalFee": order["totalFee"], "paidAt": order.get("paidAt")}

    def _ask_wechat(self, order: dict) -> dict:
        """While unpaid, WeChat Pay's word first: a lost callback must not hide a payment."""
        try:
            transaction = self.wechatpay.query_order(order["outTradeNo"])
        except WeChatPayError as error:
            # The stored state is still true as far as we know; the client polls again.
            log("checkout.query_failed", level="warning", outTradeNo=order["outTradeNo"], code=error.code)
            return order
        if transaction.get("trade_state") == order_states.SUCCESS:
            from shared.settlement import settle_transaction  # only once WeChat reports a payment

            settled = settle_transaction(self.store, self.config, transaction, source="query")
            return self.store.find_order(order["outTradeNo"]) or settled.order or order
        return order
