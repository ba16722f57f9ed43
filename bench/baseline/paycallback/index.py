"""The article's `payCallBack`, ported to SCF the naive way: the baseline of `make bench`.

The SDK verifies and decrypts; the order is then updated with no condition (duplicates
and races go unnoticed) and the amount is stored as a float of yuan.  Do not deploy this.
"""

import os
import time

import pymongo
from wechatpayv3 import WeChatPay, WeChatPayType

env = os.environ
# The article writes to "order"; nx-27017 (SQLite) cannot name a table that, hence "wx_order".
db = pymongo.MongoClient(env["MONGODB_URI"])[env.get("MONGODB_DB", "cloudpay")]
wxpay = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=env["WECHATPAY_MCHID"],
                  private_key=env["WECHATPAY_PRIVATE_KEY"], cert_serial_no=env["WECHATPAY_CERT_SERIAL_NO"],
                  appid=env["WECHAT_APPID"], apiv3_key=env["WECHATPAY_APIV3_KEY"],
                  public_key=env["WECHATPAY_PUBLIC_KEY"], public_key_id=env["WECHATPAY_PUBLIC_KEY_ID"])


def main_handler(event, context):
    result = wxpay.callback(event["headers"], event["body"])
    if result and result.get("event_type") == "TRANSACTION.SUCCESS":
        resource = result["resource"]
        db["wx_order"].update_one(
            {"appid": resource["appid"], "_openid": resource["payer"]["openid"],
             "outTradeNo": resource["out_trade_no"]},
            {"$set": {"transactionId": resource["transaction_id"], "totalFee": resource["amount"]["total"] * 0.01,
                      "timeEnd": resource["success_time"], "payStatus": "success",
                      "updateTime": int(time.time() * 1000)}})
        return {"statusCode": 204, "headers": {}, "body": ""}
    return {"statusCode": 400, "headers": {}, "body": '{"code": "FAIL"}'}
