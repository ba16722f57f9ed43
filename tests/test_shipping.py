"""Shipping information (WeChat's order shipping rule), against the simulator.

The simulator speaks stable_token, upload_shipping_info, get_order and
get_delivery_list as WeChat documents them; the functions run in-process.  Time is
moved forward with a clock ahead of the store's, never by sleeping.
"""

from __future__ import annotations

import threading
import time

import pytest

from shared import runtime
from shared.http import HttpClient
from shared.reconcile import Deadline, StepSummary
from shared.shipping import ShippingService
from shared.store.port import DONE, FAILED, PENDING
from shared.wechat_api import REFRESH_BEFORE_MS, WeChatApi
from tests.functions import load_function
from tests.shop_receiver import SECRET

CONTEXT = {"time_limit_in_ms": 60_000, "request_id": "shipping"}
TIMER = {"Type": "Timer", "TriggerName": "reconcile-every-5-minutes", "Time": "2026-12-01T02:00:00Z",
         "Message": ""}
HOUR = 3_600_000
UPLOAD = "/wxa/sec/order/upload_shipping_info"


@pytest.fixture
def virtual(live_stack, function_env):
    function_env(SHIPPING_MODE="virtual")
    return live_stack


@pytest.fixture
def manual(live_stack, function_env):
    function_env(SHIPPING_MODE="manual")
    return live_stack


def _paid(stack, code: str, items=(("A1", 1),)) -> str:
    number = stack.create_order(items=items, code=code)["outTradeNo"]
    stack.simulator.pay(number)
    assert stack.simulator.wait_idle(10)
    return number


def _sweep() -> dict:
    result = load_function("reconcile")(TIMER, CONTEXT)
    assert result["ok"], result
    return result["sweep"]



def _ten_minutes() -> Deadline:
    """A sweep's deadline that these tests never reach."""
    return Deadline({"time_limit_in_ms": 600_000})

def _service_at(stack, offset_ms: int) -> ShippingService:
    """Another instance's shipping service whose clock runs `offset_ms` ahead."""
    config = runtime.instance("reconcile").config()
    store = stack.store
    api = WeChatApi(config, store, HttpClient(), clock=lambda: store.clock() + offset_ms)
    return ShippingService(config, store, lambda: api, clock=lambda: store.clock() + offset_ms, jitter=1.0)


# --- virtual mode -------------------------------------------------------------------------

def test_virtual_goods_are_uploaded_by_the_sweep_and_the_chain_reaches_the_shop(virtual, function_env, shop):
    function_env(FULFILMENT_WEBHOOK_URL=shop.url, FULFILMENT_WEBHOOK_SECRET=SECRET)
    sim, store = virtual.simulator, virtual.store
    number = _paid(virtual, "test-virtual", items=(("A1", 2),))
    order = store.get_order(number)
    shipment = store.find_shipment(number)
    assert (shipment["state"], shipment["logisticsType"], shipment["shippingList"]) == \
        (PENDING, 3, [{"itemDesc": order["description"]}])
    assert sim.counters()["stable_token_fetches"] == 0        # the callback needs no app secret, no token

    assert _sweep()["shipping"] == {"uploaded": 1}
    [upload] = sim.shipping(order["transactionId"])["uploads"]
    body = upload["body"]
    assert upload["errcode"] == 0
    assert body["order_key"] == {"order_number_type": 2, "transaction_id": order["transactionId"]}
    assert (body["logistics_type"], body["delivery_mode"], body["payer"]) == (3, 1, {"openid": order["openid"]})
    assert body["shipping_list"] == [{"item_desc": order["description"]}]
    assert body["upload_time"].endswith("+08:00")
    assert store.find_shipment(number)["state"] == DONE
    assert store.count_events("order.shipped", number) == 1
    # The whole chain at the shop: paid (from the callback), shipped (from the sweep).
    assert shop.ids() == [f"order.paid:{number}", f"order.shipped:{number}"]
    assert shop.facts()[1]["data"]["logisticsType"] == 3
    assert _sweep()["shipping"] == {}                          # nothing left to do


def test_each_order_is_uploaded_once_however_many_sweeps_run(virtual):
    numbers = [_paid(virtual, f"test-many{i}") for i in range(8)]
    barrier = threading.Barrier(3)
    reports = []

    def sweep():
        barrier.wait()
        reports.append(load_function("reconcile")(TIMER, CONTEXT)["sweep"]["shipping"])

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert virtual.simulator.counters()["shipping_uploads"] == 8
    assert sum(report.get("uploaded", 0) for report in reports) == 8
    for number in numbers:
        assert virtual.store.count_events("order.shipped", number) == 1
        assert len(virtual.simulator.shipping(virtual.store.get_order(number)["transactionId"])["uploads"]) == 1


