"""The whole loop in each of WeChat Pay's key modes, against the simulator.

A merchant with the WeChat Pay public key, one with platform certificates (downloaded
from `GET /v3/certificates`, kept in the store for the callback), and one in the middle
of the switch (both configured; the simulator signs a share with each) all pay, get
notified, query, refund and reconcile the bill with no anomaly.  Then: a burst during
the switch, a certificate rotation, and a flood of unknown serials.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from shared import order_states as st
from shared import runtime
from tests.functions import http_event, load_function, reply_json

CHINA = timezone(timedelta(hours=8))
CONTEXT = {"time_limit_in_ms": 60_000, "request_id": "keys"}
TIMER = {"Type": "Timer", "TriggerName": "reconcile-every-5-minutes", "Time": "2026-12-01T02:00:00Z",
         "Message": ""}


def _configure(live_stack, function_env, mode: str, rollout: float = 0.5) -> None:
    """The simulator signs in `mode`; the functions are configured for it."""
    live_stack.simulator.set_key_mode(mode, rollout=rollout if mode == "switch" else None)
    changes = {"WECHATPAY_PLATFORM_CERTS": None if mode == "public_key" else "download"}
    if mode == "certificate":
        changes.update(WECHATPAY_PUBLIC_KEY=None, WECHATPAY_PUBLIC_KEY_ID=None)
    function_env(**changes)


@pytest.fixture
def reconcile(live_stack):
    return load_function("reconcile")


@pytest.fixture
def short_minute(monkeypatch):
    """The one-look-a-minute limit, shortened so that a test can let "a minute" pass."""
    from shared.wechatpay import keys

    monkeypatch.setattr(keys, "REFRESH_INTERVAL_S", 0.5)
    return 0.5


def _yesterday() -> tuple[str, str]:
    day = (datetime.now(CHINA) - timedelta(days=1)).date()
    return day.isoformat(), f"{day.isoformat()}T12:00:00+08:00"


def _status(live_stack, order: dict) -> dict:
    reply = live_stack.prepare(http_event("GET", f"/prepare/orders/{order['outTradeNo']}",
                                          headers={"X-Order-Token": order["orderToken"]}), {})
    assert reply["statusCode"] == 200, reply
    return reply_json(reply)


def _signing_kinds(deliveries: list[dict]) -> set[str]:
    return {"public_key" if d["serial"].startswith("PUB_KEY_ID_") else "certificate" for d in deliveries}


@pytest.mark.parametrize("mode", ["public_key", "certificate", "switch"])
def test_the_whole_loop_in_each_key_mode(live_stack, function_env, reconcile, mode):
    _configure(live_stack, function_env, mode)
    sim, store = live_stack.simulator, live_stack.store
    bill_date, paid_time = _yesterday()

    notified = [live_stack.create_order(code=f"test-n{i}") for i in range(6)]
    coupon = live_stack.create_order(items=(("A1", 2),), code="test-coupon")          # 3980 fen
    polled = live_stack.create_order(code="test-ios")                                  # no notification
    for order in notified:
        sim.pay(order["outTradeNo"], success_time=paid_time)
    sim.pay(coupon["outTradeNo"], success_time=paid_time,
            coupons=[{"type": "NOCASH", "amount": 500}, {"type": "CASH", "amount": 300}])
    sim.pay(polled["outTradeNo"], success_time=paid_time, notify="drop")
    assert sim.wait_idle(10)

    # Notify: every notification accepted at once, whichever key signed it.
    deliveries = [d for order in notified + [coupon] for d in sim.deliveries(order["outTradeNo"])]
    assert [d["status"] for d in deliveries] == [204] * len(deliveries)
    expected_kinds = {"public_key": {"public_key"}, "certificate": {"certificate"},
                      "switch": {"public_key", "certificate"}}[mode]
    if mode != "switch":  # a share of 0.5 over 7 deliveries shows both kinds almost always; the burst test proves it
        assert _signing_kinds(deliveries) == expected_kinds
    # Query: the order whose notification never came is settled by the status poll.
    assert _status(live_stack, polled)["payStatus"] == st.SUCCESS
    for order in notified + [coupon, polled]:
        assert store.get_order(order["outTradeNo"])["payStatus"] == st.SUCCESS
    paid_coupon = store.get_order(coupon["outTradeNo"])
    assert (paid_coupon["totalFee"], paid_coupon["payerTotal"], paid_coupon["couponFee"],
            paid_coupon["settlementFee"]) == (3980, 3180, 800, 3480)

    # Refund, completed by a refund notification.
    refund = reconcile({"action": "refund", "outTradeNo": notified[0]["outTradeNo"], "amount": 500,
                        "outRefundNo": f"R-{mode}-1"}, CONTEXT)
    assert refund["ok"] is True, refund
    sim.complete_refund(f"R-{mode}-1")
    assert sim.wait_idle(10)
    refunded = store.get_order(notified[0]["outTradeNo"])
    assert (refunded["payStatus"], refunded["refundedFee"]) == (st.REFUND, 500)

    # Bill: yesterday's bill matches, coupons and all.
    result = reconcile({"action": "reconcile", "billDate": bill_date}, CONTEXT)
    assert result["ok"] is True and result["counts"] == {"matched": 8}, result
    assert store.list_anomalies() == []

    # Certificates were downloaded only where there are any, and kept for the callback.
    downloads = sim.counters()["requests"].get("GET /v3/certificates", 0)
    held = {c["serial"] for c in store.platform_certificates()}
    if mode == "public_key":
        assert downloads == 0 and held == set()
    else:
        assert 1 <= downloads <= 3 and held == {c["serial"] for c in sim.keys_state()["certificates"]}


def test_a_burst_during_the_switch_is_all_accepted_and_none_is_lost(live_stack, function_env):
    _configure(live_stack, function_env, "switch", rollout=0.5)
    sim, store = live_stack.simulator, live_stack.store
    orders = [live_stack.create_order(code=f"test-burst{i}")["outTradeNo"] for i in range(40)]
    for number in orders:
        sim.pay(number, duplicates=2)  # three copies each, at once
    assert sim.wait_idle(30)
    deliveries = [d for number in orders for d in sim.deliveries(number)]
    assert len(deliveries) >= 120
    assert _signing_kinds(deliveries) == {"public_key", "certificate"}
    refused = [d for d in deliveries if d["status"] != 204]
    assert refused == [], refused[:3]
    for number in orders:
        assert store.get_order(number)["payStatus"] == st.SUCCESS
        assert store.count_events("order.paid", number) == 1


@pytest.mark.parametrize("rollout, kinds", [(0.0, {"certificate"}), (1.0, {"public_key"})])
def test_the_switch_at_its_ends(live_stack, function_env, rollout, kinds):
    _configure(live_stack, function_env, "switch", rollout=rollout)
    orders = [live_stack.create_order(code=f"test-end{i}")["outTradeNo"] for i in range(5)]
    for number in orders:
        live_stack.simulator.pay(number)
    assert live_stack.simulator.wait_idle(10)
    deliveries = [d for number in orders for d in live_stack.simulator.deliveries(number)]
    assert _signing_kinds(deliveries) == kinds and {d["status"] for d in deliveries} == {204}


def test_a_rotation_is_followed(live_stack, short_minute, function_env, reconcile):
    """WeChat Pay lists a second certificate, signs with it, then retires the first."""
    _configure(live_stack, function_env, "certificate")
    sim, store = live_stack.simulator, live_stack.store
    first = live_stack.create_order(code="test-r1")["outTradeNo"]
    sim.pay(first)
    assert sim.wait_idle(10)
    old_serial = sim.keys_state()["certificates"][0]["serial"]

    new_serial = sim.rotate_certificate()
    time.sleep(short_minute)  # rotations come days apart, not within a minute of the last look
    # The next prepay's answer is signed with the new certificate: prepare downloads it
    # and keeps it in the store, where the callback finds it.
    second = live_stack.create_order(code="test-r2")["outTradeNo"]
    sim.pay(second)
    assert sim.wait_idle(10)
    [delivery] = sim.deliveries(second)
    assert delivery["serial"] == new_serial and delivery["status"] == 204
    assert {old_serial, new_serial} <= {c["serial"] for c in store.platform_certificates()}

    sim.retire_certificate(old_serial)
    third = live_stack.create_order(code="test-r3")["outTradeNo"]
    sim.pay(third)
    assert sim.wait_idle(10)
    assert [d["status"] for d in sim.deliveries(third)] == [204]
    assert all(store.get_order(n)["payStatus"] == st.SUCCESS for n in (first, second, third))


def test_a_rotation_seen_first_by_the_callback_is_picked_up_by_the_next_sweep(live_stack, short_minute,
                                                                             function_env, reconcile):
    """The callback holds no merchant key, so it cannot download: it reads the store.  A
    notification signed with a certificate nobody has fetched yet is refused (WeChat
    retries), until the sweep's scheduled look fetches it."""
    _configure(live_stack, function_env, "certificate")
    sim, store = live_stack.simulator, live_stack.store
    number = live_stack.create_order(code="test-rot")["outTradeNo"]
    sim.configure(retry_factor=0.05)            # WeChat's first retries after 0.75 s, 0.75 s, 1.5 s
    new_serial = sim.rotate_certificate()
    sim.pay(number)
    deadline = time.monotonic() + 5
    while not sim.deliveries(number) and time.monotonic() < deadline:
        time.sleep(0.05)
    first = sim.deliveries(number)[0]
    assert first["serial"] == new_serial and first["status"] == 401
    report = reconcile(TIMER, CONTEXT)
    assert report["sweep"]["certificates"] == {"refreshed": 1}, report
    assert new_serial in {c["serial"] for c in store.platform_certificates()}
    # WeChat's next retry comes after the callback's minute: it looks again, in the store.
    assert sim.wait_idle(30)
    assert sim.deliveries(number)[-1]["status"] == 204
    assert store.get_order(number)["payStatus"] == st.SUCCESS


