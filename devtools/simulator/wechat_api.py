"""The WeChat Pay APIv3 endpoints (api.mch.weixin.qq.com) and api.weixin.qq.com's login, tokens
and order shipping service (see the routes above handle_weixin).

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

from devtools.simulator import miniprogram, shipping
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
#
# WeChat answers HTTP 200 with an errcode.  Login (/sns/jscode2session, /cgi-bin/token) as
# text/plain; stable_token and the shipping API (JSON bodies) as application/json.
#
#   GET  /sns/jscode2session            login test codes (miniprogram.py)
#   GET  /cgi-bin/token                 a token; counted as token_fetches (access_tokens.py)
#   POST /cgi-bin/stable_token          {grant_type: "client_credential", appid, secret, force_refresh?}
#                                       -> {access_token, expires_in}; 41002/40013/41004/40125/40002,
#                                       47001 (not a JSON object), 44002 (empty), 43002 (not POST)
#   POST /wxa/sec/order/upload_shipping_info?access_token=   (shipping.py)
#   POST /wxa/sec/order/get_order?access_token=              (shipping.py)
#   POST /wxa/sec/order/is_trade_managed?access_token=       {appid} -> is_trade_managed (shipping.py)
#   the shipping routes check the token first: 41001 missing, 40001 invalid or superseded,
#   42001 expired.  Anything else: 40066 invalid url.

WEIXIN_JSON_TYPE = "application/json; encoding=utf-8"   # what api.weixin.qq.com sends


def _weixin_reply(answer: dict, content_type: str = WEIXIN_JSON_TYPE) -> Reply:
    reply = json_reply(200, answer)
    reply.content_type = content_type
    return reply


def _weixin_json(request: HttpRequest) -> tuple[object, dict | None]:
    """(the JSON body, None), or (None, the errcode answer WeChat gives instead)."""
    if request.method != "POST":
        return None, miniprogram.error(43002)
    if not request.body.strip():
        return None, miniprogram.error(44002)
    try:
        return request.json(), None
    except SimError:
        return None, miniprogram.error(47001)


def _jscode2session(sim: Simulator, request: HttpRequest) -> Reply:
    sim.count("jscode2session")
    answer = miniprogram.jscode2session(request.query, sim.keys.appid, sim.keys.app_secret)
    return _weixin_reply(answer, "text/plain")


def _token(sim: Simulator, request: HttpRequest) -> Reply:
    sim.count("token_fetches")
    refused = miniprogram.credentials_error(request.query, sim.keys.appid, sim.keys.app_secret)
    return _weixin_reply(refused or sim.access_tokens.issue_legacy(), "text/plain")


def _stable_token(sim: Simulator, request: HttpRequest) -> Reply:
    sim.count("stable_token_fetches")
    body, refused = _weixin_json(request)
    if refused is None and not isinstance(body, dict):
        refused = miniprogram.error(47001)
    if refused is None:
        fields = {name: body.get(name) for name in ("grant_type", "appid", "secret")}
        force_refresh = body.get("force_refresh", False)
        if any(v is not None and not isinstance(v, str) for v in fields.values()) or \
                not isinstance(force_refresh, bool):
            refused = miniprogram.error(47001)
        else:
            refused = miniprogram.credentials_error(fields, sim.keys.appid, sim.keys.app_secret)
            if refused is None and fields["grant_type"] != "client_credential":
                refused = miniprogram.error(40002)
    if refused is not None:
        return _weixin_reply(refused)
    return _weixin_reply(sim.access_tokens.issue_stable(force_refresh=force_refresh))


def _shipping_call(sim: Simulator, request: HttpRequest, counter: str, operation) -> Reply:
    sim.count(counter)
    problem = sim.access_tokens.check(request.query.get("access_token"))
    if problem is not None:
        return _weixin_reply(shipping.error_answer(problem))
    body, refused = _weixin_json(request)
    return _weixin_reply(refused if refused is not None else operation(body))


def _upload_shipping_info(sim: Simulator, request: HttpRequest) -> Reply:
    return _shipping_call(sim, request, "shipping_uploads", sim.shipping_book.upload)


def _get_order(sim: Simulator, request: HttpRequest) -> Reply:
    return _shipping_call(sim, request, "shipping_queries", sim.shipping_book.get_order)


def _is_trade_managed(sim: Simulator, request: HttpRequest) -> Reply:
    return _shipping_call(sim, request, "trade_managed_queries",
                          lambda body: sim.shipping_book.is_trade_managed(body, sim.keys.appid))


def _get_delivery_list(sim: Simulator, request: HttpRequest) -> Reply:
    """The express companies WeChat knows (delivery_id, delivery_name): the ones the
    simulator's upload accepts (the real list has about 1,400)."""
    def answer(_body):
        companies = [{"delivery_id": code, "delivery_name": name}
                     for code, name in sorted(shipping.KNOWN_EXPRESS_COMPANIES.items())]
        return {"errcode": 0, "delivery_list": companies, "count": len(companies)}

    return _shipping_call(sim, request, "delivery_list_fetches", answer)


UPLOAD_SHIPPING_INFO_PATH = "/wxa/sec/order/upload_shipping_info"
DELIVERY_LIST_PATH = "/cgi-bin/express/delivery/open_msg/get_delivery_list"
GET_ORDER_PATH = "/wxa/sec/order/get_order"
IS_TRADE_MANAGED_PATH = "/wxa/sec/order/is_trade_managed"
STABLE_TOKEN_PATH = "/cgi-bin/stable_token"
_weixin = {
    "/sns/jscode2session": _jscode2session,
    "/cgi-bin/token": _token,
    STABLE_TOKEN_PATH: _stable_token,
    UPLOAD_SHIPPING_INFO_PATH: _upload_shipping_info,
    GET_ORDER_PATH: _get_order,
    IS_TRADE_MANAGED_PATH: _is_trade_managed,
    DELIVERY_LIST_PATH: _get_delivery_list,
}
WEIXIN_PREFIXES = ("/sns/", "/cgi-bin/", "/wxa/")


def handle_weixin(sim: Simulator, request: HttpRequest) -> Reply:
    """api.weixin.qq.com: login, tokens and the order shipping service."""
    handler = _weixin.get(request.path)
    if handler is None:
        return _weixin_reply(miniprogram.error(40066), "text/plain")
    return handler(sim, request)


def handle(sim: Simulator, request: HttpRequest) -> Reply:
    if request.path.startswith("/v3/"):
        return handle_v3(sim, request)
    if request.path.startswith(WEIXIN_PREFIXES):
        return handle_weixin(sim, request)
    return error_reply(SimError(404, "NOT_FOUND", "请求的资源不存在"))
