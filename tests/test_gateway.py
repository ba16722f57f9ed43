"""The local SCF gateway: HTTP in, SCF events (Function URL or API Gateway shape) out, replies back.

Handlers here are small test functions; `shared.http_event.parse_event` (what the real
functions use) must read every event the gateway builds.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from pathlib import Path

import pytest
import requests

from devtools.gateway import Gateway, apigw_event, function_url_event, http_reply, load_handler
from shared.http_event import parse_event


class Recorder:
    """A handler that records (event, context) and answers a fixed reply."""

    def __init__(self, reply=None):
        self.reply = reply if reply is not None else {"statusCode": 200, "headers": {}, "body": "ok"}
        self.calls: list[tuple[dict, dict]] = []

    def __call__(self, event, context):
        self.calls.append((event, context))
        return self.reply


@pytest.fixture
def start_gateway():
    started: list[Gateway] = []

    def start(routes, **options) -> Gateway:
        gateway = Gateway(routes, **options).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


# --- Function URL shape -------------------------------------------------------------------

def test_function_url_event_and_context(start_gateway):
    prepare = Recorder({"statusCode": 201, "headers": {"Content-Type": "application/json", "X-Two": ["a", "b"]},
                        "body": '{"ok":true}', "isBase64Encoded": False})
    gateway = start_gateway({"/prepare": prepare, "/callback": Recorder()})
    response = requests.post(gateway.url + "/prepare/orders?x=1&x=2&empty=", json={"code": "test-alice"},
                             headers={"X-Order-Token": "tok", "X-SCF-Remote-Addr": "6.6.6.6"}, timeout=5)
    assert response.status_code == 201 and response.json() == {"ok": True}
    assert response.headers["Content-Type"] == "application/json"
    assert response.raw.headers.getlist("X-Two") == ["a", "b"]

    [(event, context)] = prepare.calls
    assert event["httpMethod"] == "POST"
    assert event["path"] == "/orders"                       # a Function URL is its own host
    assert event["queryString"] == {"x": "1", "empty": ""}
    assert event["body"] == '{"code": "test-alice"}'
    assert event["headers"]["x-order-token"] == "tok"
    assert all(name == name.lower() for name in event["headers"])
    assert event["headers"]["x-scf-remote-addr"] == "127.0.0.1"   # not the forged value
    assert "requestContext" not in event and "isBase64Encoded" not in event
    assert context["function_name"] == "prepare" and context["request_id"]
    assert context["time_limit_in_ms"] == 10_000 and context["memory_limit_in_mb"] == 128   # prepare's timeout
    assert {"function_version", "namespace", "tencentcloud_region", "environment"} <= set(context)

    request = parse_event(event, context)
    assert request.json() == {"code": "test-alice"} and request.source_ip == "127.0.0.1"
    assert request.headers.get("X-Order-Token") == "tok"


def test_non_dict_return_values_become_200_json_in_url_shape(start_gateway):
    gateway = start_gateway({"/list": Recorder([1, "two"]), "/dict": Recorder({"a": 1}), "/none": lambda e, c: None})
    for path, expected in (("/list", [1, "two"]), ("/dict", {"a": 1}), ("/none", None)):
        response = requests.get(gateway.url + path, timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == expected


def test_binary_body_reaches_the_handler_intact(start_gateway):
    recorder = Recorder()
    gateway = start_gateway({"/": recorder})
    payload = bytes(range(256))
    requests.post(gateway.url + "/upload", data=payload, headers={"Content-Type": "application/octet-stream"},
                  timeout=5)
    event, context = recorder.calls[0]
    assert event["isBase64Encoded"] is True
    assert parse_event(event, context, max_body=1024).body == payload


def test_raw_signed_body_bytes_are_preserved(start_gateway):
    """A notification's signature covers the raw body: the event must carry it byte for byte."""
    recorder = Recorder({"statusCode": 204, "headers": {}, "body": ""})
    gateway = start_gateway({"/callback": recorder})
    body = '{"summary":"支付成功",  "id":"EV-1"}'.encode()
    response = requests.post(gateway.url + "/callback", data=body, timeout=5,
                             headers={"Content-Type": "application/json", "Wechatpay-Serial": "PUB_KEY_ID_1"})
    assert response.status_code == 204 and response.content == b""
    event, context = recorder.calls[0]
    assert parse_event(event, context).body == body
    assert event["headers"]["wechatpay-serial"] == "PUB_KEY_ID_1"


