"""The in-memory adapter of the order store: atomic, for fast unit tests of the services.

Every primitive runs under one lock, so a compare-and-set here is as atomic as on
MongoDB (mongomock's is not).  Unique indexes come from the same `INDEXES` as the
MongoDB adapter and are enforced on insert and update.  Documents are copied in and
out, so a caller can never change stored state by mutating what it got.  Matching
follows MongoDB's rules where they matter here: a missing field equals None, a
comparison never matches a missing or null field, and booleans are not numbers.
TTL indexes expire documents as nx-27017's do: when their collection is read (against
the store's clock); MongoDB's TTL monitor deletes them within a minute instead.
Linear scans: it is meant for tests, not for production data.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.errors import StoreConflict, StoreUnavailable
from shared.store.port import INDEXES, Index, OrderStore, Sort, Where, date_of_ms, now_ms

# collection -> ((date field, seconds), ...) of its TTL indexes
_TTL = {name: tuple((index.fields[0][0], index.expire_after_s) for index in indexes
                    if index.expire_after_s is not None)
        for name, indexes in INDEXES.items()}

_MISSING = object()


def _get(doc: Mapping, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(doc: Mapping, where: Where) -> bool:
    for path, wanted in where.equals.items():
        value = _get(doc, path)
        if not _same(None if value is _MISSING else value, wanted):
            return False
    for path, allowed in where.one_of.items():
        value = _get(doc, path)
        if not any(_same(None if value is _MISSING else value, option) for option in allowed):
            return False
    for path, bound in where.below.items():
        value = _get(doc, path)
        if not (_number(value) and value < bound):
            return False
    for path, bound in where.at_least.items():
        value = _get(doc, path)
        if not (_number(value) and value >= bound):
            return False
    return all(_get(doc, path) is _MISSING for path in where.absent)


def _sort_key(sort: Sort):
    def key(doc):
        parts = []
        for path, direction in sort:
            value = _get(doc, path)
            present = value is not _MISSING and value is not None
            # None sorts first (as in MongoDB); descending flips numbers and strings alike.
            parts.append(_Ordered((1, value) if present else (0, 0), direction))
        return parts
    return key


class _Ordered:
    __slots__ = ("value", "direction")

    def __init__(self, value, direction):
        self.value, self.direction = value, direction

    def __lt__(self, other):
        return self.value < other.value if self.direction > 0 else other.value < self.value

    def __eq__(self, other):
        return self.value == other.value


class InMemoryOrderStore(OrderStore):
    def __init__(self, *, clock=now_ms):
        super().__init__(clock=clock)
        self._lock = threading.RLock()
        self._collections: dict[str, list[dict]] = {}
        self.available = True  # set False to play an outage (tests of the services)

    def __repr__(self) -> str:
        return "InMemoryOrderStore()"

    def _docs(self, collection: str) -> list[dict]:
        if not self.available:
            raise StoreUnavailable("the order store is unavailable, try again shortly",
                                   details={"error": "InMemoryOutage"})
        return self._collections.setdefault(collection, [])

    def _live(self, collection: str) -> list[dict]:
        """The collection's documents, for a read: its TTL indexes first remove the expired
        ones (a date older than the expiry; other values never expire, as in MongoDB)."""
        docs = self._docs(collection)
        for path, seconds in _TTL.get(collection, ()):
            cutoff = date_of_ms(self.clock() - seconds * 1000)
            docs[:] = [doc for doc in docs
                       if not (isinstance(value := _get(doc, path), datetime) and value < cutoff)]
        return docs

    def _check_unique(self, collection: str, doc: dict, ignore: dict | None = None) -> None:
        for index in INDEXES.get(collection, ()):
            if not index.unique:
                continue
            names = [name for name, _ in index.fields]
            key = [_get(doc, name) for name in names]
            for other in self._docs(collection):
                if other is not ignore and all(_same(a, _get(other, n)) for a, n in zip(key, names, strict=True)):
                    raise StoreConflict("a record with this key already exists",
                                        details={"keyValue": dict(zip(names, key, strict=True))})

    def ping(self) -> None:
        with self._lock:
            self._docs("products")

    def ensure_indexes(self) -> None:
        """Every collection made now; its unique indexes are INDEXES', enforced on every write."""
        with self._lock:
            for name in INDEXES:
                self._docs(name)

    def indexes_found(self) -> dict[str, tuple[Index, ...] | None]:
        """The declared indexes of each collection that exists (this adapter keeps no others)."""
        with self._lock:
            if not self.available:
                raise StoreUnavailable("the order store is unavailable, try again shortly",
                                       details={"error": "InMemoryOutage"})
            return {name: (tuple(INDEXES[name]) if name in self._collections else None) for name in INDEXES}

    # --- primitives -------------------------------------------------------------------

    def _insert(self, collection: str, doc: dict) -> None:
        with self._lock:
            stored = copy.deepcopy(dict(doc))
            self._check_unique(collection, stored)
            self._docs(collection).append(stored)

    def _find_one(self, collection: str, where: Where) -> dict | None:
        with self._lock:
            for doc in self._live(collection):
                if _matches(doc, where):
                    return copy.deepcopy(doc)
        return None

    def _find(self, collection: str, where: Where, *, sort: Sort = (), limit: int | None = None) -> list[dict]:
        with self._lock:
            found = [doc for doc in self._live(collection) if _matches(doc, where)]
            if sort:
                found.sort(key=_sort_key(sort))
            if limit is not None:
                found = found[:limit]
            return copy.deepcopy(found)

    def _update_one(self, collection: str, where: Where, *, set: Mapping[str, Any] | None = None,  # noqa: A002
                    inc: Mapping[str, int] | None = None, returning: str = "after") -> dict | None:
        with self._lock:
            for position, doc in enumerate(self._docs(collection)):
                if not _matches(doc, where):
                    continue
                before = copy.deepcopy(doc)
                after = copy.deepcopy(doc)
                for path, value in (set or {}).items():
                    _set(after, path, copy.deepcopy(value))
                for path, step in (inc or {}).items():
                    current = _get(after, path)
                    _set(after, path, (0 if current is _MISSING else current) + step)
                self._check_unique(collection, after, ignore=doc)
                self._docs(collection)[position] = after
                return before if returning == "before" else copy.deepcopy(after)
        return None

    def _upsert(self, collection: str, where: Where, doc: dict) -> None:
        with self._lock:
            docs = self._docs(collection)
            for position, existing in enumerate(docs):
                if _matches(existing, where):
                    replacement = copy.deepcopy(dict(doc))
                    self._check_unique(collection, replacement, ignore=existing)
                    docs[position] = replacement
                    return
            self._insert(collection, doc)

    def _count(self, collection: str, where: Where) -> int:
        with self._lock:
            return sum(1 for doc in self._live(collection) if _matches(doc, where))

    def _delete_many(self, collection: str, where: Where) -> int:
        with self._lock:
            docs = self._docs(collection)
            kept = [doc for doc in docs if not _matches(doc, where)]
            deleted = len(docs) - len(kept)
            docs[:] = kept
            return deleted

    def _delete_one(self, collection: str, where: Where) -> bool:
        with self._lock:
            docs = self._docs(collection)
            for position, doc in enumerate(docs):
                if _matches(doc, where):
                    del docs[position]
                    return True
        return False
