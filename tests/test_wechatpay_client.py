"""WeChatPayClient over real HTTP against a loopback fake of the WeChat Pay API.

The fake (`FakeWeChatPay`, http.server in a thread on port 0) verifies every request's
Authorization with the merchant *public* key over the method, the raw path and query
it received, and the raw body, so signing is proven over the wire.  It signs its
answers with the test platform key, unless a test asks for something broken.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time

import pytest

from shared.errors import WeChatPayBadResponse, WeChatPayError, WeChatPayRejected, WeChatPayUnreachable
from shared.http import HttpError
from shared.wechatpay import signing
from shared.wechatpay.client import WeChatPayClient
from tests.fake_wechatpay import FakeWeChatPay, Received, Reply, closed_port, signed, unsigned
from tests.keys import (
    APIV3_KEY,
    APPID,
    CERT_SERIAL_NO,
    MCHID,
    PUBLIC_KEY_ID,
    key_pair,
    make_config,
    merchant_keys,
    platform_keys,
    sign_response,
    transaction,
)

# --- the fake WeChat Pay ----------------------------------------------------------------


@pytest.fixture
def fake():
    server = FakeWeChatPay().start()
    yield server
    server.stop()


@pytest.fixture
def config(fake):
    return make_config("prepare", WECHATPAY_API_BASE=fake.base)


@pytest.fixture
def client(config):
    wxpay = WeChatPayClient.from_config(config, read_timeout=2.0)
    yield wxpay
    wxpay.close()



def prepay_args(**overrides):
    args = {"out_trade_no": "T20240501000000001", "description": "Tea x2", "total_fee": 8800,
            "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "time_expire": "2024-05-01T12:30:00+08:00"}
    args.update(overrides)
    return args


def sha1(data: bytes):
    return hashlib.sha1(data, usedforsecurity=False)


# --- prepay and payment parameters ------------------------------------------------------

def test_jsapi_prepay_sends_a_signed_request_and_returns_prepay_id(fake, client):
    fake.handler = lambda req: signed(200, {"prepay_id": "wx201410272009395522657a690389285100"})
    assert client.jsapi_prepay(**prepay_args()) == "wx201410272009395522657a690389285100"
    [req] = fake.received
    assert req.method == "POST" and req.path == "/v3/pay/transactions/jsapi" and req.auth_ok
    assert req.headers["Accept"] == "application/json"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Wechatpay-Serial"] == PUBLIC_KEY_ID
    assert req.headers["User-Agent"] == "cloudpay-scf"
    assert json.loads(req.body) == {
        "appid": APPID, "mchid": MCHID, "description": "Tea x2", "out_trade_no": "T20240501000000001",
        "time_expire": "2024-05-01T12:30:00+08:00", "notify_url": "http://127.0.0.1:9/notify",
        "amount": {"total": 8800, "currency": "CNY"}, "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    }


def test_jsapi_prepay_notify_url_and_attach_overrides(fake, client):
    fake.handler = lambda req: signed(200, {"prepay_id": "wx1"})
    client.jsapi_prepay(**prepay_args(description="绿茶 x2"), notify_url="https://example.com/n", attach="a1")
    body = json.loads(fake.received[0].body)
    assert body["notify_url"] == "https://example.com/n" and body["attach"] == "a1"
    assert body["description"] == "绿茶 x2"  # sent as UTF-8 and signed as such
    assert fake.received[0].auth_ok


@pytest.mark.parametrize("amount,error", [(True, TypeError), (88.0, TypeError), ("8800", TypeError),
                                          (None, TypeError), (0, ValueError), (-1, ValueError)])
def test_amounts_must_be_positive_int_fen(fake, client, amount, error):
    with pytest.raises(error):
        client.jsapi_prepay(**prepay_args(total_fee=amount))
    with pytest.raises(error):
        client.refund(out_trade_no="T20240501000000001", out_refund_no="R1", refund=amount, total=100)
    with pytest.raises(error):
        client.refund(out_trade_no="T20240501000000001", out_refund_no="R1", refund=1, total=amount)
    assert fake.received == []


@pytest.mark.parametrize("override", [{"out_trade_no": "T1"}, {"out_trade_no": "T2024/../x0001"},
                                      {"time_expire": "2024-05-01 12:30:00"}, {"openid": ""},
                                      {"description": ""}, {"description": "x" * 128}])
def test_prepay_rejects_bad_arguments_before_sending(fake, client, override):
    with pytest.raises(ValueError):
        client.jsapi_prepay(**prepay_args(**override))
    assert fake.received == []


def test_prepay_answer_without_prepay_id_is_bad_response(fake, client):
    fake.handler = lambda req: signed(200, {"something": "else"})
    with pytest.raises(WeChatPayBadResponse):
        client.jsapi_prepay(**prepay_args())


def test_request_payment_params_are_signed_for_wx_request_payment():
    from wechatpayv3 import WeChatPay, WeChatPayType

    config = make_config()
    client = WeChatPayClient.from_config(config, clock=lambda: 1414561699.9,
                                         nonce_func=lambda: "5K8264ILTKCH16CQ")
    params = client.request_payment_params("wx201410272009395522657a690389285100")
    assert params == {"timeStamp": "1414561699", "nonceStr": "5K8264ILTKCH16CQ",
                      "package": "prepay_id=wx201410272009395522657a690389285100", "signType": "RSA",
                      "paySign": params["paySign"]}
    message = f"{APPID}\n1414561699\n5K8264ILTKCH16CQ\nprepay_id=wx201410272009395522657a690389285100\n"
    assert signing.rsa_verify(merchant_keys().public_key, message.encode(), params["paySign"])
    reference = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=MCHID,
                          private_key=merchant_keys().private_pem, cert_serial_no=CERT_SERIAL_NO,
                          appid=APPID, apiv3_key=APIV3_KEY, public_key=platform_keys().public_pem,
                          public_key_id=PUBLIC_KEY_ID)
    assert params["paySign"] == reference.sign([APPID, "1414561699", "5K8264ILTKCH16CQ",
                                                "prepay_id=wx201410272009395522657a690389285100"])


@pytest.mark.parametrize("prepay_id", ["", "wx1\nforged", None, "prepay_id=wx1"])
def test_request_payment_params_refuses_odd_prepay_ids(prepay_id):
    client = WeChatPayClient.from_config(make_config())
    with pytest.raises(ValueError):
        client.request_payment_params(prepay_id)


def test_injected_clock_and_nonce_are_used_in_authorization(fake, config):
    now = time.time()
    client = WeChatPayClient.from_config(config, clock=lambda: now, nonce_func=lambda: "FIXEDNONCE")
    fake.handler = lambda req: signed(200, {"prepay_id": "wx1"})
    client.jsapi_prepay(**prepay_args())
    fields = signing.parse_authorization(fake.received[0].headers["Authorization"])
    assert fields["timestamp"] == str(int(now)) and fields["nonce_str"] == "FIXEDNONCE"
    assert fields["serial_no"] == CERT_SERIAL_NO and fields["mchid"] == MCHID


# --- query, close, refund -----------------------------------------------------------------

def test_query_order_signs_the_query_string(fake, client):
    answer = transaction(out_trade_no="T20240501000000001", total=8800)
    fake.handler = lambda req: signed(200, answer)
    assert client.query_order("T20240501000000001") == answer
    [req] = fake.received
    assert req.method == "GET" and req.auth_ok and req.body == b""
    assert req.path == "/v3/pay/transactions/out-trade-no/T20240501000000001?mchid=1900000109"


def test_query_order_quotes_path_pieces(fake, client):
    fake.handler = lambda req: signed(200, {"trade_state": "NOTPAY"})
    client.query_order("T2024|05*01")
    assert fake.received[0].path == "/v3/pay/transactions/out-trade-no/T2024%7C05%2A01?mchid=1900000109"
    assert fake.received[0].auth_ok


def test_unknown_order_is_rejected_with_wechat_code(fake, client):
    fake.handler = lambda req: signed(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
    with pytest.raises(WeChatPayRejected) as info:
        client.query_order("T20240501000000001")
    assert info.value.wechat_code == "ORDER_NOT_EXIST" and info.value.http_status == 404
    assert info.value.code == "WECHATPAY_ORDER_NOT_EXIST" and info.value.message == "订单不存在"


def test_close_order_accepts_a_signed_204(fake, client):
    fake.handler = lambda req: signed(204)
    assert client.close_order("T20240501000000001") is None
    [req] = fake.received
    assert req.path == "/v3/pay/transactions/out-trade-no/T20240501000000001/close"
    assert json.loads(req.body) == {"mchid": MCHID} and req.auth_ok


def test_close_order_unsigned_204_is_bad_response(fake, client):
    fake.handler = lambda req: unsigned(204)
    with pytest.raises(WeChatPayBadResponse):
        client.close_order("T20240501000000001")


def test_refund_request_and_answer(fake, client):
    answer = {"refund_id": "50000000382019052709732678859", "out_refund_no": "R20240501-1",
              "status": "PROCESSING", "amount": {"total": 8800, "refund": 800}}
    fake.handler = lambda req: signed(200, answer)
    result = client.refund(out_trade_no="T20240501000000001", out_refund_no="R20240501-1", refund=800,
                           total=8800, reason="broken cup")
    assert result == answer
    [req] = fake.received
    assert req.method == "POST" and req.path == "/v3/refund/domestic/refunds" and req.auth_ok
    assert json.loads(req.body) == {
        "out_trade_no": "T20240501000000001", "out_refund_no": "R20240501-1",
        "amount": {"refund": 800, "total": 8800, "currency": "CNY"}, "reason": "broken cup",
        "notify_url": "http://127.0.0.1:9/notify"}


def test_refund_cannot_exceed_total(fake, client):
    with pytest.raises(ValueError):
        client.refund(out_trade_no="T20240501000000001", out_refund_no="R1", refund=101, total=100)
    assert fake.received == []


def test_query_refund(fake, client):
    fake.handler = lambda req: signed(200, {"out_refund_no": "R20240501-1", "status": "SUCCESS"})
    assert client.query_refund("R20240501-1")["status"] == "SUCCESS"
    assert fake.received[0].path == "/v3/refund/domestic/refunds/R20240501-1"
    assert fake.received[0].auth_ok


# --- untrustworthy 2xx answers ------------------------------------------------------------

@pytest.mark.parametrize("make_reply", [
    pytest.param(lambda: unsigned(200, b'{"prepay_id":"wx1"}'), id="unsigned"),
    pytest.param(lambda: signed(200, {"prepay_id": "wx1"}, platform_key=key_pair("attacker").private_key),
                 id="signed-by-another-key"),
    pytest.param(lambda: signed(200, {"prepay_id": "wx1"}, platform_key=merchant_keys().private_key),
                 id="signed-by-merchant-key"),
    pytest.param(lambda: signed(200, {"prepay_id": "wx1"}, serial="PUB_KEY_ID_SOMEONE_ELSE"),
                 id="wrong-serial"),
    pytest.param(lambda: signed(200, {"prepay_id": "wx1"}, timestamp=int(time.time()) - 310), id="stale"),
    pytest.param(lambda: signed(200, {"prepay_id": "wx1"}, timestamp=int(time.time()) + 310), id="future"),
    pytest.param(lambda: signed(200, {"prepay_id": "wx1"}, signature="WECHATPAY/SIGNTEST/abc"), id="probe"),
    pytest.param(lambda: Reply(200, b'{"prepay_id":"wx2"}', sign_response(b'{"prepay_id":"wx1"}')),
                 id="body-swapped"),
    pytest.param(lambda: signed(200, raw=b"<html>ok</html>"), id="signed-not-json"),
    pytest.param(lambda: signed(200, raw=b"[1]"), id="signed-not-object"),
])
def test_untrustworthy_2xx_is_bad_response(fake, client, make_reply):
    reply = make_reply()
    fake.handler = lambda req: reply
    with pytest.raises(WeChatPayBadResponse):
        client.jsapi_prepay(**prepay_args())


# --- errors: rejected vs unreachable --------------------------------------------------------

def test_4xx_json_is_rejected_with_its_code(fake, client):
    fake.handler = lambda req: unsigned(400, json.dumps({"code": "PARAM_ERROR",
                                                         "message": "time_expire格式错误"}).encode())
    with pytest.raises(WeChatPayRejected) as info:
        client.jsapi_prepay(**prepay_args())
    assert info.value.wechat_code == "PARAM_ERROR" and info.value.http_status == 400
    assert info.value.status == 502  # to our own client it is a payment-provider failure


def test_5xx_html_is_rejected_as_http_status(fake, client):
    fake.handler = lambda req: unsigned(500, b"<html><body>Internal Server Error</body></html>", "text/html")
    with pytest.raises(WeChatPayRejected) as info:
        client.query_order("T20240501000000001")
    assert info.value.wechat_code == "HTTP_500" and info.value.http_status == 500


@pytest.mark.parametrize("body", [b'{"message":"no code"}', b'{"code":"lower case"}', b'{"code":42}', b"[]"])
def test_non_2xx_without_a_proper_code_is_http_status(fake, client, body):
    fake.handler = lambda req: unsigned(502, body)
    with pytest.raises(WeChatPayRejected) as info:
        client.query_order("T20240501000000001")
    assert info.value.wechat_code == "HTTP_502"


def test_redirects_are_not_followed(fake, client):
    fake.handler = lambda req: Reply(302, b"", {"Location": "http://127.0.0.1:9/elsewhere"})
    with pytest.raises(WeChatPayRejected) as info:
        client.query_order("T20240501000000001")
    assert info.value.wechat_code == "HTTP_302" and len(fake.received) == 1


def test_read_timeout_is_unreachable(fake, config):
    client = WeChatPayClient.from_config(config, connect_timeout=1.0, read_timeout=0.2)
    fake.handler = lambda req: Reply(200, b"{}", {}, delay=1.0)
    started = time.monotonic()
    with pytest.raises(WeChatPayUnreachable) as info:
        client.jsapi_prepay(**prepay_args())
    assert time.monotonic() - started < 1.0
    assert isinstance(info.value.__cause__, HttpError) and info.value.__cause__.kind == "timeout"
    assert not isinstance(info.value, WeChatPayRejected)
    assert len(fake.received) == 1  # a POST that timed out is never replayed


def test_connection_refused_is_unreachable():
    config = make_config(WECHATPAY_API_BASE=f"http://127.0.0.1:{closed_port()}")
    client = WeChatPayClient.from_config(config, connect_timeout=1.0)
    with pytest.raises(WeChatPayUnreachable) as info:
        client.query_order("T20240501000000001")
    assert isinstance(info.value.__cause__, HttpError) and info.value.__cause__.kind == "connect"
    with pytest.raises(WeChatPayUnreachable):
        client.close_order("T20240501000000001")


def test_every_failure_is_a_wechatpay_error_and_distinguishable(fake, client):
    fake.handler = lambda req: unsigned(200, b"{}")
    with pytest.raises(WeChatPayError) as bad:
        client.query_order("T20240501000000001")
    fake.handler = lambda req: unsigned(403, b'{"code":"NO_AUTH","message":"x"}')
    with pytest.raises(WeChatPayError) as rejected:
        client.query_order("T20240501000000001")
    assert type(bad.value) is WeChatPayBadResponse and type(rejected.value) is WeChatPayRejected


# --- trade bill ---------------------------------------------------------------------------

CSV = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态\r\n"
       "`2024-05-01 12:00:00,`wx8888888888888888,`1900000109,`0,`,`4200000001,`T20240501000000001,"
       "`oUpF8,`JSAPI,`SUCCESS\r\n").encode()


def bill_handler(fake, *, csv=CSV, hash_value=None, hash_type="SHA1", download_url=None, served=None,
                 download_reply=None):
    gz = gzip.compress(csv)
    served = gz if served is None else served
    digest = sha1(csv).hexdigest() if hash_value is None else hash_value
    url = download_url or f"{fake.base}/v3/billdownload/file?token=6XIv5TUPto7pByrTQKhd6kwvyKLG2uY2"

    def handler(req: Received) -> Reply:
        if req.path.startswith("/v3/bill/tradebill"):
            return signed(200, {"hash_type": hash_type, "hash_value": digest, "download_url": url})
        if req.path.startswith("/v3/billdownload/file"):
            return download_reply or Reply(200, served, {"Content-Type": "application/octet-stream"})
        return unsigned(404, b'{"code":"NOT_FOUND","message":"x"}')
    return handler


def test_trade_bill_downloads_checks_and_gunzips(fake, client, logs):
    fake.handler = bill_handler(fake)
    assert client.trade_bill("2024-05-01") == CSV
    apply, download = fake.received
    assert apply.path == "/v3/bill/tradebill?bill_date=2024-05-01&bill_type=ALL&tar_type=GZIP"
    assert download.path == "/v3/billdownload/file?token=6XIv5TUPto7pByrTQKhd6kwvyKLG2uY2"
    assert apply.auth_ok and download.auth_ok  # the download is signed over path and token
    assert "6XIv5TUPto7pByrTQKhd6kwvyKLG2uY2" not in logs.getvalue()


def test_trade_bill_bill_type(fake, client):
    fake.handler = bill_handler(fake)
    client.trade_bill("2024-05-01", bill_type="SUCCESS")
    assert "bill_type=SUCCESS" in fake.received[0].path
    with pytest.raises(ValueError):
        client.trade_bill("2024-05-01", bill_type="EVERYTHING")
    with pytest.raises(ValueError):
        client.trade_bill("20240501")


def test_trade_bill_hash_mismatch_is_bad_response(fake, client):
    fake.handler = bill_handler(fake, hash_value=sha1(b"another file").hexdigest())
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")


def test_trade_bill_hash_is_over_the_decompressed_bill_not_the_gzip_file(fake, client):
    """WeChat documents hash_value as the digest of the original (decompressed) bill."""
    fake.handler = bill_handler(fake, hash_value=sha1(gzip.compress(CSV)).hexdigest())
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")


def test_trade_bill_tampered_file_is_bad_response(fake, client):
    fake.handler = bill_handler(fake, served=gzip.compress(CSV.replace(b"SUCCESS", b"REFUND!")))
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")


def test_trade_bill_uncompressed_file_with_matching_hash_is_accepted(fake, client):
    fake.handler = bill_handler(fake, served=CSV)
    assert client.trade_bill("2024-05-01") == CSV


def test_trade_bill_corrupt_gzip_is_bad_response(fake, client):
    fake.handler = bill_handler(fake, served=gzip.compress(CSV)[:-12])
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")
    fake.handler = bill_handler(fake, served=b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")


def test_trade_bill_multi_member_gzip(fake, client):
    fake.handler = bill_handler(fake, served=gzip.compress(CSV[:50]) + gzip.compress(CSV[50:]))
    assert client.trade_bill("2024-05-01") == CSV


@pytest.mark.parametrize("url", [
    "http://198.51.100.7/v3/billdownload/file?token=x",
    "http://127.0.0.1:1/v3/billdownload/file?token=x",             # same host, other port
    "https://api.mch.weixin.qq.com.evil.example/v3/billdownload/file?token=x",
    "file:///etc/passwd",
])
def test_trade_bill_download_url_on_another_host_is_refused(fake, client, url):
    fake.handler = bill_handler(fake, download_url=url)
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")
    assert len(fake.received) == 1  # only the signed apply call; nothing fetched


def test_trade_bill_unsupported_hash_type_is_bad_response(fake, client):
    fake.handler = bill_handler(fake, hash_type="MD5")
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")


def test_trade_bill_size_is_bounded(fake, config):
    client = WeChatPayClient.from_config(config, max_bill_bytes=1024)
    big = b"x" * 5000
    fake.handler = bill_handler(fake, csv=big)  # 5000 bytes inflate from a tiny gzip
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")
    fake.handler = bill_handler(fake, csv=big, served=big)  # plain and too big on the wire
    with pytest.raises(WeChatPayBadResponse):
        client.trade_bill("2024-05-01")


def test_no_bill_for_the_day_is_rejected(fake, client):
    fake.handler = lambda req: unsigned(400, b'{"code":"NO_STATEMENT_EXIST","message":"no bill"}')
    with pytest.raises(WeChatPayRejected) as info:
        client.trade_bill("2024-05-01")
    assert info.value.wechat_code == "NO_STATEMENT_EXIST"


def test_trade_bill_download_error_is_rejected(fake, client):
    fake.handler = bill_handler(fake, download_reply=unsigned(
        400, b'{"code":"INVALID_REQUEST","message":"token expired"}'))
    with pytest.raises(WeChatPayRejected) as info:
        client.trade_bill("2024-05-01")
    assert info.value.wechat_code == "INVALID_REQUEST"


# --- logging, singleton, concurrency --------------------------------------------------------

def test_one_log_line_per_call_without_secrets_or_payer_data(fake, client, logs):
    fake.handler = lambda req: signed(200, {"prepay_id": "wx1"})
    client.jsapi_prepay(**prepay_args())
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "wechatpay.call" and line["method"] == "POST"
    assert line["path"] == "/v3/pay/transactions/jsapi" and line["status"] == 200 and line["outcome"] == "ok"
    assert isinstance(line["ms"], int)
    text = logs.getvalue()
    for secret in ("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "WECHATPAY2", "Tea x2", APIV3_KEY, "PRIVATE KEY"):
        assert secret not in text


def test_unreachable_calls_are_logged(client, logs):
    client = WeChatPayClient.from_config(make_config(WECHATPAY_API_BASE=f"http://127.0.0.1:{closed_port()}"))
    with pytest.raises(WeChatPayUnreachable):
        client.query_order("T20240501000000001")
    line = json.loads(logs.getvalue().splitlines()[-1])
    assert line["outcome"] == "unreachable" and line["status"] is None
    assert line["path"].startswith("/v3/pay/transactions/out-trade-no/")


def test_concurrent_calls_share_one_client(fake, client):
    fake.handler = lambda req: signed(200, {"trade_state": "SUCCESS", "path": req.path})
    errors, answers = [], []

    def query(i):
        try:
            answers.append(client.query_order(f"T2024050100000{i:04d}"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=query, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(answers) == 12
    assert all(req.auth_ok for req in fake.received)


def test_wechatpayv3_agrees_with_the_fake_server(fake):
    """wechatpayv3, an independent client, passes the fake's Authorization check and
    accepts the fake's signed answers: the fake is a faithful stand-in for WeChat Pay."""
    from wechatpayv3 import WeChatPay, WeChatPayType

    wxpay = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=MCHID,
                      private_key=merchant_keys().private_pem, cert_serial_no=CERT_SERIAL_NO, appid=APPID,
                      apiv3_key=APIV3_KEY, public_key=platform_keys().public_pem, public_key_id=PUBLIC_KEY_ID)
    wxpay._core._gate_way = fake.base
    fake.handler = lambda req: signed(200, {"trade_state": "NOTPAY"})
    status, text = wxpay.query(out_trade_no="T20240501000000001")
    assert status == 200 and json.loads(text) == {"trade_state": "NOTPAY"}
    assert fake.received[-1].auth_ok
    fake.handler = lambda req: signed(204)
    status, _ = wxpay.close(out_trade_no="T20240501000000001")
    assert status == 204 and fake.received[-1].auth_ok


