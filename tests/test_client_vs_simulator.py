"""Our WeChat Pay client against the simulator over HTTP (issue 3): every call, every
error path, and the simulator's notifications checked by our own verifier."""

from __future__ import annotations

import time

import pytest

from shared.config import load_config
from shared.errors import (
    SignatureInvalid,
    WeChatPayBadResponse,
    WeChatPayRejected,
    WeChatPayUnreachable,
)
from shared.login import WeChatLogin
from shared.wechatpay.client import WeChatPayClient
from shared.wechatpay.notification import verify_notification


@pytest.fixture
def config(simulator, sim_keys, notify_receiver):
    environ = sim_keys.function_environ(simulator.url, f"{notify_receiver.url}/notify", "mongodb://127.0.0.1:1")
    return load_config("reconcile", environ)


@pytest.fixture
def client(config):
    client = WeChatPayClient.from_config(config, read_timeout=1.0)
    yield client
    client.close()


def _prepay(client, number="T20261126CLIENT0001", total=1990):
    return client.jsapi_prepay(out_trade_no=number, description="Oolong tea x1", total_fee=total,
                               openid="oTestOpenid0000000000000000", time_expire="2099-01-01T00:00:00+08:00")


def test_every_call_round_trips(client, simulator):
    prepay_id = _prepay(client)
    assert prepay_id.startswith("wx")
    assert client.query_order("T20261126CLIENT0001")["trade_state"] == "NOTPAY"
    simulator.pay("T20261126CLIENT0001", notify="drop")
    paid = client.query_order("T20261126CLIENT0001")
    assert paid["trade_state"] == "SUCCESS" and paid["amount"]["total"] == 1990
    refund = client.refund(out_trade_no="T20261126CLIENT0001", out_refund_no="R-CLIENT-1", refund=500, total=1990)
    assert refund["status"] == "PROCESSING" and refund["amount"]["refund"] == 500
    assert client.query_refund("R-CLIENT-1")["out_refund_no"] == "R-CLIENT-1"

    _prepay(client, "T20261126CLIENT0002")
    assert client.close_order("T20261126CLIENT0002") is None
    assert client.query_order("T20261126CLIENT0002")["trade_state"] == "CLOSED"
    params = client.request_payment_params(prepay_id)
    assert params["package"] == f"prepay_id={prepay_id}" and params["signType"] == "RSA"


def test_trade_bill_download_with_hash_check(client, simulator):
    from datetime import datetime, timedelta, timezone

    day = (datetime.now(timezone(timedelta(hours=8))) - timedelta(days=1)).date().isoformat()
    _prepay(client)
    simulator.pay("T20261126CLIENT0001", notify="drop", success_time=f"{day}T10:00:00+08:00")
    csv = client.trade_bill(day).decode("utf-8")
    assert "T20261126CLIENT0001" in csv and "19.90" in csv


@pytest.mark.parametrize("fault, error, code", [
    ({"status": 500, "body": {"code": "SYSTEM_ERROR", "message": "busy"}}, WeChatPayRejected, "WECHATPAY_SYSTEM_ERROR"),
    ({"status": 502, "body": "<html>bad gateway</html>"}, WeChatPayRejected, "WECHATPAY_HTTP_502"),
    ({"status": 400, "body": {"code": "PARAM_ERROR", "message": "bad"}}, WeChatPayRejected, "WECHATPAY_PARAM_ERROR"),
    ({"unsigned": True}, WeChatPayBadResponse, "WECHATPAY_BAD_RESPONSE"),
    ({"bad_signature": True}, WeChatPayBadResponse, "WECHATPAY_BAD_RESPONSE"),
    ({"delay_ms": 2500}, WeChatPayUnreachable, "WECHATPAY_UNREACHABLE"),
])
def test_error_paths(client, simulator, fault, error, code):
    simulator.inject_fault(path="/v3/pay/transactions/jsapi", count=1, **fault)
    with pytest.raises(error) as caught:
        _prepay(client)
    assert caught.value.code == code and caught.value.status == 502


def test_wrong_merchant_key_gets_sign_error(config, simulator, sim_keys):
    import dataclasses

    from tests.keys import key_pair

    # Not the key WeChat Pay knows for this merchant serial.
    wrong = WeChatPayClient.from_config(dataclasses.replace(config,
                                                            wechatpay_private_key=key_pair("attacker").private_key))
    try:
        with pytest.raises(WeChatPayRejected) as caught:
            _prepay(wrong)
    finally:
        wrong.close()
    assert caught.value.wechat_code == "SIGN_ERROR" and caught.value.http_status == 401


def test_connection_refused_is_unreachable(config):
    import dataclasses

    dead = WeChatPayClient.from_config(dataclasses.replace(config, wechatpay_api_base="http://127.0.0.1:9",
                                                           wechatpay_api_base_backup="http://127.0.0.1:9"))
    started = time.monotonic()
    with pytest.raises(WeChatPayUnreachable):
        _prepay(dead)
    assert time.monotonic() - started < 5
    dead.close()


def test_simulator_notifications_verify_with_our_verifier(client, config, simulator, sim_keys, notify_receiver):
    _prepay(client)
    simulator.pay("T20261126CLIENT0001")
    assert notify_receiver.wait_for(1, timeout=5)
    received = notify_receiver.requests[0]
    notification = verify_notification(received.headers, received.body, public_key=config.wechatpay_public_key,
                                       public_key_id=config.wechatpay_public_key_id,
                                       apiv3_key=sim_keys.apiv3_key.encode())
    assert notification["event_type"] == "TRANSACTION.SUCCESS"
    assert notification["resource"]["out_trade_no"] == "T20261126CLIENT0001"
    assert notification["resource"]["amount"]["total"] == 1990
    with pytest.raises(SignatureInvalid):
        verify_notification(received.headers, received.body + b" ", public_key=config.wechatpay_public_key,
                            public_key_id=config.wechatpay_public_key_id, apiv3_key=sim_keys.apiv3_key.encode())


def test_login_against_the_simulator(config, simulator, sim_keys):
    prepare = load_config("prepare", sim_keys.function_environ(simulator.url, "http://127.0.0.1:9/n",
                                                               "mongodb://127.0.0.1:1"))
    assert WeChatLogin(prepare).openid("test-alice") == simulator.openid_for("test-alice")
    from shared.errors import LoginFailed

    with pytest.raises(LoginFailed):
        WeChatLogin(prepare).openid("bogus-code")
    counters = simulator.counters()
    assert counters.get("jscode2session") == 2 and counters.get("token_fetches", 0) == 0, counters
