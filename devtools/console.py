"""The developer console `make run` serves at /console/: every order's life in view.

A static page (console_page.html) on a small JSON API under /console/api/, both served
through the local gateway like the demo page (Function URL shape, /console stripped):

  GET  /api/orders?state=NOTPAY          the newest orders (100), optionally in one state
  POST /api/orders                       a test order, created through `prepare` as the
                                         mini-program would ({"items": [{"sku", "quantity"}]})
  GET  /api/orders/{n}                   the order and its timeline (below)
  POST /api/orders/{n}/{action}          pay | pay_lost | fail | expire | refund | complete_refund
                                         | replay | tamper | query (see ACTIONS)
  GET  /api/anomalies                    the anomalies queue, newest first
  GET  /api/clock, POST /api/clock       the test clock: {"advanceMinutes": n} moves the
                                         functions' time forward, then a sweep runs
  POST /api/sweep                        one sweep now

The timeline is put together from what each part really recorded: the order document
(creation, prepay, settlement and how it came: notification, query or sweep), the
simulator (the payment, and each notification attempt with our answer), the events and
their fulfilment deliveries, refunds, the shipping upload and anomalies.

The test clock moves only our side (the stores' clock, `shared.runtime.configure(clock=)`):
the simulator keeps real time, since its signatures must stay within the 300 s window the
callback enforces.  Expiry, the sweep's look for lost notifications, delivery back-off and
shipping retries all run on our clock, so they come without waiting.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from devtools.demo import error_reply, reply

PAGE = Path(__file__).with_name("console_page.html")
_ORDER_RE = re.compile(r"^/api/orders/([0-9A-Za-z_|*-]{6,32})/?$")
_ACTION_RE = re.compile(r"^/api/orders/([0-9A-Za-z_|*-]{6,32})/([a-z_]{2,20})/?$")
STATES = ("NOTPAY", "SUCCESS", "REFUND", "CLOSED", "PAYERROR")
MAX_ADVANCE_MINUTES = 60 * 24 * 7
MAX_QUANTITY = 99


class TestClock:
    """Real time plus an offset the console moves forward (never back: facts keep their order)."""

    def __init__(self, now: Callable[[], int] | None = None):
        self._now = now or (lambda: time.time_ns() // 1_000_000)
        self._offset_ms = 0
        self._changes: list[tuple[int, int]] = []   # (real ms when moved, offset from then on)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now() + self._offset_ms

    @property
    def offset_ms(self) -> int:
        return self._offset_ms

    def advance(self, minutes: int) -> int:
        with self._lock:
            self._offset_ms += minutes * 60_000
            self._changes.append((self._now(), self._offset_ms))
            return self._offset_ms

    def ours(self, real_ms: int) -> int:
        """A real time (the simulator keeps real time) on this clock, as it read then."""
        offset = 0
        for moved_at, later_offset in self._changes:
            if moved_at > real_ms:
                break
            offset = later_offset
        return real_ms + offset


class ConsoleError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Console:
    """The console's API over the stack's parts (all in this process)."""

    def __init__(self, *, store, simulator, prepare, reconcile, clock: TestClock, callback_url: str):
        self.store, self.simulator = store, simulator
        self.prepare, self.reconcile = prepare, reconcile
        self.clock, self.callback_url = clock, callback_url
        self._tokens: dict[str, str] = {}   # orderToken of the orders the console created
        self._lock = threading.Lock()

    # --- routes ----------------------------------------------------------------------

    def handle(self, event, context) -> dict:
        path, method = event.get("path") or "/", event.get("httpMethod")
        try:
            if method == "GET" and path in ("/", ""):
                return reply(200, PAGE.read_text(encoding="utf-8"), "text/html")
            if path.rstrip("/") == "/api/orders":
                if method == "GET":
                    state = (event.get("queryString") or {}).get("state") or None
                    return reply(200, self.orders(state))
                if method == "POST":
                    return reply(200, self.create_order(_body(event)))
            match = _ORDER_RE.match(path)
            if method == "GET" and match:
                return reply(200, self.order(match.group(1)))
            match = _ACTION_RE.match(path)
            if method == "POST" and match:
                return reply(200, self.act(match.group(1), match.group(2), _body(event)))
            if method == "GET" and path.rstrip("/") == "/api/anomalies":
                return reply(200, self.anomalies())
            if path.rstrip("/") == "/api/clock":
                if method == "POST":
                    return reply(200, self.advance(_body(event).get("advanceMinutes")))
                return reply(200, self.clock_state())
            if method == "POST" and path.rstrip("/") == "/api/sweep":
                return reply(200, {"sweep": self.sweep()})
            return error_reply(404, "ROUTE_NOT_FOUND", f"no console route {method} {path}")
        except ConsoleError as error:
            return error_reply(error.status, error.code, error.message)

    # --- reading ---------------------------------------------------------------------

    def orders(self, state: str | None) -> list[dict]:
        if state is not None and state not in STATES:
            raise ConsoleError(400, "INVALID_STATE", f"state must be one of {', '.join(STATES)}")
        return [{"outTradeNo": o["outTradeNo"], "payStatus": o["payStatus"], "totalFee": o["totalFee"],
                 "createTime": o["createTime"], "paidAt": o.get("paidAt"), "paidVia": o.get("paidVia"),
                 "refundedFee": o.get("refundedFee", 0)}
                for o in self.store.list_orders(status=state, limit=100)]

    def anomalies(self) -> list[dict]:
        found = self.store.list_anomalies()
        return [{"kind": a["kind"], "outTradeNo": a.get("outTradeNo"), "status": a.get("status"),
                 "at": a.get("createTime"), "evidence": a.get("evidence")} for a in reversed(found[-100:])]

    def order(self, out_trade_no: str) -> dict:
        order = self.store.find_order(out_trade_no)
        if order is None:
            raise ConsoleError(404, "ORDER_NOT_FOUND", f"no order {out_trade_no} in the store")
        summary = {key: order.get(key) for key in ("outTradeNo", "payStatus", "totalFee", "refundedFee", "items",
                                                   "createTime", "expireTime", "paidAt", "paidVia",
                                                   "transactionId")}
        refunds = self.store.refunds_of(out_trade_no)
        summary["refunds"] = [{"outRefundNo": r["outRefundNo"], "amount": r["amount"], "status": r.get("status")}
                              for r in refunds]
        summary["canQuery"] = out_trade_no in self._tokens
        return {"order": summary, "timeline": self.timeline(order, refunds)}

    def timeline(self, order: dict, refunds: list[dict]) -> list[dict]:
        number = order["outTradeNo"]
        items = ", ".join(f"{i.get('name') or i.get('sku')} x{i.get('quantity')}" for i in order.get("items") or [])
        entries = [_entry(order["createTime"], "order", "Order created", f"{items}; total {_yuan(order['totalFee'])}")]
        if order.get("prepayId"):
            entries.append(_entry(order["createTime"], "prepay", "Prepay requested at WeChat Pay",
                                  f"prepay_id {order['prepayId']}"))
        if order.get("payStatus") == "PAYERROR" or order.get("prepayError"):
            entries.append(_entry(order.get("updateTime"), "prepay", "Prepay failed",
                                  str(order.get("prepayError") or "the order stays PAYERROR for the sweep to close")))
        entries += self._simulator_entries(number)
        if order.get("paidAt"):
            via = {"notification": "by the notification", "query": "by a status query (the notification was lost)",
                   "sweep": "by the sweep's query"}.get(order.get("paidVia"), "")
            # paidAt is WeChat Pay's success_time: the simulator's real time, put on our clock.
            entries.append(_entry(self.clock.ours(order["paidAt"]), "settlement", f"Settled as paid {via}".strip(),
                                  f"transaction {order.get('transactionId')}"))
        if order.get("payStatus") == "CLOSED":
            entries.append(_entry(order.get("updateTime"), "settlement", "Closed",
                                  "closed at WeChat Pay" if order.get("closeAtWeChat") else "closed here"))
        deliveries = {d["eventId"]: d for d in self.store.deliveries_of(number)}
        for fact in self.store.events_of(number):
            entries.append(_entry(fact["createTime"], "event", f"Fact {fact['type']}", fact.get("key", "")))
            delivery = deliveries.get(fact.get("key"))
            if delivery is not None:
                entries.append(_delivery_entry(delivery))
        for refund in refunds:
            entries.append(_entry(refund.get("createTime"), "refund", f"Refund {refund['outRefundNo']} requested",
                                  f"{_yuan(refund['amount'])}, now {refund.get('status')}"))
            if refund.get("status") in ("SUCCESS", "CLOSED", "ABNORMAL"):
                entries.append(_entry(refund.get("updateTime"), "refund",
                                      f"Refund {refund['outRefundNo']}: {refund['status']}", _yuan(refund["amount"])))
        shipment = self.store.find_shipment(number)
        if shipment is not None:
            done = shipment.get("state") == "done"
            entries.append(_entry(shipment.get("doneAt") if done else shipment.get("createTime"), "shipping",
                                  "Shipping information uploaded" if done else f"Shipping upload {shipment['state']}",
                                  f"{shipment.get('attempts', 0)} attempt(s)"
                                  + (f"; last error {shipment['lastError']}" if shipment.get("lastError") else "")))
        for anomaly in self.store.list_anomalies(number):
            entries.append(_entry(anomaly.get("createTime"), "anomaly", f"Anomaly: {anomaly['kind']}",
                                  json.dumps(anomaly.get("evidence"), ensure_ascii=False)[:300]))
        return sorted(entries, key=lambda e: (e["at"] is None, e["at"] or 0))

    def _simulator_entries(self, number: str) -> list[dict]:
        from devtools.simulator.errors import SimError
        from devtools.simulator.timeutil import parse_rfc3339

        entries = []
        try:
            state = self.simulator.order(number)
        except SimError:
            return entries
        if state.get("success_time"):
            paid = parse_rfc3339(state["success_time"])
            entries.append(_entry(self.clock.ours(int(paid * 1000)) if paid else None, "payment",
                                  "The user paid (WeChat Pay)",
                                  f"trade_state {state.get('trade_state')}"))
        elif state.get("trade_state") not in (None, "NOTPAY"):
            entries.append(_entry(None, "payment", f"WeChat Pay: {state['trade_state']}", ""))
        for attempt in self.simulator.deliveries(number):
            answer = attempt["status"] if attempt["status"] is not None else attempt.get("error")
            how = " (tampered)" if attempt.get("tamper") else " (probe)" if attempt.get("probe") else ""
            entries.append(_entry(self.clock.ours(int(attempt["time"] * 1000)), "notification",
                                  f"Notification {attempt['event_type']}{how}, attempt {attempt['attempt']}",
                                  f"our answer: {answer}"))
        return entries

    def clock_state(self) -> dict:
        return {"offsetMinutes": self.clock.offset_ms // 60_000, "now": self.clock()}

    # --- doing -----------------------------------------------------------------------

    def create_order(self, body: dict) -> dict:
        items = body.get("items") or [{"sku": "A1", "quantity": 1}]
        if not isinstance(items, list) or not items or not all(
                isinstance(i, dict) and isinstance(i.get("sku"), str) and type(i.get("quantity")) is int
                and 1 <= i["quantity"] <= MAX_QUANTITY for i in items):
            raise ConsoleError(400, "INVALID_ITEMS", f"items must be [{{sku, quantity 1..{MAX_QUANTITY}}}]")
        event = {"httpMethod": "POST", "path": "/orders", "headers": {"content-type": "application/json"},
                 "queryString": {}, "body": json.dumps({"code": "test-console", "items": items,
                                                        "idempotencyKey": f"console-{time.time_ns()}"})}
        answered = self.prepare(event, {"time_limit_in_ms": 10_000})
        answer = json.loads(answered["body"])
        if answered["statusCode"] != 200:
            error = answer.get("error") or {}
            raise ConsoleError(answered["statusCode"], error.get("code", "PREPARE_FAILED"), error.get("message", ""))
        with self._lock:
            self._tokens[answer["outTradeNo"]] = answer["orderToken"]
        return {"outTradeNo": answer["outTradeNo"], "totalFee": answer["totalFee"]}

    def act(self, number: str, action: str, body: dict) -> dict:
        from devtools.simulator.errors import SimError

        handler = ACTIONS.get(action)
        if handler is None:
            raise ConsoleError(404, "UNKNOWN_ACTION", f"action must be one of {', '.join(ACTIONS)}")
        if self.store.find_order(number) is None:
            raise ConsoleError(404, "ORDER_NOT_FOUND", f"no order {number} in the store")
        try:
            result = handler(self, number, body)
        except SimError as error:
            raise ConsoleError(error.status, error.code, error.message) from None
        self.simulator.wait_idle(5)   # let the notification land before the page reads again
        return {"action": action, "result": result}

    def _pay(self, number, body):
        return self.simulator.pay(number)["order"]["trade_state"]

    def _pay_lost(self, number, body):
        return self.simulator.pay(number, notify="drop")["order"]["trade_state"]

    def _fail(self, number, body):
        return self.simulator.fail(number)["trade_state"]

    def _expire(self, number, body):
        return self.simulator.expire(number)["trade_state"]

    def _refund(self, number, body):
        order = self.store.find_order(number)
        amount = body.get("amount", order.get("refundableFee", order["totalFee"]))
        result = self.reconcile({"action": "refund", "outTradeNo": number, "amount": amount,
                                 "reason": "console"}, {"time_limit_in_ms": 60_000})
        if not result.get("ok"):
            error = result.get("error") or {}
            raise ConsoleError(409, error.get("code", "REFUND_FAILED"), error.get("message", ""))
        return result.get("refund", {}).get("status")

    def _complete_refund(self, number, body):
        pending = [r for r in self.store.refunds_of(number) if r.get("status") == "PROCESSING"]
        if not pending:
            raise ConsoleError(409, "NO_REFUND_IN_PROGRESS", "this order has no refund in progress")
        return self.simulator.complete_refund(pending[-1]["outRefundNo"])["refund"]["status"]

    def _replay(self, number, body):
        sent = self.simulator.notify(out_trade_no=number, url=self.callback_url)
        return [d["status"] for d in sent["deliveries"]]

    def _tamper(self, number, body):
        sent = self.simulator.notify(out_trade_no=number, url=self.callback_url, tamper="signature")
        return [d["status"] for d in sent["deliveries"]]

    def _query(self, number, body):
        token = self._tokens.get(number)
        if token is None:
            raise ConsoleError(409, "NO_ORDER_TOKEN", "only orders created here can be queried as the mini-program")
        answered = self.prepare({"httpMethod": "GET", "path": f"/orders/{number}", "headers": {"x-order-token": token},
                                 "queryString": {}, "body": ""}, {"time_limit_in_ms": 10_000})
        return json.loads(answered["body"]).get("payStatus")

    def advance(self, minutes) -> dict:
        if type(minutes) is not int or not 1 <= minutes <= MAX_ADVANCE_MINUTES:
            raise ConsoleError(400, "INVALID_ADVANCE", f"advanceMinutes must be 1..{MAX_ADVANCE_MINUTES}")
        self.clock.advance(minutes)
        return {**self.clock_state(), "sweep": self.sweep()}

    def sweep(self) -> dict:
        return self.reconcile({"Type": "Timer", "TriggerName": "console", "Message": ""},
                              {"time_limit_in_ms": 60_000, "request_id": "console"})


ACTIONS: dict[str, Callable[[Console, str, dict], object]] = {
    "pay": Console._pay, "pay_lost": Console._pay_lost, "fail": Console._fail, "expire": Console._expire,
    "query": Console._query, "refund": Console._refund, "complete_refund": Console._complete_refund,
    "replay": Console._replay, "tamper": Console._tamper,
}


def _body(event) -> dict:
    try:
        body = json.loads(event.get("body") or "{}")
    except ValueError:
        raise ConsoleError(400, "INVALID_JSON", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ConsoleError(400, "INVALID_JSON", "the body must be a JSON object")
    return body


def _entry(at, kind: str, title: str, detail: str) -> dict:
    known = isinstance(at, int) and not isinstance(at, bool)
    return {"at": int(at) if known else None, "kind": kind, "title": title, "detail": detail}


def _delivery_entry(delivery: dict) -> dict:
    attempts = delivery.get("attempts", 0)
    if delivery.get("state") == "done":
        return _entry(delivery.get("doneAt"), "delivery", "Delivered to the shop",
                      f"after {attempts} attempt(s)")
    if delivery.get("state") == "failed":
        return _entry(delivery.get("doneAt"), "delivery", "Delivery failed for good",
                      f"{attempts} attempt(s); last error {delivery.get('lastError')}")
    return _entry(delivery.get("nextAt"), "delivery", "Delivery pending",
                  f"{attempts} attempt(s) so far" + (f"; last error {delivery['lastError']}"
                                                     if delivery.get("lastError") else "") + "; next try due")


def _yuan(fen) -> str:
    if type(fen) is not int:
        return "?"
    return f"¥{fen // 100}.{fen % 100:02d}"
