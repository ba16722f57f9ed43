"""Defects found under hostile and concurrent input (issue 10, items a to g), each pinned.

Every test here failed before its fix: a 200 without a payment, an exception escaping
`main_handler`, a 500 for deep JSON, form bodies read as JSON, a customer blamed for a
broken catalog, an impossible bill date sent to WeChat Pay, query values stringified.
"""

from __future__ import annotations

import io
import json
import threading

import pytest

from shared import log as log_module
from shared import order_states as st
from shared.checkout import CheckoutService
from shared.errors import BadRequest, Conflict, WeChatPayUnreachable
from shared.http_event import parse_event
from shared.store.memory import InMemoryOrderStore
from shared.store.port import by
from tests.functions import http_event, load_function, reply_json
from tests.keys import make_config, make_notification, sign_response, transaction

JSON = {"Content-Type": "application/json"}


# --- (a) a 200 always carries `payment` --------------------------------------------------------

class RacingWeChatPay:
    """Two prepays for one order: the first is accepted by WeChat Pay but its answer is
    lost (unreachable); the second answers only after the first was given up on."""

    def __init__(self, store: InMemoryOrderStore, *, second_waits_for_failure: bool):
        self.store = store
        self.second_waits_for_failure = second_waits_for_failure
        self.calls = 0
        self.second_called = threading.Event()
        self.first_failed = threading.Event()
        self._lock = threading.Lock()

    def jsapi_prepay(self, *, out_trade_no, **_):
        with self._lock:
            self.calls += 1
            number = self.calls
        if number == 1:
            assert self.second_called.wait(5)
            if not self.second_waits_for_failure:
                self._wait_for(lambda order: order.get("prepayId"))
            raise WeChatPayUnreachable("the answer was lost (the prepay was accepted)")
        if number == 2:
            self.second_called.set()
            if self.second_waits_for_failure:
                self._wait_for(lambda order: order["payStatus"] == st.PAYERROR)
        return f"wx_prepay_{number}"

    def _wait_for(self, condition) -> None:
        for _ in range(500):
            orders = self.store.list_orders(limit=1)
            if orders and condition(orders[-1]):
                return
            threading.Event().wait(0.01)
        raise AssertionError("the other request never got there")

    def request_payment_params(self, prepay_id):
        return {"timeStamp": "1", "nonceStr": "n", "package": f"prepay_id={prepay_id}", "signType": "RSA",
                "paySign": "s"}


