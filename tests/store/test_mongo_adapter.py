"""What only the MongoDB adapter has: indexes, client options, driver errors, outages."""

from __future__ import annotations

import time

import pymongo
import pytest
from pymongo import monitoring

from shared import order_states as st
from shared.errors import StoreConflict, StoreUnavailable
from shared.store import INDEXES, OrderStore
from shared.store.mongo import MongoOrderStore, client_options
from tests.store.test_conformance import new_order


class CommandLog(monitoring.CommandListener):
    def __init__(self):
        self.commands: list[str] = []

    def started(self, event):
        self.commands.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_indexes_are_created_per_collection_in_one_round_trip_at_first_use(mongo_uri, db_name):
    commands = CommandLog()
    client = pymongo.MongoClient(mongo_uri, event_listeners=[commands], **client_options(mongo_uri))
    try:
        store = MongoOrderStore(mongo_uri, db_name, client=client)
        store.insert_order(new_order("IDX00001"))
        store.find_order("IDX00001")
        store.transition("IDX00001", st.CLOSED)           # touches orders, then events and deliveries
        store.insert_order(new_order("IDX00002"))
        assert commands.commands.count("createIndexes") == 3  # each collection once
        for name, indexes in INDEXES.items():
            if name not in ("orders", "events", "deliveries"):
                continue
            existing = {tuple(f for f, _ in info["key"]): bool(info.get("unique"))
                        for info in client[db_name][name].index_information().values()}
            for index in indexes:
                assert existing.get(tuple(f for f, _ in index.fields)) == index.unique, (name, index.name)
    finally:
        client.close()


def test_ensure_indexes_creates_every_collection_and_is_idempotent(store, mongo_client, db_name):
    store.ensure_indexes()
    store.ensure_indexes()
    for name, indexes in INDEXES.items():
        names = {tuple(f for f, _ in info["key"]) for info in mongo_client[db_name][name].index_information().values()}
        assert all(tuple(f for f, _ in index.fields) in names for index in indexes), name


def test_client_defaults_are_small_and_poll_and_uri_wins():
    options = client_options("mongodb://h/?maxPoolSize=9")
    assert "maxPoolSize" not in options
    assert options["serverMonitoringMode"] == "poll"
    assert client_options("mongodb://h")["maxPoolSize"] <= 4


def test_no_connection_until_first_use_and_repr_hides_the_uri():
    store = MongoOrderStore("mongodb://user:secret@127.0.0.1:9/", "x")
    assert store._client is None
    assert "secret" not in repr(store)


def test_every_public_operation_translates_driver_errors():
    """The port's methods reach the driver only through the adapter's primitives, and
    each primitive is wrapped: an outage is StoreUnavailable from every one of them."""
    uri = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200&connectTimeoutMS=200"
    store = MongoOrderStore(uri, "down")
    calls = [
        lambda: store.insert_order(new_order("DOWN0001")), lambda: store.find_order("DOWN0001"),
        lambda: store.transition("DOWN0001", st.SUCCESS), lambda: store.expired_unpaid(0, 1),
        lambda: store.failed_prepays(1), lambda: store.unpaid_older_than(0, 0, 1),
        lambda: store.paid_between(0, 1), lambda: store.pending_refunds(0, 1, ("REQUESTED",)),
        lambda: store.reserve_refund("DOWN0001", "R1", 1), lambda: store.record_anomaly("k", None, {}),
        lambda: store.append_event("e", "T"), lambda: store.count_events("e"), lambda: store.list_anomalies(),
        lambda: store.find_bill_run("2026-01-01"), lambda: store.upsert_product("A1", "x", 1),
        store.ping, store.ensure_indexes,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert caught.value.status == 503 and caught.value.code == "STORE_UNAVAILABLE"
    store.close()


def test_every_adapter_method_is_wrapped():
    from shared.store import port

    primitives = {name for name, member in vars(OrderStore).items()
                  if getattr(member, "__isabstractmethod__", False)}
    for name in primitives | {"ensure_indexes", "close", "_collection", "_db"}:
        method = getattr(MongoOrderStore, name)
        assert hasattr(method, "__wrapped__"), f"{name} is not translated"
    assert port  # the port itself never imports the driver
    assert "pymongo" not in open(port.__file__).read()


def test_duplicate_keys_are_conflicts(store):
    store.insert_order(new_order("DUPL0001"))
    with pytest.raises(StoreConflict) as caught:
        store.insert_order(new_order("DUPL0001"))
    assert caught.value.status == 409 and isinstance(caught.value.__cause__, pymongo.errors.DuplicateKeyError)


def test_store_unavailable_then_back_with_nothing_lost(private_mongo, db_name):
    timeout_ms = 800
    uri = f"{private_mongo.uri}/?serverSelectionTimeoutMS={timeout_ms}&connectTimeoutMS={timeout_ms}"
    store = MongoOrderStore(uri, db_name)
    for i in range(20):
        store.insert_order(new_order(f"KEEP{i:04d}"))

    private_mongo.stop()
    for attempt in range(3):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.insert_order(new_order(f"LOST{attempt:04d}"))
        assert time.monotonic() - started < timeout_ms / 1000 + 1.5
    with pytest.raises(StoreUnavailable):
        store.transition("KEEP0001", st.SUCCESS)

    private_mongo.start()
    deadline = time.monotonic() + 10
    while True:  # the pool reconnects on its own; bounded wait
        try:
            store.insert_order(new_order("AFTER001"))
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "store did not come back"
            time.sleep(0.1)
    assert store.count_orders() == 21
    assert all(store.find_order(f"LOST{i:04d}") is None for i in range(3))
    assert store.transition("KEEP0001", st.SUCCESS, fields={"transactionId": "T"}).applied
    store.close()


def test_close_releases_the_client_and_a_later_call_reconnects(store, mongo_uri, db_name):
    own = MongoOrderStore(mongo_uri, db_name)
    own.insert_order(new_order("CLOSE001"))
    own.close()
    assert own._client is None
    assert own.find_order("CLOSE001") is not None
    own.close()


def test_a_dropped_index_is_named_by_its_declared_name(store, mongo_client, db_name):
    store.ensure_indexes()
    orders = mongo_client[db_name]["orders"]
    # Dropped by the name the server gave it (nx-27017 names indexes its own way).
    [served] = [info["name"] for info in orders.list_indexes() if list(info["key"]) == ["payStatus", "expireTime"]]
    orders.drop_index(served)
    assert store.index_differences() == [{"collection": "orders", "index": "status_expire", "problem": "missing"}]
    orders.create_index([("payStatus", 1), ("expireTime", 1)])
    assert store.index_differences() == []


def test_listing_indexes_creates_nothing(store, mongo_client, db_name):
    store.indexes_found()
    store.index_differences()
    assert mongo_client[db_name].list_collection_names() == []
