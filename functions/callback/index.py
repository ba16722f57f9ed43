"""SCF entry point of `callback` (the article's payCallBack), called by WeChat Pay.

Accepts the notification POST on any path.  204 when the outcome is stored;
4xx/5xx with {"code": "FAIL", "message": ...} otherwise, so WeChat Pay retries.
"""

from shared import runtime
from shared.errors import MethodNotAllowed
from shared.http_event import Request, serve
from shared.notifications import MAX_BODY, failure_body

runtime.warm("callback")


def _notify(request: Request):
    if request.method != "POST":
        raise MethodNotAllowed("notifications are POSTed")
    callback = runtime.instance("callback")
    # The fact a notification records (order.paid, refund.succeeded) is delivered to the
    # shop before WeChat Pay gets its answer (bounded: a slow shop is retried by the sweep).
    return callback.delivering(lambda: callback.notifications.handle(request.headers.as_dict(), request.body))


def main_handler(event, context):
    return serve(event, context, _notify, name="callback", max_body=MAX_BODY, error_body=failure_body)