def test_a_failing_upload_is_retried_and_a_lasting_failure_is_an_anomaly(virtual):
    sim, store = virtual.simulator, virtual.store
    number = _paid(virtual, "test-flaky")
    sim.inject_fault(path=UPLOAD, status=500, count=1000)
    assert _sweep()["shipping"] == {"retry": 1}
    shipment = store.find_shipment(number)
    assert (shipment["state"], shipment["attempts"]) == (PENDING, 1) and "HTTP 500" in shipment["lastError"]
    assert _sweep()["shipping"] == {}                          # not due again yet
    for hours in (1, 5, 12, 23):
        _service_at(virtual, hours * HOUR).run(StepSummary(), _ten_minutes())
    assert store.find_shipment(number)["state"] == PENDING and store.list_anomalies() == []
    summary = StepSummary()
    _service_at(virtual, 25 * HOUR).run(summary, _ten_minutes())
    assert summary.counts == {"failed": 1}
    [anomaly] = store.list_anomalies(kind="shipping_failed")
    assert anomaly["outTradeNo"] == number and anomaly["evidence"]["attempts"] == 6
    assert store.count_events("order.shipped", number) == 0


def test_a_final_refusal_is_an_anomaly_at_once(virtual):
    sim, store = virtual.simulator, virtual.store
    number = _paid(virtual, "test-final")
    sim.inject_fault(path=UPLOAD, errcode=10060004, count=1)   # 支付单处于不可发货的状态
    assert _sweep()["shipping"] == {"failed": 1}
    shipment = store.find_shipment(number)
    assert (shipment["state"], shipment["lastError"]) == (FAILED, "errcode 10060004")
    assert [a["kind"] for a in store.list_anomalies(number)] == ["shipping_failed"]


def test_an_upload_whose_answer_was_lost_is_not_sent_twice(virtual):
    """The upload times out but WeChat applied it: the next try asks get_order first."""
    sim, store = virtual.simulator, virtual.store
    number = _paid(virtual, "test-lost")
    sim.inject_fault(path=UPLOAD, delay_ms=3_500, count=1)
    assert _sweep()["shipping"] == {"retry": 1}
    assert store.find_shipment(number)["outcomeUnknown"] is True
    transaction_id = store.get_order(number)["transactionId"]
    deadline = time.monotonic() + 5
    while not sim.shipping(transaction_id)["uploads"] and time.monotonic() < deadline:
        time.sleep(0.05)                                       # WeChat applies it after we gave up
    _service_at(virtual, HOUR).run(StepSummary(), _ten_minutes())
    shipment = store.find_shipment(number)
    assert shipment["state"] == DONE
    assert len(sim.shipping(store.get_order(number)["transactionId"])["uploads"]) == 1
    assert sim.counters()["shipping_queries"] == 1
    [fact] = [e for e in store.events_of(number) if e["type"] == "order.shipped"]
    assert fact["alreadyAtWeChat"] is True


def test_an_order_shipped_by_hand_in_the_console_is_recorded_as_shipped(virtual):
    sim, store = virtual.simulator, virtual.store
    number = _paid(virtual, "test-hand")
    sim.inject_fault(path=UPLOAD, errcode=10060002, count=1)  # 支付单已完成发货
    assert _sweep()["shipping"] == {"already_shipped": 1}
    assert store.find_shipment(number)["state"] == DONE and store.count_events("order.shipped", number) == 1


# --- the access token -----------------------------------------------------------------------

def test_the_token_is_shared_by_instances_and_fetched_again_before_it_expires(virtual):
    sim, store = virtual.simulator, virtual.store
    config = runtime.instance("reconcile").config()
    first, second = (WeChatApi(config, store, HttpClient()) for _ in range(2))
    token = first.access_token()
    assert second.access_token() == token
    assert sim.counters()["stable_token_fetches"] == 1 and (first.fetches, second.fetches) == (1, 0)
    expires_at = store.cached_token(config.wechat_appid)["expiresAt"]
    assert REFRESH_BEFORE_MS == 5 * 60_000
    # Six minutes before the expiry the shared token is still used; four minutes before,
    # an instance asks again.
    still_early = WeChatApi(config, store, HttpClient(), clock=lambda: expires_at - 6 * 60_000)
    still_early.access_token()
    assert sim.counters()["stable_token_fetches"] == 1
    later = WeChatApi(config, store, HttpClient(), clock=lambda: expires_at - 4 * 60_000)
    later.access_token()
    assert sim.counters()["stable_token_fetches"] == 2
    assert sim.counters()["token_fetches"] == 0              # never the older /cgi-bin/token


