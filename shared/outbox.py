"""The outbox relay: every fact in `events` delivered to the shop's webhook.

Each fact gets a delivery record (`deliveries`, written with the fact by the store).
The relay POSTs the fact as JSON, signed (`shared.webhook`), to FULFILMENT_WEBHOOK_URL:

- at least once, with the same `id` on every attempt; a 2xx answer means delivered;
- in order within an order: a fact waits while an earlier fact of its order is still
  pending, and goes on once that one is delivered or has failed for good;
- each attempt is claimed with a lease (one compare-and-set setting an owner and an
  expiry, like an INPROGRESS idempotency record), so sweeps and functions running at
  once never deliver the same fact in a parallel burst, and a claim whose holder died
  expires after LEASE_MS;
- the first attempt is made by the function that wrote the fact, right after its work
  (`Relay.deliver_orders`); retries come from the sweep (`Relay.run`), with a growing
  back-off for at least 24 hours, after which the delivery is `failed` and the anomaly
  `fulfilment_failed` is recorded (a person can replay it: `redeliver`);
- no redirect is followed (a 3xx is a failure), and a receiver slower than
  READ_TIMEOUT_S is a failure: the relay moves on.
"""

from __future__ import annotations

import contextvars
import json
import random
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from shared.errors import BadRequest, NotFound
from shared.log import log
from shared.store.port import DONE, FAILED, PENDING
from shared.webhook import sign_webhook

LEASE_MS = 30_000
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 3.0
GIVE_UP_AFTER_MS = 24 * 3_600_000
BATCH = 100
MAX_ERROR = 120
# The wait after the n-th failed attempt (then the last, until 24 hours have passed),
# each spread by +-10%.  About 13 attempts over the first day.
BACK_OFF_MS = (30_000, 120_000, 300_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000,
               14_400_000, 21_600_000)
# Fields of a fact's document that describe it, not its data.
_ENVELOPE = frozenset({"key", "type", "createTime", "_id"})


def back_off_ms(failures: int, jitter: float | None = None) -> int:
    """The wait after `failures` failed attempts (1 = the first failure)."""
    base = BACK_OFF_MS[min(max(failures, 1), len(BACK_OFF_MS)) - 1]
    spread = random.uniform(0.9, 1.1) if jitter is None else jitter  # noqa: S311 - spreading, not a secret
    return int(base * spread)


