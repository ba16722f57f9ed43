"""WeChat's mini-program order shipping service (小程序发货信息管理服务) and stable_token, as data.

Pure data, stdlib only: what the simulator (shipping.py, access_tokens.py) enforces, and what
a backend may copy.  Sources (read 2025/2026 through stored copies; see /tmp/shipping_facts.md
of the session that wrote this for the quotes):

- upload_shipping_info (发货信息录入):
  https://developers.weixin.qq.com/miniprogram/dev/server/API/order_shipping/api_uploadshippinginfo
- get_order (查询订单发货状态):
  https://developers.weixin.qq.com/miniprogram/dev/server/API/order_shipping/api_getorder
- get_delivery_list (获取运力id列表), the express_company codes:
  https://developers.weixin.qq.com/miniprogram/dev/server/API/weixin-express/express-msg/api_get_delivery_list
- getStableAccessToken (POST /cgi-bin/stable_token):
  https://developers.weixin.qq.com/doc/service/api/base/api_getstableaccesstoken.html
  https://developers.weixin.qq.com/minigame/dev/api-backend/open-api/access-token/auth.getStableAccessToken.html
- access_token rules (getAccessToken invalidates the previous one; 40001, 42001):
  https://developers.weixin.qq.com/doc/oplatform/developers/dev/AccessToken.html
  https://developers.weixin.qq.com/doc/channels/API/basics/commErrCode.html

The express company list is the weak part: WeChat publishes no static list (get_delivery_list
answers about 1,400 entries at run time) and no public dump of it was found.  EXPRESS_COMPANIES
holds only codes seen in get_delivery_list answers (the official example, and answers quoted in
WeChat's developer community); UNVERIFIED_EXPRESS_COMPANIES holds codes WeChat uses in *other*
carrier lists (WeChat Shop, the old logistics assistant) that are likely, but not confirmed, to
be the same in get_delivery_list.  Note that those other lists differ (e.g. 韵达 is YD in
get_delivery_list but YUNDA in WeChat Shop; 德邦 is DB / DBKD there): do not copy codes from them.
"""

from __future__ import annotations

# --- express_company (get_delivery_list delivery_id -> delivery_name) -------------------------

EXPRESS_COMPANIES: dict[str, str] = {
    # In a get_delivery_list answer quoted by WeChat's community support (count 1510):
    # https://developers.weixin.qq.com/community/develop/doc/0008a880fe48c8abffc0dd11361800
    "SF": "顺丰速运",
    "YTO": "圆通速递",
    "YD": "韵达速递",       # also in the official example answer
    "ZTO": "中通快递",
    "STO": "申通快递",      # also the official upload_shipping_info request example
    "007EX": "俄顺达",
    # The official get_delivery_list example answer:
    "BDT": "八达通",
    "(AU)": "Interparcel",
    # A get_delivery_list answer quoted in public code (and in a community thread):
    "138SD": "泰国138快递",
}

UNVERIFIED_EXPRESS_COMPANIES: dict[str, str] = {
    # Community report: WeChat's mini-shop company list gives 京东快递 as JD.
    "JD": "京东快递",
    # WeChat Shop (微信小店) and the old logistics assistant both use JTSD and EMS.
    "JTSD": "极兔速递",
    "EMS": "中国邮政",
    # The field's documented example value (express_company 示例值: DHL); name not given.
    "DHL": "DHL",
    # In a (mis-encoded) get_delivery_list dump posted to the community.
    "AAE": "AAE全球专递",
}

SF_CODE = "SF"   # 当发货的物流公司为顺丰时，联系方式为必填，收件人或寄件人联系方式二选一

# --- upload_shipping_info field rules -----------------------------------------------------------

LOGISTICS_TYPES: dict[int, str] = {
    1: "实体物流配送（快递公司）",
    2: "同城配送",
    3: "虚拟商品（无实体配送）",
    4: "用户自提",
}
LOGISTICS_EXPRESS = 1
LOGISTICS_SAME_CITY = 2
LOGISTICS_VIRTUAL = 3
LOGISTICS_SELF_PICKUP = 4

