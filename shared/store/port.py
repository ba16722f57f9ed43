"""The order store as a port: business operations on top of a few storage primitives.

`OrderStore` holds every rule of the store once (the template-method split of
powertools' idempotency persistence layer):
- money is integer fen, times are integer epoch milliseconds, states are strings;
- documents are flat and facts go to their own collections (no pushed arrays);
- every state change is one compare-and-set on `payStatus`, never a read-then-write;
- once-only facts (`order.paid`, `order.closed`, `refund.succeeded`, ...) carry a
  unique `key`, so however often a fact is reported it is written once;
- failures are `StoreUnavailable` (503) and duplicate keys `StoreConflict` (409).

An adapter implements only the primitives at the bottom of the class (insert, find,
conditional update, count, upsert, indexes; for the doctor's probe a delete and a
listing of the indexes the storage holds; a delete of many for expired notifications)
over conditions written as `Where`, which says "equals / one of / below / at least /
absent" in storage-neutral terms.  The two adapters are `shared.store.mongo.MongoOrderStore`
(the only module that speaks MongoDB) and `shared.store.memory.InMemoryOrderStore`
(atomic, for fast unit tests); `tests/store/` runs one conformance suite against both.

One collection is not a fact store: `notifications` keeps each delivery of a verified
WeChat Pay notification as it arrived (the headers that verify it, the raw body with its
resource still encrypted, our answer) for 7 days, to replay it (`devtools.replay`).  Its
TTL index expires the documents on MongoDB (the TTL monitor, once a minute); nx-27017
honours TTL indexes only when the collection is read, so the sweep also deletes what is
past its 7 days (`expire_notifications`), and the local stack stays bounded too.
"""

from __future__ import annotations

import base64
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from shared import order_states
from shared.errors import IllegalTransition, StoreConflict, StoreNotFound, StoreUnavailable

# The five contract collections.
PRODUCTS, ORDERS, EVENTS, ANOMALIES, REFUNDS = "products", "orders", "events", "anomalies", "refunds"
# One record per reconciled bill day (kept apart from the shop's facts in `events`).
BILL_RUNS = "bill_runs"
# WeChat Pay's platform certificates, downloaded by one function and read by the others.
WECHATPAY_CERTS = "wechatpay_certs"
# Work that follows a fact, each item claimed with a lease: the delivery of every fact in
# `events` to the shop (one per fact), and the shipping upload of a paid order (one per
# order).  `events` itself stays append-only.
DELIVERIES = "deliveries"
SHIPMENTS = "shipments"
# What WeChat's server API gives that every instance shares: the access token
# (stable_token) and the list of express companies, one document per `key`.
WECHAT_CACHE = "wechat_cache"
PENDING, DONE, FAILED = "pending", "done", "failed"   # states of a delivery or a shipment
# Each delivery of a verified WeChat Pay notification, as received, for 7 days (a TTL
# index on the date `receivedAt`; `createTime`, epoch ms as everywhere, is what queries use).
NOTIFICATIONS = "notifications"
NOTIFICATION_TTL_S = 7 * 86_400
# The only headers kept: what verifying the notification again takes (no cookies, no
# client addresses, nothing else the gateway adds).
NOTIFICATION_HEADERS = ("Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial",
                        "Wechatpay-Signature-Type", "Content-Type")
NOTIFICATION_MAX_BODY = 64 * 1024     # the callback refuses larger bodies (MAX_BODY)
NOTIFICATION_MAX_HEADER = 1024        # a signature is at most 1024 characters (its check)
NOTIFICATION_LIST_MAX = 1000
_NOTIFICATION_FIELD_MAX = 128         # ids, event types, order numbers, outcomes
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# A refund's state on its order (`refundStates.<outRefundNo>`).
REFUND_RESERVED = "RESERVED"
REFUND_SUCCEEDED = "SUCCEEDED"
REFUND_RELEASED = "RELEASED"

ANOMALY_OPEN = "OPEN"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Index:
    """An index, described once for every adapter (unique ones are enforced by both)."""

    fields: tuple[tuple[str, int], ...]
    name: str
    unique: bool = False
    # A TTL index (one date field): a document expires this many seconds after that date.
    expire_after_s: int | None = None


def _index(name: str, *fields: tuple[str, int], unique: bool = False, expire_after_s: int | None = None) -> Index:
    return Index(tuple(fields), name, unique, expire_after_s)