def fact_body(event: dict) -> bytes:
    """The JSON a delivery carries: `{"id", "type", "createTime", "data"}`."""
    data = {name: value for name, value in event.items() if name not in _ENVELOPE}
    return json.dumps({"id": event["key"], "type": event["type"], "createTime": event["createTime"],
                       "data": data}, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


# --- facts written by this invocation -------------------------------------------------
# The store tells us (its fact listener) which orders got a new fact during a request;
# the function then makes the first delivery attempt for those orders before it answers.

_written: contextvars.ContextVar[list | None] = contextvars.ContextVar("cloudpay_written_facts", default=None)


def note_fact(fact: dict) -> None:
    """The store's fact listener: remember the fact's order if a request is collecting."""
    orders = _written.get()
    if orders is not None and fact.get("outTradeNo") not in orders:
        orders.append(fact.get("outTradeNo"))


@contextmanager
def collecting() -> Iterator[list]:
    """Collect the orders that get new facts inside the block (in the order written)."""
    orders: list = []
    token = _written.set(orders)
    try:
        yield orders
    finally:
        _written.reset(token)


class Relay:
    def __init__(self, config, store, http, *, clock=None, jitter=None):
        self.url = config.fulfilment_webhook_url
        self._secret = config.fulfilment_webhook_secret
        self.store = store
        self._http = http
        self._clock = clock or store.clock
        self._jitter = jitter
        self.owner = secrets.token_hex(8)  # this instance's name on its leases

    @property
    def enabled(self) -> bool:
        return bool(self.url and self._secret)

    # --- first attempts, by the function that wrote the facts ---------------------------

    def deliver_orders(self, out_trade_nos: Iterable[str]) -> None:
        """The first attempt for new facts (never raises: the sweep retries anything)."""
        if not self.enabled:
            return
        for out_trade_no in out_trade_nos:
            try:
                self.deliver_order(out_trade_no)
            except Exception as exc:  # the answer to the caller must not depend on the shop
                log("outbox.deliver_failed", level="warning", outTradeNo=out_trade_no, error=type(exc).__name__)

    def deliver_order(self, out_trade_no: str) -> list[str]:
        """Deliver an order's due facts in the order they happened; stop at the first
        that is not delivered now (the later ones wait for it)."""
        outcomes = []
        now = self._clock()
        for record in self.store.deliveries_of(out_trade_no):
            if record["state"] != PENDING:
                continue  # delivered, or failed for good: the later facts go on
            if record["nextAt"] > now or record["leaseUntil"] > now:
                outcomes.append("waiting")
                break
            outcome = self._attempt(record)
            outcomes.append(outcome)
            if outcome not in ("delivered", "failed"):  # failed for good: the later facts go on
                break
        return outcomes

    # --- the sweep -------------------------------------------------------------------

    def run(self, summary, deadline) -> None:
        """Deliver due facts until none is left or the sweep's time is up."""
        if not self.enabled:
            summary.add("disabled")
            return
        for _ in range(1_000):  # bounded: BATCH x 1000 facts per sweep at most
            due = self.store.due_deliveries(self._clock(), BATCH)
            progressed = False
            orders: list[str] = []
            for record in due:
                if record["outTradeNo"] not in orders:
                    orders.append(record["outTradeNo"])
            # Sweeps running at once see the same batch: each takes it in its own order, so
            # they rarely reach for the same fact (the order within one order is kept by
            # deliver_order, whatever the order of orders).
            random.shuffle(orders)
            for out_trade_no in orders:
                if deadline.expired():
                    summary.add("deferred")
                    return
                for outcome in self.deliver_order(out_trade_no):
                    summary.add(outcome)
                    progressed = progressed or outcome in ("delivered", "retry", "failed")
            if not progressed or len(due) < BATCH:
                return

    # --- a person's replay ----------------------------------------------------------------

    def redeliver(self, event_id: str) -> dict:
        """Make a delivery due again (whatever its state) and attempt it now."""
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= 200:
            raise BadRequest("eventId must be the id of a fact (1..200 characters)", code="INVALID_EVENT_ID")
        if not self.enabled:
            raise BadRequest("FULFILMENT_WEBHOOK_URL is not set: there is nowhere to deliver to",
                             code="FULFILMENT_NOT_CONFIGURED")
        record = self.store.replay_delivery(event_id, self._clock())
        if record is None:
            raise NotFound("no delivery for that event id", code="EVENT_NOT_FOUND")
        outcome = self._attempt(record)
        current = self.store.find_delivery(event_id) or record
        return {"eventId": event_id, "outcome": outcome, "state": current["state"],
                "attempts": current["attempts"], "lastError": current.get("lastError")}

    # --- the doctor ---------------------------------------------------------------------

    def ping(self) -> tuple[int | None, str | None]:
        """POST one signed fact of type `cloudpay.ping` (nothing stored), as every delivery is
        sent: (the status, None) for a 2xx answer, else (the status or None, what failed)."""
        body = fact_body({"key": f"cloudpay.ping:{secrets.token_hex(8)}", "type": "cloudpay.ping",
                          "createTime": self._clock()})
        return self._post(body)

    # --- one attempt -------------------------------------------------------------------

    def _attempt(self, record: dict) -> str:
        event_id = record["eventId"]
        claimed = self.store.claim_delivery(event_id, self.owner, self._clock(), LEASE_MS)
        if claimed is None:
            return "busy"  # another sweep or function holds it, or it was just delivered
        event = self.store.find_event(event_id)
        if event is None:  # a delivery without its fact: nothing can ever be sent
            self._settle(claimed, ok=False, error="the fact is missing from events", final=True)
            return "failed"
        started = time.monotonic()
        status, error = self._post(fact_body(event))
        outcome = self._settle(claimed, ok=error is None, error=error)
        log("outbox.delivery", eventId=event_id, type=event["type"], outTradeNo=event.get("outTradeNo"),
            outcome=outcome, status=status, attempt=claimed["attempts"] + 1, error=error,
            ms=int((time.monotonic() - started) * 1000))
        return outcome

    def _post(self, body: bytes) -> tuple[int | None, str | None]:
        from shared.http import HttpError

        headers = {"Content-Type": "application/json; charset=utf-8", **sign_webhook(self._secret, body)}
        try:
            response = self._http.request("POST", self.url, headers=headers, body=body,
                                          connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                                          deadline=time.monotonic() + CONNECT_TIMEOUT_S + READ_TIMEOUT_S,
                                          max_body=64 * 1024)
        except HttpError as exc:
            return None, f"receiver {exc.kind}"
        if 200 <= response.status < 300:
            return response.status, None
        return response.status, f"receiver answered {response.status}"

    def _settle(self, claimed: dict, *, ok: bool, error: str | None, final: bool = False) -> str:
        now = self._clock()
        first = claimed.get("firstAttemptAt") or now
        if ok:
            fields, outcome = {"state": DONE, "doneAt": now, "lastError": None, "firstAttemptAt": first}, "delivered"
        elif final or now - first >= GIVE_UP_AFTER_MS:
            fields, outcome = {"state": FAILED, "lastError": (error or "")[:MAX_ERROR], "firstAttemptAt": first}, \
                "failed"
        else:
            wait = back_off_ms(claimed["attempts"] + 1, self._jitter)
            fields, outcome = {"nextAt": now + wait, "lastError": (error or "")[:MAX_ERROR],
                               "firstAttemptAt": first}, "retry"
        if self.store.settle_delivery(claimed["eventId"], self.owner, fields) is None:
            return "lease_lost"  # held past its lease; the new holder decides
        if outcome == "failed":
            self.store.record_anomaly("fulfilment_failed", claimed.get("outTradeNo"), {
                "eventId": claimed["eventId"], "type": claimed.get("type"), "attempts": claimed["attempts"] + 1,
                "firstAttemptAt": first, "lastError": fields["lastError"]},
                key=f"fulfilment_failed:{claimed['eventId']}:{first}")
        return outcome
