"""The WeChat Pay simulator, proven faithful with wechatpayv3 as an independent merchant client.

wechatpayv3 (public-key mode, gateway pointed at the simulator) verifies the platform
signature of every 2xx answer itself and raises when it is wrong, and its `callback`
verifies and decrypts notifications; so whatever it accepts here, it would accept from
WeChat Pay.  Non-2xx answers (which it does not verify) are checked with our own
`signing.rsa_verify`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from wechatpayv3 import WeChatPay, WeChatPayType

from devtools.sim_keys import ephemeral, load_or_create
from devtools.simulator.timeutil import CST, parse_rfc3339, rfc3339
from devtools.wechatpay_simulator import (
    RETRY_SCHEDULE_S,
    SimError,
    Simulator,
    format_yuan,
    main,
    parse_trade_bill,
    shell_exports,
    yuan_to_fen,
)
from shared.config import load_config
from shared.wechatpay import signing

# The fixtures sim_keys, simulator, notify_receiver, make_receiver.
pytest_plugins = ["tests.sim_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


# --- helpers ----------------------------------------------------------------------------

def merchant_client(keys, sim, notify_url="http://127.0.0.1:9/notify", *, private_pem=None) -> WeChatPay:
    """wechatpayv3 as the merchant, in public-key mode, talking to the simulator."""
    wx = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=keys.mchid,
                   private_key=private_pem or keys.merchant_private_pem, cert_serial_no=keys.merchant_serial,
                   appid=keys.appid, apiv3_key=keys.apiv3_key, notify_url=notify_url,
                   public_key=keys.platform_public_pem, public_key_id=keys.platform_public_key_id, timeout=5)
    wx._core._gate_way = sim.url
    return wx


def create_order(wx: WeChatPay, out_trade_no: str = "T20240501001", total: int = 1990, **extra) -> str:
    code, text = wx.pay(description="Oolong tea 250g", out_trade_no=out_trade_no, amount={"total": total},
                        payer={"openid": OPENID}, **extra)
    assert code == 200, text
    return json.loads(text)["prepay_id"]


def signed_call(keys, sim, method: str, target: str, body: bytes = b"", *, timestamp=None, private_key=None,
                mchid=None, serial=None, sent_body=None) -> requests.Response:
    """A request signed like a merchant does, with every part overridable."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    authorization = signing.authorization_header(mchid or keys.mchid, serial or keys.merchant_serial,
                                                 private_key or keys.merchant_private_key, method, target, body,
                                                 ts, signing.nonce())
    return requests.request(method, sim.url + target, data=body if sent_body is None else sent_body, timeout=5,
                            headers={"Authorization": authorization, "Content-Type": "application/json",
                                     "Accept": "application/json"})


def response_signature_ok(keys, response: requests.Response) -> bool:
    headers = response.headers
    message = signing.response_message(headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], response.content)
    return (headers["Wechatpay-Serial"] == keys.platform_public_key_id
            and headers["Wechatpay-Signature-Type"] == signing.SCHEMA
            and signing.rsa_verify(keys.platform_public_key, message, headers["Wechatpay-Signature"]))


def prepay_body(keys, **changes) -> dict:
    body = {"appid": keys.appid, "mchid": keys.mchid, "description": "tea", "out_trade_no": "T20240501009",
            "notify_url": "https://merchant.example.com/notify", "amount": {"total": 100, "currency": "CNY"},
            "payer": {"openid": OPENID}}
    body.update(changes)
    return body


def yesterday_cst() -> str:
    return (datetime.now(CST) - timedelta(days=1)).strftime("%Y-%m-%d")


def control(sim, method: str, path: str, body=None) -> requests.Response:
    return requests.request(method, sim.url + path, json=body, timeout=10)


# --- keys -------------------------------------------------------------------------------

def test_function_environ_passes_the_configuration_contract_for_every_role(sim_keys):
    environ = sim_keys.function_environ("http://127.0.0.1:8090", "http://127.0.0.1:8080/callback",
                                        "mongodb://127.0.0.1:27017")
    for role in ("prepare", "callback", "reconcile", "store"):
        config = load_config(role, environ)
        # Only the roles that call WeChat Pay read its base URL.
        assert config.wechatpay_api_base == ("http://127.0.0.1:8090" if role in ("prepare", "reconcile")
                                             else "https://api.mch.weixin.qq.com")
    config = load_config("prepare", environ)
    assert config.wechat_appid == sim_keys.appid and config.wechatpay_mchid == sim_keys.mchid
    assert config.wechatpay_public_key_id.startswith("PUB_KEY_ID_01")
    assert len(sim_keys.merchant_serial) == 40 and len(sim_keys.apiv3_key) == 32
    assert "PRIVATE KEY" not in repr(sim_keys) and sim_keys.apiv3_key not in repr(sim_keys)


def test_load_or_create_writes_private_files_and_reuses_them(tmp_path):
    folder = tmp_path / "keys"
    first = load_or_create(folder)
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(["apiclient_key.pem", "apiclient_pub.pem", "wechatpay_platform_key.pem", "pub_key.pem",
                            "wechatpay_platform_cert.pem", "sim_keys.json"])
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert folder.stat().st_mode & 0o777 == 0o700
    again = load_or_create(folder)
    assert again == first
    assert again.platform_public_pem == (folder / "pub_key.pem").read_text()


# --- the merchant API through wechatpayv3 -------------------------------------------------