DELIVERY_MODES: dict[int, str] = {1: "UNIFIED_DELIVERY", 2: "SPLIT_DELIVERY"}
DELIVERY_UNIFIED = 1
DELIVERY_SPLIT = 2

ORDER_NUMBER_TYPES: dict[int, str] = {
    1: "mchid + out_trade_no（下单商户号和商户侧单号）",
    2: "transaction_id（微信支付单号）",
}
ORDER_BY_OUT_TRADE_NO = 1
ORDER_BY_TRANSACTION_ID = 2

MAX_SHIPPING_LIST = 15          # shipping_list 多重性: [1, 15] (older copies said [1, 10])
MAX_TRACKING_NO_BYTES = 128     # tracking_no 字符字节限制: [1, 128]
MAX_EXPRESS_COMPANY_BYTES = 128  # express_company 字符字节限制: [1, 128]
MAX_ITEM_DESC_CHARS = 120       # item_desc 限120个字以内
MAX_CONTACT_CHARS = 1024        # consignor_contact / receiver_contact 值限制: 0 ≤ value ≤ 1024
MAX_OPENID_BYTES = 128          # payer.openid 字符字节限制: [1, 128]
CONTACT_CLEAR_DIGITS = 4        # 采用掩码传输，最后4位数字不能打掩码

# --- get_order -------------------------------------------------------------------------------

ORDER_STATES: dict[int, str] = {
    1: "待发货",
    2: "已发货",
    3: "确认收货",
    4: "交易完成",
    5: "已退款",
    6: "资金待结算",
}
MAX_DESCRIPTION_CHARS = 120     # order.description: 超过120字时自动截断并以 "..." 结尾

# --- errcodes (upload_shipping_info and get_order share one table) ------------------------------

ERRCODES: dict[int, str] = {
    -1: "system error：系统繁忙，此时请开发者稍候再试",
    10060001: "支付单不存在",
    10060002: "支付单已完成发货，无法继续发货",
    10060003: "支付单已使用重新发货机会",
    10060004: "支付单处于不可发货的状态",
    10060005: "物流类型有误",
    10060006: "非快递发货时不允许分拆发货",
    10060007: "分拆发货模式下必须填写 is_all_delivered 字段",
    10060008: "商品描述 item_desc 字段不能为空",
    10060009: "商品描述 item_desc 字段太长",
    10060011: "last_index不合法",   # get_order_list only
    10060012: "系统错误",
    10060014: "参数错误",
    10060019: "系统错误",
    10060020: "该笔支付单在没有任何商品描述的情况下不允许完成发货",
    10060023: "发货信息未更新",
    10060024: "物流信息列表太长",
    10060025: "物流公司编码太长",
    10060026: "物流单号太长",
    10060031: "该笔支付单不属于 openid 所指定的用户",
    268485194: "订单单号类型非法",
    268485195: "微信支付单号形式下 transaction_id 字段不能为空",
    268485196: "商户侧单号形式下 mchid 字段不能为空",
    268485197: "商户侧单号形式下 out_trade_no 字段不能为空",
    268485216: "上传时间非法，请按照 RFC 3339 格式填写",
    268485224: "发货模式非法",
    268485226: "物流单号不能为空",
    268485227: "物流公司编码不能为空",
    268485228: "统一发货模式下，物流信息列表长度必须为 1",
}

# WeChat's common errcodes (api.weixin.qq.com), as the token checks and the parser answer them.
COMMON_ERRCODES: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40066: "invalid url",
    40125: "invalid appsecret",
    40164: "invalid ip, not in whitelist",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    43002: "require POST method",
    44002: "empty post data",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
    47001: "data format error",
}

# --- stable_token ------------------------------------------------------------------------------

TOKEN_TTL_S = 7200                  # expires_in: 目前是7200秒之内的值
TOKEN_REFRESH_MARGIN_S = 300        # 普通模式下平台会提前5分钟更新access_token (expires_in >= 300)
FORCE_REFRESH_MIN_INTERVAL_S = 30   # 强制刷新模式每天限用20次且需间隔30秒 (sooner: 不会刷新)
FORCE_REFRESH_DAILY_LIMIT = 20
