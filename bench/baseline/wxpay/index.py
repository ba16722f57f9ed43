"""The article's `wxPay`, ported to SCF the naive way: the baseline of `make bench`.

Everything the article does, as a first port would: the SDK and the database client are
imported and built at module level, the client's totalFee is trusted, the order is
inserted *after* the prepay and insert errors are swallowed.  Do not deploy this.
"""

import json
import os
import random
import time

import pymongo
import requests
from wechatpayv3 import WeChatPay, WeChatPayType

env = os.environ
# The article writes to "order"; nx-27017 (SQLite) cannot name a table that, hence "wx_order".
db = pymongo.MongoClient(env["MONGODB_URI"])[env.get("MONGODB_DB", "cloudpay")]
wxpay = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=env["WECHATPAY_MCHID"],
                  private_key=env["WECHATPAY_PRIVATE_KEY"], cert_serial_no=env["WECHATPAY_CERT_SERIAL_NO"],
                  appid=env["WECHAT_APPID"], apiv3_key=env.get("WECHATPAY_APIV3_KEY", "0" * 32),
                  notify_url=env["WECHATPAY_NOTIFY_URL"], public_key=env["WECHATPAY_PUBLIC_KEY"],
                  public_key_id=env["WECHATPAY_PUBLIC_KEY_ID"])
wxpay._core._gate_way = env["WECHATPAY_API_BASE"]


def create_out_trade_no():
    return str(int(time.time() * 1000)) + "".join(random.choice("0123456789") for _ in range(19))


def main_handler(event, context):
    body = json.loads(event["body"])
    session = requests.get(env["WECHAT_API_BASE"] + "/sns/jscode2session", timeout=5, params={
        "appid": env["WECHAT_APPID"], "secret": env["WECHAT_APPSECRET"], "js_code": body["code"],
        "grant_type": "authorization_code"}).json()
    openid = session["openid"]
    out_trade_no = create_out_trade_no()
    code, text = wxpay.pay(description=body["body"], out_trade_no=out_trade_no,
                           amount={"total": body["totalFee"]}, payer={"openid": openid})
    prepay_id = json.loads(text)["prepay_id"]
    timestamp, nonce = str(int(time.time())), "".join(random.choice("ABCDEFGHIJ0123456789") for _ in range(32))
    package = "prepay_id=" + prepay_id
    payment = {"timeStamp": timestamp, "nonceStr": nonce, "package": package, "signType": "RSA",
               "paySign": wxpay.sign([env["WECHAT_APPID"], timestamp, nonce, package])}
    now = int(time.time() * 1000)
    try:
        db["wx_order"].insert_one({"_openid": openid, "appid": env["WECHAT_APPID"], "outTradeNo": out_trade_no,
                                "totalFee": body["totalFee"] * 0.01, "payStatus": "wait", "createTime": now,
                                "updateTime": now, "deleteTime": None})
    except Exception as error:
        print("创建订单异常 =====>", error)
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"outTradeNo": out_trade_no, "payment": payment})}
