"""The MongoDB order store (collections and field names per the store contract).

Rules kept everywhere here:
- money is integer fen, times are integer epoch milliseconds, states are strings;
- documents are flat and facts go to their own collections (no `$push`): correct on
  real MongoDB and on the wire-protocol test server alike;
- every state change is one compare-and-set (`find_one_and_update` filtered on
  `payStatus`), never a read-then-write;
- once-only facts (`order.paid`, `order.closed`, `refund.succeeded`) carry a unique `key`;
- driver failures become `StoreUnavailable` (503), duplicate keys `StoreConflict` (409).
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from shared import order_states
from shared.errors import IllegalTransition, StoreConflict, StoreNotFound, StoreUnavailable

# Defaults for SCF: an instance serves one request at a time, so a tiny pool suffices;
# timeouts stay well inside the function timeout.  Options given in the URI win.
CLIENT_DEFAULTS = {
    "maxPoolSize": 4,
    "minPoolSize": 0,
    "serverSelectionTimeoutMS": 3000,
    "connectTimeoutMS": 3000,
    "socketTimeoutMS": 5000,
    # SCF freezes idle instances; pymongo's FaaS detection does not know SCF.
    "serverMonitoringMode": "poll",
    "appname": "cloudpay-scf",
}

# name -> list of (keys, options).  Created idempotently at first use per process.
INDEXES: dict[str, list[tuple[list, dict]]] = {
    "products": [([("sku", 1)], {"unique": True, "name": "sku_unique"})],
    "orders": [
        ([("outTradeNo", 1)], {"unique": True, "name": "outTradeNo_unique"}),
        # Every order carries one (random when the client sent no idempotencyKey), so
        # the unique index needs no partial filter.
        ([("idemKey", 1)], {"unique": True, "name": "idemKey_unique"}),
        ([("payStatus", 1), ("expireTime", 1)], {"name": "status_expire"}),
        ([("payStatus", 1), ("createTime", 1)], {"name": "status_create"}),
        ([("openid", 1), ("createTime", -1)], {"name": "openid_create"}),
        ([("paidAt", 1)], {"name": "paidAt"}),
    ],
    "events": [
        ([("key", 1)], {"unique": True, "name": "key_unique"}),
        ([("outTradeNo", 1)], {"name": "outTradeNo"}),
        ([("type", 1), ("createTime", 1)], {"name": "type_create"}),
    ],
    "anomalies": [
        ([("key", 1)], {"unique": True, "name": "key_unique"}),
        ([("outTradeNo", 1)], {"name": "outTradeNo"}),
        ([("createTime", 1)], {"name": "createTime"}),
    ],
    "refunds": [
        ([("outRefundNo", 1)], {"unique": True, "name": "outRefundNo_unique"}),
        ([("outTradeNo", 1)], {"name": "outTradeNo"}),
        ([("status", 1), ("createTime", 1)], {"name": "status_create"}),
    ],
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _uri_has_option(uri: str, option: str) -> bool:
    _, _, query = uri.partition("?")
    return any(part.split("=", 1)[0].lower() == option.lower() for part in query.split("&"))


def client_options(uri: str) -> dict[str, Any]:
    """CLIENT_DEFAULTS minus whatever the URI sets itself."""
    return {k: v for k, v in CLIENT_DEFAULTS.items() if not _uri_has_option(uri, k)}


_clients: dict[str, pymongo.MongoClient] = {}
_clients_lock = threading.Lock()


def get_client(uri: str) -> pymongo.MongoClient:
    """One MongoClient per URI per process, built at first use (not at import)."""
    client = _clients.get(uri)
    if client is None:
        with _clients_lock:
            client = _clients.get(uri)
            if client is None:
                client = pymongo.MongoClient(uri, **client_options(uri))
                _clients[uri] = client
    return client


def close_clients() -> None:
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def translate_errors(func):
    """Map driver exceptions onto the store's error hierarchy."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DuplicateKeyError as exc:
            raise StoreConflict("a record with this key already exists",
                                details={"keyValue": _duplicate_key(exc)}) from exc
        except OperationFailure as exc:
            # A server-side refusal (bad query, auth) is not an outage, but the client
            # can do nothing about it either: report it as unavailable, with the code.
            raise StoreUnavailable("the order store refused the operation",
                                   details={"mongoCode": exc.code}) from exc
        except PyMongoError as exc:
            raise StoreUnavailable("the order store is unavailable, try again shortly",
                                   details={"error": type(exc).__name__}) from exc

    return wrapper


