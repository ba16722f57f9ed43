"""Child of `make bench` (Python 3.10 -B -S in the unpacked callback package): warm latency
and throughput of payment notifications.

ours: `index.main_handler` on a signed, encrypted TRANSACTION.SUCCESS for an unpaid order.
bare: the same work with nothing of ours: RSA verification over the raw body, AES-GCM
decryption, the order read, a compare-and-set to SUCCESS and the event insert.
Throughput: 8 threads sending notifications at once, 20% of them duplicates, for both.
The bare code sends the store exactly the commands ours sends.
argv[1]: JSON spec.  Orders and notifications are made before anything is timed.
"""
import base64
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone

import index
import pymongo
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from shared.wechatpay import signing

spec = json.loads(sys.argv[1])
N, WARMUP, THREADS, BURST = spec["n"], spec["warmup"], spec["threads"], spec["burst"]
env = os.environ
clock = time.perf_counter
db = pymongo.MongoClient(env["MONGODB_URI"], maxPoolSize=THREADS + 2, serverMonitoringMode="poll")[env["MONGODB_DB"]]
platform_key = load_pem_private_key(spec["platform_private_pem"].encode(), None)
apiv3_key = env["WECHATPAY_APIV3_KEY"].encode()
run = spec["run"]


def make_orders(collection: str, count: int, prefix: str) -> list[str]:
    numbers = [f"{prefix}{run}{i:07d}" for i in range(count)]
    db[collection].insert_many([{"outTradeNo": n, "openid": "oBench", "appid": env["WECHAT_APPID"],
                                 "mchid": env["WECHATPAY_MCHID"], "items": [], "totalFee": 1990,
                                 "description": "bench", "payStatus": "NOTPAY", "createTime": 0, "updateTime": 0,
                                 "expireTime": 4_102_444_800_000, "refundedFee": 0, "refundingFee": 0,
                                 "refundableFee": 0, "refundStates": {}, "transactionId": None, "prepayId": None,
                                 "paidAt": None, "idemKey": f"once:{n}"} for n in numbers])
    return numbers


def notification(number: str, index_no: int) -> tuple[dict, bytes]:
    resource = {"appid": env["WECHAT_APPID"], "mchid": env["WECHATPAY_MCHID"], "out_trade_no": number,
                "transaction_id": f"42{run}{index_no:016d}", "trade_type": "JSAPI", "trade_state": "SUCCESS",
                "success_time": "2026-11-26T12:00:00+08:00", "payer": {"openid": "oBench"},
                "amount": {"total": 1990, "payer_total": 1990, "currency": "CNY"}}
    nonce = signing.nonce(12)
    body = json.dumps({"id": f"EV-{number}", "create_time": "2026-11-26T12:00:00+08:00",
                       "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "ok",
                       "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                                    "associated_data": "transaction", "nonce": nonce,
                                    "ciphertext": signing.aes_gcm_encrypt(apiv3_key, nonce, "transaction",
                                                                          json.dumps(resource).encode())}}).encode()
    timestamp, nonce_str = str(int(time.time())), signing.nonce(32)
    headers = {"wechatpay-timestamp": timestamp, "wechatpay-nonce": nonce_str,
               "wechatpay-signature": signing.rsa_sign(platform_key, signing.response_message(timestamp, nonce_str,
                                                                                              body)),
               "wechatpay-serial": env["WECHATPAY_PUBLIC_KEY_ID"], "wechatpay-signature-type": signing.SCHEMA,
               "content-type": "application/json"}
    return headers, body


def ours_one(headers: dict, body: bytes) -> None:
    reply = index.main_handler({"httpMethod": "POST", "path": "/", "headers": headers, "body": body.decode(),
                                "queryString": {}}, {"request_id": "w"})
    assert reply["statusCode"] == 204, reply


public_key = load_pem_public_key(env["WECHATPAY_PUBLIC_KEY"].encode())