class _RecordingHttp:
    """Stands in for the HTTP client: records the URL, then fails like a dead network."""

    def __init__(self):
        self.urls: list[str] = []

    def request(self, method, url, **kwargs):
        self.urls.append(url)
        raise HttpError("connect", "offline")

    def close(self):
        pass


@pytest.mark.parametrize("url,allowed", [
    ("https://api2.mch.weixin.qq.com/v3/billdownload/file?token=x", True),   # backup host
    ("https://api.mch.weixin.qq.com/v3/billdownload/file?token=x", True),
    ("http://api2.mch.weixin.qq.com/v3/billdownload/file?token=x", False),   # downgraded
    ("https://api3.mch.weixin.qq.com/v3/billdownload/file?token=x", False),
    ("https://api.mch.weixin.qq.com@evil.example/v3/billdownload/file", False),
])
def test_bill_download_may_use_wechat_pays_backup_host(url, allowed):
    session = _RecordingHttp()
    client = WeChatPayClient.from_config(make_config(WECHATPAY_API_BASE="https://api.mch.weixin.qq.com"),
                                         http=session)
    expected = WeChatPayUnreachable if allowed else WeChatPayBadResponse
    with pytest.raises(expected):
        client._download(url)
    assert session.urls == ([url] if allowed else [])