def test_a_token_ended_elsewhere_is_renewed_without_forcing(virtual):
    import json

    sim, store = virtual.simulator, virtual.store
    sim.configure(force_refresh_interval_s=0)   # so that a needless second force would show
    number = _paid(virtual, "test-token")
    config = runtime.instance("reconcile").config()
    api = WeChatApi(config, store, HttpClient())
    stale = api.access_token()
    # Someone forces a new token (another system sharing the appid): ours is now invalid.
    answer = HttpClient().request("POST", f"{sim.url}/cgi-bin/stable_token", body=json.dumps({
        "grant_type": "client_credential", "appid": config.wechat_appid, "secret": config.wechat_appsecret,
        "force_refresh": True}).encode(), headers={"Content-Type": "application/json"},
        connect_timeout=5, read_timeout=5, deadline=time.monotonic() + 10, max_body=4096)
    fresh = json.loads(answer.body)["access_token"]
    assert fresh != stale
    service = ShippingService(config, store, lambda: api)
    summary = StepSummary()
    service.run(summary, _ten_minutes())
    assert summary.counts == {"uploaded": 1}
    assert store.cached_token(config.wechat_appid)["accessToken"] == fresh
    assert store.find_shipment(number)["state"] == DONE
    kinds = [t["kind"] for t in sim.access_tokens_state()]
    assert kinds.count("stable") == 2                          # ours, the forced one: no second force


# --- the merchant's `ship` ----------------------------------------------------------------

def _ship(**event):
    return load_function("reconcile")({"action": "ship", **event}, CONTEXT)


def test_ship_uploads_express_delivery_once_then_allows_one_correction(manual, function_env, shop):
    function_env(FULFILMENT_WEBHOOK_URL=shop.url, FULFILMENT_WEBHOOK_SECRET=SECRET)
    sim, store = manual.simulator, manual.store
    number = _paid(manual, "test-ship")
    assert store.find_shipment(number) is None               # manual: nothing planned by itself
    parcel = {"trackingNo": "SF1234567890", "expressCompany": "SF", "itemDesc": "Oolong tea 250g",
              "receiverContact": "189****1234"}
    first = _ship(outTradeNo=number, logisticsType=1, shipping=[parcel])
    assert first == {"ok": True, "shipment": {"outTradeNo": number, "outcome": "uploaded", "state": DONE,
                                              "lastError": None}}
    [upload] = sim.shipping(store.get_order(number)["transactionId"])["uploads"]
    assert upload["body"]["shipping_list"] == [{"tracking_no": "SF1234567890", "express_company": "SF",
                                                "item_desc": "Oolong tea 250g",
                                                "contact": {"receiver_contact": "189****1234"}}]
    again = _ship(outTradeNo=number, logisticsType=1, shipping=[parcel])
    assert again["ok"] is False and again["error"]["code"] == "SHIPPING_ALREADY_UPLOADED"
    corrected = _ship(outTradeNo=number, logisticsType=1, update=True,
                      shipping=[{**parcel, "trackingNo": "SF0000000001"}])
    assert corrected["ok"] and corrected["shipment"]["outcome"] == "updated", corrected
    third = _ship(outTradeNo=number, logisticsType=1, update=True, shipping=[parcel])
    assert third["error"]["code"] == "SHIPPING_CORRECTION_USED"
    assert store.count_events("order.shipped", number) == 1
    assert store.count_events("order.shipping_updated", number) == 1
    assert shop.ids()[-2:] == [f"order.shipped:{number}", f"order.shipping_updated:{number}"]


