"""Injected failures for the next N calls of an endpoint (POST /_sim/faults).

    {"path": "/v3/pay/transactions/jsapi", "status": 500, "body": "...", "count": 1}
                                                              # body: text, or a JSON object
    {"path": "/v3/pay/transactions/*", "delay_ms": 5000}      # client timeouts
    {"unsigned": true} / {"bad_signature": true}              # 2xx without a valid signature
    {"disconnect": true}                                      # close the connection, no answer
    {"rate_limited": true}        # 429 {"code": "FREQUENCY_LIMITED", "message": "频率超限"}, signed
    {"path": "/v3/pay/transactions/*", "rate_limited": true, "share": 0.3, "count": 1000}
                                  # about 30% of the calls are limited, up to 1000 of them
    {"path": "/wxa/sec/order/upload_shipping_info", "errcode": 10060001}
                                  # api.weixin.qq.com paths: HTTP 200 {"errcode": 10060001,
                                  # "errmsg": "支付单不存在 rid: ..."}, as WeChat fails there

`path` is exact, or a prefix when it ends with `*`; no path means every WeChat path
(never the /_sim/ control API).  `method` narrows it.  `share` (0 < share <= 1, default
1) is the probability that a matching call is hit; `count` is spent only by the calls
that are hit.  The first matching fault that hits is used (a call a fault spares may
still be hit by a later one), and removed once its count is spent.  `rate_limited` is
shorthand for status 429 with WeChat Pay's FREQUENCY_LIMITED body (no other status or
body with it).  `errcode` (a non-zero integer) needs a `path` outside /v3/ (/sns/, /cgi-bin/,
/wxa/: WeChat's api.weixin.qq.com), and no status, body or rate_limited.  Only /v3/ answers
are ever signed: a fault on an api.weixin.qq.com path answers unsigned, and its default error
body is `{"errcode":-1,"errmsg":"system error"}` rather than WeChat Pay's SYSTEM_ERROR.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import asdict, dataclass

from devtools.simulator.errors import SimError

MAX_COUNT = 1000
MAX_DELAY_MS = 60_000

_DEFAULT_ERROR_BODY = '{"code":"SYSTEM_ERROR","message":"系统错误"}'
_DEFAULT_WEIXIN_ERROR_BODY = '{"errcode":-1,"errmsg":"system error"}'
RATE_LIMITED_STATUS = 429
RATE_LIMITED_BODY = '{"code":"FREQUENCY_LIMITED","message":"频率超限"}'


@dataclass
class Fault:
    path: str | None = None
    method: str | None = None
    count: int = 1
    status: int | None = None
    body: str | None = None
    delay_ms: int = 0
    unsigned: bool = False
    bad_signature: bool = False
    disconnect: bool = False
    share: float = 1
    rate_limited: bool = False
    errcode: int | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        if self.path is None:
            return True
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def error_body(self, path: str = "/v3/") -> str:
        if self.body is not None:
            return self.body
        return _DEFAULT_ERROR_BODY if path.startswith("/v3/") else _DEFAULT_WEIXIN_ERROR_BODY


def parse_fault(spec: dict) -> Fault:
    """Validate a fault description (raises SimError 400)."""
    if not isinstance(spec, dict):
        raise SimError(400, "BAD_FAULT", "a fault is a JSON object")
    unknown = set(spec) - set(Fault.__dataclass_fields__)
    if unknown:
        raise SimError(400, "BAD_FAULT", f"unknown fault fields: {sorted(unknown)}")
    fault = Fault(**spec)
    if fault.path is not None and (not isinstance(fault.path, str) or not fault.path.startswith("/")):
        raise SimError(400, "BAD_FAULT", "path must start with /")
    if fault.method is not None:
        if not isinstance(fault.method, str):
            raise SimError(400, "BAD_FAULT", "method must be a string")
        fault.method = fault.method.upper()
    if not _is_int(fault.count) or not 1 <= fault.count <= MAX_COUNT:
        raise SimError(400, "BAD_FAULT", f"count must be 1..{MAX_COUNT}")
    if fault.status is not None and (not _is_int(fault.status) or not 200 <= fault.status <= 599):
        raise SimError(400, "BAD_FAULT", "status must be an HTTP status 200..599")
    if isinstance(fault.body, (dict, list)):   # a JSON body given as JSON
        fault.body = json.dumps(fault.body, ensure_ascii=False, separators=(",", ":"))
    if fault.body is not None and not isinstance(fault.body, str):
        raise SimError(400, "BAD_FAULT", "body must be a string or a JSON object")
    if not _is_int(fault.delay_ms) or not 0 <= fault.delay_ms <= MAX_DELAY_MS:
        raise SimError(400, "BAD_FAULT", f"delay_ms must be 0..{MAX_DELAY_MS}")
    for flag in ("unsigned", "bad_signature", "disconnect", "rate_limited"):
        if not isinstance(getattr(fault, flag), bool):
            raise SimError(400, "BAD_FAULT", f"{flag} must be true or false")
    if isinstance(fault.share, bool) or not isinstance(fault.share, (int, float)) or not 0 < fault.share <= 1:
        raise SimError(400, "BAD_FAULT", "share must be a number 0 < share <= 1 (the probability a call is hit)")
    if fault.rate_limited:
        if fault.status not in (None, RATE_LIMITED_STATUS) or fault.body is not None:
            raise SimError(400, "BAD_FAULT", "rate_limited is status 429 with the FREQUENCY_LIMITED body: "
                                             "give no other status or body with it")
        fault.status, fault.body = RATE_LIMITED_STATUS, RATE_LIMITED_BODY
    if fault.errcode is not None:
        if not _is_int(fault.errcode) or fault.errcode == 0:
            raise SimError(400, "BAD_FAULT", "errcode must be a non-zero integer")
        prefix = fault.path[:-1] if fault.path is not None and fault.path.endswith("*") else fault.path
        if prefix is None or prefix.startswith("/v3/") or (fault.path.endswith("*") and "/v3/".startswith(prefix)):
            raise SimError(400, "BAD_FAULT", "errcode needs a path on api.weixin.qq.com (/sns/, /cgi-bin/, /wxa/), "
                                             "not under /v3/")
        if fault.status is not None or fault.body is not None:
            raise SimError(400, "BAD_FAULT", "errcode is a 200 answer with that errcode: give no status, body or "
                                             "rate_limited with it")
    if not (fault.status or fault.delay_ms or fault.unsigned or fault.bad_signature or fault.disconnect
            or fault.errcode):
        raise SimError(400, "BAD_FAULT",
                       "a fault needs status, rate_limited, errcode, delay_ms, unsigned, bad_signature or disconnect")
    return fault


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FaultBook:
    def __init__(self, rng: random.Random | None = None):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._random = rng or random.Random()

    def add(self, spec: dict) -> dict:
        fault = parse_fault(spec)
        with self._lock:
            self._faults.append(fault)
        return asdict(fault)

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request that hits it (probability `share`),
        spending one of its count."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.share < 1 and self._random.random() >= fault.share:
                        continue   # spared by this fault; its count is kept
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def list(self) -> list[dict]:
        with self._lock:
            return [asdict(fault) for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
