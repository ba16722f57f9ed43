"""SCF entry point of `prepare` (the article's wxPay), called by the mini-program.

POST .../orders                  create an order, get wx.requestPayment parameters
GET  .../orders/{outTradeNo}     its status (asks WeChat Pay while unpaid); X-Order-Token
"""

from shared import runtime
from shared.http_event import Request, Router, serve

runtime.warm("prepare")


def _create(request: Request):
    prepare = runtime.instance("prepare")
    return 200, prepare.delivering(lambda: prepare.checkout.create_order(request.json()))


def _status(request: Request):
    prepare = runtime.instance("prepare")
    # A status query that finds the order paid settles it: that fact is delivered at once.
    return 200, prepare.delivering(lambda: prepare.checkout.order_status(
        request.params["outTradeNo"], request.headers.get("x-order-token")))


_router = Router()
_router.add("POST", "orders", _create)
_router.add("GET", r"orders/(?P<outTradeNo>[^/]{1,64})", _status)


def main_handler(event, context):
    return serve(event, context, _router.dispatch, name="prepare")