INDEXES: Mapping[str, tuple[Index, ...]] = MappingProxyType({
    PRODUCTS: (_index("sku_unique", ("sku", 1), unique=True),),
    ORDERS: (
        _index("outTradeNo_unique", ("outTradeNo", 1), unique=True),
        # Every order carries one (random when the client sent no idempotencyKey), so
        # the unique index needs no partial filter.
        _index("idemKey_unique", ("idemKey", 1), unique=True),
        _index("status_expire", ("payStatus", 1), ("expireTime", 1)),
        _index("status_create", ("payStatus", 1), ("createTime", 1)),
        _index("openid_create", ("openid", 1), ("createTime", -1)),
        _index("paidAt", ("paidAt", 1)),
    ),
    EVENTS: (
        _index("key_unique", ("key", 1), unique=True),
        _index("outTradeNo", ("outTradeNo", 1)),
        _index("type_create", ("type", 1), ("createTime", 1)),
    ),
    ANOMALIES: (
        _index("key_unique", ("key", 1), unique=True),
        _index("outTradeNo", ("outTradeNo", 1)),
        _index("createTime", ("createTime", 1)),
    ),
    REFUNDS: (
        _index("outRefundNo_unique", ("outRefundNo", 1), unique=True),
        _index("outTradeNo", ("outTradeNo", 1)),
        _index("status_update", ("status", 1), ("updateTime", 1)),
    ),
    BILL_RUNS: (_index("billDate_unique", ("billDate", 1), unique=True),),
    WECHATPAY_CERTS: (_index("serial_unique", ("serial", 1), unique=True),),
    DELIVERIES: (
        _index("eventId_unique", ("eventId", 1), unique=True),
        _index("state_next", ("state", 1), ("nextAt", 1)),
        _index("outTradeNo_fact", ("outTradeNo", 1), ("factTime", 1)),
    ),
    SHIPMENTS: (
        _index("outTradeNo_unique", ("outTradeNo", 1), unique=True),
        _index("state_next", ("state", 1), ("nextAt", 1)),
    ),
    WECHAT_CACHE: (_index("key_unique", ("key", 1), unique=True),),
    NOTIFICATIONS: (
        _index("receivedAt_ttl", ("receivedAt", 1), expire_after_s=NOTIFICATION_TTL_S),
        _index("outTradeNo_create", ("outTradeNo", 1), ("createTime", 1)),
        _index("createTime", ("createTime", 1)),
    ),
})


def date_of_ms(epoch_ms: int) -> datetime:
    """The UTC date of an epoch-ms time, exactly (what a BSON date holds: milliseconds)."""
    return _EPOCH + timedelta(milliseconds=epoch_ms)


def notification_body(doc: Mapping) -> bytes:
    """The raw body of a kept notification, byte for byte as it arrived."""
    if doc.get("bodyBase64") is not None:
        return base64.b64decode(doc["bodyBase64"])
    return str(doc.get("body") or "").encode("utf-8")


def _short(value: Any) -> str | None:
    return value[:_NOTIFICATION_FIELD_MAX] if isinstance(value, str) and value else None


def _field_names(index: Index) -> tuple[str, ...]:
    return tuple(name for name, _ in index.fields)


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Where:
    """A condition on one collection's documents, in storage-neutral terms.

    All parts must hold.  Field names may be dotted paths (`refundStates.R1`).
    - `equals`:   field == value (a missing field equals None);
    - `one_of`:   field is one of the values;
    - `below`:    field < value (a missing or null field never matches);
    - `at_least`: field >= value (likewise);
    - `absent`:   the field does not exist.
    """

    equals: Mapping[str, Any] = field(default_factory=dict)
    one_of: Mapping[str, tuple] = field(default_factory=dict)
    below: Mapping[str, int] = field(default_factory=dict)
    at_least: Mapping[str, int] = field(default_factory=dict)
    absent: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "equals", _frozen(self.equals))
        object.__setattr__(self, "one_of", _frozen({k: tuple(v) for k, v in self.one_of.items()}))
        object.__setattr__(self, "below", _frozen(self.below))
        object.__setattr__(self, "at_least", _frozen(self.at_least))
        object.__setattr__(self, "absent", tuple(self.absent))


def by(**equals) -> Where:
    """`by(outTradeNo="T1")`: the documents whose fields equal these values."""
    return Where(equals=equals)


Sort = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class TransitionResult:
    """`applied` is True for the one caller that changed the state; False means it had
    already been done (by an earlier notification, query or sweep)."""

    applied: bool
    order: dict
    event: str | None

    @property
    def already_done(self) -> bool:
        return not self.applied


def refund_state_field(out_refund_no: str) -> str:
    """Where a refund's state lives on its order."""
    if not isinstance(out_refund_no, str) or not out_refund_no or "." in out_refund_no \
            or out_refund_no.startswith("$"):
        raise ValueError("invalid outRefundNo")
    return f"refundStates.{out_refund_no}"


def require_fen(value, name: str, *, allow_zero: bool = False) -> int:
    """Money is a plain int in fen; bool and float are refused outright."""
    if type(value) is not int:
        raise TypeError(f"{name} must be an int number of fen, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be positive")
    return value


