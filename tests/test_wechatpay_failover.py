"""The backup domain and rate limits, over real loopback sockets.

A primary that refuses connections, one that accepts and never answers, and one that
answers 500: each call is sent once more, byte for byte, to the backup domain.  A 4xx is
an answer, never a reason to fail over.  `429 FREQUENCY_LIMITED` is retried after a
back-off with jitter, a bounded number of times and never past the invocation's deadline.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import pytest

from shared import deadline
from shared.errors import WeChatPayRejected, WeChatPayUnreachable
from shared.wechatpay.client import RATE_LIMIT_BASE_S, WeChatPayClient
from tests.fake_wechatpay import FakeWeChatPay, closed_port, signed, unsigned
from tests.keys import make_config

FREQUENCY_LIMITED = json.dumps({"code": "FREQUENCY_LIMITED", "message": "频率超限"}).encode()
PREPAY = {"out_trade_no": "T20261201FAILOVER01", "description": "Tea", "total_fee": 990,
          "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "time_expire": "2026-12-01T12:30:00+08:00"}


class SilentServer:
    """Accepts connections and never answers: a primary that times out."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def backup():
    server = FakeWeChatPay().start()
    server.handler = lambda req: signed(200, {"prepay_id": "wx_from_backup"})
    yield server
    server.stop()


@pytest.fixture
def primary():
    server = FakeWeChatPay().start()
    yield server
    server.stop()



def client_for(primary_base: str, backup_base: str | None, **kwargs) -> WeChatPayClient:
    """The client with this backup domain (None: the primary again, i.e. none)."""
    config = make_config("prepare", WECHATPAY_API_BASE=primary_base,
                         WECHATPAY_API_BASE_BACKUP=backup_base or primary_base)
    return WeChatPayClient.from_config(config, **kwargs)


def calls(logs: io.StringIO) -> list[dict]:
    return [line for line in map(json.loads, logs.getvalue().splitlines()) if line.get("event") == "wechatpay.call"]


def test_a_primary_that_refuses_connections_fails_over_to_the_backup(backup, logs):
    client = client_for(f"http://127.0.0.1:{closed_port()}", backup.base)
    assert client.jsapi_prepay(**PREPAY) == "wx_from_backup"
    [req] = backup.received
    assert req.auth_ok and json.loads(req.body)["out_trade_no"] == PREPAY["out_trade_no"]
    assert [(c["outcome"], c.get("backup")) for c in calls(logs)] == [("unreachable", None), ("ok", True)]


def test_a_primary_that_times_out_fails_over_to_the_backup(backup):
    silent = SilentServer()
    try:
        client = client_for(silent.base, backup.base, read_timeout=0.3)
        started = time.monotonic()
        assert client.jsapi_prepay(**PREPAY) == "wx_from_backup"
        assert 0.3 <= time.monotonic() - started < 2.0
        assert len(backup.received) == 1
    finally:
        silent.close()


def test_a_primary_that_answers_500_is_retried_on_the_backup_with_the_same_bytes(primary, backup):
    primary.handler = lambda req: unsigned(500, b'{"code":"SYSTEM_ERROR","message":"busy"}')
    client = client_for(primary.base, backup.base)
    assert client.jsapi_prepay(**PREPAY) == "wx_from_backup"
    [first], [second] = primary.received, backup.received
    assert first.body == second.body and first.path == second.path  # the same call, safe to repeat
    assert second.auth_ok  # signed afresh for the backup host


@pytest.mark.parametrize("status, code", [(400, "PARAM_ERROR"), (401, "SIGN_ERROR"), (403, "NO_AUTH"),
                                          (404, "ORDER_NOT_EXIST")])
def test_a_4xx_is_an_answer_and_never_fails_over(primary, backup, status, code):
    primary.handler = lambda req: unsigned(status, json.dumps({"code": code, "message": "no"}).encode())
    client = client_for(primary.base, backup.base)
    with pytest.raises(WeChatPayRejected) as caught:
        client.jsapi_prepay(**PREPAY)
    assert caught.value.wechat_code == code
    assert len(primary.received) == 1 and backup.received == []


