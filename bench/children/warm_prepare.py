"""Child of `make bench` (Python 3.10 -B -S in the unpacked prepare package): warm latency.

The bare code sends the store exactly the commands ours sends (the same documents,
indexes, projections and returned versions), so the difference is our own code.

ours: N creates (POST /orders) then N status queries (GET /orders/{n}, unpaid, so each asks
WeChat Pay), through `index.main_handler`.  bare: the same round trips with nothing of
ours: the code2session GET, the catalog read, the insert, the signed prepay and its
verified answer, the prepay-id update and paySign; the order read and the signed,
verified query.  Our overhead per request is the difference.
argv[1]: JSON spec.  Writes the latencies (seconds) as BENCH=... on stdout.
"""
import base64
import http.client
import json
import os
import secrets
import sys
import time
from urllib.parse import urlencode, urlsplit

import index
import pymongo
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

spec = json.loads(sys.argv[1])
N, WARMUP = spec["n"], spec["warmup"]
env = os.environ
clock = time.perf_counter


CREATE = {"httpMethod": "POST", "path": "/orders", "headers": {"content-type": "application/json"},
          "queryString": {}, "body": json.dumps({"code": "test-bench", "items": [{"sku": "A1", "quantity": 1}]})}


def ours_create() -> tuple[str, str]:
    reply = index.main_handler(CREATE, {"request_id": "w"})
    assert reply["statusCode"] == 200, reply
    answer = json.loads(reply["body"])
    return answer["outTradeNo"], answer["orderToken"]


def ours_status(number: str, token: str) -> None:
    reply = index.main_handler({"httpMethod": "GET", "path": f"/orders/{number}", "body": "", "queryString": {},
                                "headers": {"x-order-token": token}}, {"request_id": "w"})
    assert reply["statusCode"] == 200, reply


db = pymongo.MongoClient(env["MONGODB_URI"], maxPoolSize=4, serverMonitoringMode="poll")[env["MONGODB_DB"]]
orders = db["bare_orders"]
# The same indexes and the same documents as ours: the store does the same work.
for keys, unique in (([("outTradeNo", 1)], True), ([("idemKey", 1)], True),
                     ([("payStatus", 1), ("expireTime", 1)], False), ([("payStatus", 1), ("createTime", 1)], False),
                     ([("openid", 1), ("createTime", -1)], False), ([("paidAt", 1)], False)):
    orders.create_index(keys, unique=unique)
private_key = load_pem_private_key(env["WECHATPAY_PRIVATE_KEY"].encode(), None, unsafe_skip_rsa_key_validation=True)
public_key = load_pem_public_key(env["WECHATPAY_PUBLIC_KEY"].encode())
pay_base, login_base = urlsplit(env["WECHATPAY_API_BASE"]), urlsplit(env["WECHAT_API_BASE"])
pay = http.client.HTTPConnection(pay_base.hostname, pay_base.port, timeout=8)
login = http.client.HTTPConnection(login_base.hostname, login_base.port, timeout=8)
LOGIN_QUERY = urlencode({"appid": env["WECHAT_APPID"], "secret": env["WECHAT_APPSECRET"], "js_code": "test-bench",
                         "grant_type": "authorization_code"})


def sign(message: bytes) -> str:
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def call(method: str, path: str, payload: dict | None) -> dict:
    body = json.dumps(payload, separators=(",", ":")).encode() if payload is not None else b""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    signature = sign(f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n")
    headers = {"Authorization": f'WECHATPAY2-SHA256-RSA2048 mchid="{env["WECHATPAY_MCHID"]}",'
                                f'nonce_str="{nonce}",signature="{signature}",timestamp="{timestamp}",'
                                f'serial_no="{env["WECHATPAY_CERT_SERIAL_NO"]}"',
               "Accept": "application/json", "Content-Type": "application/json",
               "Wechatpay-Serial": env["WECHATPAY_PUBLIC_KEY_ID"]}
    pay.request(method, path, body=body or None, headers=headers)
    response = pay.getresponse()
    raw = response.read()
    message = f"{response.getheader('Wechatpay-Timestamp')}\n{response.getheader('Wechatpay-Nonce')}\n".encode()
    public_key.verify(base64.b64decode(response.getheader("Wechatpay-Signature")), message + raw + b"\n",
                      padding.PKCS1v15(), hashes.SHA256())
    return json.loads(raw)


def bare_create() -> str:
    login.request("GET", f"/sns/jscode2session?{LOGIN_QUERY}")
    openid = json.loads(login.getresponse().read())["openid"]
    product = next(iter(db["products"].find({"sku": {"$in": ["A1"]}}, {"_id": 0})))
    number = f"B{int(time.time() * 1000)}{secrets.token_hex(5)}"
    now = int(time.time() * 1000)
    orders.insert_one({"outTradeNo": number, "openid": openid, "appid": env["WECHAT_APPID"],
                       "mchid": env["WECHATPAY_MCHID"], "totalFee": product["price"], "description": product["name"],
                       "items": [{"sku": "A1", "name": product["name"], "quantity": 1, "price": product["price"],
                                  "lineFee": product["price"]}], "payStatus": "NOTPAY", "createTime": now,
                       "updateTime": now, "expireTime": now + 1_800_000, "idemKey": f"once:{number}",
                       "requestHash": number, "refundedFee": 0, "refundingFee": 0, "refundableFee": 0,
                       "refundStates": {}, "transactionId": None, "prepayId": None, "paidAt": None})
    answer = call("POST", "/v3/pay/transactions/jsapi", {
        "appid": env["WECHAT_APPID"], "mchid": env["WECHATPAY_MCHID"], "description": product["name"],
        "out_trade_no": number, "notify_url": env["WECHATPAY_NOTIFY_URL"],
        "amount": {"total": product["price"], "currency": "CNY"}, "payer": {"openid": openid}})
    orders.find_one_and_update({"outTradeNo": number, "payStatus": "NOTPAY"},
                               {"$set": {"prepayId": answer["prepay_id"], "updateTime": now}},
                               projection={"_id": 0}, return_document=pymongo.ReturnDocument.AFTER)
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    sign(f"{env['WECHAT_APPID']}\n{timestamp}\n{nonce}\nprepay_id={answer['prepay_id']}\n".encode())
    return number


def bare_status(number: str) -> None:
    orders.find_one({"outTradeNo": number}, {"_id": 0})
    call("GET", f"/v3/pay/transactions/out-trade-no/{number}?mchid={env['WECHATPAY_MCHID']}", None)


def timed(function, *args):
    started = clock()
    result = function(*args)
    return clock() - started, result


# Ours and bare alternate request by request: the store and the machine change alike for both.
result = {"ours": {"create": [], "status": []}, "bare": {"create": [], "status": []}}
made = []
for i in range(WARMUP + N):
    ours_seconds, ours_order = timed(ours_create)
    bare_seconds, bare_order = timed(bare_create)
    made.append((ours_order, bare_order))
    if i >= WARMUP:
        result["ours"]["create"].append(ours_seconds)
        result["bare"]["create"].append(bare_seconds)
for i, (ours_order, bare_order) in enumerate(made):
    ours_seconds, _ = timed(ours_status, *ours_order)
    bare_seconds, _ = timed(bare_status, bare_order)
    if i >= WARMUP:
        result["ours"]["status"].append(ours_seconds)
        result["bare"]["status"].append(bare_seconds)
print("BENCH=" + json.dumps(result), flush=True)
