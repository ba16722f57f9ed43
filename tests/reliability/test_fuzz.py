"""Fuzzing with hypothesis: the HTTP event adapter, order bodies and mutated notifications.

The property everywhere: no exception escapes a handler, no answer is a 500, every answer
is JSON (or the empty 204), and nothing a stranger sends changes an order unless WeChat
Pay really signed it.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from shared import order_states as st
from shared.http_event import Router, serve
from tests.functions import http_event, reply_json
from tests.keys import make_notification, sign_response, transaction

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_scalars = hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=True) | hs.text(max_size=30)
_json = hs.recursive(_scalars, lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=8),
                                                                                           inner, max_size=4),
                     max_leaves=10)
_texts = hs.text(max_size=40) | hs.sampled_from(["/orders", "/orders/T1", "\ud800", "../../etc", "/" * 300])
_header_values = hs.text(max_size=60) | hs.lists(hs.text(max_size=10), max_size=3) | _scalars
_events = hs.fixed_dictionaries(
    {"httpMethod": hs.sampled_from(["GET", "POST", "PUT", "get", "", "\ud800"]) | _json},
    optional={
        "path": _texts | _json,
        "headers": hs.dictionaries(hs.text(max_size=20), _header_values, max_size=6) | _json,
        "queryString": hs.dictionaries(hs.text(max_size=8), _json, max_size=4) | _json,
        "body": hs.text(max_size=200) | hs.binary(max_size=50).map(lambda b: base64.b64encode(b).decode()) | _json,
        "isBase64Encoded": hs.booleans() | _json,
        "requestContext": hs.dictionaries(hs.text(max_size=10), _json, max_size=3) | _json,
    })


def _assert_clean(reply: dict) -> None:
    assert isinstance(reply, dict) and isinstance(reply["statusCode"], int)
    assert reply["statusCode"] != 500, reply
    assert "Traceback" not in reply["body"]
    reply["body"].encode("utf-8")
    if reply["body"]:
        json.loads(reply["body"])


# --- the HTTP event adapter -----------------------------------------------------------------

def _echo(request):
    """An endpoint that touches everything a handler may read."""
    if request.method == "POST":
        request.json()
    request.query_value("a")
    return 200, {"path": request.path, "headers": request.headers.as_dict(), "ip": request.source_ip}


_router = Router()
_router.add("POST", "orders", _echo)
_router.add("GET", r"orders/(?P<outTradeNo>[^/]{1,64})", _echo)


@FUZZ
@given(event=_events | _json)
def test_any_event_gets_a_json_answer_from_the_adapter(event):
    _assert_clean(serve(event, {"request_id": "fuzz"}, _router.dispatch, name="fuzz"))


@FUZZ
@given(event=_events)
def test_any_event_gets_a_json_answer_from_both_handlers(live_stack, event):
    for handler in (live_stack.prepare, live_stack.callback):
        _assert_clean(handler(event, {}))
    assert live_stack.store.count_orders(status=st.SUCCESS) == 0


# --- order bodies ------------------------------------------------------------------------------

_items = hs.lists(hs.fixed_dictionaries({"sku": hs.sampled_from(["A1", "B2", "NOPE"]) | _json,
                                         "quantity": hs.integers(-2, 1001) | _json},
                                        optional={"price": _json, "extra": _json}), max_size=4)
_bodies = hs.fixed_dictionaries({}, optional={
    "code": hs.sampled_from(["test-fuzz", "test-other", "err-40163", "bogus"]) | _json,
    "items": _items | _json,
    "idempotencyKey": hs.text(max_size=70) | hs.sampled_from(["k1", "k2"]) | _json,
    "totalFee": _json,
})


@FUZZ
@given(body=_bodies)
def test_any_order_body_is_answered_without_a_500_and_a_200_can_be_paid(live_stack, body):
    reply = live_stack.prepare(http_event("POST", "/orders", body=body), {})
    _assert_clean(reply)
    assert reply["statusCode"] in (200, 400, 401, 409), reply
    answer = reply_json(reply)
    if reply["statusCode"] == 200:
        assert answer["payment"]["package"].startswith("prepay_id=") and answer["payStatus"] == st.NOTPAY
        order = live_stack.store.get_order(answer["outTradeNo"])
        assert order["totalFee"] == answer["totalFee"] == sum(i["lineFee"] for i in order["items"])
    else:
        assert set(answer["error"]) >= {"code", "message"}


# --- mutated notifications ---------------------------------------------------------------------

_HEADER_NAMES = ("Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial")
_mutations = hs.lists(hs.one_of(
    hs.tuples(hs.just("flip"), hs.integers(0, 10_000), hs.integers(1, 255)),
    hs.tuples(hs.just("truncate"), hs.integers(0, 10_000)),
    hs.tuples(hs.just("append"), hs.binary(min_size=1, max_size=8)),
    hs.tuples(hs.just("drop_header"), hs.sampled_from(_HEADER_NAMES)),
    hs.tuples(hs.just("set_header"), hs.sampled_from(_HEADER_NAMES), hs.text(max_size=40)),
    hs.tuples(hs.just("case"), hs.sampled_from(["upper", "lower"])),
    hs.tuples(hs.just("resign"), hs.just(0)),  # the attacker's own key signs the mutated body
), min_size=1, max_size=4)


@FUZZ
@given(mutations=_mutations)
def test_mutated_notifications_never_pay_and_never_500(live_stack, mutations):
    from cryptography.hazmat.primitives.asymmetric import rsa

    number = live_stack.create_order(code="test-notify")["outTradeNo"]
    headers, body = make_notification(transaction(number, total=1990))
    original = body
    for mutation in mutations:
        kind = mutation[0]
        if kind == "flip" and body:
            position = mutation[1] % len(body)
            body = body[:position] + bytes([body[position] ^ mutation[2]]) + body[position + 1:]
        elif kind == "truncate":
            body = body[:mutation[1] % (len(body) + 1)]
        elif kind == "append":
            body = body + mutation[1]
        elif kind == "drop_header":
            headers = {k: v for k, v in headers.items() if k != mutation[1]}
        elif kind == "set_header":
            headers = {**headers, mutation[1]: mutation[2]}
        elif kind == "case":
            headers = {(k.upper() if mutation[1] == "upper" else k.lower()): v for k, v in headers.items()}
        elif kind == "resign":
            attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            headers = sign_response(body, platform_key=attacker)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        event = {"httpMethod": "POST", "path": "/", "headers": headers, "isBase64Encoded": True,
                 "body": base64.b64encode(body).decode()}
    else:
        event = http_event("POST", "/", body=text, headers=headers)
    reply = live_stack.callback(event, {})
    _assert_clean(reply)
    status = live_stack.store.get_order(number)["payStatus"]
    if reply["statusCode"] == 204:
        # Only WeChat Pay's own signature over the original bytes can get here (a change
        # of header-name case is harmless: names are case-insensitive).
        assert body == original and all(m[0] == "case" for m in mutations), mutations
        assert status == st.SUCCESS
    else:
        assert reply["statusCode"] in (400, 401, 413), reply
        assert reply_json(reply)["code"] == "FAIL"
        assert status == st.NOTPAY
        assert live_stack.store.count_events("order.paid", number) == 0


@pytest.mark.parametrize("size", [64 * 1024 + 1, 200 * 1024])
def test_oversized_notifications_are_413_before_anything_else(live_stack, size):
    body = b"{" + b" " * (size - 2) + b"}"
    reply = live_stack.callback(http_event("POST", "/", body=body.decode(), headers=sign_response(body)), {})
    assert reply["statusCode"] == 413 and reply_json(reply)["code"] == "FAIL"