def _duplicate_key(exc: DuplicateKeyError) -> Any:
    details = exc.details or {}
    return details.get("keyValue")


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


class OrderStore:
    """Access to the five collections.  Thread-safe (pymongo is)."""

    _indexed: set[tuple[str, str]] = set()
    _indexed_lock = threading.Lock()

    def __init__(self, db, *, clock=now_ms):
        self.db = db
        self.clock = clock
        self.products = db["products"]
        self.orders = db["orders"]
        self.events = db["events"]
        self.anomalies = db["anomalies"]
        self.refunds = db["refunds"]

    @classmethod
    def from_config(cls, config) -> OrderStore:
        store = cls(get_client(config.mongodb_uri)[config.mongodb_db])
        store.ensure_indexes()
        return store

    # --- schema -------------------------------------------------------------------

    @translate_errors
    def ensure_indexes(self, force: bool = False) -> None:
        """Create the indexes once per process per database (create_index is idempotent)."""
        marker = (id(self.db.client), self.db.name)
        if not force and marker in self._indexed:
            return
        with self._indexed_lock:
            for name, specs in INDEXES.items():
                for keys, options in specs:
                    self.db[name].create_index(keys, **options)
            self._indexed.add(marker)

    # --- products -----------------------------------------------------------------

    @translate_errors
    def upsert_product(self, sku: str, name: str, price: int, active: bool = True) -> None:
        _require_fen(price, "price", allow_zero=False)
        self.products.replace_one({"sku": sku},
                                  {"sku": sku, "name": name, "price": price, "active": bool(active)},
                                  upsert=True)

    @translate_errors
    def get_products(self, skus: Iterable[str]) -> dict[str, dict]:
        wanted = sorted(set(skus))
        docs = self.products.find({"sku": {"$in": wanted}}, {"_id": 0})
        return {doc["sku"]: doc for doc in docs}

    # --- orders -------------------------------------------------------------------

    @translate_errors
    def insert_order(self, order: dict) -> dict:
        """Insert a new order; `StoreConflict` if its outTradeNo exists."""
        doc = dict(order)
        _require_fen(doc.get("totalFee"), "totalFee", allow_zero=False)
        now = self.clock()
        doc.setdefault("payStatus", order_states.NOTPAY)
        doc.setdefault("createTime", now)
        doc.setdefault("updateTime", now)
        # Initialised at insert: counters are never created by $inc later.
        doc.setdefault("refundedFee", 0)    # refunds that succeeded
        doc.setdefault("refundingFee", 0)   # reserved by refunds in flight
        doc.setdefault("refundableFee", 0)  # set to totalFee when paid; reservations take from it
        doc.setdefault("refundStates", {})  # outRefundNo -> state of that refund on this order
        doc.setdefault("transactionId", None)
        doc.setdefault("prepayId", None)
        doc.setdefault("paidAt", None)
        doc.setdefault("idemKey", "once:" + secrets.token_hex(16))
        self.orders.insert_one(doc)
        doc.pop("_id", None)
        return doc

    @translate_errors
    def find_order(self, out_trade_no: str) -> dict | None:
        return self.orders.find_one({"outTradeNo": out_trade_no}, {"_id": 0})

    def get_order(self, out_trade_no: str) -> dict:
        order = self.find_order(out_trade_no)
        if order is None:
            raise StoreNotFound("no such order", details={"outTradeNo": out_trade_no})
        return order

    @translate_errors
    def find_order_by_idem_key(self, idem_key: str) -> dict | None:
        return self.orders.find_one({"idemKey": idem_key}, {"_id": 0})

    @translate_errors
    def update_order_fields(self, out_trade_no: str, fields: dict, *,
                            where: dict | None = None) -> dict | None:
        """Set non-state fields, optionally only if `where` still holds (compare-and-set).

        Returns the updated order, or None when the condition no longer held.
        """
        if "payStatus" in fields:
            raise ValueError("payStatus changes go through transition()")
        query = {"outTradeNo": out_trade_no, **(where or {})}
        update = {"$set": {**fields, "updateTime": self.clock()}}
        return self.orders.find_one_and_update(query, update, projection={"_id": 0},
                                               return_document=ReturnDocument.AFTER)

    @translate_errors
    def transition(self, out_trade_no: str, target: str, *, fields: dict | None = None,
                   where: dict | None = None, same: dict | None = None) -> TransitionResult:
        """Move an order to `target` if the state machine allows it from its current state.

        - One compare-and-set: the filter is `payStatus in sources_of(target)` plus
          `where`; exactly one of many racing callers gets `applied=True`.
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
        update = {"$set": {**(fields or {}), "payStatus": target, "updateTime": now}}
        query = {"outTradeNo": out_trade_no, "payStatus": {"$in": list(sources)}, **(where or {})}
        before = self.orders.find_one_and_update(query, update, projection={"_id": 0},
                                                 return_document=ReturnDocument.BEFORE)
        event = order_states.ENTRY_EVENTS.get(target)
        if before is not None:
            after = {**before, **update["$set"]}
            if event:
                self._append_once(event, out_trade_no, after, now)
            return TransitionResult(applied=True, order=after, event=event)

        current = self.find_order(out_trade_no)
        if current is None:
            raise StoreNotFound("no such order", details={"outTradeNo": out_trade_no})
        state = current["payStatus"]
        agrees = all(current.get(k) == v for k, v in (same or {}).items())
        if order_states.has_reached(state, target) and agrees:
            if event:
                self._append_once(event, out_trade_no, current, now)
            return TransitionResult(applied=False, order=current, event=event)
        raise IllegalTransition(
            f"order is {state}; {state} -> {target} is not allowed here",
            details={"outTradeNo": out_trade_no, "from": state, "to": target})

    def _append_once(self, event_type: str, out_trade_no: str, order: dict, now: int) -> bool:
        """Append a once-only event; False if it already existed."""
        doc = {
            "key": f"{event_type}:{out_trade_no}",
            "type": event_type,
            "outTradeNo": out_trade_no,
            "createTime": now,
            "totalFee": order.get("totalFee"),
            "transactionId": order.get("transactionId"),
            "openid": order.get("openid"),
        }
        try:
            self.events.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    # --- refunds on the order: each step one compare-and-set on the order document ------

    @translate_errors
    def reserve_refund(self, out_trade_no: str, out_refund_no: str, amount: int) -> dict | None:
        """Take `amount` from what is still refundable, once per refund number.

        None when the order is not paid, not refundable by that much, or the refund
        number is already on it.  Concurrent reservations can never exceed the total.
        """
        return self._take_refundable(out_trade_no, out_refund_no, amount, "refundingFee", REFUND_RESERVED)

    @translate_errors
    def settle_refund(self, out_trade_no: str, out_refund_no: str, amount: int, outcome: str) -> dict | None:
        """Move a reserved refund to SUCCESS (counted as refunded) or RELEASED (given back).

        None when the refund is not reserved on the order (already settled: a retry).
        """
        field = _refund_field(out_refund_no)
        if outcome == REFUND_SUCCEEDED:
            inc = {"refundingFee": -amount, "refundedFee": amount}
        elif outcome == REFUND_RELEASED:
            inc = {"refundingFee": -amount, "refundableFee": amount}
        else:
            raise ValueError(f"unknown refund outcome {outcome!r}")
        query = {"outTradeNo": out_trade_no, field: REFUND_RESERVED}
        update = {"$inc": inc, "$set": {field: outcome, "updateTime": self.clock()}}
        return self.orders.find_one_and_update(query, update, projection={"_id": 0},
                                               return_document=ReturnDocument.AFTER)

    @translate_errors
    def apply_unreserved_refund(self, out_trade_no: str, out_refund_no: str, amount: int) -> dict | None:
        """A refund we never requested (merchant console) that WeChat reports as done."""
        return self._take_refundable(out_trade_no, out_refund_no, amount, "refundedFee", REFUND_SUCCEEDED)

    def _take_refundable(self, out_trade_no: str, out_refund_no: str, amount: int, into: str,
                         state: str) -> dict | None:
        """Move `amount` from refundableFee to `into`, marking the refund `state`: one
        compare-and-set, so it happens once per refund number and never past the total."""
        _require_fen(amount, "amount", allow_zero=False)
        field = _refund_field(out_refund_no)
        query = {"outTradeNo": out_trade_no,
                 "payStatus": {"$in": [order_states.SUCCESS, order_states.REFUND]},
                 "refundableFee": {"$gte": amount}, field: {"$exists": False}}
        update = {"$inc": {"refundableFee": -amount, into: amount},
                  "$set": {field: state, "updateTime": self.clock()}}
        return self.orders.find_one_and_update(query, update, projection={"_id": 0},
                                               return_document=ReturnDocument.AFTER)

    # --- the refunds collection (a projection of the order's refundStates) -------------

    @translate_errors
    def insert_refund(self, record: dict) -> None:
        """StoreConflict when the outRefundNo exists."""
        self.refunds.insert_one(dict(record))

    @translate_errors
    def insert_refund_if_absent(self, record: dict) -> None:
        self.refunds.update_one({"outRefundNo": record["outRefundNo"]}, {"$setOnInsert": record},
                                upsert=True)

    @translate_errors
    def find_refund(self, out_refund_no: str) -> dict | None:
        return self.refunds.find_one({"outRefundNo": out_refund_no}, {"_id": 0})

    @translate_errors
    def update_refund(self, out_refund_no: str, fields: dict) -> None:
        self.refunds.update_one({"outRefundNo": out_refund_no},
                                {"$set": {**fields, "updateTime": self.clock()}})

    # --- events and anomalies -----------------------------------------------------

    @translate_errors
    def append_event(self, event_type: str, out_trade_no: str, *, key: str | None = None,
                     **data) -> bool:
        """Append a fact to the outbox.  With `key`, at most once (False if it existed)."""
        doc = {"key": key or f"{event_type}:{out_trade_no}:{secrets.token_hex(8)}",
               "type": event_type, "outTradeNo": out_trade_no, "createTime": self.clock(), **data}
        try:
            self.events.insert_one(doc)
        except DuplicateKeyError:
            if key is None:
                raise
            return False
        return True

    @translate_errors
    def record_anomaly(self, kind: str, out_trade_no: str | None, evidence: dict, *,
                       key: str | None = None) -> bool:
        """Record something a human must look at.  With `key`, once (retries do not pile up)."""
        doc = {"key": key or f"{kind}:{out_trade_no}:{secrets.token_hex(8)}",
               "kind": kind, "outTradeNo": out_trade_no, "evidence": evidence,
               "status": "OPEN", "createTime": self.clock()}
        try:
            self.anomalies.insert_one(doc)
        except DuplicateKeyError:
            if key is None:
                raise
            return False
        return True

    @translate_errors
    def count_events(self, event_type: str, out_trade_no: str | None = None) -> int:
        query: dict[str, Any] = {"type": event_type}
        if out_trade_no is not None:
            query["outTradeNo"] = out_trade_no
        return self.events.count_documents(query)

    @translate_errors
    def list_anomalies(self, out_trade_no: str | None = None, kind: str | None = None) -> list[dict]:
        query: dict[str, Any] = {}
        if out_trade_no is not None:
            query["outTradeNo"] = out_trade_no
        if kind is not None:
            query["kind"] = kind
        return list(self.anomalies.find(query, {"_id": 0}).sort("createTime", 1))


REFUND_RESERVED = "RESERVED"
REFUND_SUCCEEDED = "SUCCEEDED"
REFUND_RELEASED = "RELEASED"


def _refund_field(out_refund_no: str) -> str:
    if not out_refund_no or "." in out_refund_no or out_refund_no.startswith("$"):
        raise ValueError("invalid outRefundNo")
    return f"refundStates.{out_refund_no}"


def _require_fen(value, name: str, *, allow_zero: bool) -> None:
    """Money is a plain int in fen; bool and float are refused outright."""
    if type(value) is not int:
        raise TypeError(f"{name} must be an int number of fen, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be positive")