@pytest.mark.parametrize("event, code", [
    ({"logisticsType": 5, "shipping": [{"itemDesc": "x"}]}, "INVALID_LOGISTICS_TYPE"),
    ({"logisticsType": True, "shipping": [{"itemDesc": "x"}]}, "INVALID_LOGISTICS_TYPE"),
    ({"logisticsType": 1, "shipping": [{"itemDesc": "x", "expressCompany": "ZTO"}]}, "INVALID_TRACKING_NO"),
    ({"logisticsType": 1, "shipping": [{"itemDesc": "x", "trackingNo": "7", "expressCompany": "NOPE"}]},
     "INVALID_EXPRESS_COMPANY"),
    ({"logisticsType": 1, "shipping": [{"itemDesc": "x", "trackingNo": "7", "expressCompany": "SF"}]},
     "INVALID_CONTACT"),
    ({"logisticsType": 1, "shipping": [{"itemDesc": "x", "trackingNo": "单号", "expressCompany": "ZTO"}]},
     "INVALID_TRACKING_NO"),
    ({"logisticsType": 1, "shipping": [{"itemDesc": "x", "trackingNo": "7" * 129, "expressCompany": "ZTO"}]},
     "INVALID_TRACKING_NO"),
    ({"logisticsType": 3, "shipping": [{"itemDesc": "x" * 121}]}, "INVALID_ITEM_DESC"),
    ({"logisticsType": 3, "shipping": [{"itemDesc": "  "}]}, "INVALID_ITEM_DESC"),
    ({"logisticsType": 3, "shipping": [{"itemDesc": "a"}, {"itemDesc": "b"}]}, "INVALID_SHIPPING"),
    ({"logisticsType": 1, "shipping": [{"itemDesc": "a", "trackingNo": f"7{n}", "expressCompany": "ZTO"}
                                       for n in range(16)]}, "INVALID_SHIPPING"),
    ({"logisticsType": 3, "shipping": []}, "INVALID_SHIPPING"),
    ({"logisticsType": 3, "shipping": [{"itemDesc": "x", "trackingNo": "7"}]}, "INVALID_SHIPPING"),
    ({"logisticsType": 3, "shipping": [{"itemDesc": "x", "color": "red"}]}, "UNKNOWN_FIELD"),
    ({"logisticsType": 3, "shipping": [{"itemDesc": "x"}], "update": "yes"}, "INVALID_UPDATE"),
    ({"logisticsType": 3, "shipping": [{"itemDesc": "x"}], "when": "now"}, "UNKNOWN_FIELD"),
])
def test_ship_refuses_bad_input_before_calling_wechat(manual, event, code):
    number = _paid(manual, "test-bad")
    uploads = manual.simulator.counters()["shipping_uploads"]
    result = _ship(outTradeNo=number, **event)
    assert result["ok"] is False and result["error"]["code"] == code, result
    assert manual.simulator.counters()["shipping_uploads"] == uploads
    assert manual.store.find_shipment(number) is None


def test_ship_refuses_unpaid_and_unknown_orders(manual):
    unpaid = manual.create_order(code="test-unpaid")["outTradeNo"]
    parcel = [{"itemDesc": "tea"}]
    assert _ship(outTradeNo=unpaid, logisticsType=3, shipping=parcel)["error"]["code"] == "ORDER_NOT_PAID"
    assert _ship(outTradeNo="T20261201NOSUCH", logisticsType=3, shipping=parcel)["error"]["code"] == \
        "ORDER_NOT_FOUND"
    assert _ship(logisticsType=3, shipping=parcel)["error"]["code"] == "INVALID_ORDER_NO"


def test_express_company_codes_are_wechats_own_list_fetched_once_a_day(manual):
    sim = manual.simulator
    for n in range(3):
        number = _paid(manual, f"test-list{n}")
        result = _ship(outTradeNo=number, logisticsType=1, shipping=[
            {"trackingNo": f"ZT{n:08d}", "expressCompany": "ZTO", "itemDesc": "tea"}])
        assert result["ok"], result
    assert sim.counters()["delivery_list_fetches"] == 1
    companies, _ = manual.store.cached_express_companies()
    assert companies["ZTO"] == "中通快递" and "SF" in companies


def test_ship_replaces_a_planned_virtual_upload_not_yet_sent(virtual):
    number = _paid(virtual, "test-replace")
    result = _ship(outTradeNo=number, logisticsType=4, shipping=[{"itemDesc": "pick up at the shop"}])
    assert result["ok"] and result["shipment"]["outcome"] == "uploaded", result
    [upload] = virtual.simulator.shipping(virtual.store.get_order(number)["transactionId"])["uploads"]
    assert upload["body"]["logistics_type"] == 4
    assert _sweep()["shipping"] == {}


def test_ship_with_shipping_off_is_refused(live_stack):
    number = _paid(live_stack, "test-off")
    assert _ship(outTradeNo=number, logisticsType=3, shipping=[{"itemDesc": "x"}])["error"]["code"] == "SHIPPING_OFF"
    assert live_stack.store.find_shipment(number) is None
    assert "shipping" not in _sweep()


def test_the_admin_command_ships(manual, capsys):
    from shared.admin import main

    number = _paid(manual, "test-cli")
    assert main(["ship", number, "--logistics-type", "1", "--item-desc", "tea", "--tracking-no", "YT1234",
                 "--express-company", "YTO"]) == 0
    assert manual.store.find_shipment(number)["state"] == DONE
    assert main(["ship", number, "--logistics-type", "3", "--item-desc", "tea"]) == 1
    assert "SHIPPING_ALREADY_UPLOADED" in capsys.readouterr().out
