"""The order store against the wire-protocol MongoDB over TCP (issue 2)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import order_states as st
from shared.errors import IllegalTransition, StoreConflict, StoreNotFound, StoreUnavailable
from shared.store import INDEXES, OrderStore, client_options, get_client


def new_order(out_trade_no: str, total_fee: int = 1234, **extra) -> dict:
    return {"outTradeNo": out_trade_no, "openid": "oUser", "appid": "wx0123456789abcdef",
            "mchid": "1900000109", "items": [{"sku": "A1", "quantity": 2, "price": 617}],
            "totalFee": total_fee, "description": "A1 x2", "expireTime": 4_102_444_800_000,
            **extra}


def run_concurrently(n: int, fn):
    """Start n threads at once (barrier) and collect (result, exception) per thread."""
    barrier = threading.Barrier(n)

    def call(i):
        barrier.wait()
        try:
            return fn(i), None
        except Exception as exc:  # collected for the assertions
            return None, exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


# --- unique order numbers ----------------------------------------------------------

def test_200_concurrent_distinct_inserts_all_land(store):
    results = run_concurrently(200, lambda i: store.insert_order(new_order(f"T{i:08d}")))
    assert [exc for _, exc in results if exc] == []
    assert store.orders.count_documents({}) == 200


def test_50_concurrent_inserts_of_one_number_give_one_success(store):
    results = run_concurrently(50, lambda i: store.insert_order(new_order("SAME0001", total_fee=100 + i)))
    successes = [r for r, exc in results if exc is None]
    errors = [exc for _, exc in results if exc is not None]
    assert len(successes) == 1
    assert len(errors) == 49 and all(isinstance(e, StoreConflict) for e in errors)
    assert all(e.status == 409 for e in errors)
    assert store.orders.count_documents({"outTradeNo": "SAME0001"}) == 1


def test_indexes_are_created_idempotently(store):
    store.ensure_indexes(force=True)
    store.ensure_indexes(force=True)
    for collection, specs in INDEXES.items():
        # Compare by field names: the wire server names indexes its own way and does
        # not report directions.
        existing = {tuple(field for field, _ in info["key"]): bool(info.get("unique"))
                    for info in store.db[collection].index_information().values()}
        for keys, options in specs:
            fields = tuple(field for field, _ in keys)
            assert existing.get(fields) == options.get("unique", False), (collection, keys)


# --- the state machine -------------------------------------------------------------

def test_50_threads_racing_notpay_to_success_one_winner_one_event(store):
    store.insert_order(new_order("RACE0001"))
    paid = {"transactionId": "4200000000000000000000000001", "paidAt": 1_700_000_000_000}
    results = run_concurrently(50, lambda i: store.transition("RACE0001", st.SUCCESS, fields=paid,
                                                              same={"transactionId": paid["transactionId"]}))
    assert [exc for _, exc in results if exc] == []
    applied = [r for r, _ in results if r.applied]
    assert len(applied) == 1
    assert sum(1 for r, _ in results if r.already_done) == 49
    assert store.count_events("order.paid", "RACE0001") == 1
    order = store.get_order("RACE0001")
    assert order["payStatus"] == st.SUCCESS and order["transactionId"] == paid["transactionId"]


@pytest.mark.parametrize("start, target", [
    (st.SUCCESS, st.NOTPAY), (st.CLOSED, st.SUCCESS), (st.CLOSED, st.NOTPAY),
    (st.REFUND, st.NOTPAY), (st.SUCCESS, st.CLOSED), (st.SUCCESS, st.PAYERROR),
])
def test_illegal_transitions_are_refused(store, start, target):
    store.insert_order(new_order("ILLEGAL1", payStatus=start))
    with pytest.raises(IllegalTransition) as caught:
        store.transition("ILLEGAL1", target)
    assert caught.value.status == 409
    assert store.get_order("ILLEGAL1")["payStatus"] == start


def test_repeat_of_completed_transition_is_already_done(store):
    store.insert_order(new_order("REPEAT01"))
    first = store.transition("REPEAT01", st.CLOSED)
    second = store.transition("REPEAT01", st.CLOSED)
    assert first.applied and not second.applied and second.already_done
    assert store.count_events("order.closed", "REPEAT01") == 1


def test_replayed_payment_after_refund_is_already_done(store):
    store.insert_order(new_order("REPLAY01"))
    store.transition("REPLAY01", st.SUCCESS, fields={"transactionId": "T1"})
    store.transition("REPLAY01", st.REFUND)
    again = store.transition("REPLAY01", st.SUCCESS, fields={"transactionId": "T1"},
                             same={"transactionId": "T1"})
    assert again.already_done and again.order["payStatus"] == st.REFUND
    assert store.count_events("order.paid", "REPLAY01") == 1


def test_same_state_with_a_different_transaction_is_not_already_done(store):
    store.insert_order(new_order("DOUBLE01"))
    store.transition("DOUBLE01", st.SUCCESS, fields={"transactionId": "T1"})
    with pytest.raises(IllegalTransition):
        store.transition("DOUBLE01", st.SUCCESS, fields={"transactionId": "T2"},
                         same={"transactionId": "T2"})
    assert store.get_order("DOUBLE01")["transactionId"] == "T1"


def test_missing_event_is_repaired_by_a_retry(store):
    """A crash between the state write and the event write loses nothing: the retry
    of the same fact (WeChat re-sends unacknowledged notifications) appends it."""
    store.insert_order(new_order("REPAIR01"))
    store.transition("REPAIR01", st.SUCCESS, fields={"transactionId": "T1"})
    store.events.delete_many({"outTradeNo": "REPAIR01"})  # simulate the crash
    again = store.transition("REPAIR01", st.SUCCESS, same={"transactionId": "T1"})
    assert again.already_done
    assert store.count_events("order.paid", "REPAIR01") == 1


def test_where_condition_guards_the_compare_and_set(store):
    store.insert_order(new_order("GUARD001", expireTime=2_000))
    with pytest.raises(IllegalTransition):
        store.transition("GUARD001", st.CLOSED, where={"expireTime": {"$lt": 1_000}})
    assert store.transition("GUARD001", st.CLOSED, where={"expireTime": {"$lt": 3_000}}).applied


def test_unknown_order_is_not_found(store):
    with pytest.raises(StoreNotFound) as caught:
        store.transition("NOSUCH01", st.SUCCESS)
    assert caught.value.status == 404


def test_transition_table_has_no_way_back():
    assert st.sources_of(st.NOTPAY) == ()
    assert st.TRANSITIONS[st.CLOSED] == frozenset()
    for source, targets in st.TRANSITIONS.items():
        for target in targets:
            assert target in st.ENTRY_EVENTS, (source, target)


# --- types survive every update the store performs ------------------------------------

def _assert_types(doc: dict, expected: dict) -> None:
    for key, kind in expected.items():
        value = doc[key]
        if kind is int:  # Int64 (epoch ms) is an int; bool and float are not
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = type(value) is kind
        assert ok, f"{key} is {type(value).__name__}, expected {kind.__name__}"


def test_types_survive_round_trip_and_every_update(store):
    """Canary for the wire server's known quirks ($set of bool/datetime changing type)."""
    store.upsert_product("A1", "Tea", 990, active=True)
    store.upsert_product("A1", "Tea", 1990, active=False)  # the update path too
    product = store.get_products(["A1"])["A1"]
    _assert_types(product, {"sku": str, "name": str, "price": int, "active": bool})
    assert product["active"] is False and product["price"] == 1990

    inserted = store.insert_order(new_order("TYPES001", total_fee=1990, attach="007"))
    order = store.get_order("TYPES001")
    _assert_types(order, {"outTradeNo": str, "totalFee": int, "createTime": int, "updateTime": int,
                          "expireTime": int, "refundedFee": int, "payStatus": str, "attach": str})
    assert order["attach"] == "007" and order["items"][0]["quantity"] == 2
    assert inserted["totalFee"] == 1990

    store.update_order_fields("TYPES001", {"prepayId": "wx201410272009395522657a690389285100",
                                           "numericString": "00123", "flag": True})
    order = store.get_order("TYPES001")
    _assert_types(order, {"prepayId": str, "numericString": str, "flag": bool, "updateTime": int})
    assert order["numericString"] == "00123" and order["flag"] is True

    store.transition("TYPES001", st.SUCCESS, fields={"transactionId": "4200000000000000000000000001",
                                                     "paidAt": 1_700_000_000_123, "payerTotal": 1990})
    order = store.get_order("TYPES001")
    _assert_types(order, {"transactionId": str, "paidAt": int, "payerTotal": int, "payStatus": str})
    assert order["transactionId"] == "4200000000000000000000000001"

    store.orders.update_one({"outTradeNo": "TYPES001"}, {"$inc": {"refundedFee": 500}})
    _assert_types(store.get_order("TYPES001"), {"refundedFee": int, "totalFee": int})

    store.record_anomaly("amount_mismatch", "TYPES001", {"expected": 1990, "got": 1, "ok": False})
    anomaly = store.list_anomalies("TYPES001")[0]
    assert anomaly["evidence"] == {"expected": 1990, "got": 1, "ok": False}
    _assert_types(anomaly["evidence"], {"expected": int, "got": int, "ok": bool})
    event = store.events.find_one({"type": "order.paid"})
    _assert_types(event, {"createTime": int, "totalFee": int, "key": str})