def _two_creates_with_one_key(second_waits_for_failure: bool):
    store = InMemoryOrderStore()
    store.upsert_product("A1", "Tea", 1990)
    wechatpay = RacingWeChatPay(store, second_waits_for_failure=second_waits_for_failure)
    service = CheckoutService(make_config("prepare"), store, wechatpay, login=lambda code: "oUser")
    body = {"code": "c", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": "cart-1"}
    results: dict[int, object] = {}

    def run(i):
        try:
            results[i] = service.create_order(body)
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    first = threading.Thread(target=run, args=(1,))
    first.start()
    for _ in range(500):  # the second request starts once the first has inserted the order
        if store.count_orders():
            break
        threading.Event().wait(0.01)
    second = threading.Thread(target=run, args=(2,))
    second.start()
    first.join(10)
    second.join(10)
    return store, results


def test_a_retry_whose_order_failed_meanwhile_gets_a_new_payable_order():
    store, results = _two_creates_with_one_key(second_waits_for_failure=True)
    assert isinstance(results[1], WeChatPayUnreachable)
    answer = results[2]
    assert isinstance(answer, dict), answer
    assert answer["payment"] is not None and answer["payStatus"] == st.NOTPAY
    failed = [o for o in store.list_orders() if o["payStatus"] == st.PAYERROR]
    assert len(failed) == 1 and failed[0]["outTradeNo"] != answer["outTradeNo"]
    # The prepay id of the failed order was never handed out.
    assert answer["payment"]["package"] != "prepay_id=wx_prepay_2"
    assert store.get_order(answer["outTradeNo"])["prepayId"] == answer["payment"]["package"][len("prepay_id="):]


def test_a_prepay_id_handed_out_keeps_its_order_payable_when_the_other_attempt_fails():
    store, results = _two_creates_with_one_key(second_waits_for_failure=False)
    assert isinstance(results[1], WeChatPayUnreachable)
    answer = results[2]
    order = store.get_order(answer["outTradeNo"])
    assert order["payStatus"] == st.NOTPAY and order["prepayId"] == "wx_prepay_2"
    assert store.count_orders() == 1


def test_the_same_key_for_a_paid_order_is_a_409_that_names_the_order():
    store = InMemoryOrderStore()
    store.upsert_product("A1", "Tea", 1990)

    class WeChatPay(RacingWeChatPay):
        def jsapi_prepay(self, **_):
            return "wx_ok"

    service = CheckoutService(make_config("prepare"), store, WeChatPay(store, second_waits_for_failure=False),
                              login=lambda code: "oUser")
    body = {"code": "c", "items": [{"sku": "A1", "quantity": 1}], "idempotencyKey": "cart-2"}
    first = service.create_order(body)
    store.transition(first["outTradeNo"], st.SUCCESS, fields={"transactionId": "T1"})
    with pytest.raises(Conflict) as caught:
        service.create_order(body)
    assert caught.value.code == "ORDER_ALREADY_PAID" and caught.value.status == 409
    assert caught.value.public == {"outTradeNo": first["outTradeNo"], "orderToken": first["orderToken"]}


# --- (b) a lone surrogate in the method or path ------------------------------------------------

@pytest.fixture
def strict_stdout():
    """stdout as SCF has it: strict UTF-8 (a lone surrogate cannot be written)."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    log_module.set_sink(stream)
    yield lambda: (stream.flush(), raw.getvalue().decode("utf-8"))[1]
    log_module.set_sink(__import__("sys").stdout)


@pytest.mark.parametrize("method, path", [("\ud800", "/orders"), ("POST", "/orders\ud800"),
                                          ("GET", "/orders/\udfff"), ("\ud83d", "\udc00")])
def test_lone_surrogates_get_a_json_answer_and_a_log_line(function_env, strict_stdout, method, path):
    handler = load_function("prepare")
    reply = handler({"httpMethod": method, "path": path, "headers": {}, "body": ""}, {})
    assert reply["statusCode"] in (401, 404, 405) and "error" in reply_json(reply)
    reply["body"].encode("utf-8")  # the reply itself is encodable
    written = strict_stdout()
    assert '"event":"prepare.request"' in written and "\\ud" in written


def test_a_lone_surrogate_in_a_json_field_name_is_answered_encodable(function_env):
    handler = load_function("prepare")
    reply = handler(http_event("POST", "/orders", body='{"\\ud800": 1}', headers=JSON), {})
    assert reply["statusCode"] == 400 and reply_json(reply)["error"]["code"] == "UNKNOWN_FIELD"
    reply["body"].encode("utf-8")


# --- (c) JSON nested 30,000 deep ----------------------------------------------------------------

DEEP = "[" * 30_000 + "]" * 30_000  # 60 KB: inside the 64 KB limit


def test_deep_json_is_a_400_on_prepare(function_env):
    reply = load_function("prepare")(http_event("POST", "/orders", body=DEEP, headers=JSON), {})
    assert reply["statusCode"] == 400
    assert reply_json(reply)["error"] == {"code": "INVALID_JSON", "message": "the request body is nested too deeply"}


def test_deep_json_signed_by_wechat_pay_is_a_400_on_callback(function_env):
    body = ('{"id": "EV-1", "event_type": "TRANSACTION.SUCCESS", "resource": ' + "[" * 30_000
            + "]" * 30_000 + "}").encode()
    reply = load_function("callback")(http_event("POST", "/", body=body, headers=sign_response(body)), {})
    assert reply["statusCode"] == 400 and reply_json(reply)["code"] == "FAIL"


# --- (d) only JSON is read as JSON, and only once per key --------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
def test_bodies_not_declared_json_are_415(function_env, env_store, content_type):
    body = json.dumps({"code": "test-a", "items": [{"sku": "A1", "quantity": 1}]})
    headers = {"Content-Type": content_type} if content_type else {}
    reply = load_function("prepare")(http_event("POST", "/orders", body=body, headers=headers), {})
    assert reply["statusCode"] == 415
    assert reply_json(reply)["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert env_store.count_orders() == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.cloudpay+json"])
def test_json_content_types_are_read(function_env, content_type):
    reply = load_function("prepare")(http_event("POST", "/orders", body="{}", headers={"Content-Type":
                                                                                       content_type}), {})
    assert reply["statusCode"] == 400 and reply_json(reply)["error"]["code"] == "INVALID_CODE"


def test_duplicate_keys_are_refused_on_prepare(function_env):
    body = '{"code": "test-a", "items": [{"sku": "A1", "quantity": 1}], "items": []}'
    reply = load_function("prepare")(http_event("POST", "/orders", body=body, headers=JSON), {})
    error = reply_json(reply)["error"]
    assert reply["statusCode"] == 400 and error["code"] == "INVALID_JSON"
    assert "'items' appears twice" in error["message"]


def test_duplicate_keys_in_a_signed_notification_are_refused(function_env, env_store):
    headers, body = make_notification(transaction("T20261126DUPKEY0001"))
    envelope = body.decode()
    doubled = envelope[:-1] + ', "event_type": "TRANSACTION.SUCCESS"}'
    reply = load_function("callback")(http_event("POST", "/", body=doubled.encode(),
                                                 headers=sign_response(doubled.encode())), {})
    assert reply["statusCode"] == 400 and "appears twice" in reply_json(reply)["message"]


# --- (e) a broken catalog is our error, not the customer's -----------------------------------------

@pytest.mark.parametrize("price", [19.9, 0, -5, "1990", True, None])
def test_a_catalog_price_that_is_not_fen_is_a_500_catalog_invalid(live_stack, price):
    live_stack.store._upsert("products", by(sku="A1"), {"sku": "A1", "name": "Tea", "price": price, "active": True})
    sink = io.StringIO()
    log_module.set_sink(sink)
    try:
        reply = live_stack.prepare(http_event("POST", "/orders", body={
            "code": "test-a", "items": [{"sku": "A1", "quantity": 1}]}), {})
    finally:
        log_module.set_sink(__import__("sys").stdout)
    assert reply["statusCode"] == 500
    assert reply_json(reply)["error"] == {"code": "CATALOG_INVALID", "message": "internal error; it has been logged"}
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert any(line["event"] == "catalog.invalid" and line["sku"] == "A1" and line["level"] == "error"
               for line in lines)
    assert live_stack.store.count_orders() == 0


def test_an_unknown_sku_is_still_the_customers_400(live_stack):
    reply = live_stack.prepare(http_event("POST", "/orders", body={
        "code": "test-a", "items": [{"sku": "NOPE", "quantity": 1}]}), {})
    assert reply["statusCode"] == 400 and reply_json(reply)["error"]["code"] == "UNKNOWN_SKU"


# --- (f) impossible bill dates ------------------------------------------------------------------------

@pytest.mark.parametrize("bill_date", ["2026-13-45", "2026-02-30", "2026-00-10", "0000-01-01", "2026-1-5",
                                       "２０２６-01-01", 20261126, None])
def test_impossible_bill_dates_are_invalid_bill_date(function_env, bill_date):
    result = load_function("reconcile")({"action": "reconcile", "billDate": bill_date}, {})
    assert result == {"ok": False, "error": {"code": "INVALID_BILL_DATE",
                                             "message": "billDate must be a calendar date YYYY-MM-DD"}}


# --- (g) query values are kept as they came --------------------------------------------------------------

def test_repeated_and_bare_query_keys_keep_their_values():
    request = parse_event({"httpMethod": "GET", "path": "/x",
                           "queryString": {"a": ["b", "c"], "flag": True, "empty": "", "none": None, "one": "1"}})
    assert request.query == {"a": ["b", "c"], "flag": [""], "empty": [""], "none": [""], "one": ["1"]}
    assert request.query_value("one") == "1" and request.query_value("flag") == ""
    assert request.query_value("missing") is None
    with pytest.raises(BadRequest) as caught:
        request.query_value("a")
    assert caught.value.code == "INVALID_QUERY"


@pytest.mark.parametrize("value", [3, 1.5, {"x": 1}, ["ok", 2], False])
def test_query_values_that_are_not_text_are_refused(value):
    with pytest.raises(BadRequest) as caught:
        parse_event({"httpMethod": "GET", "path": "/x", "queryString": {"a": value}})
    assert caught.value.code == "INVALID_QUERY" and caught.value.status == 400


def test_an_unusable_query_is_a_json_400_from_the_handler(function_env):
    reply = load_function("prepare")({"httpMethod": "GET", "path": "/orders/X", "headers": {},
                                      "queryString": {"a": 7}, "body": ""}, {})
    assert reply["statusCode"] == 400 and reply_json(reply)["error"]["code"] == "INVALID_QUERY"
