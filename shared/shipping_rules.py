"""What WeChat's order shipping service accepts and answers, as data.

Sources: upload_shipping_info (developers.weixin.qq.com/miniprogram/dev/server/API/
order_shipping/api_uploadshippinginfo), get_order (.../order_shipping/api_getorder),
get_delivery_list (.../weixin-express/express-msg/api_get_delivery_list).
"""

from __future__ import annotations

EXPRESS, SAME_CITY, VIRTUAL, SELF_PICKUP = 1, 2, 3, 4
LOGISTICS_TYPES = frozenset({EXPRESS, SAME_CITY, VIRTUAL, SELF_PICKUP})
MAX_SHIPPING_LIST = 15           # shipping_list: [1, 15] parcels (split delivery: express only)
MAX_TRACKING_NO_BYTES = 128      # tracking_no: [1, 128] bytes
MAX_EXPRESS_COMPANY_BYTES = 128  # express_company: [1, 128] bytes
MAX_ITEM_DESC_CHARS = 120        # item_desc: at most 120 characters
MAX_CONTACT_CHARS = 1024         # consignor_contact / receiver_contact, masked
SF_EXPRESS = "SF"                # 顺丰: a contact (the receiver's or the consignor's) is required

# get_order's order_state: 1 待发货, 2 已发货, 3 确认收货, 4 交易完成, 5 已退款, 6 资金待结算.
SHIPPED_ORDER_STATES = frozenset({2, 3, 4, 6})

# upload_shipping_info errcodes.
ALREADY_SHIPPED = frozenset({10060002})     # 支付单已完成发货: someone uploaded it (e.g. by hand)
NOT_UPDATED = frozenset({10060023})         # 发货信息未更新: these very details are what WeChat holds
# Worth another try later: WeChat busy, or the payment not known to it yet.
RETRYABLE = frozenset({-1, 10060001, 10060012, 10060019, 45009, 45011})
# Every other errcode is final: the request as it is will never be accepted (10060003 the
# one correction is used, 10060004 the payment cannot be shipped (refunded), the field
# errors ...).  It is recorded at once as `shipping_failed`.