# --- API Gateway shape --------------------------------------------------------------------

def test_apigw_event_keeps_case_prefix_and_request_context(start_gateway):
    recorder = Recorder()
    gateway = start_gateway({"/prepare": recorder}, shape="apigw")
    requests.post(gateway.url + "/prepare/orders?a=b", data='{"k":1}', timeout=5,
                  headers={"Content-Type": "application/json", "X-Order-Token": "tok"})
    event, context = recorder.calls[0]
    assert event["path"] == "/prepare/orders"
    assert event["headers"]["X-Order-Token"] == "tok"        # original case
    assert event["isBase64Encoded"] is False and event["body"] == '{"k":1}'
    assert event["queryString"] == {"a": "b"} == event["queryStringParameters"]
    assert event["requestContext"]["sourceIp"] == "127.0.0.1"
    assert event["requestContext"]["stage"] == "release" and event["requestContext"]["httpMethod"] == "POST"
    assert event["requestContext"]["path"] == "/prepare"
    assert event["requestContext"]["requestId"] == context["request_id"]
    request = parse_event(event, context)
    assert request.json() == {"k": 1} and request.source_ip == "127.0.0.1"


@pytest.mark.parametrize(("mode", "content_type", "encoded"), [
    ("auto", "application/json", False),
    ("auto", "text/plain; charset=utf-8", False),
    ("auto", "application/octet-stream", True),
    ("auto", "image/png", True),
    ("always", "application/json", True),
    ("never", "application/octet-stream", False),
])
def test_apigw_base64_rules(start_gateway, mode, content_type, encoded):
    recorder = Recorder()
    gateway = start_gateway({"/": recorder}, shape="apigw", base64_bodies=mode)
    requests.post(gateway.url + "/x", data=b"hello", headers={"Content-Type": content_type}, timeout=5)
    event, context = recorder.calls[0]
    assert event["isBase64Encoded"] is encoded
    assert event["body"] == (base64.b64encode(b"hello").decode() if encoded else "hello")
    assert parse_event(event, context).body == b"hello"


def test_apigw_requires_an_integrated_response(start_gateway):
    gateway = start_gateway({"/": Recorder({"just": "json"})}, shape="apigw")
    response = requests.get(gateway.url + "/x", timeout=5)
    assert response.status_code == 502
    assert response.json()["errno"] == 403


# --- replies and failures -----------------------------------------------------------------

def test_base64_reply_is_decoded(start_gateway):
    png = b"\x89PNG\r\n\x1a\n\x00"
    reply = {"statusCode": 200, "headers": {"Content-Type": "image/png"}, "isBase64Encoded": True,
             "body": base64.b64encode(png).decode()}
    gateway = start_gateway({"/": Recorder(reply)})
    response = requests.get(gateway.url + "/img", timeout=5)
    assert response.content == png and response.headers["Content-Type"] == "image/png"


@pytest.mark.parametrize("reply", [
    {"statusCode": "200", "body": ""},
    {"statusCode": 200, "body": {"not": "a string"}},
    {"statusCode": 99},
    {"statusCode": 200, "body": "!!", "isBase64Encoded": True},
    {"statusCode": 200, "headers": ["x"], "body": ""},
])
def test_invalid_replies_are_502(start_gateway, reply):
    gateway = start_gateway({"/": Recorder(reply)})
    response = requests.get(gateway.url + "/", timeout=5)
    assert response.status_code == 502
    assert "Invalid scf response format" in response.json()["errorMessage"]


def test_handler_exception_is_502_without_a_traceback(start_gateway, caplog):
    def broken(event, context):
        raise RuntimeError("secret detail from deep inside")

    gateway = start_gateway({"/": broken})
    with caplog.at_level(logging.ERROR, logger="devtools.gateway"):
        response = requests.post(gateway.url + "/", data="{}", timeout=5)
    assert response.status_code == 502
    assert response.json()["errorMessage"] == "user code exception caught"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert any("secret detail" in (record.exc_text or "") or record.exc_info for record in caplog.records)


