"""The SCF HTTP event adapter: both event shapes, headers, bodies, routes, error mapping."""

from __future__ import annotations

import base64
import io
import json

import pytest

from shared import log as log_module
from shared.errors import BadRequest, PayloadTooLarge, StoreUnavailable
from shared.http_event import Router, parse_event, serve


def url_event(method="POST", path="/orders", body="", headers=None):
    """Function URL shape: lower-case headers, no isBase64Encoded, no requestContext."""
    return {"httpMethod": method, "path": path, "queryString": {},
            "headers": {"content-type": "application/json", "x-scf-remote-addr": "1.2.3.4",
                        **(headers or {})},
            "body": body}


def apigw_event(method="POST", path="/release/orders", body="", headers=None, b64=False):
    """API Gateway shape: mixed-case headers, optional base64 body, requestContext."""
    return {"httpMethod": method, "path": path, "queryString": {"a": "1"},
            "headers": {"Content-Type": "application/json", **(headers or {})},
            "body": base64.b64encode(body.encode()).decode() if b64 else body,
            "isBase64Encoded": b64,
            "requestContext": {"sourceIp": "5.6.7.8", "stage": "release", "requestId": "r1"}}


def test_both_shapes_give_the_same_request():
    a = parse_event(url_event(body='{"x": 1}', headers={"x-order-token": "T"}))
    b = parse_event(apigw_event(body='{"x": 1}', headers={"X-Order-Token": "T"}, b64=True))
    assert a.json() == b.json() == {"x": 1}
    assert a.headers.get("X-ORDER-TOKEN") == b.headers.get("x-order-token") == "T"
    assert a.source_ip == "1.2.3.4" and b.source_ip == "5.6.7.8"


def test_raw_body_bytes_are_kept_exactly():
    body = '{"b": 1,  "a":"中文"}'
    assert parse_event(url_event(body=body)).body == body.encode()
    assert parse_event(apigw_event(body=body, b64=True)).body == body.encode()


@pytest.mark.parametrize("event, error", [
    ("not a dict", BadRequest),
    ({"path": "/x"}, BadRequest),
    ({**apigw_event(), "body": "@@@not base64", "isBase64Encoded": True}, BadRequest),
    (url_event(body="x" * 70_000), PayloadTooLarge),
])
def test_unusable_events_are_refused(event, error):
    with pytest.raises(error):
        parse_event(event)


@pytest.mark.parametrize("body", ["", "not json", "[1, 2]", "\"text\"", "{\"a\": "])
def test_json_body_must_be_an_object(body):
    with pytest.raises(BadRequest) as caught:
        parse_event(url_event(body=body)).json()
    assert caught.value.code == "INVALID_JSON"


def test_routes_match_the_end_of_the_path_with_any_prefix():
    router = Router()
    router.add("GET", r"orders/(?P<no>[^/]+)", lambda r: (200, {"no": r.params["no"]}))
    router.add("POST", "orders", lambda r: (201, {"created": True}))
    for path in ("/orders/N1", "/release/prepare/orders/N1", "/orders/N1/"):
        reply = serve(url_event("GET", path), {}, router.dispatch, name="t")
        assert reply["statusCode"] == 200 and json.loads(reply["body"]) == {"no": "N1"}
    assert serve(url_event("POST", "/stage/orders"), {}, router.dispatch, name="t")["statusCode"] == 201
    assert serve(url_event("DELETE", "/orders"), {}, router.dispatch, name="t")["statusCode"] == 405
    missing = serve(url_event("GET", "/nothing"), {}, router.dispatch, name="t")
    assert missing["statusCode"] == 404
    assert json.loads(missing["body"])["error"]["code"] == "ROUTE_NOT_FOUND"


def test_errors_become_their_status_and_json_and_crashes_leak_nothing():
    sink = io.StringIO()
    log_module.set_sink(sink)
    try:
        def unavailable(request):
            raise StoreUnavailable("the order store is unavailable, try again shortly")

        def crash(request):
            raise RuntimeError("secret-value-in-message /srv/key.pem")

        reply = serve(url_event(), {}, unavailable, name="t")
        assert reply["statusCode"] == 503
        assert json.loads(reply["body"])["error"] == {
            "code": "STORE_UNAVAILABLE", "message": "the order store is unavailable, try again shortly"}
        reply = serve(url_event(), {}, crash, name="t")
        assert reply["statusCode"] == 500
        assert "secret-value" not in reply["body"] and "Traceback" not in reply["body"]
    finally:
        log_module.set_sink(__import__("sys").stdout)
    logged = sink.getvalue()
    assert "secret-value" not in logged and "Traceback" not in logged
    assert '"error":"RuntimeError"' in logged


def test_reply_has_the_integrated_response_shape():
    reply = serve(url_event(), {}, lambda r: (200, {"ok": True}), name="t")
    assert set(reply) == {"isBase64Encoded", "statusCode", "headers", "body"}
    assert reply["isBase64Encoded"] is False and isinstance(reply["statusCode"], int)
    assert reply["headers"]["Content-Type"].startswith("application/json")
