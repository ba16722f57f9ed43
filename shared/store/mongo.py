"""The MongoDB adapter of the order store: the only module that speaks MongoDB.

- One `MongoClient` per store, built lazily (no connection at import or construction),
  with SCF-sized defaults: a tiny pool, short timeouts, `serverMonitoringMode=poll`.
- Each collection's indexes are created the first time this instance touches the
  collection: one `createIndexes` round trip per collection, idempotent, so two cold
  instances starting at once on a replica set both succeed (identical specs), and no
  write of an instance happens before its unique indexes exist.  `ensure_indexes()`
  creates all of them at once (`python -m shared.admin setup`).  A reader of another
  deployment's database (`devtools.replay`) passes `create_indexes=False`: it then
  creates nothing (a read-only database user suffices).
- TTL indexes (`Index.expire_after_s`) are MongoDB's `expireAfterSeconds`: the server
  deletes expired documents (its TTL monitor runs every 60 s; nx-27017 only when the
  collection is read, hence `expire_notifications` in the sweep).
- Every driver error is translated once, for the whole class (`_translated`):
  duplicate keys become `StoreConflict`, everything else `StoreUnavailable`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

import pymongo
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from shared import deadline
from shared.errors import StoreConflict, StoreUnavailable
from shared.store.port import INDEXES, Index, OrderStore, Sort, Where, now_ms

SELECTION_TIMEOUT_S = 3.0
SELECTION_STEP_S = 0.5

# Defaults for SCF: an instance serves one request at a time, so a tiny pool suffices;
# timeouts stay well inside the function timeout.  Options given in the URI win.
CLIENT_DEFAULTS = {
    "maxPoolSize": 4,
    "minPoolSize": 0,
    "serverSelectionTimeoutMS": int(SELECTION_TIMEOUT_S * 1000),
    "connectTimeoutMS": 3000,
    "socketTimeoutMS": 5000,
    # SCF freezes idle instances; pymongo's FaaS detection does not know SCF.
    "serverMonitoringMode": "poll",
    "appname": "cloudpay-scf",
}


def _uri_has_option(uri: str, option: str) -> bool:
    _, _, query = uri.partition("?")
    return any(part.split("=", 1)[0].lower() == option.lower() for part in query.split("&"))


def client_options(uri: str) -> dict[str, Any]:
    """CLIENT_DEFAULTS minus whatever the URI sets itself."""
    return {k: v for k, v in CLIENT_DEFAULTS.items() if not _uri_has_option(uri, k)}


def _translate(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            left = deadline.store_remaining()
            if left is None or left >= SELECTION_TIMEOUT_S:
                return func(*args, **kwargs)
            if left <= 0:   # the reply is due: no store work may start now
                raise StoreUnavailable("the order store did not answer in time",
                                       details={"error": "deadline"})
            # Less time left than the client's own timeouts: hold this operation to the
            # invocation's deadline (never longer than those timeouts, see shared.deadline).
            # pymongo waits for a server in steps of its 0.5 s minimum heartbeat interval,
            # so a selection timeout of 1.2 s ends after 1.5 s: round down to the step.
            bound = SELECTION_STEP_S * int(left / SELECTION_STEP_S) or left   # under one step: all of it
            with pymongo.timeout(bound):
                return func(*args, **kwargs)
        except DuplicateKeyError as exc:
            raise StoreConflict("a record with this key already exists",
                                details={"keyValue": (exc.details or {}).get("keyValue")}) from exc
        except OperationFailure as exc:
            # A server-side refusal (bad query, auth) is not an outage, but the client
            # can do nothing about it either: report it as unavailable, with the code.
            raise StoreUnavailable("the order store refused the operation",
                                   details={"mongoCode": exc.code}) from exc
        except PyMongoError as exc:
            raise StoreUnavailable("the order store is unavailable, try again shortly",
                                   details={"error": type(exc).__name__}) from exc

    return wrapper


def _translated(cls):
    """Wrap every method the adapter defines, so no driver error escapes any of them."""
    for name, member in list(vars(cls).items()):
        if callable(member) and not name.startswith("__"):
            setattr(cls, name, _translate(member))
    return cls


def _query(where: Where) -> dict:
    query: dict = {}
    for name, value in where.equals.items():
        query[name] = {"$eq": value}
    for name, values in where.one_of.items():
        query.setdefault(name, {})["$in"] = list(values)
    for name, value in where.below.items():
        query.setdefault(name, {})["$lt"] = value
    for name, value in where.at_least.items():
        query.setdefault(name, {})["$gte"] = value
    for name in where.absent:
        query.setdefault(name, {})["$exists"] = False
    # A lone equality on a string or number is written plainly ({"f": v} means
    # {"f": {"$eq": v}}): the form MongoDB's tools show, and the one nx-27017 answers from
    # its indexes.  None stays $eq (nx reads a plain None as "missing" only).
    return {name: (condition["$eq"] if list(condition) == ["$eq"] and isinstance(condition["$eq"], (str, int))
                   else condition) for name, condition in query.items()}


def _sort(sort: Sort) -> list[tuple[str, int]]:
    return [(name, pymongo.ASCENDING if direction > 0 else pymongo.DESCENDING) for name, direction in sort]


_NO_ID = {"_id": 0}


def _index_of(info: Mapping) -> Index:
    """An index as listIndexes describes it (directions 1 / -1, or a kind such as "text")."""
    fields = tuple((name, int(value) if isinstance(value, (int, float)) else str(value))
                   for name, value in info["key"].items())
    expire = info.get("expireAfterSeconds")
    return Index(fields, str(info.get("name")), bool(info.get("unique")),
                 int(expire) if isinstance(expire, (int, float)) and not isinstance(expire, bool) else None)


def _index_model(index: Index) -> pymongo.IndexModel:
    options: dict[str, Any] = {"name": index.name, "unique": index.unique}
    if index.expire_after_s is not None:
        options["expireAfterSeconds"] = index.expire_after_s
    return pymongo.IndexModel(list(index.fields), **options)


@_translated
class MongoOrderStore(OrderStore):
    def __init__(self, uri: str, db_name: str, *, clock=now_ms, client: pymongo.MongoClient | None = None,
                 create_indexes: bool = True):
        super().__init__(clock=clock)
        self.uri = uri
        self.db_name = db_name
        self._creates_indexes = create_indexes
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()
        self._collections: dict[str, Any] = {}  # name -> Collection, its indexes created

    def __repr__(self) -> str:  # the URI may hold a password
        return f"MongoOrderStore(db={self.db_name!r})"

    def _db(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = pymongo.MongoClient(self.uri, **client_options(self.uri))
        return self._client[self.db_name]

    def _collection(self, name: str):
        collection = self._collections.get(name)
        if collection is None:
            if not self._creates_indexes:
                collection = self._collections[name] = self._db()[name]
                return collection
            collection = self._create_indexes(name)
        return collection

    def _create_indexes(self, name: str):
        collection = self._db()[name]
        models = [_index_model(index) for index in INDEXES.get(name, ())]
        if models:
            collection.create_indexes(models)  # one round trip for the collection
        self._collections[name] = collection
        return collection

    def ensure_indexes(self) -> None:
        for name in INDEXES:
            self._create_indexes(name)

    def ping(self) -> None:
        self._db().command("ping")

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._owns_client:
                self._client.close()
            self._client = None
            self._collections.clear()

    # --- primitives -------------------------------------------------------------------

    def _insert(self, collection: str, doc: dict) -> None:
        self._collection(collection).insert_one(dict(doc))  # a copy: insert_one adds _id

    def _find_one(self, collection: str, where: Where) -> dict | None:
        return self._collection(collection).find_one(_query(where), _NO_ID)

    def _find(self, collection: str, where: Where, *, sort: Sort = (), limit: int | None = None) -> list[dict]:
        cursor = self._collection(collection).find(_query(where), _NO_ID)
        if sort:
            cursor = cursor.sort(_sort(sort))
        if limit is not None:
            cursor = cursor.limit(limit)
        return list(cursor)  # read here, so a failure mid-cursor is translated too

    def _update_one(self, collection: str, where: Where, *, set: Mapping[str, Any] | None = None,  # noqa: A002
                    inc: Mapping[str, int] | None = None, returning: str = "after") -> dict | None:
        update: dict[str, dict] = {}
        if set:
            update["$set"] = dict(set)
        if inc:
            update["$inc"] = dict(inc)
        return self._collection(collection).find_one_and_update(
            _query(where), update, projection=_NO_ID,
            return_document=ReturnDocument.BEFORE if returning == "before" else ReturnDocument.AFTER)

    def _upsert(self, collection: str, where: Where, doc: dict) -> None:
        self._collection(collection).replace_one(dict(where.equals), dict(doc), upsert=True)

    def _count(self, collection: str, where: Where) -> int:
        return self._collection(collection).count_documents(_query(where))

    def _delete_one(self, collection: str, where: Where) -> bool:
        return self._collection(collection).delete_one(_query(where)).deleted_count == 1

    def _delete_many(self, collection: str, where: Where) -> int:
        return self._collection(collection).delete_many(_query(where)).deleted_count

    def indexes_found(self) -> dict[str, tuple[Index, ...] | None]:
        # The collections are listed first: listIndexes on a missing one would create it on
        # some servers (nx-27017), and _collection() would create the indexes it looks for.
        db = self._db()
        existing = set(db.list_collection_names())
        return {name: (tuple(_index_of(info) for info in db[name].list_indexes() if info.get("name") != "_id_")
                       if name in existing else None) for name in INDEXES}
