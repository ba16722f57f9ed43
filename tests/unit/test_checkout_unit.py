"""CheckoutService (create_order, order_status) on InMemoryOrderStore with a fake WeChat Pay."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import order_states as st
from shared.checkout import CheckoutService, order_token, rfc3339
from shared.errors import (
    BadRequest,
    CatalogInvalid,
    Conflict,
    Forbidden,
    LoginFailed,
    StoreConflict,
    Unauthorized,
    WeChatPayBadResponse,
    WeChatPayRejected,
    WeChatPayUnreachable,
)
from shared.settlement import settle_transaction
from shared.store.port import PRODUCTS
from tests.keys import APPID, MCHID, make_config
from tests.unit.fakes import fake_login, openid_of, rejected, transaction

ALICE, BOB = openid_of("alice"), openid_of("bob")
TTL_MS = 1_800_000
PAID_AT = 1_795_665_660_000  # the fakes' default success_time, 2026-11-26T12:01:00+08:00


@pytest.fixture
def catalog(store):
    store.upsert_product("A1", "Tea", 1990)
    store.upsert_product("B2", "Cake", 500)
    store.upsert_product("OFF", "Old tea", 100, active=False)
    return store


@pytest.fixture
def checkout(config, catalog, wechat):
    return CheckoutService(config, catalog, wechat, fake_login)


def body(*items, code="test-alice", **extra):
    return {"code": code, "items": [{"sku": sku, "quantity": qty} for sku, qty in items], **extra}


def token_of(config, answer, openid=ALICE):
    return order_token(config.order_token_secret, answer["outTradeNo"], openid)


# --- creating an order --------------------------------------------------------------------

def test_order_is_priced_from_the_catalog_stored_then_prepaid(checkout, store, wechat, clock, config):
    t0 = clock.now

    def prepay_later(**kwargs):
        clock.advance(7)  # the prepay takes a while: the prepayId write is later than the insert
        return wechat.default("jsapi_prepay", **kwargs)

    wechat.then("jsapi_prepay", prepay_later)
    answer = checkout.create_order(body(("A1", 2), ("B2", 1)))

    order = store.get_order(answer["outTradeNo"])
    assert order["totalFee"] == 2 * 1990 + 500 == answer["totalFee"]
    assert order["items"] == [
        {"sku": "A1", "name": "Tea", "quantity": 2, "price": 1990, "lineFee": 3980},
        {"sku": "B2", "name": "Cake", "quantity": 1, "price": 500, "lineFee": 500},
    ]
    assert order["description"] == "Tea x2, Cake x1"
    assert (order["openid"], order["appid"], order["mchid"]) == (ALICE, APPID, MCHID)
    assert order["payStatus"] == st.NOTPAY == answer["payStatus"]
    assert order["createTime"] == t0 and order["expireTime"] == t0 + TTL_MS == answer["expiresAt"]
    assert order["updateTime"] == t0 + 7  # the prepayId was stored after the prepay answered
    assert (order["refundedFee"], order["refundingFee"], order["refundableFee"]) == (0, 0, 0)
    assert len(answer["outTradeNo"]) == 26 and answer["outTradeNo"].startswith("261126120000")

    [prepay] = wechat.calls_to("jsapi_prepay")
    assert prepay.kwargs == {"out_trade_no": answer["outTradeNo"], "description": "Tea x2, Cake x1",
                             "total_fee": 4480, "openid": ALICE, "time_expire": rfc3339(t0 + TTL_MS)}
    assert prepay.kwargs["time_expire"] == "2026-11-26T12:30:00+08:00"
    assert order["prepayId"] == wechat.default("jsapi_prepay", out_trade_no=answer["outTradeNo"])
    [params] = wechat.calls_to("request_payment_params")
    assert params.args == (order["prepayId"],)
    assert answer["payment"]["package"] == f"prepay_id={order['prepayId']}"
    assert answer["orderToken"] == token_of(config, answer)
    assert store.events_of(answer["outTradeNo"]) == []


@pytest.mark.parametrize(("request_body", "code"), [
    (body(("A1", 1), totalFee=1), "PRICE_NOT_ACCEPTED"),
    (body(("A1", 1), total_fee=1), "PRICE_NOT_ACCEPTED"),
    ({"code": "test-alice", "items": [{"sku": "A1", "quantity": 1, "price": 1}]}, "PRICE_NOT_ACCEPTED"),
    ({"code": "test-alice", "items": [{"sku": "A1", "quantity": 1, "unit-price": 1}]}, "PRICE_NOT_ACCEPTED"),
    (body(("A1", 1), coupon="X"), "UNKNOWN_FIELD"),
    (body(("A1", 1), code=""), "INVALID_CODE"),
    ({"code": "test-alice", "items": []}, "INVALID_ITEMS"),
    ({"code": "test-alice", "items": "A1"}, "INVALID_ITEMS"),
    ({"code": "test-alice", "items": ["A1"]}, "INVALID_ITEMS"),
    ({"code": "test-alice", "items": [{"sku": f"S{i}", "quantity": 1} for i in range(51)]}, "INVALID_ITEMS"),
    (body(("A 1", 1)), "INVALID_SKU"),
    (body(("A1", 0)), "INVALID_QUANTITY"),
    (body(("A1", 1000)), "INVALID_QUANTITY"),
    (body(("A1", True)), "INVALID_QUANTITY"),
    (body(("A1", 1.0)), "INVALID_QUANTITY"),
    (body(("A1", 1), ("A1", 2)), "DUPLICATE_SKU"),
    (body(("ZZ", 1)), "UNKNOWN_SKU"),
    (body(("OFF", 1)), "SKU_INACTIVE"),
    (body(("A1", 1), idempotencyKey=""), "INVALID_IDEMPOTENCY_KEY"),
    (body(("A1", 1), idempotencyKey="x" * 65), "INVALID_IDEMPOTENCY_KEY"),
    (body(("A1", 1), idempotencyKey="key with spaces"), "INVALID_IDEMPOTENCY_KEY"),
])
def test_bad_requests_are_refused_and_create_nothing(checkout, store, wechat, request_body, code):
    with pytest.raises(BadRequest) as caught:
        checkout.create_order(request_body)
    assert caught.value.code == code and caught.value.status == 400
    assert store.count_orders() == 0 and wechat.calls == []


def test_total_above_the_maximum_is_refused(catalog, wechat):
    service = CheckoutService(make_config("prepare", ORDER_MAX_TOTAL_FEE="3980"), catalog, wechat, fake_login)
    assert service.create_order(body(("A1", 2)))["totalFee"] == 3980  # exactly the maximum is fine
    with pytest.raises(BadRequest) as caught:
        service.create_order(body(("A1", 2), ("B2", 1)))
    assert caught.value.code == "TOTAL_OUT_OF_RANGE"
    assert catalog.count_orders() == 1


def test_long_description_is_cut_to_wechats_limit(checkout, store, wechat):
    store.upsert_product("LONG", "Tea " * 40, 100)
    answer = checkout.create_order(body(("LONG", 1)))
    description = store.get_order(answer["outTradeNo"])["description"]
    assert len(description) == 127 and description.endswith("…")
    assert wechat.calls_to("jsapi_prepay")[0].kwargs["description"] == description


def test_login_failure_creates_nothing(checkout, store, wechat):
    with pytest.raises(LoginFailed):
        checkout.create_order(body(("A1", 1), code="forged"))
    assert store.count_orders() == 0 and wechat.calls == []


@pytest.mark.parametrize("bad", [{"price": 9.9}, {"price": 0}, {"price": "100"}, {"name": ""}])
def test_a_broken_catalog_entry_is_our_error_not_the_customers(checkout, store, wechat, bad):
    store._insert(PRODUCTS, {"sku": "BAD", "name": "Bad", "price": 100, "active": True, **bad})
    with pytest.raises(CatalogInvalid) as caught:
        checkout.create_order(body(("BAD", 1)))
    assert caught.value.status == 500
    assert store.count_orders() == 0 and wechat.calls == []


# --- idempotency keys ---------------------------------------------------------------------

def test_same_key_same_cart_is_the_same_order_with_a_fresh_payment(checkout, store, wechat):
    first = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    again = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    assert again["outTradeNo"] == first["outTradeNo"] and store.count_orders() == 1
    assert len(wechat.calls_to("jsapi_prepay")) == 1  # the stored prepayId is reused
    assert len(wechat.calls_to("request_payment_params")) == 2
    assert again["payment"]["package"] == first["payment"]["package"]
    assert again["payment"]["paySign"] != first["payment"]["paySign"]


def test_the_key_belongs_to_the_user(checkout, store):
    alice = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    bob = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1", code="test-bob"))
    assert alice["outTradeNo"] != bob["outTradeNo"] and store.count_orders() == 2
    assert store.get_order(bob["outTradeNo"])["openid"] == BOB


def test_same_key_other_cart_is_a_conflict(checkout, store):
    checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    with pytest.raises(Conflict) as caught:
        checkout.create_order(body(("A1", 2), idempotencyKey="cart-1"))
    assert caught.value.code == "IDEMPOTENCY_KEY_REUSED" and store.count_orders() == 1
    # The order of the lines is not part of the cart's identity.
    checkout.create_order(body(("A1", 1), ("B2", 1), idempotencyKey="cart-2"))
    assert checkout.create_order(body(("B2", 1), ("A1", 1), idempotencyKey="cart-2"))["totalFee"] == 2490
    assert store.count_orders() == 2


def test_key_of_a_paid_order_says_already_paid(checkout, store, config):
    first = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    settle_transaction(store, config, transaction(first["outTradeNo"], 1990), source="notification")
    with pytest.raises(Conflict) as caught:
        checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    assert caught.value.code == "ORDER_ALREADY_PAID"
    assert caught.value.public == {"outTradeNo": first["outTradeNo"], "orderToken": first["orderToken"]}
    assert store.count_orders() == 1


@pytest.mark.parametrize("spend", ["closed", "expired"])
def test_key_of_a_spent_order_is_retired_and_starts_a_new_one(checkout, store, clock, spend):
    first = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    old_key = store.get_order(first["outTradeNo"])["idemKey"]
    if spend == "closed":
        store.transition(first["outTradeNo"], st.CLOSED)
        clock.advance(60_000)
    else:
        clock.advance(TTL_MS + 1)
    second = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    assert second["outTradeNo"] != first["outTradeNo"] and second["payStatus"] == st.NOTPAY
    old = store.get_order(first["outTradeNo"])
    assert old["idemKey"] == f"retired:{first['outTradeNo']}" and old["updateTime"] == clock.now
    assert store.get_order(second["outTradeNo"])["idemKey"] == old_key
    # The new order is the key's order from now on.
    assert checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))["outTradeNo"] == second["outTradeNo"]
    assert store.count_orders() == 2


def test_concurrent_retries_with_one_key_make_one_order(checkout, store, wechat):
    start = threading.Barrier(12)

    def create(_):
        start.wait(5)
        return checkout.create_order(body(("A1", 3), idempotencyKey="cart-race"))

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(create, range(12)))
    assert len({a["outTradeNo"] for a in answers}) == 1 and store.count_orders() == 1
    assert len({a["payment"]["package"] for a in answers}) == 1
    assert all(a["payment"] is not None and a["totalFee"] == 5970 for a in answers)


def test_create_contended_when_every_insert_conflicts(checkout, store):
    attempts = []

    def conflict(order):
        attempts.append(order["outTradeNo"])
        raise StoreConflict("a record with this key already exists")

    store.before("insert_order", conflict, times=None)
    with pytest.raises(Conflict) as caught:
        checkout.create_order(body(("A1", 1)))
    assert caught.value.code == "CREATE_CONTENDED" and len(attempts) == 4
    assert store.count_orders() == 0


# --- prepay failures ------------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    rejected("SYSTEM_ERROR", 500), rejected("PARAM_ERROR", 400),
    WeChatPayUnreachable("timed out"), WeChatPayBadResponse("unsigned"),
], ids=["5xx", "4xx", "unreachable", "bad-response"])
def test_prepay_failure_marks_the_order_payerror_and_raises(checkout, store, wechat, clock, error):
    t0 = clock.now

    def fail(**_):
        clock.advance(3_000)
        raise error

    wechat.then("jsapi_prepay", fail)
    with pytest.raises(type(error)) as caught:
        checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    assert caught.value is error and caught.value.status == 502
    [order] = store.list_orders()
    assert order["payStatus"] == st.PAYERROR and order["failure"] == error.code
    assert order["closeAtWeChat"] is True and order["prepayId"] is None
    assert order["createTime"] == t0 and order["updateTime"] == t0 + 3_000
    assert [e["type"] for e in store.events_of(order["outTradeNo"])] == ["order.failed"]
    assert wechat.calls_to("request_payment_params") == []

    # The same key starts a fresh order, which is payable.
    retry = checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    assert retry["outTradeNo"] != order["outTradeNo"] and retry["payment"] is not None
    assert store.get_order(order["outTradeNo"])["idemKey"] == f"retired:{order['outTradeNo']}"
    assert store.get_order(order["outTradeNo"])["payStatus"] == st.PAYERROR


def test_store_outage_while_marking_the_failure_still_reports_wechats_error(checkout, store, wechat):
    def outage_then_refusal(**_):
        store.available = False
        raise rejected("PARAM_ERROR", 400)

    wechat.then("jsapi_prepay", outage_then_refusal)
    with pytest.raises(WeChatPayRejected) as caught:
        checkout.create_order(body(("A1", 1)))
    assert caught.value.code == "WECHATPAY_PARAM_ERROR"
    store.available = True
    [order] = store.list_orders()
    assert order["payStatus"] == st.NOTPAY and order["prepayId"] is None  # expires, then the sweep closes it


def test_failed_prepay_after_a_concurrent_retry_got_one_leaves_the_order_payable(checkout, store, wechat):
    retried = []

    def retry_wins_then_fail(**_):
        # A retry with the same key arrives while this prepay hangs, and gets a prepay id.
        retried.append(checkout.create_order(body(("A1", 1), idempotencyKey="cart-1")))
        raise WeChatPayUnreachable("the first answer was lost")

    wechat.then("jsapi_prepay", retry_wins_then_fail)
    with pytest.raises(WeChatPayUnreachable):
        checkout.create_order(body(("A1", 1), idempotencyKey="cart-1"))
    [order] = store.list_orders()
    assert retried[0]["outTradeNo"] == order["outTradeNo"] and retried[0]["payment"] is not None
    assert order["payStatus"] == st.NOTPAY and order["prepayId"] is not None
    assert retried[0]["payment"]["package"] == f"prepay_id={order['prepayId']}"
    assert store.count_events("order.failed") == 0


def test_prepay_id_of_an_order_closed_meanwhile_is_never_handed_out(checkout, store, wechat):
    closed = []

    def close_then_answer(**kwargs):
        store.transition(kwargs["out_trade_no"], st.CLOSED)  # the sweep, say
        closed.append(kwargs["out_trade_no"])
        return wechat.default("jsapi_prepay", **kwargs)

    wechat.then("jsapi_prepay", close_then_answer)
    answer = checkout.create_order(body(("A1", 1)))
    assert answer["outTradeNo"] != closed[0] and store.count_orders() == 2
    assert store.get_order(closed[0])["prepayId"] is None
    first_prepay = wechat.default("jsapi_prepay", out_trade_no=closed[0])
    assert answer["payment"]["package"] != f"prepay_id={first_prepay}"
    assert answer["payment"]["package"] == f"prepay_id={store.get_order(answer['outTradeNo'])['prepayId']}"


def test_order_paid_during_its_prepay_says_already_paid(checkout, store, wechat, config):
    def paid_then_answer(**kwargs):
        settle_transaction(store, config, transaction(kwargs["out_trade_no"], 1990), source="notification")
        return wechat.default("jsapi_prepay", **kwargs)

    wechat.then("jsapi_prepay", paid_then_answer)
    with pytest.raises(Conflict) as caught:
        checkout.create_order(body(("A1", 1)))
    assert caught.value.code == "ORDER_ALREADY_PAID"
    [order] = store.list_orders()
    assert order["payStatus"] == st.SUCCESS and order["prepayId"] is None
    assert wechat.calls_to("request_payment_params") == []


# --- status -------------------------------------------------------------------------------

@pytest.fixture
def created(checkout):
    return checkout.create_order(body(("A1", 1)))


def test_status_without_token_or_with_a_wrong_one(checkout, created, config):
    with pytest.raises(Unauthorized) as missing:
        checkout.order_status(created["outTradeNo"], None)
    assert missing.value.code == "ORDER_TOKEN_MISSING"
    for otn, token in [(created["outTradeNo"], "0" * 64),
                       (created["outTradeNo"], token_of(config, created, BOB)),
                       ("261126120000unitNoSuch0001", order_token(config.order_token_secret,
                                                                  "261126120000unitNoSuch0001", ALICE)),
                       ("../../etc", "x")]:
        with pytest.raises(Forbidden) as caught:
            checkout.order_status(otn, token)
        assert caught.value.code == "ORDER_TOKEN_INVALID" and caught.value.status == 403


def test_status_of_an_unpaid_order_asks_wechat_first(checkout, created, store, wechat):
    before = store.get_order(created["outTradeNo"])
    answer = checkout.order_status(created["outTradeNo"], created["orderToken"])
    assert answer == {"outTradeNo": created["outTradeNo"], "payStatus": st.NOTPAY, "totalFee": 1990,
                      "paidAt": None}
    assert [c.args for c in wechat.calls_to("query_order")] == [(created["outTradeNo"],)]
    assert store.get_order(created["outTradeNo"]) == before


def test_status_query_settles_a_lost_callback_once(checkout, created, store, wechat, clock):
    wechat.mark_paid(created["outTradeNo"], 1990)
    clock.advance(90_000)
    answer = checkout.order_status(created["outTradeNo"], created["orderToken"])
    assert answer["payStatus"] == st.SUCCESS and answer["paidAt"] == PAID_AT
    order = store.get_order(created["outTradeNo"])
    assert order["payStatus"] == st.SUCCESS and order["paidVia"] == "query"
    assert order["updateTime"] == clock.now and order["refundableFee"] == 1990
    assert store.count_events("order.paid", created["outTradeNo"]) == 1
    # Paid now: later polls answer from the store without asking WeChat Pay.
    assert checkout.order_status(created["outTradeNo"], created["orderToken"])["payStatus"] == st.SUCCESS
    assert len(wechat.calls_to("query_order")) == 1
    assert store.count_events("order.paid") == 1


def test_status_of_a_failed_prepay_that_was_paid_after_all(checkout, store, wechat, clock):
    wechat.then("jsapi_prepay", WeChatPayUnreachable("the answer was lost"))
    with pytest.raises(WeChatPayUnreachable):
        checkout.create_order(body(("A1", 1)))
    [order] = store.list_orders()
    assert order["payStatus"] == st.PAYERROR
    wechat.mark_paid(order["outTradeNo"], 1990)
    clock.advance(5_000)
    token = order_token(checkout.config.order_token_secret, order["outTradeNo"], ALICE)
    answer = checkout.order_status(order["outTradeNo"], token)
    assert answer["payStatus"] == st.SUCCESS
    paid = store.get_order(order["outTradeNo"])
    assert paid["payStatus"] == st.SUCCESS and paid["updateTime"] == clock.now
    assert store.count_events("order.paid", order["outTradeNo"]) == 1 and store.list_anomalies() == []


@pytest.mark.parametrize("error", [WeChatPayUnreachable("down"), rejected("SYSTEM_ERROR", 500),
                                   WeChatPayBadResponse("unsigned")])
def test_status_when_wechat_cannot_answer_is_the_stored_state(checkout, created, store, wechat, error):
    wechat.always("query_order", error)
    before = store.get_order(created["outTradeNo"])
    answer = checkout.order_status(created["outTradeNo"], created["orderToken"])
    assert answer["payStatus"] == st.NOTPAY and store.get_order(created["outTradeNo"]) == before


def test_status_query_reporting_another_amount_is_an_anomaly_not_a_payment(checkout, created, store, wechat):
    wechat.mark_paid(created["outTradeNo"], 1)
    answer = checkout.order_status(created["outTradeNo"], created["orderToken"])
    assert answer["payStatus"] == st.NOTPAY
    assert store.get_order(created["outTradeNo"])["payStatus"] == st.NOTPAY
    assert [a["kind"] for a in store.list_anomalies(created["outTradeNo"])] == ["amount_mismatch"]
    assert store.count_events("order.paid") == 0


def test_status_of_a_closed_order_does_not_ask_wechat(checkout, created, store, wechat):
    store.transition(created["outTradeNo"], st.CLOSED)
    assert checkout.order_status(created["outTradeNo"], created["orderToken"])["payStatus"] == st.CLOSED
    assert wechat.calls_to("query_order") == []