def test_prepay_query_and_close_verified_by_wechatpayv3(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    prepay_id = create_order(wx, attach="cart-7")
    assert prepay_id.startswith("wx") and len(prepay_id) == 36

    code, text = wx.query(out_trade_no="T20240501001")
    assert code == 200
    order = json.loads(text)
    assert order["trade_state"] == "NOTPAY" and order["trade_state_desc"] == "订单未支付"
    assert order["appid"] == sim_keys.appid and order["mchid"] == sim_keys.mchid
    assert order["amount"] == {"total": 1990, "currency": "CNY", "payer_currency": "CNY"}
    assert order["payer"] == {"openid": OPENID} and "transaction_id" not in order

    code, text = wx.close("T20240501001")   # 204: wechatpayv3 verifies the empty body's signature
    assert (code, text) == (204, b"")
    assert json.loads(wx.query(out_trade_no="T20240501001")[1])["trade_state"] == "CLOSED"
    code, text = wx.pay(description="Oolong tea 250g", out_trade_no="T20240501001", amount={"total": 1990},
                        payer={"openid": OPENID})
    assert code == 400 and json.loads(text)["code"] == "ORDER_CLOSED"


def test_unknown_order_is_404_order_not_exist_and_signed(sim_keys, simulator):
    target = f"/v3/pay/transactions/out-trade-no/NOPE0001?mchid={sim_keys.mchid}"
    response = signed_call(sim_keys, simulator, "GET", target)
    assert response.status_code == 404 and response.json()["code"] == "ORDER_NOT_EXIST"
    assert response_signature_ok(sim_keys, response)
    assert response.headers["Request-ID"]


def test_paid_order_query_shows_the_transaction(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    create_order(wx, attach="cart-7")
    simulator.pay("T20240501001", notify="drop", payer_total=1900)
    order = json.loads(wx.query(out_trade_no="T20240501001")[1])
    assert order["trade_state"] == "SUCCESS" and order["trade_type"] == "JSAPI"
    assert order["transaction_id"].startswith("4200") and len(order["transaction_id"]) == 28
    assert order["transaction_id"].isdigit()
    assert order["amount"] == {"total": 1990, "payer_total": 1900, "currency": "CNY", "payer_currency": "CNY"}
    assert order["attach"] == "cart-7" and order["bank_type"]
    assert abs(parse_rfc3339(order["success_time"]) - time.time()) < 60
    by_id = json.loads(wx.query(transaction_id=order["transaction_id"])[1])
    assert by_id == order
    code, text = wx.close("T20240501001")
    assert code == 400 and json.loads(text)["code"] == "ORDERPAID"


def test_refund_lifecycle_verified_by_wechatpayv3(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    simulator.pay("T20240501001", notify="drop")
    code, text = wx.refund(out_refund_no="R20240501001", out_trade_no="T20240501001", reason="broken",
                           amount={"refund": 500, "total": 1990, "currency": "CNY"})
    assert code == 200, text
    refund = json.loads(text)
    assert refund["status"] == "PROCESSING" and refund["out_trade_no"] == "T20240501001"
    assert refund["refund_id"].startswith("50") and refund["channel"] == "ORIGINAL"
    assert refund["user_received_account"] and refund["create_time"]
    assert refund["amount"]["refund"] == 500 and refund["amount"]["total"] == 1990
    assert refund["amount"]["payer_refund"] == 500 and refund["amount"]["currency"] == "CNY"
    assert json.loads(wx.query(out_trade_no="T20240501001")[1])["trade_state"] == "REFUND"

    simulator.complete_refund("R20240501001")
    assert simulator.wait_idle(5)
    code, text = wx.query_refund("R20240501001")
    assert code == 200
    assert json.loads(text)["status"] == "SUCCESS" and json.loads(text)["success_time"]

    [received] = notify_receiver.requests
    notification = wx.callback(received.headers, received.body)
    assert notification["event_type"] == "REFUND.SUCCESS"
    resource = notification["resource"]
    assert resource["refund_status"] == "SUCCESS" and resource["out_refund_no"] == "R20240501001"
    assert resource["mchid"] == sim_keys.mchid and resource["transaction_id"] == refund["transaction_id"]
    assert resource["amount"] == {"total": 1990, "refund": 500, "payer_total": 1990, "payer_refund": 500}
    assert resource["success_time"] and resource["user_received_account"] and resource["refund_id"]


@pytest.mark.parametrize("status", ["ABNORMAL", "CLOSED"])
def test_refund_ends_abnormal_or_closed_with_its_notification(sim_keys, simulator, notify_receiver, status):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    simulator.pay("T20240501001", notify="drop")
    wx.refund(out_refund_no="R1", out_trade_no="T20240501001",
              amount={"refund": 1990, "total": 1990, "currency": "CNY"})
    simulator.complete_refund("R1", status=status)
    assert simulator.wait_idle(5)
    notification = wx.callback(notify_receiver.requests[0].headers, notify_receiver.requests[0].body)
    assert notification["event_type"] == f"REFUND.{status}"
    assert notification["resource"]["refund_status"] == status
    # A closed refund is final and gives its amount back; an abnormal one keeps it
    # reserved and may still succeed (the merchant re-handles it).
    code, text = wx.refund(out_refund_no="R2", out_trade_no="T20240501001",
                           amount={"refund": 1990, "total": 1990, "currency": "CNY"})
    assert code == (200 if status == "CLOSED" else 400), text
    if status == "CLOSED":
        with pytest.raises(SimError) as final:
            simulator.complete_refund("R1")
        assert final.value.code == "REFUND_FINAL"
    else:
        assert simulator.complete_refund("R1", notify="drop")["refund"]["status"] == "SUCCESS"


def test_refund_rules_like_wechat(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    create_order(wx)
    amount = {"refund": 100, "total": 1990, "currency": "CNY"}

    code, text = wx.refund(out_refund_no="R1", out_trade_no="T20240501001", amount=amount)
    assert code == 400 and json.loads(text)["code"] == "INVALID_REQUEST"   # not paid yet
    code, text = wx.refund(out_refund_no="R1", out_trade_no="NOSUCH0001", amount=amount)
    assert code == 404 and json.loads(text)["code"] == "RESOURCE_NOT_EXISTS"

    simulator.pay("T20240501001", notify="drop")
    code, text = wx.refund(out_refund_no="R1", out_trade_no="T20240501001", amount={**amount, "total": 1000})
    assert code == 400 and json.loads(text)["code"] == "INVALID_REQUEST"   # total is not the order's

    first = json.loads(wx.refund(out_refund_no="R1", out_trade_no="T20240501001", amount=amount)[1])
    again = json.loads(wx.refund(out_refund_no="R1", out_trade_no="T20240501001", amount=amount)[1])
    assert again["refund_id"] == first["refund_id"]          # idempotent on out_refund_no
    code, text = wx.refund(out_refund_no="R1", out_trade_no="T20240501001", amount={**amount, "refund": 200})
    assert code == 400 and json.loads(text)["code"] == "INVALID_REQUEST"

    code, _ = wx.refund(out_refund_no="R2", out_trade_no="T20240501001", amount={**amount, "refund": 1890})
    assert code == 200                                       # 100 + 1890 = the whole order
    code, text = wx.refund(out_refund_no="R3", out_trade_no="T20240501001", amount={**amount, "refund": 1})
    assert code == 400 and json.loads(text)["message"] == "申请退款金额超过订单可退金额"

    code, text = wx.query_refund("NOSUCH")
    assert code == 404


def test_auto_refund_completes_and_notifies(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    simulator.configure(auto_refund_ms=20)
    create_order(wx)
    simulator.pay("T20240501001", notify="drop")
    wx.refund(out_refund_no="R1", out_trade_no="T20240501001", amount={"refund": 10, "total": 1990, "currency": "CNY"})
    assert simulator.wait_idle(5)
    assert simulator.refund("R1")["status"] == "SUCCESS"
    assert wx.callback(notify_receiver.requests[0].headers, notify_receiver.requests[0].body)["event_type"] == \
        "REFUND.SUCCESS"


# --- the trade bill ---------------------------------------------------------------------

def test_trade_bill_download_matches_its_hash_and_format(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    day = yesterday_cst()
    create_order(wx, out_trade_no="T20240501001", total=1990)
    create_order(wx, out_trade_no="T20240501002", total=1)
    create_order(wx, out_trade_no="T20240501003", total=500)
    simulator.pay("T20240501001", notify="drop", success_time=f"{day}T12:00:00+08:00")
    simulator.pay("T20240501002", notify="drop", success_time=f"{day}T00:00:01+08:00")
    simulator.pay("T20240501003", notify="drop")              # today: not in yesterday's bill

    code, text = wx.trade_bill(day)
    assert code == 200, text
    answer = json.loads(text)
    assert answer["hash_type"] == "SHA1" and answer["download_url"].startswith(simulator.url + "/v3/billdownload/")
    code, served = wx.download_bill(answer["download_url"])   # unsigned, as on WeChat Pay
    assert code == 200 and served[:2] == b"\x1f\x8b"
    csv = gzip.decompress(served)
    # WeChat documents hash_value as the digest of the original (uncompressed) bill.
    assert hashlib.sha1(csv, usedforsecurity=False).hexdigest() == answer["hash_value"]

    text = csv.decode("utf-8")
    assert text.startswith("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
                           "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
                           "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注")
    assert "\n总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额" in text
    assert "`19.90," in text and "`0.01," in text

    bill = parse_trade_bill(served)
    assert [row["商户订单号"] for row in bill.rows] == ["T20240501002", "T20240501001"]   # time order
    first = bill.rows[1]
    assert first["交易时间"] == f"{day} 12:00:00" and first["交易状态"] == "SUCCESS"
    assert first["应结订单金额"] == "19.90" and first["订单金额"] == "19.90"
    assert first["公众账号ID"] == sim_keys.appid and first["商户号"] == sim_keys.mchid
    assert first["微信订单号"] == simulator.order("T20240501001")["transaction_id"]
    assert first["用户标识"] == OPENID and first["商品名称"] == "Oolong tea 250g"
    assert first["手续费"] == "0.12000" and first["费率"] == "0.60%"
    assert bill.summary == {"总交易单数": "2", "应结订单总金额": "19.91", "退款总金额": "0.00",
                            "充值券退款总金额": "0.00", "手续费总金额": "0.12000", "订单总金额": "19.91",
                            "申请退款总金额": "0.00"}
    assert sum(yuan_to_fen(row["应结订单金额"]) for row in bill.rows) == yuan_to_fen(bill.summary["应结订单总金额"])


def test_bill_overrides_and_refund_rows(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    day = yesterday_cst()
    for number in ("1", "2", "3"):
        create_order(wx, out_trade_no=f"T2024050100{number}", total=1000)
        simulator.pay(f"T2024050100{number}", notify="drop", success_time=f"{day}T10:00:0{number}+08:00")
    simulator.set_bill_override("T20240501001", hide=True)
    simulator.set_bill_override("T20240501002", amount=999)
    csv = simulator.trade_bill(day)
    served = control(simulator, "GET", f"/_sim/bill?bill_date={day}")
    assert served.status_code == 200 and served.content == csv
    bill = parse_trade_bill(csv)
    assert {row["商户订单号"]: row["应结订单金额"] for row in bill.rows} == {"T20240501002": "9.99",
                                                                              "T20240501003": "10.00"}
    # A refund that succeeded today is in today's bill, not yesterday's.
    wx.refund(out_refund_no="R1", out_trade_no="T20240501003", amount={"refund": 250, "total": 1000, "currency": "CNY"})
    simulator.complete_refund("R1", notify="drop")
    assert len(parse_trade_bill(simulator.trade_bill(day)).rows) == 2
    with pytest.raises(SimError) as today:
        simulator.trade_bill(datetime.now(CST).strftime("%Y-%m-%d"))
    assert today.value.code == "INVALID_REQUEST"


def test_refund_rows_in_the_bill_of_their_day(sim_keys):
    # A clock one day ahead makes "today's" refund yesterday's.
    offset = [0.0]
    sim = Simulator(sim_keys, clock=lambda: time.time() + offset[0])
    sim.ledger.prepay(prepay_body(sim_keys, out_trade_no="T20240501001", amount={"total": 2000}),
                      auth_mchid=sim_keys.mchid)
    sim.pay("T20240501001", notify="drop")
    sim.ledger.create_refund({"out_refund_no": "R1", "out_trade_no": "T20240501001",
                              "amount": {"refund": 1000, "total": 2000, "currency": "CNY"}})
    sim.complete_refund("R1", notify="drop")
    day = datetime.now(CST).strftime("%Y-%m-%d")
    offset[0] = 86400.0
    bill = parse_trade_bill(sim.trade_bill(day))
    payment, refund = bill.rows
    assert payment["交易状态"] == "SUCCESS" and refund["交易状态"] == "REFUND"
    assert refund["退款金额"] == "10.00" and refund["申请退款金额"] == "10.00" and refund["商户退款单号"] == "R1"
    assert refund["退款状态"] == "SUCCESS" and refund["手续费"] == "-0.06000" and refund["应结订单金额"] == "0.00"
    assert payment["手续费"] == "0.12000"
    assert bill.summary["退款总金额"] == "10.00" and bill.summary["总交易单数"] == "2"
    assert bill.summary["手续费总金额"] == "0.06000" and bill.summary["应结订单总金额"] == "20.00"
    assert [r["商户订单号"] for r in parse_trade_bill(sim.trade_bill(day, "REFUND")).rows] == ["T20240501001"]


@pytest.mark.parametrize(("query", "status", "code"), [
    ("bill_date=2024-13-01", 400, "PARAM_ERROR"),
    ("bill_date=2024-05-01&bill_type=NONE", 400, "PARAM_ERROR"),
    ("bill_date=TODAY", 400, "INVALID_REQUEST"),
    ("bill_date=YESTERDAY", 400, "NO_STATEMENT_EXIST"),
    ("bill_date=TOMORROW", 400, "INVALID_REQUEST"),
])
def test_trade_bill_errors(sim_keys, simulator, query, status, code):
    today = datetime.now(CST)
    query = (query.replace("TODAY", today.strftime("%Y-%m-%d"))
             .replace("YESTERDAY", (today - timedelta(days=1)).strftime("%Y-%m-%d"))
             .replace("TOMORROW", (today + timedelta(days=1)).strftime("%Y-%m-%d")))
    response = signed_call(sim_keys, simulator, "GET", f"/v3/bill/tradebill?{query}&tar_type=GZIP")
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response_signature_ok(sim_keys, response)


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_yuan_formatting_round_trips_integer_fen(fen):
    text = format_yuan(fen)
    assert yuan_to_fen(text) == fen
    assert len(text.split(".")[1]) == 2
    assert yuan_to_fen(format_yuan(fen, 5)) == fen


def test_yuan_formatting_examples():
    assert [format_yuan(f) for f in (0, 1, 10, 199, 1990, -5)] == ["0.00", "0.01", "0.10", "1.99", "19.90", "-0.05"]
    with pytest.raises(TypeError):
        format_yuan(19.9)
    with pytest.raises(ValueError):
        yuan_to_fen("0.001")


# --- merchant authentication ------------------------------------------------------------

def test_wrongly_signed_request_is_401_sign_error(sim_keys, simulator):
    stranger = ephemeral()
    wx = merchant_client(sim_keys, simulator, private_pem=stranger.merchant_private_pem)
    code, text = wx.query(out_trade_no="T20240501001")
    assert code == 401 and json.loads(text)["code"] == "SIGN_ERROR"
    assert simulator.counters()["sign_errors"] == 1


@pytest.mark.parametrize("broken", ["stale", "future", "serial", "mchid", "body", "missing", "garbled"])
def test_every_authorization_flaw_is_401(sim_keys, simulator, broken):
    body = json.dumps(prepay_body(sim_keys)).encode()
    target = "/v3/pay/transactions/jsapi"
    if broken == "missing":
        response = requests.post(simulator.url + target, data=body, timeout=5)
    elif broken == "garbled":
        response = requests.post(simulator.url + target, data=body, timeout=5,
                                 headers={"Authorization": "WECHATPAY2-SHA256-RSA2048 mchid=1"})
    else:
        options = {"stale": {"timestamp": int(time.time()) - 310},
                   "future": {"timestamp": int(time.time()) + 310},
                   "serial": {"serial": "0" * 40},
                   "mchid": {"mchid": "1900000109"},
                   "body": {"sent_body": body.replace(b'"total": 100', b'"total": 1')}}[broken]
        response = signed_call(sim_keys, simulator, "POST", target, body, **options)
    assert response.status_code == 401
    assert response.json()["code"] == "SIGN_ERROR"
    assert response_signature_ok(sim_keys, response)    # error answers are signed too
    assert simulator.orders() == []


def test_signature_covers_the_query_string(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    create_order(wx)
    target = f"/v3/pay/transactions/out-trade-no/T20240501001?mchid={sim_keys.mchid}"
    ts, nonce_str = str(int(time.time())), signing.nonce()
    authorization = signing.authorization_header(sim_keys.mchid, sim_keys.merchant_serial,
                                                 sim_keys.merchant_private_key, "GET",
                                                 "/v3/pay/transactions/out-trade-no/T20240501001", b"", ts, nonce_str)
    response = requests.get(simulator.url + target, headers={"Authorization": authorization}, timeout=5)
    assert response.status_code == 401
    assert signed_call(sim_keys, simulator, "GET", target).status_code == 200


# --- prepay validation and repeats ------------------------------------------------------

def test_repeated_prepay_same_parameters_gives_a_fresh_valid_prepay_id(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    first = create_order(wx)
    second = create_order(wx)
    assert first != second and second.startswith("wx")
    assert simulator.order("T20240501001")["prepay_ids"] == [first, second]
    code, text = wx.pay(description="another", out_trade_no="T20240501001", amount={"total": 1990},
                        payer={"openid": OPENID})
    assert code == 400 and json.loads(text)["code"] == "INVALID_REQUEST"
    simulator.pay("T20240501001", notify="drop")
    code, text = wx.pay(description="Oolong tea 250g", out_trade_no="T20240501001", amount={"total": 1990},
                        payer={"openid": OPENID})
    assert code == 400 and json.loads(text)["code"] == "ORDERPAID"


@pytest.mark.parametrize(("changes", "code"), [
    ({"amount": {"total": 1.5}}, "PARAM_ERROR"),
    ({"amount": {"total": True}}, "PARAM_ERROR"),
    ({"amount": {"total": "100"}}, "PARAM_ERROR"),
    ({"amount": {"total": 0}}, "PARAM_ERROR"),
    ({"amount": {"total": 100, "currency": "USD"}}, "PARAM_ERROR"),
    ({"out_trade_no": "T1"}, "PARAM_ERROR"),
    ({"out_trade_no": "T2024 0501"}, "PARAM_ERROR"),
    ({"out_trade_no": "T" * 33}, "PARAM_ERROR"),
    ({"description": ""}, "PARAM_ERROR"),
    ({"description": "d" * 128}, "PARAM_ERROR"),
    ({"payer": {}}, "PARAM_ERROR"),
    ({"notify_url": "http://merchant.example.com/notify"}, "PARAM_ERROR"),
    ({"notify_url": "https://merchant.example.com/notify?x=1"}, "PARAM_ERROR"),
    ({"time_expire": "2024-05-01 12:00:00"}, "PARAM_ERROR"),
    ({"appid": "wx0000000000000000"}, "APPID_MCHID_NOT_MATCH"),
    ({"mchid": "1900000109"}, "PARAM_ERROR"),
])
def test_prepay_validation_like_wechat(sim_keys, simulator, changes, code):
    body = json.dumps(prepay_body(sim_keys, **changes)).encode()
    response = signed_call(sim_keys, simulator, "POST", "/v3/pay/transactions/jsapi", body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert response_signature_ok(sim_keys, response)


def test_prepay_accepts_the_edges(sim_keys, simulator):
    edges = prepay_body(sim_keys, out_trade_no="A-b_c|d*", description="d" * 127,
                        notify_url="http://127.0.0.1:8080/callback",
                        time_expire=rfc3339(time.time() + 3600))
    response = signed_call(sim_keys, simulator, "POST", "/v3/pay/transactions/jsapi", json.dumps(edges).encode())
    assert response.status_code == 200, response.text
    assert response_signature_ok(sim_keys, response)
    state = simulator.order("A-b_c|d*")
    assert abs(parse_rfc3339(state["time_expire"]) - (time.time() + 3600)) < 5


# --- payment and its notification -------------------------------------------------------

def test_payment_notification_accepted_by_wechatpayv3(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx, attach="cart-7")
    result = simulator.pay("T20240501001")
    assert simulator.wait_idle(5)
    [received] = notify_receiver.requests
    assert received.path == "/notify" and received.method == "POST"
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Wechatpay-Serial"] == sim_keys.platform_public_key_id
    assert received.headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    assert received.headers["User-Agent"]

    notification = wx.callback(received.headers, received.body)
    assert notification is not None
    assert notification["id"] == result["notification_id"] and notification["id"].startswith("EV-")
    assert notification["event_type"] == "TRANSACTION.SUCCESS" and notification["summary"] == "支付成功"
    assert notification["resource_type"] == "encrypt-resource"
    transaction = notification["resource"]
    assert transaction == json.loads(wx.query(out_trade_no="T20240501001")[1])
    assert simulator.order("T20240501001").items() >= transaction.items()
    assert transaction["trade_state"] == "SUCCESS" and transaction["attach"] == "cart-7"
    assert transaction["amount"] == {"total": 1990, "payer_total": 1990, "currency": "CNY", "payer_currency": "CNY"}
    assert transaction["payer"] == {"openid": OPENID} and transaction["appid"] == sim_keys.appid

    envelope = json.loads(received.body)
    assert envelope["resource"]["algorithm"] == "AEAD_AES_256_GCM"
    assert envelope["resource"]["original_type"] == "transaction" == envelope["resource"]["associated_data"]
    assert len(envelope["resource"]["nonce"]) == 12
    [delivery] = simulator.deliveries()
    assert (delivery["attempt"], delivery["status"], delivery["out_trade_no"]) == (1, 204, "T20240501001")


@pytest.mark.parametrize("failures", [(500, 500), (500, 500, 503, 404)])
def test_retry_schedule_is_followed_and_stops_at_the_first_2xx(sim_keys, simulator, notify_receiver, failures):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    notify_receiver.respond_with(*failures, then=204)
    simulator.pay("T20240501001")
    assert simulator.wait_idle(10)
    attempts = len(failures) + 1
    arrivals = [r.at for r in notify_receiver.requests]
    assert len(arrivals) == attempts                          # nothing after the 204
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    # The compressed schedule: 15, 15, 30, 180 ms ... at retry_factor 0.001.
    expected = [s * simulator.notifier.retry_factor for s in RETRY_SCHEDULE_S[:attempts - 1]]
    for gap, wanted in zip(gaps, expected, strict=True):
        assert wanted * 0.9 <= gap < wanted + 1.0, (gaps, expected)
    if attempts > 4:
        assert gaps[-1] > gaps[0]                             # 180 ms after 15 ms
    statuses = [(d["attempt"], d["status"]) for d in simulator.deliveries()]
    assert statuses == [(n + 1, status) for n, status in enumerate((*failures, 204))]
    bodies = {r.body for r in notify_receiver.requests}
    assert len(bodies) == 1                                   # the same notification each time ...
    assert len({r.headers["Wechatpay-Nonce"] for r in notify_receiver.requests}) == attempts   # ... signed afresh
    for received in notify_receiver.requests:
        assert wx.callback(received.headers, received.body) is not None


def test_connection_errors_are_retried(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url="http://127.0.0.1:9/notify")   # nobody listens
    create_order(wx)
    simulator.pay("T20240501001")
    deadline = time.monotonic() + 5
    while len(simulator.deliveries()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    deliveries = simulator.deliveries()
    assert len(deliveries) >= 2 and deliveries[0]["status"] is None and deliveries[0]["error"]


def test_delivery_gives_up_after_one_try_and_fifteen_retries(sim_keys, make_receiver):
    receiver = make_receiver()
    sim = Simulator(sim_keys, retry_factor=0.00001).start()   # 24h4m -> under a second
    try:
        receiver.respond_with(then=500)
        sim.ledger.prepay(prepay_body(sim_keys, notify_url=receiver.url), auth_mchid=sim_keys.mchid)
        sim.pay("T20240501009")
        assert sim.wait_idle(10)
        assert len(receiver.requests) == 1 + len(RETRY_SCHEDULE_S) == 16
        assert [d["attempt"] for d in sim.deliveries()] == list(range(1, 17))
    finally:
        sim.stop()


def test_dropped_notification_is_never_sent(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    result = simulator.pay("T20240501001", notify="drop")
    assert result["notification_id"] is None
    assert simulator.wait_idle(5)
    assert notify_receiver.requests == [] and simulator.deliveries() == []
    assert json.loads(wx.query(out_trade_no="T20240501001")[1])["trade_state"] == "SUCCESS"


def test_duplicates_arrive_concurrently_and_all_verify(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    simulator.pay("T20240501001", duplicates=3)
    assert simulator.wait_idle(5)
    assert len(notify_receiver.requests) == 4
    ids = {wx.callback(r.headers, r.body)["id"] for r in notify_receiver.requests}
    assert len(ids) == 1
    assert sorted(d["copy"] for d in simulator.deliveries()) == [1, 2, 3, 4]


def test_delay_and_amount_override(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    started = time.monotonic()
    simulator.pay("T20240501001", delay_ms=100, amount_override=1)
    assert simulator.wait_idle(5)
    assert notify_receiver.requests[0].at - started >= 0.09
    notification = wx.callback(notify_receiver.requests[0].headers, notify_receiver.requests[0].body)
    assert notification["resource"]["amount"]["total"] == 1
    assert simulator.order("T20240501001")["amount"]["total"] == 1990


def test_probe_notification_is_rejected_by_wechatpayv3(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    simulator.pay("T20240501001", notify="drop")
    result = simulator.notify(out_trade_no="T20240501001", probe=True)
    assert [d["status"] for d in result["deliveries"]] == [204]
    [received] = notify_receiver.requests
    assert received.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    assert wx.callback(received.headers, received.body) is None


@pytest.mark.parametrize("tamper", ["body", "signature", "serial", "ciphertext"])
def test_tampered_notifications_are_rejected_by_wechatpayv3(sim_keys, simulator, notify_receiver, tamper):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    simulator.pay("T20240501001", notify="drop")
    simulator.notify(out_trade_no="T20240501001", tamper=tamper)
    [received] = notify_receiver.requests
    # For "serial", wechatpayv3 looks for a platform certificate: the simulator, like
    # WeChat Pay for a public-key merchant, has none (404), so verification fails.
    assert wx.callback(received.headers, received.body) is None
    untampered = simulator.notify(out_trade_no="T20240501001")
    assert untampered["deliveries"][0]["status"] == 204
    assert wx.callback(notify_receiver.requests[1].headers, notify_receiver.requests[1].body) is not None


@pytest.mark.parametrize(("tamper", "sign"), [("timestamp_old", -1), ("timestamp_future", 1)])
def test_skewed_timestamps_are_validly_signed_but_out_of_window(sim_keys, simulator, notify_receiver, tamper, sign):
    """wechatpayv3 checks no timestamp window (research brief, section 6): it accepts these,
    which proves the signature is right and only the time is off, by more than 5 minutes."""
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    simulator.pay("T20240501001", notify="drop")
    simulator.notify(out_trade_no="T20240501001", tamper=tamper)
    [received] = notify_receiver.requests
    skew = int(received.headers["Wechatpay-Timestamp"]) - time.time()
    assert sign * skew >= 300
    assert wx.callback(received.headers, received.body) is not None


def test_custom_notification_with_a_resource_and_retries(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    notify_receiver.respond_with(500, then=200)
    resource = {"out_trade_no": "UNKNOWN001", "mchid": sim_keys.mchid, "amount": {"total": 5}}
    result = simulator.notify(url=notify_receiver.url, resource=resource, retry=True, duplicates=1)
    assert result["queued"] is True
    assert simulator.wait_idle(5)
    assert len(notify_receiver.requests) == 3                # two copies; the first to arrive got 500, retried
    for received in notify_receiver.requests:
        assert wx.callback(received.headers, received.body)["resource"] == resource


def test_raw_body_notification_is_signed_as_is(sim_keys, simulator, notify_receiver):
    simulator.notify(url=notify_receiver.url, raw_body="not json")
    [received] = notify_receiver.requests
    assert received.body == b"not json"
    message = signing.response_message(received.headers["Wechatpay-Timestamp"], received.headers["Wechatpay-Nonce"],
                                       received.body)
    assert signing.rsa_verify(sim_keys.platform_public_key, message, received.headers["Wechatpay-Signature"])


# --- payer and time ---------------------------------------------------------------------

def test_expired_order_stays_notpay_but_cannot_be_paid(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    create_order(wx)
    state = simulator.expire("T20240501001")
    assert state["expired"] is True and state["trade_state"] == "NOTPAY"
    assert json.loads(wx.query(out_trade_no="T20240501001")[1])["trade_state"] == "NOTPAY"
    with pytest.raises(SimError) as refused:
        simulator.pay("T20240501001")
    assert refused.value.code == "ORDER_EXPIRED"
    code, text = wx.pay(description="Oolong tea 250g", out_trade_no="T20240501001", amount={"total": 1990},
                        payer={"openid": OPENID})
    assert code == 400 and json.loads(text)["code"] == "INVALID_REQUEST"
    assert wx.close("T20240501001")[0] == 204
    assert simulator.expire("T20240501001")["trade_state"] == "CLOSED"


def test_expire_with_close_and_payment_failure(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    create_order(wx, out_trade_no="T20240501001")
    create_order(wx, out_trade_no="T20240501002")
    assert simulator.expire("T20240501001", close=True)["trade_state"] == "CLOSED"
    with pytest.raises(SimError) as closed:
        simulator.pay("T20240501001")
    assert closed.value.code == "ORDER_CLOSED"
    assert simulator.fail("T20240501002")["trade_state"] == "PAYERROR"
    query = json.loads(wx.query(out_trade_no="T20240501002")[1])
    assert query["trade_state"] == "PAYERROR" and query["trade_state_desc"]
    assert simulator.pay("T20240501002", notify="drop")["order"]["trade_state"] == "SUCCESS"   # paid on retry
    with pytest.raises(SimError) as paid:
        simulator.pay("T20240501002")
    assert paid.value.code == "ORDERPAID"


# --- mini-program login -----------------------------------------------------------------

def jscode2session(sim, keys, code, **changes):
    query = {"appid": keys.appid, "secret": keys.app_secret, "js_code": code, "grant_type": "authorization_code"}
    query.update(changes)
    response = requests.get(sim.url + "/sns/jscode2session", params=query, timeout=5)
    assert response.status_code == 200
    return response.json()


def test_jscode2session_test_codes(sim_keys, simulator):
    alice = jscode2session(simulator, sim_keys, "test-alice")
    assert set(alice) == {"openid", "session_key"}
    assert alice["openid"].startswith("o") and len(alice["openid"]) == 28
    assert jscode2session(simulator, sim_keys, "test-alice") == alice           # stable
    assert jscode2session(simulator, sim_keys, "test-bob")["openid"] != alice["openid"]
    assert simulator.openid_for("test-alice") == simulator.openid_for("alice") == alice["openid"]
    assert control(simulator, "GET", "/_sim/openid?code=test-alice").json() == {"openid": alice["openid"]}


@pytest.mark.parametrize(("code", "changes", "errcode"), [
    ("wx-real-code", {}, 40029),
    ("test-", {}, 40029),
    ("test-alice", {"appid": "wx0000000000000000"}, 40013),
    ("test-alice", {"secret": "0" * 32}, 40125),
    ("test-alice", {"grant_type": "client_credential"}, 40002),
    ("err-40163", {}, 40163),
    ("err--1", {}, -1),
])
def test_jscode2session_errors_are_http_200_with_errcode(sim_keys, simulator, code, changes, errcode):
    answer = jscode2session(simulator, sim_keys, code, **changes)
    assert answer["errcode"] == errcode and answer["errmsg"]
    assert "openid" not in answer


def test_our_login_never_fetches_an_access_token(sim_keys, simulator):
    from shared.config import load_config
    from shared.login import WeChatLogin

    config = load_config("prepare", sim_keys.function_environ(simulator.url, "http://127.0.0.1:9/n",
                                                              "mongodb://127.0.0.1:1"))
    assert WeChatLogin(config).openid("test-carol") == simulator.openid_for("carol")
    counters = simulator.counters()
    assert counters["jscode2session"] == 1 and counters["token_fetches"] == 0
    requests.get(simulator.url + "/cgi-bin/token", timeout=5,
                 params={"grant_type": "client_credential", "appid": sim_keys.appid, "secret": sim_keys.app_secret})
    assert simulator.counters()["token_fetches"] == 1


# --- injected faults --------------------------------------------------------------------

def test_fault_status_then_recovery(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    simulator.inject_fault(path="/v3/pay/transactions/jsapi", status=500, count=2)
    for _ in range(2):
        code, text = wx.pay(description="tea", out_trade_no="T20240501001", amount={"total": 1},
                            payer={"openid": OPENID})
        assert code == 500 and json.loads(text)["code"] == "SYSTEM_ERROR"
    create_order(wx)
    assert simulator.counters()["faults_triggered"] == 2 and simulator.faults() == []


def test_fault_custom_body_on_a_path_prefix(sim_keys, simulator):
    wx = merchant_client(sim_keys, simulator)
    create_order(wx)
    simulator.inject_fault(path="/v3/pay/transactions/out-trade-no/*", method="GET", status=429,
                           body={"code": "FREQUENCY_LIMITED", "message": "slow down"})
    code, text = wx.query(out_trade_no="T20240501001")
    assert code == 429 and json.loads(text)["code"] == "FREQUENCY_LIMITED"
    assert wx.query(out_trade_no="T20240501001")[0] == 200
    simulator.inject_fault(path="/v3/pay/transactions/jsapi", status=502, body="<html>bad gateway</html>")
    code, text = wx.pay(description="tea", out_trade_no="T20240501002", amount={"total": 1},
                        payer={"openid": OPENID})
    assert (code, text) == (502, b"<html>bad gateway</html>")


@pytest.mark.parametrize("flaw", ["unsigned", "bad_signature"])
def test_fault_unsigned_or_badly_signed_2xx_is_refused_by_wechatpayv3(sim_keys, simulator, flaw):
    wx = merchant_client(sim_keys, simulator)
    create_order(wx)
    simulator.inject_fault(path="/v3/pay/transactions/out-trade-no/T20240501001", **{flaw: True})
    with pytest.raises(Exception, match="signature|algorithm"):
        wx.query(out_trade_no="T20240501001")
    assert wx.query(out_trade_no="T20240501001")[0] == 200


def test_fault_delay_makes_clients_time_out_and_disconnect_drops(sim_keys, simulator):
    target = f"/v3/pay/transactions/out-trade-no/T1?mchid={sim_keys.mchid}"
    simulator.inject_fault(path="/v3/pay/transactions/out-trade-no/T1", delay_ms=1000)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        requests.get(simulator.url + target, timeout=0.2)
    assert time.monotonic() - started < 0.9
    simulator.inject_fault(disconnect=True)
    with pytest.raises(requests.ConnectionError):
        requests.get(simulator.url + target, timeout=5)


def test_faults_are_validated(simulator):
    for spec in ({}, {"status": 99}, {"count": 0, "status": 500}, {"path": "v3", "status": 500},
                 {"bogus": 1}):
        response = control(simulator, "POST", "/_sim/faults", spec)
        assert response.status_code == 400, spec
    assert control(simulator, "POST", "/_sim/faults", {"status": 503}).status_code == 200
    assert len(control(simulator, "GET", "/_sim/faults").json()) == 1
    assert control(simulator, "DELETE", "/_sim/faults").json() == {"faults": []}
    assert simulator.faults() == []


# --- the control API over HTTP ----------------------------------------------------------

def test_control_api_over_http(sim_keys, simulator, notify_receiver):
    wx = merchant_client(sim_keys, simulator, notify_url=notify_receiver.url)
    create_order(wx)
    paid = control(simulator, "POST", "/_sim/orders/T20240501001/pay", {"duplicates": 1})
    assert paid.status_code == 200 and paid.json()["order"]["trade_state"] == "SUCCESS"
    assert control(simulator, "GET", "/_sim/idle?timeout=5").json() == {"idle": True}
    assert len(control(simulator, "GET", "/_sim/deliveries?out_trade_no=T20240501001").json()) == 2
    assert control(simulator, "GET", "/_sim/orders/T20240501001").json()["trade_state"] == "SUCCESS"
    assert [o["out_trade_no"] for o in control(simulator, "GET", "/_sim/orders").json()] == ["T20240501001"]
    counters = control(simulator, "GET", "/_sim/counters").json()
    assert counters["requests"]["POST /v3/pay/transactions/jsapi"] == 1

    again = control(simulator, "POST", "/_sim/orders/T20240501001/pay", {})
    assert again.status_code == 409 and again.json()["code"] == "ORDERPAID"
    assert control(simulator, "POST", "/_sim/orders/T20240501001/pay", {"bogus": 1}).status_code == 400
    assert control(simulator, "POST", "/_sim/orders/NOPE/fail").status_code == 404
    assert control(simulator, "GET", "/_sim/nothing").status_code == 404

    wx.refund(out_refund_no="R1", out_trade_no="T20240501001", amount={"refund": 1, "total": 1990, "currency": "CNY"})
    done = control(simulator, "POST", "/_sim/refunds/R1/complete", {"status": "SUCCESS", "notify": "drop"})
    assert done.json()["refund"]["status"] == "SUCCESS"
    assert control(simulator, "GET", "/_sim/refunds").json()[0]["out_refund_no"] == "R1"
    override = control(simulator, "POST", "/_sim/bill/overrides", {"out_trade_no": "T20240501001", "hide": True})
    assert override.json()["override"] == {"hide": True}
    notified = control(simulator, "POST", "/_sim/notify", {"out_trade_no": "T20240501001", "probe": True})
    assert notified.json()["deliveries"][0]["probe"] is True

    assert control(simulator, "POST", "/_sim/reset").json() == {"reset": True}
    assert simulator.orders() == [] and simulator.deliveries() == [] and simulator.counters()["requests"] == {}


def test_reset_cancels_pending_deliveries(simulator, notify_receiver):
    retry_factor = simulator.notifier.retry_factor
    simulator.configure(retry_factor=1.0)                    # 15 s before the second attempt
    notify_receiver.respond_with(then=500)
    simulator.notify(url=notify_receiver.url, resource={"x": 1}, retry=True)
    assert notify_receiver.wait_for(1)
    assert not simulator.wait_idle(0.05)
    started = time.monotonic()
    simulator.reset()
    assert time.monotonic() - started < 2
    assert simulator.wait_idle(0) and simulator.deliveries() == []
    assert simulator.notifier.retry_factor == retry_factor


def test_stop_ends_pending_deliveries_promptly(sim_keys, notify_receiver):
    notify_receiver.respond_with(then=500)
    sim = Simulator(sim_keys).start()                        # the real schedule: 15 s first
    threads_before = threading.active_count()
    sim.notify(url=notify_receiver.url, resource={"x": 1}, retry=True, duplicates=2)
    assert notify_receiver.wait_for(3)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2
    assert sim.wait_idle(0)
    sim.stop()                                               # idempotent
    deadline = time.monotonic() + 2
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= threads_before


# --- command line -----------------------------------------------------------------------

def test_shell_exports_quote_pem_with_real_newlines(tmp_path):
    environ = {"A": "plain", "B": "it's", "PEM": "-----BEGIN X-----\nabc\n-----END X-----\n"}
    script = tmp_path / "env.sh"
    script.write_text(shell_exports(environ) + '\nprintf "%s|%s|%s" "$A" "$B" "$PEM"\n')
    assert shell_exports(environ).splitlines()[0] == "export A='plain'"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == "plain|it's|-----BEGIN X-----\nabc\n-----END X-----\n"


def test_cli_serve_prints_the_environment_and_stops_cleanly_on_ctrl_c(tmp_path, sim_keys, capsys):
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.wechatpay_simulator", "serve", "--port", "0", "--keys-dir",
         str(tmp_path / "keys"), "--retry-factor", "0.01"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        output = _read_until(process, "export MONGODB_URI=", timeout=20)
        url = output.split("simulator on ", 1)[1].split(" ", 1)[0]
        script = tmp_path / "env.sh"
        script.write_text(output + '\nprintf "%s" "$WECHATPAY_PUBLIC_KEY"\n')
        pem = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=10, check=True).stdout
        assert pem == load_or_create(tmp_path / "keys").platform_public_pem
        assert "export WECHATPAY_API_BASE='" + url + "'" in output

        assert main(["orders", "--url", url]) == 0
        assert json.loads(capsys.readouterr().out) == []
        with pytest.raises(SystemExit, match="404"):
            main(["pay", "NOSUCH0001", "--drop", "--url", url])
        assert main(["counters", "--url", url]) == 0
        assert json.loads(capsys.readouterr().out)["token_fetches"] == 0
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()
            process.communicate(timeout=5)


def _read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read the child's stdout until a line starting with `marker` (bounded by `timeout`)."""
    lines: list[str] = []
    found = threading.Event()

    def pump():
        for line in process.stdout:
            lines.append(line)
            if line.startswith(marker):
                found.set()
                return

    threading.Thread(target=pump, daemon=True).start()
    assert found.wait(timeout), "".join(lines)
    return "".join(lines)


def test_clock_offset_moves_wechat_pays_clock_and_reset_brings_it_back(sim_merchant):
    """WeChat Pay's clock `clock_offset_s` away from ours: its Wechatpay-Timestamp, and the
    5-minute check of our request timestamps (signed with this machine's time)."""
    configured = sim_merchant.control("POST", "/_sim/config", {"clock_offset_s": 120})
    assert configured.status_code == 200 and configured.json()["clock_offset_s"] == 120
    answer = sim_merchant.query("NOSUCH0001")
    assert answer.status_code == 404 and answer.json()["code"] == "ORDER_NOT_EXIST"   # 120 s: still accepted
    assert abs(int(answer.headers["Wechatpay-Timestamp"]) - 120 - time.time()) <= 2
    sim_merchant.sim.configure(clock_offset_s=-400)
    refused = sim_merchant.query("NOSUCH0001")
    assert refused.status_code == 401 and refused.json()["code"] == "SIGN_ERROR"
    assert "5分钟" in refused.json()["message"]
    for bad in ({"clock_offset_s": 86_401}, {"clock_offset_s": 1.5}, {"clock_offset_s": True}):
        assert sim_merchant.control("POST", "/_sim/config", bad).status_code == 400, bad
    assert sim_merchant.sim.clock_offset_s == -400
    sim_merchant.control("POST", "/_sim/reset")
    assert sim_merchant.sim.configure()["clock_offset_s"] == 0
    assert abs(int(sim_merchant.query("NOSUCH0001").headers["Wechatpay-Timestamp"]) - time.time()) <= 2