def test_a_flood_of_unknown_serials_costs_a_bounded_number_of_looks(live_stack, function_env):
    _configure(live_stack, function_env, "certificate")
    sim = live_stack.simulator
    number = live_stack.create_order(code="test-flood")["outTradeNo"]   # prepare downloads once
    downloads_before = sim.counters()["requests"].get("GET /v3/certificates", 0)
    url = f"{live_stack.gateway.url}/callback"
    statuses = []
    for _ in range(100):
        result = sim.notify(url=url, out_trade_no=number, tamper="serial", retry=False)
        statuses.extend(d["status"] for d in result["deliveries"])
    assert statuses == [401] * 100
    assert sim.counters()["requests"].get("GET /v3/certificates", 0) == downloads_before
    assert runtime.instance("callback").keys.looks <= 1  # at most one look a minute per instance
    assert live_stack.store.get_order(number)["payStatus"] == st.NOTPAY


def test_certificates_expiring_with_no_successor_are_an_anomaly_once(live_stack, function_env, reconcile):
    _configure(live_stack, function_env, "certificate")
    sim, store = live_stack.simulator, live_stack.store
    old_serial = sim.keys_state()["certificates"][0]["serial"]
    short = sim.rotate_certificate(valid_days=20)
    sim.retire_certificate(old_serial)

    first = reconcile(TIMER, CONTEXT)["sweep"]["certificates"]
    assert first == {"refreshed": 1, "expiring_recorded": 1}, first
    assert reconcile(TIMER, CONTEXT)["sweep"]["certificates"] == {"expiring_known": 1}
    [anomaly] = store.list_anomalies(kind="platform_certificate_expiring")
    assert anomaly["evidence"]["serial"] == short and anomaly["outTradeNo"] is None
    assert 19 * 86_400 < anomaly["evidence"]["notAfter"] - time.time() <= 20 * 86_400


