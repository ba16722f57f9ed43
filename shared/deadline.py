"""One deadline for all the outbound work of an invocation.

The handler sets it once (`with deadline.until(monotonic_end): ...`); every outbound
call (`shared.http`, retries and back-off in the WeChat Pay client) reads `remaining()`
and never waits past it.  A context variable, so each thread (and each request the
local gateway runs at once) has its own.

HTTP functions take their deadline from SCF's `context["time_limit_in_ms"]` (else the
timeout `serverless.yml` gives them, FUNCTION_TIMEOUT_S): the documented 502/503 leaves
REPLY_MARGIN_S before SCF would kill the function, and outbound HTTP stops
STORE_RESERVE_S earlier still, so that the store can record the outcome (a prepay that
ran out of time leaves its order PAYERROR, for the sweep to close).  The store keeps its
client's own short timeouts and is held to the deadline only once less than those is
left (`store_remaining`), never by `pymongo.timeout()` over the whole invocation, which
would stretch server selection to the remaining time.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

# The functions' SCF timeouts in seconds: serverless.yml sets exactly these (a test holds
# them equal), and a handler assumes them when SCF passes no `time_limit_in_ms`.
FUNCTION_TIMEOUT_S = {"prepare": 10, "callback": 5, "reconcile": 120}
# The least timeout each function's normal work needs: prepare one login and one prepay
# at their usual bounds (3 s each) plus the store; callback the store and the fact's
# first delivery; reconcile a useful share of a sweep.  doctor and the deployment test
# refuse a shorter timeout.
MIN_TIMEOUT_S = {"prepare": 8, "callback": 4, "reconcile": 30}
SCF_DEFAULT_TIMEOUT_S = 3   # a function created without a timeout
REPLY_MARGIN_S = 0.8     # the contract asks for >= 500 ms; the rest is slack for the log flush
STORE_RESERVE_S = 1.0    # outbound HTTP ends this long before the store must be done

_end: contextvars.ContextVar[float | None] = contextvars.ContextVar("cloudpay_deadline", default=None)
# When the store must be done (the reply's deadline); outbound HTTP uses `_end`.
_store_end: contextvars.ContextVar[float | None] = contextvars.ContextVar("cloudpay_store_deadline", default=None)


def timeout_s(context, function: str) -> float:
    """The invocation's time limit: SCF's `time_limit_in_ms`, else the configured timeout."""
    limit = context.get("time_limit_in_ms") if isinstance(context, dict) else None
    if type(limit) is int and limit > 0:
        return limit / 1000
    return float(FUNCTION_TIMEOUT_S.get(function, SCF_DEFAULT_TIMEOUT_S))


@contextmanager
def for_http_invocation(context, function: str, started: float) -> Iterator[None]:
    """The deadlines of one HTTP invocation that began at `started` (monotonic)."""
    reply_end = started + timeout_s(context, function) - REPLY_MARGIN_S
    store_token = _store_end.set(reply_end)
    try:
        with until(reply_end - STORE_RESERVE_S):
            yield
    finally:
        _store_end.reset(store_token)


def store_remaining(clock=time.monotonic) -> float | None:
    """Seconds the store may still take in this invocation, or None without a deadline."""
    value = _store_end.get()
    if value is None:
        value = _end.get()
    return None if value is None else value - clock()


def end() -> float | None:
    """The current deadline as a `time.monotonic()` value, or None when there is none."""
    return _end.get()


def remaining(clock=time.monotonic) -> float | None:
    """Seconds left before the deadline (may be negative), or None without one."""
    value = _end.get()
    return None if value is None else value - clock()


def earliest(*ends: float | None) -> float | None:
    """The earliest of some deadlines (None ones ignored); the current one included."""
    known = [value for value in (*ends, _end.get()) if value is not None]
    return min(known) if known else None


@contextmanager
def until(monotonic_end: float | None) -> Iterator[None]:
    """Run a block under a deadline (an inner, later deadline never extends an outer one)."""
    current = _end.get()
    if monotonic_end is not None and current is not None:
        monotonic_end = min(monotonic_end, current)
    token = _end.set(monotonic_end if monotonic_end is not None else current)
    try:
        yield
    finally:
        _end.reset(token)