def test_money_must_be_integer_fen(store):
    for bad in (12.5, True, "100", None):
        with pytest.raises(TypeError):
            store.insert_order(new_order("MONEY001", total_fee=bad))
    with pytest.raises(ValueError):
        store.insert_order(new_order("MONEY001", total_fee=0))
    assert store.find_order("MONEY001") is None


# --- store unavailable ------------------------------------------------------------------

def test_store_unavailable_then_back_with_nothing_lost(private_mongo, db_name):
    timeout_ms = 800
    uri = f"{private_mongo.uri}/?serverSelectionTimeoutMS={timeout_ms}&connectTimeoutMS={timeout_ms}"
    store = OrderStore(get_client(uri)[db_name])
    store.ensure_indexes()
    for i in range(20):
        store.insert_order(new_order(f"KEEP{i:04d}"))

    private_mongo.stop()
    for attempt in range(3):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            store.insert_order(new_order(f"LOST{attempt:04d}"))
        elapsed = time.monotonic() - started
        assert caught.value.status == 503 and caught.value.code == "STORE_UNAVAILABLE"
        assert elapsed < timeout_ms / 1000 + 1.5, elapsed
    with pytest.raises(StoreUnavailable):
        store.find_order("KEEP0001")
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
    assert store.orders.count_documents({"outTradeNo": {"$regex": "^KEEP"}}) == 20
    assert store.find_order("AFTER001") is not None
    assert store.transition("KEEP0001", st.SUCCESS, fields={"transactionId": "T"}).applied