def test_public_key_mode_has_no_certificate_step(live_stack, reconcile):
    assert "certificates" not in reconcile(TIMER, CONTEXT)["sweep"]


def test_certificate_mode_for_a_merchant_without_certificates_says_what_to_do(live_stack, function_env, logs):
    """Merchants registered since late 2024 have only the public key: /v3/certificates is
    404 RESOURCE_NOT_EXISTS.  The order fails safely and the log says what to configure."""
    import json

    function_env(WECHATPAY_PUBLIC_KEY=None, WECHATPAY_PUBLIC_KEY_ID=None, WECHATPAY_PLATFORM_CERTS="download")
    reply = live_stack.prepare(http_event("POST", "/orders", body={"code": "test-new", "items": [
        {"sku": "A1", "quantity": 1}]}), {})
    assert reply["statusCode"] == 502 and reply_json(reply)["error"]["code"] == "WECHATPAY_BAD_RESPONSE"
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    [failed] = [line for line in lines if line["event"] == "wechatpay.certificates_failed"]
    assert failed["code"] == "WECHATPAY_RESOURCE_NOT_EXISTS" and "WECHATPAY_PUBLIC_KEY" in failed["message"]
    assert [o["payStatus"] for o in live_stack.store.list_orders()] == [st.PAYERROR]
