"""Structured logs: one JSON object per line on stdout (SCF ships stdout to CLS).

Call `log("callback.handled", outTradeNo=..., outcome=..., ms=...)`.  Field names that
look like secrets are masked, so a careless call cannot leak a key into the logs.

Warnings and errors are flushed at once; info lines are flushed by `flush()`, which the
request and event handlers call once at the end of every invocation (one system call
per request instead of one per line, and nothing left behind when SCF freezes the
instance after its reply).
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
import traceback

_SECRET_WORDS = ("secret", "key", "token", "password", "signature", "session", "authorization",
                 "ciphertext", "uri")
_lock = threading.Lock()
_sink = sys.stdout


@functools.lru_cache(maxsize=1024)  # the same few field names, every request
def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _clean(value):
    if isinstance(value, dict):
        return {k: ("***" if _is_secret(str(k)) else _clean(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def log(event: str, level: str = "info", **fields) -> None:
    """Write one line.  Never raises: a log line must not cost a request its reply."""
    record = {"ts": int(time.time() * 1000), "level": level, "event": event}
    record.update(_clean(fields))
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        with _lock:
            try:
                _sink.write(line)
            except UnicodeEncodeError:  # a lone surrogate from a client: escape it, do not crash
                _sink.write(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")
            if level != "info":
                _sink.flush()
    except (OSError, ValueError):  # stdout closed or broken: nothing better to do
        pass


def flush() -> None:
    """Push buffered lines out (end of an invocation).  Never raises."""
    try:
        with _lock:
            _sink.flush()
    except (OSError, ValueError):
        pass


def set_sink(stream):
    """Send log lines elsewhere (tests capture them to check nothing secret is logged);
    returns the previous sink."""
    global _sink
    previous, _sink = _sink, stream
    return previous


def where(exc: BaseException) -> list[str]:
    """file:line of an exception's last frames, without messages or locals (they may
    hold secrets): what a crash log line carries instead of a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)[-5:]
    return [f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}:{frame.name}" for frame in frames]
