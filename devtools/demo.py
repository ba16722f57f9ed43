"""The checkout demo: a page `make run` serves at /demo/, and `make demo`, the same loop
headless, printing each step.

The page plays the mini-program in a browser: it lists the catalog, creates an order
through `prepare`, asks the simulator to play the user paying, and polls the order's
status from `prepare` until it changes.  /demo/products and /demo/pay/{outTradeNo} are
dev-only helpers of the page (the catalog, and the simulator's pay action without CORS).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

import requests

PAGE = Path(__file__).with_name("demo_page.html")
_PAY_RE = re.compile(r"^/pay/([0-9A-Za-z_|*-]{6,32})/?$")


def _reply(status: int, body, content_type: str = "application/json") -> dict:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return {"isBase64Encoded": False, "statusCode": status,
            "headers": {"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-store"},
            "body": text}


def demo_routes(sim_url: str, store) -> dict:
    """Gateway routes for the demo page (Function URL shape: the /demo prefix is stripped)."""

    def handler(event, context):
        path, method = event.get("path") or "/", event.get("httpMethod")
        if method == "GET" and path in ("/", ""):
            return _reply(200, PAGE.read_text(encoding="utf-8"), "text/html")
        if method == "GET" and path.rstrip("/") == "/products":
            return _reply(200, [{"sku": p["sku"], "name": p["name"], "price": p["price"]}
                                for p in store.list_products() if p.get("active") is True])
        match = _PAY_RE.match(path)
        if method == "POST" and match:
            body = json.loads(event.get("body") or "{}")
            notify = "drop" if body.get("notify") == "drop" else "send"
            answer = requests.post(f"{sim_url}/_sim/orders/{match.group(1)}/pay", json={"notify": notify},
                                   timeout=10)
            return _reply(answer.status_code, answer.json())
        return _reply(404, {"error": {"code": "ROUTE_NOT_FOUND", "message": "no such demo route"}})

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
        step(f"GET status -> {state}")
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
