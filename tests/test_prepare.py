"""The prepare function through main_handler, with the WeChat Pay simulator and the
wire-protocol MongoDB (issue 4)."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from shared import order_states as st
from tests.functions import http_event, load_function, reply_json

PRODUCTS = [("A1", "Oolong tea", 1990, True), ("B2", "Moon cake", 1288, True), ("OLD", "Retired", 500, False),
            ("BIG", "Gold bar", 1_999_999, True)]


@pytest.fixture
def stack(function_env, env_store, simulator, sim_keys, mongo_uri, db_name):
    """prepare wired to the simulator; catalog seeded."""
    environ = sim_keys.function_environ(simulator.url, "http://127.0.0.1:9/callback", mongo_uri)
    function_env(**{**environ, "MONGODB_URI": mongo_uri, "MONGODB_DB": db_name})
    for sku, name, price, active in PRODUCTS:
        env_store.upsert_product(sku, name, price, active)
    return load_function("prepare")


def create(handler, body, shape="url"):
    reply = handler(http_event("POST", "/prepare/orders", body=body, shape=shape), {"request_id": "t"})
    return reply["statusCode"], reply_json(reply)


def status(handler, out_trade_no, token, shape="url"):
    headers = {"X-Order-Token": token} if token is not None else {}
    reply = handler(http_event("GET", f"/prepare/orders/{out_trade_no}", headers=headers, shape=shape), {})
    return reply["statusCode"], reply_json(reply)


def sim(simulator, method, path, **kwargs):
    answer = requests.request(method, f"{simulator.url}/_sim{path}", timeout=10, **kwargs)
    answer.raise_for_status()
    return answer.json() if answer.content else None


def verify_pay_sign(sim_keys, appid, payment) -> bool:
    public = serialization.load_pem_public_key(sim_keys.merchant_public_pem.encode())
    message = f"{appid}\n{payment['timeStamp']}\n{payment['nonceStr']}\n{payment['package']}\n".encode()
    try:
        public.verify(base64.b64decode(payment["paySign"]), message, padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return False
    return True


@pytest.mark.parametrize("shape", ["url", "apigw"])
def test_happy_path(stack, env_store, simulator, sim_keys, shape):
    code, body = create(stack, {"code": "test-alice", "items": [{"sku": "A1", "quantity": 2},
                                                               {"sku": "B2", "quantity": 1}]}, shape)
    assert code == 200, body
    assert body["totalFee"] == 2 * 1990 + 1288 and body["payStatus"] == "NOTPAY"
    payment = body["payment"]
    assert set(payment) == {"timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert payment["signType"] == "RSA" and payment["package"].startswith("prepay_id=")
    assert len(payment["timeStamp"]) == 10 and payment["timeStamp"].isdigit()
    assert verify_pay_sign(sim_keys, sim_keys.appid, payment)

    order = env_store.get_order(body["outTradeNo"])
    assert order["totalFee"] == 5268 and type(order["totalFee"]) is int
    assert [(i["sku"], i["quantity"], i["price"]) for i in order["items"]] == [("A1", 2, 1990), ("B2", 1, 1288)]
    assert order["payStatus"] == st.NOTPAY and order["prepayId"] == payment["package"][len("prepay_id="):]
    assert order["openid"] and order["openid"] != "test-alice"
    assert order["expireTime"] == body["expiresAt"]
    at_wechat = sim(simulator, "GET", f"/orders/{body['outTradeNo']}")
    assert at_wechat["amount"]["total"] == 5268

    code, answer = status(stack, body["outTradeNo"], body["orderToken"], shape)
    assert code == 200 and answer == {"outTradeNo": body["outTradeNo"], "payStatus": "NOTPAY",
                                      "totalFee": 5268, "paidAt": None}


def test_order_numbers_are_unique_and_of_wechats_alphabet(stack):
    numbers = {create(stack, {"code": "test-bob", "items": [{"sku": "A1", "quantity": 1}]})[1]["outTradeNo"]
               for _ in range(5)}
    assert len(numbers) == 5
    for number in numbers:
        assert 6 <= len(number) <= 32 and number.isalnum()


BAD_INPUTS = [
    ({"items": [{"sku": "A1", "quantity": 1}]}, 400, "INVALID_CODE"),
    ({"code": "test-a", "items": []}, 400, "INVALID_ITEMS"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}] * 51}, 400, "INVALID_ITEMS"),
    ({"code": "test-a", "items": "A1"}, 400, "INVALID_ITEMS"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 0}]}, 400, "INVALID_QUANTITY"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1000}]}, 400, "INVALID_QUANTITY"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1.5}]}, 400, "INVALID_QUANTITY"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": True}]}, 400, "INVALID_QUANTITY"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": "2"}]}, 400, "INVALID_QUANTITY"),
    ({"code": "test-a", "items": [{"sku": "NOPE", "quantity": 1}]}, 400, "UNKNOWN_SKU"),
    ({"code": "test-a", "items": [{"sku": "OLD", "quantity": 1}]}, 400, "SKU_INACTIVE"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}, {"sku": "A1", "quantity": 1}]}, 400,
     "DUPLICATE_SKU"),
    ({"code": "test-a", "items": [{"sku": "BIG", "quantity": 2}]}, 400, "TOTAL_OUT_OF_RANGE"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}], "totalFee": 1}, 400, "PRICE_NOT_ACCEPTED"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1, "price": 1}]}, 400, "PRICE_NOT_ACCEPTED"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}], "total_fee": 1}, 400, "PRICE_NOT_ACCEPTED"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}], "openid": "oFORGED"}, 400, "UNKNOWN_FIELD"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": "k" * 65}, 400,
     "INVALID_IDEMPOTENCY_KEY"),
    ({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": ""}, 400,
     "INVALID_IDEMPOTENCY_KEY"),
    ({"code": "not-a-test-code", "items": [{"sku": "A1", "quantity": 1}]}, 401, "LOGIN_FAILED"),
]


@pytest.mark.parametrize("body, expected_status, expected_code", BAD_INPUTS)
def test_bad_input_gets_its_code_and_creates_nothing(stack, env_store, body, expected_status, expected_code):
    code, answer = create(stack, body)
    assert (code, answer["error"]["code"]) == (expected_status, expected_code), answer
    assert answer["error"]["message"]
    assert env_store.count_orders() == 0


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("raw", ["", "not json", "[1]", "{\"code\": ", "null"])
def test_unparseable_bodies(stack, raw):
    reply = stack(http_event("POST", "/prepare/orders", body=raw, headers=JSON), {})
    assert reply["statusCode"] == 400 and reply_json(reply)["error"]["code"] == "INVALID_JSON"


_json = hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) | hs.text(max_size=20),
                     lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=10), inner,
                                                                                   max_size=4), max_leaves=12)
_item = hs.fixed_dictionaries({}, optional={"sku": hs.one_of(hs.sampled_from(["A1", "OLD", "X"]), _json),
                                            "quantity": _json})
_bodies = hs.fixed_dictionaries({}, optional={
    "code": hs.one_of(hs.just("test-h"), hs.text(max_size=10), _json),
    "items": hs.one_of(hs.lists(_item, max_size=3), _json),
    "idempotencyKey": hs.one_of(hs.text(max_size=70), _json)}) | _json


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_generated_bodies_never_crash_the_handler(stack, body):
    import json

    reply = stack(http_event("POST", "/prepare/orders", body=json.dumps(body), headers=JSON), {})
    assert reply["statusCode"] in (200, 400, 401, 409), reply
    assert "Traceback" not in reply["body"]


def test_twenty_concurrent_identical_requests_create_one_order(stack, env_store):
    body = {"code": "test-carol", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": "cart-42"}
    barrier = threading.Barrier(20)

    def one(_):
        barrier.wait()
        return create(stack, body)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:2]
    assert len({answer["outTradeNo"] for _, answer in results}) == 1
    assert env_store.count_orders() == 1


def test_same_key_different_items_is_a_conflict(stack, env_store):
    first = {"code": "test-dan", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": "k1"}
    assert create(stack, first)[0] == 200
    code, answer = create(stack, {**first, "items": [{"sku": "A1", "quantity": 2}]})
    assert (code, answer["error"]["code"]) == (409, "IDEMPOTENCY_KEY_REUSED")
    # The same key from another user is another order.
    assert create(stack, {**first, "code": "test-erin"})[0] == 200
    assert env_store.count_orders() == 2


def test_retry_returns_same_order_with_a_payment(stack, sim_keys):
    body = {"code": "test-fay", "items": [{"sku": "B2", "quantity": 3}], "idempotencyKey": "k2"}
    _, first = create(stack, body)
    _, again = create(stack, body)
    assert again["outTradeNo"] == first["outTradeNo"] and again["orderToken"] == first["orderToken"]
    assert verify_pay_sign(sim_keys, sim_keys.appid, again["payment"])


def test_lost_callback_status_query_settles_once(stack, env_store, simulator):
    _, order = create(stack, {"code": "test-gus", "items": [{"sku": "A1", "quantity": 1}]})
    sim(simulator, "POST", f"/orders/{order['outTradeNo']}/pay", json={"notify": "drop"})
    for _ in range(3):
        code, answer = status(stack, order["outTradeNo"], order["orderToken"])
        assert code == 200 and answer["payStatus"] == "SUCCESS" and isinstance(answer["paidAt"], int)
    assert env_store.count_events("order.paid", order["outTradeNo"]) == 1
    assert env_store.get_order(order["outTradeNo"])["paidVia"] == "query"


def test_order_token_missing_wrong_or_for_unknown_order(stack):
    _, order = create(stack, {"code": "test-hal", "items": [{"sku": "A1", "quantity": 1}]})
    code, answer = status(stack, order["outTradeNo"], None)
    assert (code, answer["error"]["code"]) == (401, "ORDER_TOKEN_MISSING")
    wrong = status(stack, order["outTradeNo"], "0" * 64)
    unknown = status(stack, "T20260101000000UNKNOWN", order["orderToken"])
    assert wrong[0] == unknown[0] == 403
    assert wrong[1] == unknown[1]  # reveals nothing about whether the order exists
    assert "totalFee" not in str(wrong[1])


def test_wechat_pay_refuses_then_retry_with_same_key_works(stack, env_store, simulator):
    sim(simulator, "POST", "/faults", json={"path": "/v3/pay/transactions/jsapi", "status": 500,
                                             "body": {"code": "SYSTEM_ERROR", "message": "busy"}, "count": 1})
    body = {"code": "test-ivy", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": "k3"}
    code, answer = create(stack, body)
    assert code == 502 and answer["error"]["code"] == "WECHATPAY_SYSTEM_ERROR"
    [failed] = env_store.list_orders()
    assert failed["payStatus"] == st.PAYERROR and not failed.get("prepayId") and failed["closeAtWeChat"] is True
    code, answer = create(stack, body)
    assert code == 200 and answer["outTradeNo"] != failed["outTradeNo"]
    assert env_store.count_orders(status=st.NOTPAY) == 1


def test_wechat_pay_unreachable_is_502_and_leaves_no_payable_order(stack, env_store, function_env):
    function_env(WECHATPAY_API_BASE="http://127.0.0.1:9", WECHATPAY_API_BASE_BACKUP="http://127.0.0.1:9")
    handler = load_function("prepare")
    started = time.monotonic()
    code, answer = create(handler, {"code": "test-jon", "items": [{"sku": "A1", "quantity": 1}]})
    assert code == 502 and answer["error"]["code"] == "WECHATPAY_UNREACHABLE"
    assert time.monotonic() - started < 12
    assert env_store.count_orders(status=st.NOTPAY) == 0
    failed = env_store.list_orders()
    assert [(o["payStatus"], o["prepayId"]) for o in failed] == [(st.PAYERROR, None)]


def test_store_stopped_mid_run_503_then_the_same_request_succeeds(function_env, simulator, sim_keys,
                                                                  private_mongo, db_name):
    from shared.store.mongo import MongoOrderStore

    uri = f"{private_mongo.uri}/?serverSelectionTimeoutMS=700&connectTimeoutMS=700"
    environ = sim_keys.function_environ(simulator.url, "http://127.0.0.1:9/callback", uri)
    function_env(**{**environ, "MONGODB_URI": uri, "MONGODB_DB": db_name})
    store = MongoOrderStore(uri, db_name)
    store.upsert_product("A1", "Oolong tea", 1990)
    handler = load_function("prepare")
    body = {"code": "test-kim", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": "k4"}
    assert create(handler, body)[0] == 200

    private_mongo.stop()
    code, answer = create(handler, body)
    assert (code, answer["error"]["code"]) == (503, "STORE_UNAVAILABLE")
    private_mongo.start()
    deadline = time.monotonic() + 10
    while (result := create(handler, body))[0] == 503:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert result[0] == 200
    assert store.count_orders() == 1


def test_no_secret_or_stack_trace_in_replies_or_logs(stack, simulator, sim_keys):
    """Create, query, a login failure, a WeChat failure and a crash-free bad body: the
    captured log lines and replies never carry a key, the session key or a traceback."""
    import io
    import sys

    from shared import log as log_module

    sink = io.StringIO()
    log_module.set_sink(sink)
    replies = []
    try:
        good = {"code": "test-zed", "items": [{"sku": "A1", "quantity": 1}]}
        code, order = create(stack, good)
        replies.append(order)
        replies.append(status(stack, order["outTradeNo"], order["orderToken"])[1])
        replies.append(create(stack, {**good, "code": "bad-code"})[1])
        sim(simulator, "POST", "/faults", json={"path": "/v3/pay/transactions/jsapi", "status": 500, "count": 1})
        replies.append(create(stack, good)[1])
        replies.append(create(stack, {**good, "items": "💥"})[1])
    finally:
        log_module.set_sink(sys.stdout)
    logged = sink.getvalue()
    from devtools.simulator.miniprogram import _session_key

    session_key = _session_key(sim_keys.appid, "zed")  # what jscode2session handed our login
    secrets = [sim_keys.app_secret, sim_keys.order_token_secret, sim_keys.apiv3_key, "PRIVATE KEY", "Traceback",
               "session_key", session_key, order["orderToken"]]
    text = logged + json.dumps(replies[1:], ensure_ascii=False)
    for secret in secrets:
        assert secret not in text, secret
    assert logged.count('"event":"prepare.request"') == 5


def test_random_part_of_order_numbers_uses_every_letter_and_digit_evenly():
    from shared.checkout import _ALNUM, _random_alnum

    sample = _random_alnum(62_000)
    assert len(sample) == 62_000 and set(sample) == set(_ALNUM)
    counts = [sample.count(char) for char in _ALNUM]
    assert 800 <= min(counts) and max(counts) <= 1200  # expected 1,000 each; 6 sigma either way
