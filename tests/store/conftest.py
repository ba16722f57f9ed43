"""The adapters under test: every test of the conformance suite runs against each.

- `memory`: `InMemoryOrderStore`;
- `mongo`:  `MongoOrderStore` on the wire server (nx-27017), or on a real MongoDB when
  TEST_MONGODB_URI is set (see tests/conftest.py).
"""

from __future__ import annotations

import pytest

from shared.store.memory import InMemoryOrderStore
from shared.store.mongo import MongoOrderStore

ADAPTERS = ("memory", "mongo")


@pytest.fixture(params=ADAPTERS)
def any_store(request):
    if request.param == "memory":
        return InMemoryOrderStore()
    mongo_uri = request.getfixturevalue("mongo_uri")
    client = request.getfixturevalue("mongo_client")
    return MongoOrderStore(mongo_uri, request.getfixturevalue("db_name"), client=client)


def delete_documents(store, collection: str, **equals) -> None:
    """Test-only: make documents vanish (to play a crash between two writes)."""
    if isinstance(store, InMemoryOrderStore):
        with store._lock:
            docs = store._collections.get(collection, [])
            docs[:] = [d for d in docs if any(d.get(k) != v for k, v in equals.items())]
    else:
        store._db()[collection].delete_many(equals)
