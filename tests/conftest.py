"""Shared fixtures: the wire-protocol MongoDB (nx-27017) over real TCP.

Set TEST_MONGODB_URI to run the same suite against a real MongoDB instead.
"""

from __future__ import annotations

import os
import uuid

import pytest

from devtools.mongo_server import MongoServer
from shared.store import OrderStore, get_client


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory):
    external = os.environ.get("TEST_MONGODB_URI")
    if external:
        yield external
        return
    server = MongoServer(tmp_path_factory.mktemp("mongo") / "test.db").start()
    yield server.uri
    server.stop()


@pytest.fixture
def db_name():
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(mongo_uri, db_name):
    """A fresh database per test, indexes created, dropped afterwards."""
    client = get_client(mongo_uri)
    order_store = OrderStore(client[db_name])
    order_store.ensure_indexes()
    yield order_store
    client.drop_database(db_name)


@pytest.fixture
def private_mongo(tmp_path):
    """A server of the test's own, which the test may stop and restart."""
    server = MongoServer(tmp_path / "private.db").start()
    yield server
    server.stop()


@pytest.fixture
def function_env(monkeypatch, mongo_uri, db_name):
    """Point the functions at the test MongoDB (a fresh database) via the environment.

    Returns a callable to apply more variables; every instance-level cache (config,
    services, HTTP clients) is reset before and after, as in a cold start.
    """
    from shared import runtime
    from shared.login import reset_clients as reset_login
    from shared.wechatpay.client import reset_clients as reset_wechatpay
    from tests.keys import make_environ

    def apply(**overrides):
        overrides = {"MONGODB_URI": mongo_uri, "MONGODB_DB": db_name, **overrides}
        for name, value in make_environ(**overrides).items():
            monkeypatch.setenv(name, value)
        runtime.reset()

    def reset_all():
        runtime.reset()
        reset_login()
        reset_wechatpay()

    reset_all()
    apply()
    yield apply
    reset_all()
    get_client(mongo_uri).drop_database(db_name)


@pytest.fixture
def env_store(function_env, mongo_uri, db_name):
    """The store the functions see (same database as function_env)."""
    order_store = OrderStore(get_client(mongo_uri)[db_name])
    order_store.ensure_indexes()
    return order_store
