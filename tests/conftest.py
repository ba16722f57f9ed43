"""Shared fixtures: the wire-protocol MongoDB (nx-27017) over real TCP.

Isolation.  nx-27017 does not isolate databases (a document written under one database
name is visible under all of them, and dropping any database drops every collection).
So each pytest session, and each xdist worker, starts a server of its own on a fresh
file in its own temporary folder; that server exits when the session's process does,
even when the run is interrupted or killed, and the next run never sees its data.
Every test that uses the store starts from an empty database (cleared at set-up, not
only at tear-down, so a test interrupted half-way cannot leak into the next one).

Set TEST_MONGODB_URI to run the same suite against a real MongoDB instead; each test
then has a database of its own (`cloudpay_test_<time>_<random>`), dropped before and
after, and databases of that prefix older than a day are dropped at session start.
"""

from __future__ import annotations

import os
import time
import uuid

import pymongo
import pytest

from devtools.mongo_server import MongoServer
from shared.store.mongo import MongoOrderStore, client_options

TEST_DB_PREFIX = "cloudpay_test_"


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory):
    external = os.environ.get("TEST_MONGODB_URI")
    if external:
        _drop_stale_test_databases(external)
        yield external
        return
    server = MongoServer(tmp_path_factory.mktemp("mongo") / "test.db").start()
    yield server.uri
    server.stop()


def _drop_stale_test_databases(uri: str) -> None:
    client = pymongo.MongoClient(uri, **client_options(uri))
    try:
        cutoff = int(time.time()) - 86_400
        for name in client.list_database_names():
            stamp = name[len(TEST_DB_PREFIX):].split("_", 1)[0]
            if name.startswith(TEST_DB_PREFIX) and stamp.isdigit() and int(stamp) < cutoff:
                client.drop_database(name)
    finally:
        client.close()


@pytest.fixture(scope="session")
def mongo_client(mongo_uri):
    client = pymongo.MongoClient(mongo_uri, **client_options(mongo_uri))
    yield client
    client.close()


@pytest.fixture
def db_name(mongo_client):
    name = f"{TEST_DB_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:8]}"
    mongo_client.drop_database(name)  # on nx-27017: clears whatever a previous test left
    yield name
    mongo_client.drop_database(name)


@pytest.fixture
def store(mongo_uri, mongo_client, db_name):
    """The MongoDB adapter on a fresh database."""
    return MongoOrderStore(mongo_uri, db_name, client=mongo_client)


@pytest.fixture
def private_mongo(tmp_path):
    """A server of the test's own, which the test may stop and restart."""
    server = MongoServer(tmp_path / "private.db").start()
    yield server
    server.stop()


@pytest.fixture
def memory_store():
    from shared.store.memory import InMemoryOrderStore

    return InMemoryOrderStore()


@pytest.fixture
def function_env(mongo_uri, db_name):
    """The functions' configuration (`shared.runtime.configure`), on a fresh database.

    Returns a callable that sets more variables (None removes one); every instance (the
    configuration, clients and services) is rebuilt on each change and at the end, as
    in a cold start.  os.environ is not touched.
    """
    from shared import runtime
    from tests.keys import make_environ

    environ = make_environ(MONGODB_URI=mongo_uri, MONGODB_DB=db_name)

    def apply(**overrides):
        for name, value in overrides.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        runtime.configure(environ)
        return environ

    apply()
    yield apply
    runtime.configure(None)


@pytest.fixture
def env_store(function_env, mongo_uri, mongo_client, db_name):
    """The store the functions see (same database as function_env)."""
    return MongoOrderStore(mongo_uri, db_name, client=mongo_client)


pytest_plugins = ["tests.sim_fixtures", "tests.s3_fixtures", "tests.shop_receiver", "tests.browser",
                  "tests.ssm_fixtures"]


@pytest.fixture
def logs():
    """The JSON log lines written during the test (a StringIO; the sink is restored after)."""
    import io
    import sys

    from shared import log as log_module

    sink = io.StringIO()
    log_module.set_sink(sink)
    yield sink
    log_module.set_sink(sys.stdout)


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
    environ.setdefault("WECHATPAY_API_BASE_BACKUP", simulator.url)  # never the real api2 from a test
    function_env(**{**environ, "MONGODB_URI": mongo_uri, "MONGODB_DB": db_name})
    for sku, name, price in (("A1", "Oolong tea", 1990), ("B2", "Moon cake", 1288)):
        env_store.upsert_product(sku, name, price)
    yield LiveStack(gateway, simulator, env_store, prepare, callback)
    simulator.wait_idle(10)
    gateway.stop()
