"""The checkout demo: a page `make run` serves at /demo/, and `make demo`, the same loop
headless, printing each step.

The page plays the mini-program in a browser: it lists the catalog, creates an order
through `prepare`, asks the simulator to play the user paying, and polls the order's
status from `prepare` until it changes.  Dev-only helpers of the page, never deployed:

    GET  /demo/products              the active catalog [{sku, name, price}] (price in fen)
    POST /demo/pay/{outTradeNo}      {"notify": "send"|"drop"}: the simulator's pay action (no CORS)
    GET  /demo/orders/{outTradeNo}   {"outTradeNo", "payStatus", "paidVia"}: what settled the
                                     order ("notification" | "query" | "sweep", null while unpaid)

Errors are `{"error": {"code", "message"}}`, as `prepare` answers them (the simulator's own
`{"code", "message"}` is rewrapped so), so the page reads every error the same way.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import requests

from shared.errors import StoreUnavailable

PAGE = Path(__file__).with_name("demo_page.html")
_PAY_RE = re.compile(r"^/pay/([0-9A-Za-z_|*-]{6,32})/?$")
_ORDER_RE = re.compile(r"^/orders/([0-9A-Za-z_|*-]{6,32})/?$")
# With "send", /demo/pay waits (at most this long) until the store has the outcome.  The page
# polls the status after paying, and the status query asks WeChat Pay while the order is
# unpaid; without the wait the query would often settle the order a few milliseconds before
# the notification lands, and the "notification arrives" button would look like the iOS case.
# Whichever really settled it is what /demo/orders reports.
NOTIFY_WAIT_S = 3.0


def reply(status: int, body, content_type: str = "application/json") -> dict:
    """An SCF integrated response (the demo page's and the console's routes)."""
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return {"isBase64Encoded": False, "statusCode": status,
            "headers": {"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-store"},
            "body": text}


def error_reply(status: int, code: str, message: str) -> dict:
    return reply(status, {"error": {"code": code, "message": message}})


def demo_routes(sim_url: str, store) -> dict:
    """Gateway routes for the demo page (Function URL shape: the /demo prefix is stripped)."""

    def pay(out_trade_no: str, event: dict) -> dict:
        try:
            raw = event.get("body") or "{}"
            body = json.loads(base64.b64decode(raw) if event.get("isBase64Encoded") else raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error_reply(400, "INVALID_JSON", "the body must be a JSON object")
        notify = "drop" if body.get("notify") == "drop" else "send"
        try:
            answer = requests.post(f"{sim_url}/_sim/orders/{out_trade_no}/pay", json={"notify": notify}, timeout=10)
            data = answer.json()
        except (requests.RequestException, ValueError):
            return error_reply(502, "SIMULATOR_UNREACHABLE", "the WeChat Pay simulator did not answer")
        if not answer.ok:
            data = data if isinstance(data, dict) else {}
            return error_reply(answer.status_code, str(data.get("code") or "SIMULATOR_ERROR"),
                          str(data.get("message") or f"the simulator answered {answer.status_code}"))
        if notify == "send":
            deadline = time.monotonic() + NOTIFY_WAIT_S
            while time.monotonic() < deadline:
                order = store.find_order(out_trade_no)
                if order is None or order.get("payStatus") != "NOTPAY":
                    break
                time.sleep(0.05)
        return reply(answer.status_code, data)

    def paid_via(out_trade_no: str) -> dict:
        order = store.find_order(out_trade_no)
        if order is None:
            return error_reply(404, "ORDER_NOT_FOUND", "no such order")
        return reply(200, {"outTradeNo": order["outTradeNo"], "payStatus": order.get("payStatus"),
                            "paidVia": order.get("paidVia")})

    def handler(event, context):
        path, method = event.get("path") or "/", event.get("httpMethod")
        try:
            if method == "GET" and path in ("/", ""):
                return reply(200, PAGE.read_text(encoding="utf-8"), "text/html")
            if method == "GET" and path.rstrip("/") == "/products":
                return reply(200, [{"sku": p["sku"], "name": p["name"], "price": p["price"]}
                                    for p in store.list_products() if p.get("active") is True])
            match = _PAY_RE.match(path)
            if method == "POST" and match:
                return pay(match.group(1), event)
            match = _ORDER_RE.match(path)
            if method == "GET" and match:
                return paid_via(match.group(1))
        except StoreUnavailable:
            return error_reply(503, "STORE_UNAVAILABLE", "the order store could not be reached; retry shortly")
        return error_reply(404, "ROUTE_NOT_FOUND", "no such demo route")

    return {"/demo": handler}


def run_loop(gateway_url: str, say=print) -> bool:
    """The mini-program's loop, headless.  True when both payments were confirmed."""
    session = requests.Session()

    def step(text: str, data=None) -> None:
        say(f"- {text}" + (f"\n    {json.dumps(data, ensure_ascii=False)}" if data is not None else ""))

    ok = True
    for case, notify in (("notification arrives", "send"), ("notification lost (the iOS case)", "drop")):
        say(f"\n== {case}")
        body = {"code": "test-demo", "items": [{"sku": "A1", "quantity": 2}, {"sku": "B2", "quantity": 1}],
                "idempotencyKey": f"demo-{notify}-{time.time_ns()}"}
        order = session.post(f"{gateway_url}/prepare/orders", json=body, timeout=15).json()
        if "outTradeNo" not in order:
            step("create order FAILED", order)
            return False
        step(f"POST /prepare/orders -> {order['outTradeNo']}, {order['totalFee']} fen, {order['payStatus']}",
             {"payment": order["payment"]})
        headers = {"X-Order-Token": order["orderToken"]}
        status_url = f"{gateway_url}/prepare/orders/{order['outTradeNo']}"
        step(f"GET status -> {session.get(status_url, headers=headers, timeout=15).json()['payStatus']}")
        session.post(f"{gateway_url}/demo/pay/{order['outTradeNo']}", json={"notify": notify}, timeout=15)
        step(f"the user pays in WeChat (simulator, notification {'sent' if notify == 'send' else 'dropped'})")
        deadline = time.monotonic() + 20
        state = "NOTPAY"
        while state == "NOTPAY" and time.monotonic() < deadline:
            time.sleep(0.5)
            state = session.get(status_url, headers=headers, timeout=15).json()["payStatus"]
        via = session.get(f"{gateway_url}/demo/orders/{order['outTradeNo']}", timeout=15).json().get("paidVia")
        step(f"GET status -> {state}" + (f" (confirmed by the {via})" if via else ""))
        ok = ok and state == "SUCCESS"
    say("\nresult: " + ("both orders confirmed paid by the server" if ok else "FAILED"))
    return ok


def main() -> int:
    from devtools.local_stack import LocalStack
    from shared import log

    with tempfile.TemporaryDirectory() as folder, LocalStack(Path(folder), retry_factor=0.01) as stack:
        print(f"local stack: gateway {stack.gateway.url}, simulator {stack.simulator.url}")
        with open(Path(folder) / "functions.log", "w") as function_log:
            log.set_sink(function_log)  # keep the steps readable; the JSON lines go here
            try:
                return 0 if run_loop(stack.gateway.url) else 1
            finally:
                log.set_sink(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