def test_client_defaults_are_small_and_poll_and_uri_wins():
    options = client_options("mongodb://h/?maxPoolSize=9")
    assert "maxPoolSize" not in options
    assert options["serverMonitoringMode"] == "poll"
    assert client_options("mongodb://h")["maxPoolSize"] <= 4


def test_one_client_per_uri(mongo_uri):
    assert get_client(mongo_uri) is get_client(mongo_uri)


# --- refund reservations: one compare-and-set on the order -----------------------------

def _paid_order(store, out_trade_no: str, total: int) -> None:
    store.insert_order(new_order(out_trade_no, total_fee=total))
    store.transition(out_trade_no, st.SUCCESS, fields={"transactionId": "T", "refundableFee": total})


def test_concurrent_refund_reservations_never_exceed_the_total(store):
    _paid_order(store, "REFUND01", 100)
    results = run_concurrently(20, lambda i: store.reserve_refund("REFUND01", f"R{i:03d}", 30))
    assert [exc for _, exc in results if exc] == []
    winners = [r for r, _ in results if r is not None]
    assert len(winners) == 3
    order = store.get_order("REFUND01")
    assert order["refundableFee"] == 10 and order["refundingFee"] == 90


def test_refund_reservation_is_once_per_refund_number_and_settles_once(store):
    _paid_order(store, "REFUND02", 100)
    assert store.reserve_refund("REFUND02", "R1", 40) is not None
    assert store.reserve_refund("REFUND02", "R1", 40) is None  # same number again
    results = run_concurrently(10, lambda i: store.settle_refund("REFUND02", "R1", 40, "SUCCEEDED"))
    assert sum(1 for r, _ in results if r is not None) == 1
    order = store.get_order("REFUND02")
    assert (order["refundedFee"], order["refundingFee"], order["refundableFee"]) == (40, 0, 60)
    assert store.settle_refund("REFUND02", "R1", 40, "RELEASED") is None  # already settled


def test_released_refund_gives_the_amount_back(store):
    _paid_order(store, "REFUND03", 100)
    store.reserve_refund("REFUND03", "R1", 100)
    assert store.reserve_refund("REFUND03", "R2", 1) is None
    store.settle_refund("REFUND03", "R1", 100, "RELEASED")
    assert store.reserve_refund("REFUND03", "R2", 100) is not None


def test_unpaid_order_cannot_reserve_a_refund(store):
    store.insert_order(new_order("REFUND04", total_fee=100))
    assert store.reserve_refund("REFUND04", "R1", 1) is None
