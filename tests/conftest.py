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

    Returns a callable to set more variables; every instance-level cache (config,
    services, HTTP clients) is reset on each change and at the end, as in a cold start.
    """
    from shared import runtime
    from shared.login import reset_clients as reset_login
    from shared.wechatpay.client import reset_clients as reset_wechatpay
    from tests.keys import make_environ

    def apply(**overrides):
        """Set (or with None, remove) variables on top of what is set already."""
        for name, value in overrides.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_all()

    def reset_all():
        runtime.reset()
        reset_login()
        reset_wechatpay()

    apply(**make_environ(MONGODB_URI=mongo_uri, MONGODB_DB=db_name))
    yield apply
    reset_all()
    get_client(mongo_uri).drop_database(db_name)


@pytest.fixture
def env_store(function_env, mongo_uri, db_name):
    """The store the functions see (same database as function_env)."""
    order_store = OrderStore(get_client(mongo_uri)[db_name])
    order_store.ensure_indexes()
    return order_store


pytest_plugins = ["tests.sim_fixtures", "tests.s3_fixtures"]


class LiveStack:
    """prepare and callback behind the local gateway, talking to the simulator and MongoDB."""

    def __init__(self, gateway, simulator, store, prepare, callback):
        self.gateway, self.simulator, self.store = gateway, simulator, store
        self.prepare, self.callback = prepare, callback

    def create_order(self, items=(("A1", 1),), code="test-alice", **extra) -> dict:
        from tests.functions import http_event, reply_json

        body = {"code": code, "items": [{"sku": s, "quantity": q} for s, q in items], **extra}
        reply = self.prepare(http_event("POST", "/orders", body=body), {})
        assert reply["statusCode"] == 200, reply
        return reply_json(reply)


@pytest.fixture
def live_stack(function_env, env_store, simulator, sim_keys, mongo_uri, db_name):
    from devtools.gateway import Gateway
    from tests.functions import load_function

    prepare, callback = load_function("prepare"), load_function("callback")
    gateway = Gateway({"/prepare": prepare, "/callback": callback}).start()
    environ = sim_keys.function_environ(simulator.url, f"{gateway.url}/callback", mongo_uri)
    function_env(**{**environ, "MONGODB_URI": mongo_uri, "MONGODB_DB": db_name})
    for sku, name, price in (("A1", "Oolong tea", 1990), ("B2", "Moon cake", 1288)):
        env_store.upsert_product(sku, name, price)
    yield LiveStack(gateway, simulator, env_store, prepare, callback)
    simulator.wait_idle(10)
    gateway.stop()