class OrderStore(ABC):
    """The order store.  Thread-safe: every operation is one atomic primitive (or a
    sequence of them that is safe to repeat), and the adapters are thread-safe."""

    def __init__(self, *, clock=now_ms):
        self.clock = clock
        # Told of every fact this store writes (the outbox relay's first attempt); never
        # allowed to fail the write.
        self.fact_listener = None

    # --- products -----------------------------------------------------------------

    def upsert_product(self, sku: str, name: str, price: int, active: bool = True) -> None:
        require_fen(price, "price")
        self._upsert(PRODUCTS, by(sku=sku),
                     {"sku": sku, "name": name, "price": price, "active": bool(active)})

    def get_products(self, skus: Iterable[str]) -> dict[str, dict]:
        docs = self._find(PRODUCTS, Where(one_of={"sku": tuple(sorted(set(skus)))}))
        return {doc["sku"]: doc for doc in docs}

    def list_products(self) -> list[dict]:
        return self._find(PRODUCTS, Where(), sort=(("sku", 1),))

    # --- orders -------------------------------------------------------------------

    def insert_order(self, order: dict) -> dict:
        """Insert a new order; `StoreConflict` if its outTradeNo (or idemKey) exists."""
        doc = dict(order)
        require_fen(doc.get("totalFee"), "totalFee")
        now = self.clock()
        doc.setdefault("payStatus", order_states.NOTPAY)
        doc.setdefault("createTime", now)
        doc.setdefault("updateTime", now)
        # Initialised at insert: counters are never created by an increment later.
        doc.setdefault("refundedFee", 0)    # refunds that succeeded
        doc.setdefault("refundingFee", 0)   # reserved by refunds in flight
        doc.setdefault("refundableFee", 0)  # set to totalFee when paid; reservations take from it
        doc.setdefault("refundStates", {})  # outRefundNo -> state of that refund on this order
        doc.setdefault("transactionId", None)
        doc.setdefault("prepayId", None)
        doc.setdefault("paidAt", None)
        doc.setdefault("idemKey", "once:" + secrets.token_hex(16))
        self._insert(ORDERS, doc)
        return doc

    def find_order(self, out_trade_no: str) -> dict | None:
        return self._find_one(ORDERS, by(outTradeNo=out_trade_no))

    def get_order(self, out_trade_no: str) -> dict:
        order = self.find_order(out_trade_no)
        if order is None:
            raise StoreNotFound("no such order", details={"outTradeNo": out_trade_no})
        return order

    def find_order_by_idem_key(self, idem_key: str) -> dict | None:
        return self._find_one(ORDERS, by(idemKey=idem_key))

    def update_order_fields(self, out_trade_no: str, fields: dict, *,
                            where: Mapping[str, Any] | None = None) -> dict | None:
        """Set non-state fields, only while the fields in `where` still have those values
        (compare-and-set).  The updated order, or None when the condition no longer held."""
        if "payStatus" in fields:
            raise ValueError("payStatus changes go through transition()")
        return self._update_one(ORDERS, by(outTradeNo=out_trade_no, **(where or {})),
                                set={**fields, "updateTime": self.clock()})

    def transition(self, out_trade_no: str, target: str, *, fields: dict | None = None,
                   where: Mapping[str, Any] | None = None,
                   same: Mapping[str, Any] | None = None) -> TransitionResult:
        """Move an order to `target` if the state machine allows it from its current state.

        - One compare-and-set: the condition is `payStatus in sources_of(target)` plus
          the values in `where`; exactly one of many racing callers gets `applied=True`.
        - If the order is already in `target` or past it (REFUND is past SUCCESS), and
          agrees with `same` (e.g. the same transactionId), the result is
          `applied=False`: already done, not an error.
        - Otherwise `IllegalTransition` (e.g. SUCCESS -> NOTPAY, CLOSED -> SUCCESS), or
          `StoreNotFound` for an unknown order.
        The transition's event is appended with a unique key on both paths, so a crash
        between the two writes is repaired by the next retry of the same fact.
        """
        sources = order_states.sources_of(target)
        if not sources:
            raise IllegalTransition(f"no transition leads to {target}", details={"target": target})
        now = self.clock()
        changes = {**(fields or {}), "payStatus": target, "updateTime": now}
        condition = Where(equals={"outTradeNo": out_trade_no, **(where or {})}, one_of={"payStatus": sources})
        before = self._update_one(ORDERS, condition, set=changes, returning="before")
        event = order_states.ENTRY_EVENTS.get(target)
        if before is not None:
            after = {**before, **changes}
            if event:
                self._append_fact(event, after, now)
            return TransitionResult(applied=True, order=after, event=event)

        current = self.find_order(out_trade_no)
        if current is None:
            raise StoreNotFound("no such order", details={"outTradeNo": out_trade_no})
        state = current["payStatus"]
        agrees = all(current.get(k) == v for k, v in (same or {}).items())
        if order_states.has_reached(state, target) and agrees:
            if event:
                self._append_fact(event, current, now)
            return TransitionResult(applied=False, order=current, event=event)
        raise IllegalTransition(
            f"order is {state}; {state} -> {target} is not allowed here",
            details={"outTradeNo": out_trade_no, "from": state, "to": target})

    def _append_fact(self, event_type: str, order: dict, now: int) -> bool:
        """The once-only fact of an order entering a state (False if it existed)."""
        return self._record_fact({
            "key": f"{event_type}:{order['outTradeNo']}", "type": event_type,
            "outTradeNo": order["outTradeNo"], "createTime": now,
            "totalFee": order.get("totalFee"), "transactionId": order.get("transactionId"),
            "openid": order.get("openid"), "items": order.get("items"), "paidAt": order.get("paidAt"),
        })

    def _record_fact(self, doc: dict, *, once: bool = True) -> bool:
        """Insert a fact and plan its delivery.  The delivery is planned on both paths, so
        a crash between the two writes is repaired by the next retry of the same fact."""
        if once:
            written = self._insert_once(EVENTS, doc)
        else:
            self._insert(EVENTS, doc)
            written = True
        self._insert_once(DELIVERIES, {
            "eventId": doc["key"], "type": doc["type"], "outTradeNo": doc["outTradeNo"],
            "factTime": doc["createTime"], "state": PENDING, "attempts": 0, "nextAt": doc["createTime"],
            "leaseUntil": 0, "leaseOwner": None, "firstAttemptAt": None, "lastError": None, "doneAt": None})
        if written and self.fact_listener is not None:
            try:
                self.fact_listener(doc)
            except Exception:  # noqa: S110 - a listener's failure must not undo a stored fact
                pass
        return written

    # What the sweep looks for.

    def expired_unpaid(self, now: int, limit: int) -> list[dict]:
        """NOTPAY orders past their expireTime, oldest expiry first."""
        return self._find(ORDERS, Where(equals={"payStatus": order_states.NOTPAY}, below={"expireTime": now}),
                          sort=(("expireTime", 1),), limit=limit)

    def failed_prepays(self, limit: int) -> list[dict]:
        """PAYERROR orders that may exist at WeChat Pay and must be closed there."""
        return self._find(ORDERS, by(payStatus=order_states.PAYERROR, closeAtWeChat=True),
                          sort=(("createTime", 1),), limit=limit)

    def unpaid_older_than(self, created_before: int, now: int, limit: int) -> list[dict]:
        """NOTPAY orders created before `created_before` and not yet expired (lost callbacks)."""
        return self._find(ORDERS, Where(equals={"payStatus": order_states.NOTPAY},
                                        below={"createTime": created_before}, at_least={"expireTime": now}),
                          sort=(("createTime", 1),), limit=limit)

    def paid_between(self, start: int, end: int) -> list[dict]:
        """Paid orders (SUCCESS or REFUND) whose paidAt is in [start, end)."""
        return self._find(ORDERS, Where(one_of={"payStatus": (order_states.SUCCESS, order_states.REFUND)},
                                        at_least={"paidAt": start}, below={"paidAt": end}),
                          sort=(("paidAt", 1),))

    def list_orders(self, *, status: str | None = None, limit: int = 100) -> list[dict]:
        """The newest orders first, optionally in one state."""
        return self._find(ORDERS, by(payStatus=status) if status else Where(),
                          sort=(("createTime", -1),), limit=limit)

    def count_orders(self, *, status: str | None = None) -> int:
        return self._count(ORDERS, by(payStatus=status) if status else Where())

    # --- refunds on the order: each step one compare-and-set on the order document ------

    def reserve_refund(self, out_trade_no: str, out_refund_no: str, amount: int) -> dict | None:
        """Take `amount` from what is still refundable, once per refund number.

        None when the order is not paid, not refundable by that much, or the refund
        number is already on it.  Concurrent reservations can never exceed the total.
        """
        return self._take_refundable(out_trade_no, out_refund_no, amount, "refundingFee", REFUND_RESERVED)

    def settle_refund(self, out_trade_no: str, out_refund_no: str, amount: int, outcome: str) -> dict | None:
        """Move a reserved refund to SUCCEEDED (counted as refunded) or RELEASED (given back).

        None when the refund is not reserved on the order (already settled: a retry).
        """
        state_field = refund_state_field(out_refund_no)
        if outcome == REFUND_SUCCEEDED:
            inc = {"refundingFee": -amount, "refundedFee": amount}
        elif outcome == REFUND_RELEASED:
            inc = {"refundingFee": -amount, "refundableFee": amount}
        else:
            raise ValueError(f"unknown refund outcome {outcome!r}")
        return self._update_one(ORDERS, by(outTradeNo=out_trade_no, **{state_field: REFUND_RESERVED}),
                                set={state_field: outcome, "updateTime": self.clock()}, inc=inc)

    def apply_unreserved_refund(self, out_trade_no: str, out_refund_no: str, amount: int) -> dict | None:
        """A refund we never requested (merchant console) that WeChat reports as done."""
        return self._take_refundable(out_trade_no, out_refund_no, amount, "refundedFee", REFUND_SUCCEEDED)

    def _take_refundable(self, out_trade_no: str, out_refund_no: str, amount: int, into: str,
                         state: str) -> dict | None:
        """Move `amount` from refundableFee to `into`, marking the refund `state`: one
        compare-and-set, so it happens once per refund number and never past the total."""
        require_fen(amount, "amount")
        state_field = refund_state_field(out_refund_no)
        condition = Where(equals={"outTradeNo": out_trade_no},
                          one_of={"payStatus": (order_states.SUCCESS, order_states.REFUND)},
                          at_least={"refundableFee": amount}, absent=(state_field,))
        return self._update_one(ORDERS, condition, set={state_field: state, "updateTime": self.clock()},
                                inc={"refundableFee": -amount, into: amount})

    # --- the refunds collection (a projection of the order's refundStates) -------------

    def insert_refund(self, record: dict) -> None:
        """StoreConflict when the outRefundNo exists."""
        self._insert(REFUNDS, dict(record))

    def insert_refund_if_absent(self, record: dict) -> bool:
        """True when this call wrote it."""
        return self._insert_once(REFUNDS, dict(record))

    def find_refund(self, out_refund_no: str) -> dict | None:
        return self._find_one(REFUNDS, by(outRefundNo=out_refund_no))

    def update_refund(self, out_refund_no: str, fields: dict) -> dict | None:
        return self._update_one(REFUNDS, by(outRefundNo=out_refund_no),
                                set={**fields, "updateTime": self.clock()})

    def pending_refunds(self, updated_before: int, limit: int, statuses: tuple[str, ...]) -> list[dict]:
        """Refunds in one of `statuses` not updated since `updated_before`, oldest first."""
        return self._find(REFUNDS, Where(one_of={"status": statuses}, below={"updateTime": updated_before}),
                          sort=(("updateTime", 1),), limit=limit)

    def refunds_of(self, out_trade_no: str) -> list[dict]:
        return self._find(REFUNDS, by(outTradeNo=out_trade_no), sort=(("createTime", 1),))

    # --- events and anomalies -----------------------------------------------------

    def append_event(self, event_type: str, out_trade_no: str, *, key: str | None = None, **data) -> bool:
        """Append a fact to the outbox.  With `key`, at most once (False if it existed)."""
        doc = {"key": key or f"{event_type}:{out_trade_no}:{secrets.token_hex(8)}",
               "type": event_type, "outTradeNo": out_trade_no, "createTime": self.clock(), **data}
        return self._record_fact(doc, once=key is not None)

    def find_event(self, event_id: str) -> dict | None:
        return self._find_one(EVENTS, by(key=event_id))

    def count_events(self, event_type: str, out_trade_no: str | None = None) -> int:
        equals: dict[str, Any] = {"type": event_type}
        if out_trade_no is not None:
            equals["outTradeNo"] = out_trade_no
        return self._count(EVENTS, Where(equals=equals))

    def events_of(self, out_trade_no: str) -> list[dict]:
        """An order's facts in the order they happened."""
        return self._find(EVENTS, by(outTradeNo=out_trade_no), sort=(("createTime", 1), ("key", 1)))

    def record_anomaly(self, kind: str, out_trade_no: str | None, evidence: dict, *,
                       key: str | None = None) -> bool:
        """Record something a human must look at.  With `key`, once (retries do not pile up)."""
        doc = {"key": key or f"{kind}:{out_trade_no}:{secrets.token_hex(8)}",
               "kind": kind, "outTradeNo": out_trade_no, "evidence": evidence,
               "status": ANOMALY_OPEN, "createTime": self.clock()}
        if key is None:
            self._insert(ANOMALIES, doc)
            return True
        return self._insert_once(ANOMALIES, doc)

    def list_anomalies(self, out_trade_no: str | None = None, kind: str | None = None, *,
                       status: str | None = None, limit: int | None = None) -> list[dict]:
        equals = {name: value for name, value in
                  (("outTradeNo", out_trade_no), ("kind", kind), ("status", status)) if value is not None}
        return self._find(ANOMALIES, Where(equals=equals), sort=(("createTime", 1),), limit=limit)

    # --- the daily bill --------------------------------------------------------------

    def find_bill_run(self, bill_date: str) -> dict | None:
        return self._find_one(BILL_RUNS, by(billDate=bill_date))

    def record_bill_run(self, bill_date: str, result: dict) -> None:
        """The outcome of reconciling `bill_date` (a forced re-run replaces it)."""
        self._upsert(BILL_RUNS, by(billDate=bill_date),
                     {"billDate": bill_date, **result, "createTime": self.clock()})

    # --- WeChat Pay's platform certificates -----------------------------------------

    def platform_certificates(self, limit: int = 20) -> list[dict]:
        """`{serial, pem, notBefore, notAfter, fetchedAt}` (epoch seconds / ms) of the
        `limit` that expire last, newest last (WeChat Pay lists two at most at a time)."""
        newest = self._find(WECHATPAY_CERTS, Where(), sort=(("notAfter", -1),), limit=limit)
        return newest[::-1]

    def save_platform_certificate(self, serial: str, pem: str, not_before: int, not_after: int) -> None:
        self._upsert(WECHATPAY_CERTS, by(serial=serial), {"serial": serial, "pem": pem, "notBefore": not_before,
                                                          "notAfter": not_after, "fetchedAt": self.clock()})

    # --- leased work: deliveries of facts, shipping uploads ---------------------------
    # Each item is claimed with one compare-and-set that sets a lease (an owner and an
    # expiry, like an INPROGRESS idempotency record); a claim whose holder died expires
    # and the item can be claimed again.  Only the holder settles it.

    def due_deliveries(self, now: int, limit: int) -> list[dict]:
        """Pending deliveries whose next attempt is due and that nobody holds, oldest fact first."""
        return self._due(DELIVERIES, now, limit, sort=(("factTime", 1), ("eventId", 1)))

    def deliveries_of(self, out_trade_no: str) -> list[dict]:
        """The deliveries of an order's facts, in the order the facts happened."""
        return self._find(DELIVERIES, by(outTradeNo=out_trade_no), sort=(("factTime", 1), ("eventId", 1)))

    def find_delivery(self, event_id: str) -> dict | None:
        return self._find_one(DELIVERIES, by(eventId=event_id))

    def claim_delivery(self, event_id: str, owner: str, now: int, lease_ms: int) -> dict | None:
        return self._claim(DELIVERIES, by(eventId=event_id), owner, now, lease_ms)

    def settle_delivery(self, event_id: str, owner: str, fields: dict) -> dict | None:
        return self._settle(DELIVERIES, by(eventId=event_id), owner, fields)

    def replay_delivery(self, event_id: str, now: int) -> dict | None:
        """Make a delivery pending and due now (a person's `redeliver`), whatever its state."""
        return self._update_one(DELIVERIES, by(eventId=event_id), set={
            "state": PENDING, "nextAt": now, "leaseUntil": 0, "leaseOwner": None, "firstAttemptAt": None,
            "lastError": None, "replayedAt": now})

    def plan_shipment(self, out_trade_no: str, fields: dict) -> bool:
        """The shipping upload of a paid order, due now (once per order: False if planned)."""
        now = self.clock()
        return self._insert_once(SHIPMENTS, {
            "outTradeNo": out_trade_no, "state": PENDING, "attempts": 0, "nextAt": now, "leaseUntil": 0,
            "leaseOwner": None, "firstAttemptAt": None, "lastError": None, "doneAt": None, "corrections": 0,
            "createTime": now, **fields})

    def find_shipment(self, out_trade_no: str) -> dict | None:
        return self._find_one(SHIPMENTS, by(outTradeNo=out_trade_no))

    def due_shipments(self, now: int, limit: int) -> list[dict]:
        return self._due(SHIPMENTS, now, limit, sort=(("nextAt", 1),))

    def claim_shipment(self, out_trade_no: str, owner: str, now: int, lease_ms: int) -> dict | None:
        return self._claim(SHIPMENTS, by(outTradeNo=out_trade_no), owner, now, lease_ms)

    def settle_shipment(self, out_trade_no: str, owner: str, fields: dict) -> dict | None:
        return self._settle(SHIPMENTS, by(outTradeNo=out_trade_no), owner, fields)

    def replan_shipment(self, out_trade_no: str, fields: dict, *, state: str) -> dict | None:
        """New shipping details, due now, while the shipment is still in `state` and held
        by nobody (compare-and-set: a ship racing an upload loses)."""
        now = self.clock()
        return self._update_one(
            SHIPMENTS, Where(equals={"outTradeNo": out_trade_no, "state": state}, below={"leaseUntil": now + 1}),
            set={**fields, "state": PENDING, "nextAt": now, "attempts": 0, "firstAttemptAt": None,
                 "lastError": None})

    def _due(self, collection: str, now: int, limit: int, *, sort: Sort) -> list[dict]:
        return self._find(collection, Where(equals={"state": PENDING},
                                            below={"nextAt": now + 1, "leaseUntil": now + 1}),
                          sort=sort, limit=limit)

    def _claim(self, collection: str, where: Where, owner: str, now: int, lease_ms: int) -> dict | None:
        condition = Where(equals={**where.equals, "state": PENDING}, below={"leaseUntil": now + 1})
        return self._update_one(collection, condition, set={"leaseUntil": now + lease_ms, "leaseOwner": owner})

    def _settle(self, collection: str, where: Where, owner: str, fields: dict) -> dict | None:
        """The holder's outcome (None when its lease was lost to another claim)."""
        return self._update_one(collection, Where(equals={**where.equals, "leaseOwner": owner}),
                                set={**fields, "leaseUntil": 0, "leaseOwner": None}, inc={"attempts": 1})

    # --- what WeChat's server API gives, shared by every instance -----------------------

    def cached_token(self, appid: str) -> dict | None:
        """`{accessToken, expiresAt}` (epoch ms) of the mini-program's access token, or None."""
        return self._find_one(WECHAT_CACHE, by(key=f"access_token:{appid}"))

    def save_token(self, appid: str, access_token: str, expires_at: int) -> None:
        key = f"access_token:{appid}"
        self._upsert(WECHAT_CACHE, by(key=key), {"key": key, "accessToken": access_token, "expiresAt": expires_at,
                                                 "fetchedAt": self.clock()})

    def cached_express_companies(self) -> tuple[dict[str, str], int] | None:
        """({code: name}, fetchedAt ms) from get_delivery_list, or None."""
        doc = self._find_one(WECHAT_CACHE, by(key="express_companies"))
        if doc is None:
            return None
        return {entry["code"]: entry["name"] for entry in doc["companies"]}, doc["fetchedAt"]

    def save_express_companies(self, companies: dict[str, str]) -> None:
        # A list, not a mapping: codes are data (a "." or "$" in one must not become a path).
        entries = [{"code": code, "name": name} for code, name in companies.items()]
        self._upsert(WECHAT_CACHE, by(key="express_companies"), {"key": "express_companies", "companies": entries,
                                                                 "fetchedAt": self.clock()})

    # --- WeChat Pay's notifications as received (kept 7 days, for replays) -----------------

    def record_notification(self, headers: Mapping[str, Any], body: bytes, *, status: int,
                            outcome: str | None = None, notification_id: str | None = None,
                            event_type: str | None = None, out_trade_no: str | None = None,
                            out_refund_no: str | None = None) -> dict:
        """Keep one delivery of a notification whose signature verified, as it arrived.

        Kept: the headers of NOTIFICATION_HEADERS only (any letter case in, canonical names
        out; every other header is dropped), the raw `body` byte for byte (its resource
        still encrypted: callers pass nothing decrypted but our own order and refund
        numbers), our answer (`status`, `outcome`) and the time received.  One document per
        delivery; they expire after NOTIFICATION_TTL_S.  ValueError for a body over
        NOTIFICATION_MAX_BODY or a status that is not an HTTP status."""
        raw = bytes(body)
        if len(raw) > NOTIFICATION_MAX_BODY:
            raise ValueError(f"a notification body is at most {NOTIFICATION_MAX_BODY} bytes")
        if type(status) is not int or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status")
        folded = {str(name).lower(): value for name, value in headers.items()}
        kept = {name: str(folded[name.lower()])[:NOTIFICATION_MAX_HEADER] for name in NOTIFICATION_HEADERS
                if folded.get(name.lower()) is not None}
        now = self.clock()
        doc: dict[str, Any] = {
            "notificationId": _short(notification_id), "eventType": _short(event_type),
            "outTradeNo": _short(out_trade_no), "outRefundNo": _short(out_refund_no),
            "status": status, "outcome": _short(outcome), "headers": kept,
            "createTime": now, "receivedAt": date_of_ms(now)}
        try:
            doc["body"] = raw.decode("utf-8")      # readable, and exact: strict UTF-8 encodes back the same
        except UnicodeDecodeError:
            doc["bodyBase64"] = base64.b64encode(raw).decode("ascii")
        self._insert(NOTIFICATIONS, doc)
        return doc

    def list_notifications(self, out_trade_no: str | None = None, since: int | None = None, *,
                           limit: int = 20) -> list[dict]:
        """The `limit` (1..NOTIFICATION_LIST_MAX) newest kept notifications, newest last:
        of one order, and/or received at or after `since` (epoch ms).  `receivedAt` comes
        out as an aware UTC datetime from every adapter."""
        if type(limit) is not int or not 1 <= limit <= NOTIFICATION_LIST_MAX:
            raise ValueError(f"limit must be 1..{NOTIFICATION_LIST_MAX}")
        if since is not None and type(since) is not int:
            raise TypeError("since must be epoch milliseconds (int)")
        where = Where(equals={"outTradeNo": out_trade_no} if out_trade_no is not None else {},
                      at_least={"createTime": since} if since is not None else {})
        newest = self._find(NOTIFICATIONS, where, sort=(("createTime", -1),), limit=limit)
        for doc in newest:
            received = doc.get("receivedAt")
            if isinstance(received, datetime) and received.tzinfo is None:   # drivers give naive UTC
                doc["receivedAt"] = received.replace(tzinfo=timezone.utc)
        return newest[::-1]

    def expire_notifications(self) -> int:
        """Delete the kept notifications older than NOTIFICATION_TTL_S (by the store's clock):
        what the TTL index does on MongoDB, for storages that expire lazily (the sweep's
        step).  How many were deleted."""
        cutoff = self.clock() - NOTIFICATION_TTL_S * 1000
        return self._delete_many(NOTIFICATIONS, Where(below={"createTime": cutoff}))

    # --- health --------------------------------------------------------------------

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def ensure_indexes(self) -> None:  # noqa: B027 - optional: an adapter without indexes has nothing to do
        """Create every index now (deployment set-up; adapters create them lazily anyway)."""

    def close(self) -> None:  # noqa: B027 - optional: an adapter without connections has nothing to do
        """Release connections (a rotated configuration builds a new store)."""

    def write_probe(self) -> None:
        """Write a probe record and delete it again (doctor: the store takes writes).
        StoreUnavailable when either step fails; nothing is left behind when both succeed."""
        key = f"doctor_probe:{secrets.token_hex(8)}"
        self._insert(WECHAT_CACHE, {"key": key, "probe": True, "createTime": self.clock()})
        if not self._delete_one(WECHAT_CACHE, by(key=key)):
            raise StoreUnavailable("the probe record written to the store could not be deleted",
                                   details={"error": "ProbeNotDeleted"})

    @abstractmethod
    def indexes_found(self) -> dict[str, tuple[Index, ...] | None]:
        """For each collection of INDEXES: the indexes the storage holds for it (names as the
        storage gives them), or None when the collection does not exist yet.  Read-only: it
        creates neither collections nor indexes."""

    def index_differences(self) -> list[dict]:
        """What the storage lacks of the declared indexes: `{"collection", "index", "problem"}`
        with problem "no_collection" (index None: made at first use, or by ensure_indexes),
        "missing", "not_unique", "not_ttl" (a TTL index without our expiry, or with another),
        or "conflict" (an index of that name on other fields: creating ours would fail).
        Indexes are matched by their fields in order, not by name (servers name them their
        own way) nor direction (nx-27017 keeps none, and every query here is equalities then
        one sort key, which an index serves in either direction)."""
        found = self.indexes_found()
        differences = []
        for collection, declared in INDEXES.items():
            present = found.get(collection)
            if present is None:
                differences.append({"collection": collection, "index": None, "problem": "no_collection"})
                continue
            by_fields = {_field_names(index): index for index in present}
            by_name = {index.name: index for index in present}
            for index in declared:
                match = by_fields.get(_field_names(index))
                named = by_name.get(index.name)
                if named is not None and _field_names(named) != _field_names(index):
                    problem = "conflict"
                elif match is None:
                    problem = "missing"
                elif index.unique and not match.unique:
                    problem = "not_unique"
                elif index.expire_after_s is not None and match.expire_after_s != index.expire_after_s:
                    problem = "not_ttl"
                else:
                    continue
                differences.append({"collection": collection, "index": index.name, "problem": problem})
        return differences

    # --- the primitives an adapter implements ------------------------------------------
    # Documents go in and come out as plain dicts (no adapter ids); they are copies.

    @abstractmethod
    def _insert(self, collection: str, doc: dict) -> None:
        """Insert; StoreConflict when a unique index already has the document's key."""

    def _insert_once(self, collection: str, doc: dict) -> bool:
        """Insert unless its unique key exists: True when this call wrote it."""
        try:
            self._insert(collection, doc)
        except StoreConflict:
            return False
        return True

    @abstractmethod
    def _find_one(self, collection: str, where: Where) -> dict | None:
        """One matching document (the first by insertion), or None."""

    @abstractmethod
    def _find(self, collection: str, where: Where, *, sort: Sort = (), limit: int | None = None) -> list[dict]:
        """The matching documents, sorted (1 ascending, -1 descending), at most `limit`."""

    @abstractmethod
    def _update_one(self, collection: str, where: Where, *, set: Mapping[str, Any] | None = None,  # noqa: A002
                    inc: Mapping[str, int] | None = None, returning: str = "after") -> dict | None:
        """Atomically update one matching document: `set` values, `inc` counters.
        The document as it was `before` or is `after` the update, or None when nothing
        matched (the compare-and-set lost)."""

    @abstractmethod
    def _upsert(self, collection: str, where: Where, doc: dict) -> None:
        """Replace the document matching `where` (by equality) with `doc`, or insert it."""

    @abstractmethod
    def _count(self, collection: str, where: Where) -> int:
        """How many documents match."""

    @abstractmethod
    def _delete_one(self, collection: str, where: Where) -> bool:
        """Delete one matching document: True when one was deleted (only `write_probe`
        deletes: facts and orders are never deleted)."""

    @abstractmethod
    def _delete_many(self, collection: str, where: Where) -> int:
        """Delete every matching document: how many (only expired notifications go so)."""