def bare_one(headers: dict, body: bytes) -> None:
    message = f"{headers['wechatpay-timestamp']}\n{headers['wechatpay-nonce']}\n".encode() + body + b"\n"
    public_key.verify(base64.b64decode(headers["wechatpay-signature"]), message, padding.PKCS1v15(), hashes.SHA256())
    envelope = json.loads(body)
    encrypted = envelope["resource"]
    resource = json.loads(AESGCM(apiv3_key).decrypt(encrypted["nonce"].encode(),
                                                    base64.b64decode(encrypted["ciphertext"]),
                                                    encrypted["associated_data"].encode()))
    number = resource["out_trade_no"]
    order = db["bare_orders"].find_one({"outTradeNo": number}, {"_id": 0})
    assert order["totalFee"] == resource["amount"]["total"]
    now = int(time.time() * 1000)
    before = db["bare_orders"].find_one_and_update(
        {"outTradeNo": number, "payStatus": {"$in": ["NOTPAY", "PAYERROR"]}},
        {"$set": {"payStatus": "SUCCESS", "transactionId": resource["transaction_id"], "paidAt": now,
                  "updateTime": now, "refundableFee": order["totalFee"]}}, projection={"_id": 0})
    if before is not None:
        db["bare_events"].insert_one({"key": f"order.paid:{number}", "type": "order.paid", "outTradeNo": number,
                                      "createTime": now, "totalFee": order["totalFee"],
                                      "transactionId": resource["transaction_id"], "openid": order["openid"]})
    # The notification log (issue 15) is part of the work: each verified delivery kept as it came.
    db["bare_notifications"].insert_one({
        "notificationId": envelope.get("id"), "eventType": envelope.get("event_type"), "outTradeNo": number,
        "status": 204, "outcome": "paid" if before is not None else "already_paid",
        "headers": {name: headers[name] for name in headers if name.startswith("wechatpay-")},
        "body": body.decode(), "createTime": now, "receivedAt": datetime.now(timezone.utc)})


def timed(ours_numbers: list[str], bare_numbers: list[str]) -> tuple[list[float], list[float]]:
    """Ours and bare alternate notification by notification."""
    latencies: tuple[list[float], list[float]] = ([], [])
    for i, pair in enumerate(zip(ours_numbers, bare_numbers, strict=True)):
        for handle, number, into in ((ours_one, pair[0], latencies[0]), (bare_one, pair[1], latencies[1])):
            headers, body = notification(number, i)
            started = clock()
            handle(headers, body)
            if i >= WARMUP:
                into.append(clock() - started)
    return latencies


def throughput(handle, numbers: list[str]) -> float:
    """Notifications per second with THREADS senders; every fifth one a duplicate."""
    work = []
    for i, number in enumerate(numbers):
        work.append(notification(number, i))
        if i % 4 == 3:
            work.append(work[-1])  # WeChat Pay sends it again
    position, lock = iter(range(len(work))), threading.Lock()

    def sender():
        while True:
            with lock:
                item = next(position, None)
            if item is None:
                return
            handle(*work[item])

    threads = [threading.Thread(target=sender) for _ in range(THREADS)]
    started = clock()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(work) / (clock() - started)


ours_orders = make_orders("orders", WARMUP + N + BURST, "C")
# The same indexes as ours: the store does the same work.
for name, indexes in (("bare_orders", [([("outTradeNo", 1)], True), ([("idemKey", 1)], True),
                                       ([("payStatus", 1), ("expireTime", 1)], False),
                                       ([("payStatus", 1), ("createTime", 1)], False),
                                       ([("openid", 1), ("createTime", -1)], False), ([("paidAt", 1)], False)]),
                      ("bare_events", [([("key", 1)], True), ([("outTradeNo", 1)], False),
                                       ([("type", 1), ("createTime", 1)], False)]),
                      ("bare_notifications", [([("receivedAt", 1)], False), ([("outTradeNo", 1), ("createTime", 1)],
                                                                               False), ([("createTime", 1)], False)])):
    for keys, unique in indexes:
        db[name].create_index(keys, unique=unique)
bare_orders = make_orders("bare_orders", WARMUP + N + BURST, "D")
ours_latency, bare_latency = timed(ours_orders[:WARMUP + N], bare_orders[:WARMUP + N])
result = {"ours": {"callback": ours_latency}, "bare": {"callback": bare_latency}}
result["ours_rate"] = throughput(ours_one, ours_orders[WARMUP + N:])
result["bare_rate"] = throughput(bare_one, bare_orders[WARMUP + N:])
print("BENCH=" + json.dumps(result), flush=True)
