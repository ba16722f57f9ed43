"""The WeChat Pay APIv3 endpoints (api.mch.weixin.qq.com) and the login endpoint (api.weixin.qq.com).

Every /v3/ request must carry a valid merchant Authorization (else 401 SIGN_ERROR);
every /v3/ answer is signed with the key the key mode chooses (signer.py), errors and
204s included, except the bill file download (unsigned, as WeChat Pay serves it).

`GET /v3/certificates` (the platform certificates download): in public-key mode
`404 RESOURCE_NOT_EXISTS` (such a merchant has no certificate); in certificate and
switch modes `200 {"data": [{"serial_no", "effective_time", "expire_time",
"encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce", "associated_data":
"certificate", "ciphertext"}}]}`, every certificate held, the PEM encrypted with the
APIv3 key; the answer is always signed by the signing certificate (its serial in
Wechatpay-Serial), even in switch mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devtools.simulator import miniprogram
from devtools.simulator.errors import SimError, param_error
from devtools.simulator.protocol import HttpRequest, Reply, Router, error_reply, json_reply
from devtools.simulator.timeutil import rfc3339
from shared.wechatpay import signing

if TYPE_CHECKING:
    from devtools.simulator.app import Simulator

# WeChat Pay accepts a request timestamp at most 5 minutes away from its own clock.
MAX_CLOCK_SKEW_S = 300
BILL_DOWNLOAD_PATH = "/v3/billdownload/file"


def check_authorization(sim: Simulator, request: HttpRequest) -> str | None:
    """None when the merchant signature is valid, else what is wrong with it."""
    header = request.headers.get("Authorization")
    if not header:
        return "缺少Authorization请求头"
    try:
        auth = signing.parse_authorization(header)
    except ValueError as exc:
        return f"Authorization格式错误: {exc}"
    if auth["mchid"] != sim.keys.mchid:
        return "Authorization中的mchid与商户号不一致"
    if auth["serial_no"].upper() != sim.keys.merchant_serial.upper():
        return "商户证书序列号serial_no不正确"
    if not auth["timestamp"].isdigit() or abs(sim.clock() - int(auth["timestamp"])) > MAX_CLOCK_SKEW_S:
        return "timestamp与微信支付服务器时间相差超过5分钟"
    message = signing.request_message(request.method, request.target, auth["timestamp"], auth["nonce_str"],
                                      request.body)
    if not signing.rsa_verify(sim.keys.merchant_public_key, message, auth["signature"]):
        return "签名验证失败，请检查签名串(请求方法、URL、时间戳、随机串、请求体)"
    return None


# --- /v3 handlers: (sim, request) -> Reply ---------------------------------------------

def _prepay(sim: Simulator, request: HttpRequest) -> Reply:
    prepay_id = sim.ledger.prepay(request.json(), auth_mchid=sim.keys.mchid)
    return json_reply(200, {"prepay_id": prepay_id}, signed=True)


def _query(sim: Simulator, request: HttpRequest) -> Reply:
    view = sim.ledger.query(request.params["out_trade_no"], request.query.get("mchid"))
    return json_reply(200, view, signed=True)


def _query_by_id(sim: Simulator, request: HttpRequest) -> Reply:
    view = sim.ledger.query_by_transaction_id(request.params["transaction_id"], request.query.get("mchid"))
    return json_reply(200, view, signed=True)


def _close(sim: Simulator, request: HttpRequest) -> Reply:
    sim.ledger.close(request.params["out_trade_no"], request.json())
    return json_reply(204, None, signed=True)


def _refund(sim: Simulator, request: HttpRequest) -> Reply:
    view, created = sim.ledger.create_refund(request.json())
    if created:
        sim.refund_requested(view["out_refund_no"])
    return json_reply(200, view, signed=True)


def _query_refund(sim: Simulator, request: HttpRequest) -> Reply:
    return json_reply(200, sim.ledger.refund(request.params["out_refund_no"]), signed=True)


def _trade_bill(sim: Simulator, request: HttpRequest) -> Reply:
    bill_date = request.query.get("bill_date")
    if not bill_date:
        raise param_error("bill_date", "缺失", location="query")
    tar_type = request.query.get("tar_type")
    if tar_type not in (None, "GZIP"):
        raise param_error("tar_type", "仅支持GZIP", tar_type, location="query")
    host = request.headers.get("Host")
    base = f"http://{host}" if host else sim.url
    answer = sim.prepare_bill_download(bill_date, request.query.get("bill_type", "ALL"), gzip=tar_type == "GZIP",
                                       base_url=base)
    return json_reply(200, answer, signed=True)


def _download_bill(sim: Simulator, request: HttpRequest) -> Reply:
    data, content_type = sim.bill_file(request.query.get("token", ""))
    return Reply(200, data, content_type, signed=False)


def _certificates(sim: Simulator, request: HttpRequest) -> Reply:
    if sim.signer.mode == "public_key":
        # A merchant in public-key mode has no platform certificate (wechatpay-java#354).
        raise SimError(404, "RESOURCE_NOT_EXISTS", "无可用的平台证书，请在商户平台-API安全申请使用微信支付公钥")
    certificates, signing_key = sim.signer.snapshot()
    apiv3_key = sim.keys.apiv3_key.encode("ascii")
    data = []
    for certificate in certificates:
        nonce_str = signing.nonce(12)
        data.append({
            "serial_no": certificate.serial,
            "effective_time": rfc3339(certificate.not_before),
            "expire_time": rfc3339(certificate.not_after),
            "encrypt_certificate": {
                "algorithm": "AEAD_AES_256_GCM", "nonce": nonce_str, "associated_data": "certificate",
                "ciphertext": signing.aes_gcm_encrypt(apiv3_key, nonce_str, "certificate",
                                                      certificate.certificate_pem.encode("ascii")),
            },
        })
    reply = json_reply(200, {"data": data}, signed=True)
    reply.sign_with = signing_key   # signed with one of the certificates it lists
    return reply


_v3 = Router()
_v3.add("POST", "/v3/pay/transactions/jsapi", _prepay)
_v3.add("GET", "/v3/pay/transactions/out-trade-no/{out_trade_no}", _query)
_v3.add("GET", "/v3/pay/transactions/id/{transaction_id}", _query_by_id)
_v3.add("POST", "/v3/pay/transactions/out-trade-no/{out_trade_no}/close", _close)
_v3.add("POST", "/v3/refund/domestic/refunds", _refund)
_v3.add("GET", "/v3/refund/domestic/refunds/{out_refund_no}", _query_refund)
_v3.add("GET", "/v3/bill/tradebill", _trade_bill)
_v3.add("GET", BILL_DOWNLOAD_PATH, _download_bill)
_v3.add("GET", "/v3/certificates", _certificates)


def handle_v3(sim: Simulator, request: HttpRequest) -> Reply:
    signed = request.path != BILL_DOWNLOAD_PATH
    problem = check_authorization(sim, request)
    if problem:
        sim.count("sign_errors")
        return error_reply(SimError(401, "SIGN_ERROR", f"签名错误: {problem}"), signed=signed)
    handler = _v3.find(request)
    if handler is None:
        return error_reply(SimError(404, "NOT_FOUND", "请求的资源不存在"), signed=signed)
    try:
        return handler(sim, request)
    except SimError as error:
        return error_reply(error, signed=signed)


# --- api.weixin.qq.com ------------------------------------------------------------------

def handle_weixin(sim: Simulator, request: HttpRequest) -> Reply:
    """Login endpoints; WeChat answers errors with HTTP 200 and an errcode, as text/plain."""
    if request.path == "/sns/jscode2session":
        sim.count("jscode2session")
        answer = miniprogram.jscode2session(request.query, sim.keys.appid, sim.keys.app_secret)
    elif request.path == "/cgi-bin/token":
        sim.count("token_fetches")
        answer = miniprogram.access_token(request.query, sim.keys.appid, sim.keys.app_secret)
    else:
        answer = {"errcode": 40066, "errmsg": "invalid url"}
    reply = json_reply(200, answer)
    reply.content_type = "text/plain"
    return reply


def handle(sim: Simulator, request: HttpRequest) -> Reply:
    if request.path.startswith("/v3/"):
        return handle_v3(sim, request)
    if request.path.startswith(("/sns/", "/cgi-bin/")):
        return handle_weixin(sim, request)
    return error_reply(SimError(404, "NOT_FOUND", "请求的资源不存在"))