def test_request_body_limit_is_413(start_gateway):
    recorder = Recorder()
    gateway = start_gateway({"/": recorder})
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        # Claims 7 MB and sends none of it: the gateway answers from the header alone.
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 7340032\r\n\r\n")
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert recorder.calls == []
    small = start_gateway({"/": recorder}, max_body=10)
    assert requests.post(small.url + "/", data=b"x" * 11, timeout=5).status_code == 413
    assert requests.post(small.url + "/", data=b"x" * 10, timeout=5).status_code == 200


def test_routes_use_the_longest_prefix_on_segment_boundaries(start_gateway):
    short, long_ = Recorder({"which": "short"}), Recorder({"which": "long"})
    gateway = start_gateway({"/api": short, "/api/callback": long_})
    assert requests.get(gateway.url + "/api/callback/x", timeout=5).json() == {"which": "long"}
    assert requests.get(gateway.url + "/api/callbackx", timeout=5).json() == {"which": "short"}
    assert requests.get(gateway.url + "/api", timeout=5).json() == {"which": "short"}
    assert short.calls[-1][0]["path"] == "/"
    missing = requests.get(gateway.url + "/apix", timeout=5)
    assert missing.status_code == 404 and "errorMessage" in missing.json()


def test_handlers_run_concurrently(start_gateway):
    arrived = threading.Barrier(4, timeout=5)

    def meet(event, context):
        arrived.wait()          # only returns once four requests are inside at once
        return {"met": True}

    gateway = start_gateway({"/": meet})
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(requests.get(gateway.url + "/", timeout=10).status_code))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [200, 200, 200, 200]


def test_load_handler_loads_each_file_as_its_own_module(tmp_path: Path):
    for name in ("prepare", "callback"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "index.py").write_text(
            f"CALLS = []\n\ndef main_handler(event, context):\n    CALLS.append(1)\n"
            f"    return {{'statusCode': 200, 'body': '{name}:' + str(len(CALLS))}}\n")
    prepare = load_handler(tmp_path / "prepare" / "index.py")
    again = load_handler(tmp_path / "prepare" / "index.py")
    callback = load_handler(tmp_path / "callback" / "index.py")
    assert prepare({}, {})["body"] == "prepare:1"
    assert again({}, {})["body"] == "prepare:1"               # a fresh module: a cold start
    assert callback({}, {})["body"] == "callback:1"
    assert prepare.__module__ != again.__module__


def test_gateway_with_the_real_http_event_adapter(start_gateway):
    """`shared.http_event.serve` behind the gateway, both shapes, as the functions run."""
    from shared.http_event import Router, serve

    router = Router()
    router.add("POST", r"orders/(?P<id>[^/]+)", lambda request: (200, {"id": request.params["id"],
                                                                         "body": request.json()}))

    def main_handler(event, context):
        return serve(event, context, router.dispatch, name="test")

    for shape in ("url", "apigw"):
        gateway = start_gateway({"/prepare": main_handler}, shape=shape)
        response = requests.post(gateway.url + "/prepare/orders/T1", json={"a": "支付"}, timeout=5)
        assert response.status_code == 200, (shape, response.text)
        assert response.json() == {"id": "T1", "body": {"a": "支付"}}


# --- the pure helpers -----------------------------------------------------------------------

def test_event_builders_and_reply_mapping():
    headers = [("X-A", "1"), ("x-a", "2"), ("Content-Type", "text/plain")]
    url_event = function_url_event("GET", "/p", headers, {}, b"", "10.0.0.1")
    assert url_event["headers"]["x-a"] == "1,2" and url_event["body"] == ""
    gw_event = apigw_event("GET", "/p", headers, {}, b"", "10.0.0.1", api_path="/", stage="test", request_id="r")
    assert gw_event["headers"]["X-A"] == "1,2" and gw_event["requestContext"]["stage"] == "test"
    status, reply_headers, body = http_reply({"statusCode": 204, "headers": {"Content-Length": "99", "X": 1}}, "url")
    assert (status, reply_headers, body) == (204, [("X", "1")], b"")
    assert json.loads(http_reply({"k": "v"}, "url")[2]) == {"k": "v"}
    with pytest.raises(ValueError):
        Gateway({"/": Recorder()}, shape="grpc")
    with pytest.raises(ValueError):
        Gateway({"nope": Recorder()})
