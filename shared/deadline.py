"""One deadline for all the outbound work of an invocation.

The handler sets it once (`with deadline.until(monotonic_end): ...`); every outbound
call (`shared.http`, retries and back-off in the WeChat Pay client) reads `remaining()`
and never waits past it.  A context variable, so each thread (and each request the
local gateway runs at once) has its own.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_end: contextvars.ContextVar[float | None] = contextvars.ContextVar("cloudpay_deadline", default=None)


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