def test_both_domains_down_is_unreachable_after_one_try_each(primary):
    primary.handler = lambda req: unsigned(503, b'{"code":"SYSTEM_ERROR","message":"busy"}')
    client = client_for(primary.base, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(WeChatPayUnreachable):
        client.query_order("T20261201FAILOVER01")
    assert len(primary.received) == 1


def test_a_5xx_from_the_backup_too_is_the_backups_answer(primary, backup):
    primary.handler = lambda req: unsigned(500, b'{"code":"SYSTEM_ERROR","message":"primary"}')
    backup.handler = lambda req: unsigned(500, b'{"code":"SYSTEM_ERROR","message":"backup"}')
    client = client_for(primary.base, backup.base)
    with pytest.raises(WeChatPayRejected) as caught:
        client.query_order("T20261201FAILOVER01")
    assert caught.value.outcome_unknown and "backup" in caught.value.message
    assert len(primary.received) == len(backup.received) == 1


def test_without_a_distinct_backup_there_is_one_try(primary):
    primary.handler = lambda req: unsigned(500, b'{"code":"SYSTEM_ERROR","message":"busy"}')
    client = client_for(primary.base, primary.base)
    with pytest.raises(WeChatPayRejected):
        client.query_order("T20261201FAILOVER01")
    assert len(primary.received) == 1


def test_no_failover_when_the_deadline_leaves_no_time(backup):
    client = client_for(f"http://127.0.0.1:{closed_port()}", backup.base)
    with deadline.until(time.monotonic() + 0.15), pytest.raises(WeChatPayUnreachable):
        client.jsapi_prepay(**PREPAY)
    assert backup.received == []


def test_the_default_backup_is_wechat_pays_api2():
    config = make_config("prepare", WECHATPAY_API_BASE="https://api.mch.weixin.qq.com",
                         WECHATPAY_API_BASE_BACKUP=None)
    assert config.wechatpay_api_base_backup == "https://api2.mch.weixin.qq.com"


# --- rate limits ------------------------------------------------------------------------

def _limited_then_ok(limited: int):
    count = [0]

    def handler(req):
        count[0] += 1
        if count[0] <= limited:
            return unsigned(429, FREQUENCY_LIMITED)
        return signed(200, {"prepay_id": "wx_after_backoff"})
    return handler


def test_frequency_limited_is_retried_after_a_growing_back_off_with_jitter(primary, logs):
    primary.handler = _limited_then_ok(2)
    pauses = []
    client = client_for(primary.base, None, sleep=pauses.append, jitter=lambda: 0.75)
    assert client.jsapi_prepay(**PREPAY) == "wx_after_backoff"
    assert len(primary.received) == 3
    assert pauses == [RATE_LIMIT_BASE_S * 0.75, RATE_LIMIT_BASE_S * 2 * 0.75]
    assert {json.loads(r.body)["out_trade_no"] for r in primary.received} == {PREPAY["out_trade_no"]}


def test_the_jitter_spreads_the_pauses():
    from shared.wechatpay.client import _jitter

    values = {round(_jitter(), 6) for _ in range(200)}
    assert len(values) > 150 and all(0.5 <= value <= 1.5 for value in values)


def test_frequency_limited_gives_up_after_the_retries(primary):
    primary.handler = _limited_then_ok(100)
    pauses = []
    client = client_for(primary.base, None, sleep=pauses.append, jitter=lambda: 1.0, rate_limit_retries=3)
    with pytest.raises(WeChatPayRejected) as caught:
        client.jsapi_prepay(**PREPAY)
    assert caught.value.wechat_code == "FREQUENCY_LIMITED" and caught.value.http_status == 429
    assert len(primary.received) == 4 and len(pauses) == 3
    assert not caught.value.outcome_unknown  # refused, not applied: safe to tell the buyer to retry


def test_the_back_off_never_sleeps_past_the_deadline(primary):
    primary.handler = _limited_then_ok(100)
    pauses = []
    client = client_for(primary.base, None, sleep=pauses.append, jitter=lambda: 1.0)
    with deadline.until(time.monotonic() + RATE_LIMIT_BASE_S + 0.1), pytest.raises(WeChatPayRejected):
        client.jsapi_prepay(**PREPAY)
    assert pauses == [] and len(primary.received) == 1


def test_the_back_off_really_waits(primary):
    primary.handler = _limited_then_ok(1)
    client = client_for(primary.base, None, jitter=lambda: 0.5)
    started = time.monotonic()
    client.jsapi_prepay(**PREPAY)
    assert time.monotonic() - started >= RATE_LIMIT_BASE_S * 0.5
