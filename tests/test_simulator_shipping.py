"""The simulator's api.weixin.qq.com side for order shipping, over HTTP: stable_token (reuse,
refresh, force_refresh, errors), upload_shipping_info (WeChat's field rules and errcodes, the one
correction), get_order (order_state), token checks, injected faults and reset.

Nothing of shared/ is used: requests talks to the simulator as a backend would, and the
expected values come from WeChat's documentation (devtools/simulator/shipping_rules.py).
"""

from __future__ import annotations

import copy
import time

import pytest
import requests

from devtools.simulator import shipping_rules as rules
from tests.sim_fixtures import SimMerchant

pytest_plugins = ["tests.sim_fixtures"]

STABLE_TOKEN = "/cgi-bin/stable_token"
UPLOAD = "/wxa/sec/order/upload_shipping_info"
GET_ORDER = "/wxa/sec/order/get_order"
IS_TRADE_MANAGED = "/wxa/sec/order/is_trade_managed"
OPENID = SimMerchant.OPENID
T1, T2, T3 = "2024-05-01T12:00:00+08:00", "2024-05-01T13:00:00.120+08:00", "2024-05-01T14:00:00Z"


# --- helpers ----------------------------------------------------------------------------

def fetch_token(merchant: SimMerchant, **changes) -> requests.Response:
    body = {"grant_type": "client_credential", "appid": merchant.keys.appid, "secret": merchant.keys.app_secret}
    body.update(changes)
    return merchant.http.post(merchant.sim.url + STABLE_TOKEN, json=body, timeout=5)


def token(merchant: SimMerchant, **changes) -> str:
    response = fetch_token(merchant, **changes)
    assert response.status_code == 200 and "access_token" in response.json(), response.text
    return response.json()["access_token"]


def weixin(merchant: SimMerchant, path: str, access_token: str | None, body: object, *,
           timeout: float = 5) -> requests.Response:
    params = {} if access_token is None else {"access_token": access_token}
    return merchant.http.post(merchant.sim.url + path, params=params, json=body, timeout=timeout)


def paid(merchant: SimMerchant, out_trade_no: str = "T20240501001", total: int = 1990) -> str:
    """A paid order's transaction_id (no notification)."""
    merchant.prepay(out_trade_no, total=total)
    return merchant.sim.pay(out_trade_no, notify="drop")["order"]["transaction_id"]


def express_item(**changes) -> dict:
    item = {"tracking_no": "SF1234567890", "express_company": "SF", "item_desc": "乌龙茶250g*1",
            "contact": {"receiver_contact": "138****1234"}}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not None}


def upload_body(transaction_id: str, *, item: dict | None = None, **changes) -> dict:
    body = {"order_key": {"order_number_type": 2, "transaction_id": transaction_id},
            "logistics_type": 1, "delivery_mode": 1,
            "shipping_list": [item if item is not None else express_item()],
            "upload_time": T1, "payer": {"openid": OPENID}}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def upload(merchant: SimMerchant, access_token: str, body: object) -> dict:
    response = weixin(merchant, UPLOAD, access_token, body)
    assert response.status_code == 200, response.text
    return response.json()


def get_order(merchant: SimMerchant, access_token: str, body: object) -> dict:
    response = weixin(merchant, GET_ORDER, access_token, body)
    assert response.status_code == 200, response.text
    return response.json()


def order_state(merchant: SimMerchant, access_token: str, transaction_id: str) -> int:
    answer = get_order(merchant, access_token, {"transaction_id": transaction_id})
    assert answer["errcode"] == 0, answer
    return answer["order"]["order_state"]


# --- stable_token -----------------------------------------------------------------------

def test_stable_token_answers_the_same_token_while_it_is_valid(sim_merchant):
    first = fetch_token(sim_merchant)
    assert first.status_code == 200 and first.headers["Content-Type"].startswith("application/json")
    answer = first.json()
    assert set(answer) == {"access_token", "expires_in"} and answer["expires_in"] == 7200
    again = fetch_token(sim_merchant, force_refresh=False).json()
    assert again["access_token"] == answer["access_token"] and 7190 <= again["expires_in"] <= 7200
    counters = sim_merchant.sim.counters()
    assert counters["stable_token_fetches"] == 2 and counters["token_fetches"] == 0
    assert [t["kind"] for t in sim_merchant.sim.access_tokens_state()] == ["stable"]


def test_stable_token_is_renewed_near_its_end_and_the_old_one_lives_out_its_time(sim_merchant):
    configured = sim_merchant.control("POST", "/_sim/config", {"token_ttl_s": 2, "token_refresh_margin_s": 1})
    assert configured.status_code == 200 and configured.json()["token_ttl_s"] == 2
    transaction_id = paid(sim_merchant)
    started = time.monotonic()
    old = fetch_token(sim_merchant).json()
    assert old["expires_in"] == 2
    assert token(sim_merchant) == old["access_token"]            # more than the margin left
    time.sleep(max(0.0, 1.15 - (time.monotonic() - started)))    # now less than 1 s left
    new = token(sim_merchant)
    assert new != old["access_token"]
    assert order_state(sim_merchant, old["access_token"], transaction_id) == 1   # still valid
    time.sleep(max(0.0, 2.1 - (time.monotonic() - started)))
    assert get_order(sim_merchant, old["access_token"], {"transaction_id": transaction_id})["errcode"] == 42001
    assert order_state(sim_merchant, new, transaction_id) == 1


def test_force_refresh_issues_a_new_token_and_invalidates_the_previous(sim_merchant):
    transaction_id = paid(sim_merchant)
    first = token(sim_merchant)
    second = token(sim_merchant, force_refresh=True)
    assert second != first
    assert get_order(sim_merchant, first, {"transaction_id": transaction_id})["errcode"] == 40001
    assert order_state(sim_merchant, second, transaction_id) == 1
    # WeChat: forced refreshes need 30 s between them, else they do not refresh.
    assert token(sim_merchant, force_refresh=True) == second
    sim_merchant.sim.configure(force_refresh_interval_s=0)
    third = token(sim_merchant, force_refresh=True)
    assert third not in (first, second) and order_state(sim_merchant, third, transaction_id) == 1


@pytest.mark.parametrize(("changes", "errcode"), [
    ({"appid": "wx0000000000000000"}, 40013),
    ({"secret": "0" * 32}, 40125),
    ({"grant_type": "authorization_code"}, 40002),
    ({"appid": None}, 41002),
    ({"secret": ""}, 41004),
    ({"force_refresh": "true"}, 47001),
    ({"appid": 12345}, 47001),
])
def test_stable_token_refusals_are_http_200_with_errcode(sim_merchant, changes, errcode):
    body = {"grant_type": "client_credential", "appid": sim_merchant.keys.appid,
            "secret": sim_merchant.keys.app_secret, **changes}
    body = {k: v for k, v in body.items() if v is not None}
    response = sim_merchant.http.post(sim_merchant.sim.url + STABLE_TOKEN, json=body, timeout=5)
    assert response.status_code == 200
    answer = response.json()
    assert answer["errcode"] == errcode and answer["errmsg"] and "access_token" not in answer
    assert sim_merchant.sim.access_tokens_state() == []


def test_stable_token_wants_a_json_post(sim_merchant):
    url = sim_merchant.sim.url + STABLE_TOKEN
    assert requests.get(url, timeout=5).json()["errcode"] == 43002
    assert requests.post(url, data=b"", timeout=5).json()["errcode"] == 44002
    assert requests.post(url, data=b"grant_type=client_credential", timeout=5).json()["errcode"] == 47001
    assert requests.post(url, json=["client_credential"], timeout=5).json()["errcode"] == 47001


def test_cgi_bin_token_still_works_and_only_invalidates_its_own_kind(sim_merchant):
    sim = sim_merchant.sim
    transaction_id = paid(sim_merchant)
    stable = token(sim_merchant)
    params = {"grant_type": "client_credential", "appid": sim_merchant.keys.appid,
              "secret": sim_merchant.keys.app_secret}
    first = requests.get(sim.url + "/cgi-bin/token", params=params, timeout=5)
    assert first.headers["Content-Type"] == "text/plain" and first.json()["expires_in"] == 7200
    legacy = first.json()["access_token"]
    assert order_state(sim_merchant, legacy, transaction_id) == 1    # valid for the shipping API too
    sim.configure(token_refresh_margin_s=0)                          # no overlap for the next one
    second = requests.get(sim.url + "/cgi-bin/token", params=params, timeout=5).json()["access_token"]
    assert second != legacy
    assert get_order(sim_merchant, legacy, {"transaction_id": transaction_id})["errcode"] == 40001
    assert order_state(sim_merchant, second, transaction_id) == 1
    assert order_state(sim_merchant, stable, transaction_id) == 1    # stable tokens are isolated
    bad = requests.get(sim.url + "/cgi-bin/token", params={**params, "secret": "0" * 32}, timeout=5).json()
    assert bad["errcode"] == 40125
    assert sim.counters()["token_fetches"] == 3 and sim.counters()["stable_token_fetches"] == 1


# --- upload_shipping_info: accepted -----------------------------------------------------

def test_upload_express_delivery_ships_the_payment(sim_merchant):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    assert order_state(sim_merchant, access_token, transaction_id) == 1
    body = upload_body(transaction_id)
    assert upload(sim_merchant, access_token, body) == {"errcode": 0, "errmsg": "ok"}

    record = sim_merchant.control("GET", f"/_sim/shipping/{transaction_id}").json()
    assert record["order_state"] == 2 and record["finish_shipping_count"] == 1 and record["accepted"] == 1
    assert record["uploads"][0]["body"] == body and record["uploads"][0]["errcode"] == 0
    assert record["uploads"][0]["received_at"]
    order = get_order(sim_merchant, access_token, {"transaction_id": transaction_id})["order"]
    assert order["order_state"] == 2 and order["merchant_trade_no"] == "T20240501001"
    assert order["openid"] == OPENID and order["paid_amount"] == 1990 and order["in_complaint"] is False
    shipping = order["shipping"]
    assert (shipping["logistics_type"], shipping["delivery_mode"], shipping["finish_shipping"]) == (1, 1, True)
    assert shipping["shipping_list"] == [{"tracking_no": "SF1234567890", "express_company": "SF",
                                          "goods_desc": "乌龙茶250g*1", "upload_time": 1714536000,
                                          "contact": {"receiver_contact": "138****1234"}}]
    assert sim_merchant.sim.counters()["shipping_uploads"] == 1


def test_upload_virtual_goods_by_merchant_order_number(sim_merchant):
    paid(sim_merchant, "T20240501002")
    access_token = token(sim_merchant)
    body = upload_body("", logistics_type=3, shipping_list=[{"item_desc": "话费充值100元"}],
                       order_key={"order_number_type": 1, "mchid": sim_merchant.keys.mchid,
                                  "out_trade_no": "T20240501002"})
    assert upload(sim_merchant, access_token, body)["errcode"] == 0
    answer = get_order(sim_merchant, access_token, {"merchant_id": sim_merchant.keys.mchid,
                                                    "merchant_trade_no": "T20240501002"})
    assert answer["errcode"] == 0
    order = answer["order"]
    assert order["order_state"] == 2 and order["shipping"]["logistics_type"] == 3
    assert order["shipping"]["shipping_list"][0]["tracking_no"] == ""
    assert order["shipping"]["shipping_list"][0]["goods_desc"] == "话费充值100元"


def test_upload_at_the_documented_limits_is_accepted(sim_merchant):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    items = [express_item(tracking_no="Y" * 128 if n == 0 else f"YT{n:013d}", express_company="YTO", contact=None,
                          item_desc="茶" * 120)
             for n in range(rules.MAX_SHIPPING_LIST)]
    body = upload_body(transaction_id, delivery_mode=2, is_all_delivered=True, shipping_list=items)
    assert upload(sim_merchant, access_token, body)["errcode"] == 0
    assert len(get_order(sim_merchant, access_token, {"transaction_id": transaction_id})
               ["order"]["shipping"]["shipping_list"]) == 15


def test_split_delivery_is_shipped_once_all_is_delivered(sim_merchant):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    part = upload_body(transaction_id, delivery_mode=2, is_all_delivered=False, upload_time=T1)
    assert upload(sim_merchant, access_token, part)["errcode"] == 0
    order = get_order(sim_merchant, access_token, {"transaction_id": transaction_id})["order"]
    assert order["order_state"] == 1 and order["shipping"]["finish_shipping"] is False
    items = [express_item(), express_item(tracking_no="SF0000000002")]
    done = upload_body(transaction_id, delivery_mode=2, is_all_delivered=True, shipping_list=items, upload_time=T2)
    assert upload(sim_merchant, access_token, done)["errcode"] == 0
    order = get_order(sim_merchant, access_token, {"transaction_id": transaction_id})["order"]
    assert order["order_state"] == 2 and order["shipping"]["finish_shipping_count"] == 1
    assert sim_merchant.sim.shipping(transaction_id)["reship_used"] is False


# --- upload_shipping_info: refused ------------------------------------------------------

def _refusals(transaction_id: str, mchid: str) -> dict[str, tuple[dict, int]]:
    base = upload_body(transaction_id)
    long_company = "X" * 129

    def with_item(**changes):
        return {**base, "shipping_list": [express_item(**changes)]}

    return {
        "order_number_type": ({**base, "order_key": {"order_number_type": 3, "transaction_id": transaction_id}},
                              268485194),
        "no transaction_id": ({**base, "order_key": {"order_number_type": 2}}, 268485195),
        "no mchid": ({**base, "order_key": {"order_number_type": 1, "out_trade_no": "T20240501001"}}, 268485196),
        "no out_trade_no": ({**base, "order_key": {"order_number_type": 1, "mchid": mchid}}, 268485197),
        "logistics_type": ({**base, "logistics_type": 5}, 10060005),
        "delivery_mode": ({**base, "delivery_mode": 3}, 268485224),
        "split, not express": ({**base, "logistics_type": 4, "delivery_mode": 2, "is_all_delivered": True},
                               10060006),
        "split, no is_all_delivered": ({**base, "delivery_mode": 2}, 10060007),
        "unified, two parcels": ({**base, "shipping_list": [express_item(), express_item()]}, 268485228),
        "sixteen parcels": ({**base, "delivery_mode": 2, "is_all_delivered": True,
                             "shipping_list": [express_item()] * 16}, 10060024),
        "no item_desc": (with_item(item_desc=None), 10060008),
        "item_desc 121": (with_item(item_desc="茶" * 121), 10060009),
        "no tracking_no": (with_item(tracking_no=None), 268485226),
        "no express_company": (with_item(express_company=None), 268485227),
        "tracking_no 129 bytes": (with_item(tracking_no="S" * 129), 10060026),
        "express_company 129 bytes": (with_item(express_company=long_company), 10060025),
        "unknown carrier": (with_item(express_company="shunfeng"), 10060014),
        "SF without contact": (with_item(contact=None), 10060014),
        "contact not masked": (with_item(contact={"receiver_contact": "13800001234"}), 10060014),
        "contact masked to the end": (with_item(contact={"consignor_contact": "138*****234"}), 10060014),
        "upload_time": ({**base, "upload_time": "2024-05-01 12:00:00"}, 268485216),
        "no upload_time": ({k: v for k, v in base.items() if k != "upload_time"}, 268485216),
        "no payer": ({k: v for k, v in base.items() if k != "payer"}, 10060014),
        "other payer": ({**base, "payer": {"openid": "o" + "x" * 27}}, 10060031),
        "shipping_list an object": ({**base, "shipping_list": express_item()}, 47001),
        "logistics_type a string": ({**base, "logistics_type": "1"}, 47001),
        "unknown transaction": ({**base, "order_key": {"order_number_type": 2,
                                                       "transaction_id": "4200000000202405010000000000"}}, 10060001),
        "other merchant": ({**base, "order_key": {"order_number_type": 1, "mchid": "1900000109",
                                                  "out_trade_no": "T20240501001"}}, 10060001),
    }


REFUSAL_CASES = list(_refusals("T", "M"))


@pytest.mark.parametrize("case", REFUSAL_CASES)
def test_upload_refusals_carry_the_documented_errcode_and_ship_nothing(sim_merchant, case):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    body, errcode = _refusals(transaction_id, sim_merchant.keys.mchid)[case]
    answer = upload(sim_merchant, access_token, body)
    assert answer["errcode"] == errcode, answer
    assert answer["errmsg"].startswith(rules.ERRCODES.get(errcode) or rules.COMMON_ERRCODES[errcode])
    assert order_state(sim_merchant, access_token, transaction_id) == 1
    assert sim_merchant.sim.shipping(transaction_id)["accepted"] == 0
    attempts = sim_merchant.sim.shipping_uploads()
    assert len(attempts) == 1 and attempts[0]["errcode"] == errcode and attempts[0]["body"] == body


def test_unpaid_closed_or_failed_orders_cannot_be_shipped(sim_merchant):
    access_token = token(sim_merchant)
    sim = sim_merchant.sim
    sim_merchant.prepay("T20240501101")
    sim_merchant.prepay("T20240501102")
    sim.fail("T20240501102")
    sim_merchant.prepay("T20240501103")
    sim.expire("T20240501103", close=True)
    for out_trade_no in ("T20240501101", "T20240501102", "T20240501103"):
        key = {"order_number_type": 1, "mchid": sim_merchant.keys.mchid, "out_trade_no": out_trade_no}
        assert upload(sim_merchant, access_token, upload_body("", order_key=key))["errcode"] == 10060001
        assert get_order(sim_merchant, access_token, {"merchant_id": sim_merchant.keys.mchid,
                                                      "merchant_trade_no": out_trade_no})["errcode"] == 10060001
    assert sim.shipping() == [] and len(sim.shipping_uploads()) == 3
    assert sim_merchant.control("GET", "/_sim/shipping/4200000000202405010000000000").status_code == 404


def test_one_correction_is_allowed_with_a_later_upload_time_then_refused(sim_merchant):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    assert upload(sim_merchant, access_token, upload_body(transaction_id, upload_time=T1))["errcode"] == 0
    # The same information again, or a change not later than the first: nothing is updated.
    assert upload(sim_merchant, access_token, upload_body(transaction_id, upload_time=T2))["errcode"] == 10060023
    corrected = upload_body(transaction_id, item=express_item(tracking_no="SF9999999999"))
    assert upload(sim_merchant, access_token, {**corrected, "upload_time": T1})["errcode"] == 10060023
    assert sim_merchant.sim.shipping(transaction_id)["reship_used"] is False
    # The one re-shipment.
    assert upload(sim_merchant, access_token, {**corrected, "upload_time": T2})["errcode"] == 0
    order = get_order(sim_merchant, access_token, {"transaction_id": transaction_id})["order"]
    assert order["shipping"]["shipping_list"][0]["tracking_no"] == "SF9999999999"
    assert order["shipping"]["finish_shipping_count"] == 2 and order["order_state"] == 2
    third = upload_body(transaction_id, item=express_item(tracking_no="SF8888888888"), upload_time=T3)
    assert upload(sim_merchant, access_token, third)["errcode"] == 10060003
    record = sim_merchant.sim.shipping(transaction_id)
    assert record["reship_used"] is True and record["accepted"] == 2
    assert [u["errcode"] for u in record["uploads"]] == [0, 10060023, 10060023, 0, 10060003]


# --- get_order --------------------------------------------------------------------------

def test_get_order_follows_shipping_receipt_and_refunds(sim_merchant):
    sim = sim_merchant.sim
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    before = get_order(sim_merchant, access_token, {"transaction_id": transaction_id})["order"]
    assert before["order_state"] == 1
    assert before["shipping"] == {"finish_shipping": False, "goods_desc": "", "finish_shipping_count": 0,
                                  "shipping_list": []}
    assert upload(sim_merchant, access_token, upload_body(transaction_id))["errcode"] == 0
    assert order_state(sim_merchant, access_token, transaction_id) == 2

    confirmed = sim_merchant.control("POST", f"/_sim/shipping/{transaction_id}/state",
                                     {"order_state": 3, "in_complaint": True})
    assert confirmed.status_code == 200 and confirmed.json()["order_state"] == 3
    order = get_order(sim_merchant, access_token, {"transaction_id": transaction_id})["order"]
    assert order["order_state"] == 3 and order["in_complaint"] is True
    late = upload_body(transaction_id, item=express_item(tracking_no="SF7777777777"), upload_time=T2)
    assert upload(sim_merchant, access_token, late)["errcode"] == 10060002   # received: no more changes
    sim.set_shipping_state(transaction_id, order_state=4)
    assert order_state(sim_merchant, access_token, transaction_id) == 4
    sim.set_shipping_state(transaction_id, clear=True)
    assert order_state(sim_merchant, access_token, transaction_id) == 2

    refund = {"out_trade_no": "T20240501001", "out_refund_no": "R1",
              "amount": {"refund": 1990, "total": 1990, "currency": "CNY"}}
    assert sim_merchant.call("POST", "/v3/refund/domestic/refunds", refund).status_code == 200
    assert order_state(sim_merchant, access_token, transaction_id) == 2    # still processing
    sim.complete_refund("R1", notify="drop")
    assert order_state(sim_merchant, access_token, transaction_id) == 5
    assert upload(sim_merchant, access_token, late)["errcode"] == 10060004


def test_get_order_partial_refund_stays_shippable(sim_merchant):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    refund = {"out_trade_no": "T20240501001", "out_refund_no": "R1",
              "amount": {"refund": 990, "total": 1990, "currency": "CNY"}}
    assert sim_merchant.call("POST", "/v3/refund/domestic/refunds", refund).status_code == 200
    sim_merchant.sim.complete_refund("R1", notify="drop")
    assert order_state(sim_merchant, access_token, transaction_id) == 1
    assert upload(sim_merchant, access_token, upload_body(transaction_id))["errcode"] == 0
    assert order_state(sim_merchant, access_token, transaction_id) == 2


@pytest.mark.parametrize(("body", "errcode"), [
    ({"transaction_id": "4200000000202405010000000000"}, 10060001),
    ({"merchant_id": "1900000109", "merchant_trade_no": "T20240501001"}, 10060001),
    ({"mchid": "MCHID", "out_trade_no": "T20240501001"}, 47001),
    ({}, 47001),
    (["T20240501001"], 47001),
])
def test_get_order_refusals(sim_merchant, body, errcode):
    paid(sim_merchant)
    body = [b.replace("MCHID", sim_merchant.keys.mchid) for b in body] if isinstance(body, list) else \
        {k: v.replace("MCHID", sim_merchant.keys.mchid) for k, v in body.items()}
    answer = get_order(sim_merchant, token(sim_merchant), body)
    assert answer["errcode"] == errcode and "order" not in answer


def test_description_is_truncated_at_120_characters(sim_merchant):
    long = "茶" * 127
    merchant = sim_merchant
    created = merchant.call("POST", "/v3/pay/transactions/jsapi", {
        "appid": merchant.keys.appid, "mchid": merchant.keys.mchid, "description": long,
        "out_trade_no": "T20240501005", "notify_url": "http://127.0.0.1:9/notify",
        "amount": {"total": 100, "currency": "CNY"}, "payer": {"openid": OPENID}})
    assert created.status_code == 200, created.text
    transaction_id = merchant.sim.pay("T20240501005", notify="drop")["order"]["transaction_id"]
    description = get_order(merchant, token(merchant), {"transaction_id": transaction_id})["order"]["description"]
    assert len(description) == 120 and description.endswith("...") and description.startswith("茶" * 117)


# --- is_trade_managed -------------------------------------------------------------------

def test_is_trade_managed_answers_the_enrolment_the_control_api_sets(sim_merchant):
    sim, appid = sim_merchant.sim, sim_merchant.keys.appid
    access_token = token(sim_merchant)
    answer = weixin(sim_merchant, IS_TRADE_MANAGED, access_token, {"appid": appid})
    assert answer.status_code == 200 and answer.json() == {"errcode": 0, "errmsg": "ok", "is_trade_managed": True}
    configured = sim_merchant.control("POST", "/_sim/config", {"trade_managed": False})
    assert configured.status_code == 200 and configured.json()["trade_managed"] is False
    assert weixin(sim_merchant, IS_TRADE_MANAGED, access_token, {"appid": appid}).json()["is_trade_managed"] is False
    assert sim_merchant.control("POST", "/_sim/config", {"trade_managed": "no"}).status_code == 400
    assert weixin(sim_merchant, IS_TRADE_MANAGED, access_token, {"appid": "wx0000000000000000"}).json()["errcode"] \
        == 40013
    assert weixin(sim_merchant, IS_TRADE_MANAGED, access_token, {}).json()["errcode"] == 47001
    assert weixin(sim_merchant, IS_TRADE_MANAGED, None, {"appid": appid}).json()["errcode"] == 41001
    assert weixin(sim_merchant, IS_TRADE_MANAGED, "SIM_STABLE_forged", {"appid": appid}).json()["errcode"] == 40001
    assert sim.counters()["trade_managed_queries"] == 6
    sim.reset()
    assert sim.configure()["trade_managed"] is True


# --- access tokens on the shipping routes -----------------------------------------------

@pytest.mark.parametrize("path", [UPLOAD, GET_ORDER])
def test_shipping_routes_check_the_access_token(sim_merchant, path):
    transaction_id = paid(sim_merchant)
    body = upload_body(transaction_id) if path == UPLOAD else {"transaction_id": transaction_id}
    assert weixin(sim_merchant, path, None, body).json()["errcode"] == 41001
    assert weixin(sim_merchant, path, "SIM_STABLE_forged", body).json()["errcode"] == 40001
    sim_merchant.sim.configure(token_ttl_s=1)
    expiring = token(sim_merchant)
    assert weixin(sim_merchant, path, expiring, body).json()["errcode"] == 0
    time.sleep(1.05)
    assert weixin(sim_merchant, path, expiring, body).json()["errcode"] == 42001
    sim_merchant.sim.configure(token_ttl_s=7200)
    fresh = token(sim_merchant)
    assert fresh != expiring
    assert requests.get(sim_merchant.sim.url + path, params={"access_token": fresh}, timeout=5).json()["errcode"] \
        == 43002
    not_json = requests.post(sim_merchant.sim.url + path, params={"access_token": fresh}, data=b"{order_key",
                             timeout=5)
    assert not_json.status_code == 200 and not_json.json()["errcode"] == 47001
    if path == UPLOAD:   # refused by the token check before its body was looked at
        assert [a["errcode"] for a in sim_merchant.sim.shipping_uploads()] == [0]


# --- injected faults --------------------------------------------------------------------

FAULT_PATHS = [UPLOAD, GET_ORDER, STABLE_TOKEN]


def _call_for(merchant: SimMerchant, path: str, access_token: str, transaction_id: str, *, timeout: float = 5):
    if path == STABLE_TOKEN:
        body = {"grant_type": "client_credential", "appid": merchant.keys.appid, "secret": merchant.keys.app_secret}
        return merchant.http.post(merchant.sim.url + path, json=body, timeout=timeout)
    body = upload_body(transaction_id) if path == UPLOAD else {"transaction_id": transaction_id}
    return weixin(merchant, path, access_token, body, timeout=timeout)


@pytest.mark.parametrize("path", FAULT_PATHS)
def test_fault_status_answers_unsigned_then_recovers(sim_merchant, path):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    fault = sim_merchant.control("POST", "/_sim/faults", {"path": path, "status": 500})
    assert fault.status_code == 200
    failed = _call_for(sim_merchant, path, access_token, transaction_id)
    assert failed.status_code == 500 and failed.json() == {"errcode": -1, "errmsg": "system error"}
    assert not any(name.lower().startswith("wechatpay-") for name in failed.headers)
    assert "Request-ID" not in failed.headers
    recovered = _call_for(sim_merchant, path, access_token, transaction_id)
    assert recovered.status_code == 200 and recovered.json().get("errcode", 0) == 0
    assert sim_merchant.sim.counters()["faults_triggered"] == 1


@pytest.mark.parametrize("path", FAULT_PATHS)
def test_fault_errcode_is_a_200_answer_with_that_errcode(sim_merchant, path):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    tokens_before = len(sim_merchant.sim.access_tokens_state())
    sim_merchant.sim.inject_fault(path=path, errcode=10060001)
    failed = _call_for(sim_merchant, path, access_token, transaction_id)
    assert failed.status_code == 200 and failed.headers["Content-Type"].startswith("application/json")
    assert failed.json()["errcode"] == 10060001 and failed.json()["errmsg"].startswith("支付单不存在")
    assert not any(name.lower().startswith("wechatpay-") for name in failed.headers)
    # The faulted call never reached the handler: nothing recorded, nothing issued.
    assert sim_merchant.sim.shipping_uploads() == []
    assert len(sim_merchant.sim.access_tokens_state()) == tokens_before
    assert _call_for(sim_merchant, path, access_token, transaction_id).json().get("errcode", 0) == 0
    if path == UPLOAD:
        assert sim_merchant.sim.shipping(transaction_id)["order_state"] == 2


@pytest.mark.parametrize("path", FAULT_PATHS)
def test_fault_delay_and_disconnect(sim_merchant, path):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    sim_merchant.sim.inject_fault(path=path, delay_ms=600)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        _call_for(sim_merchant, path, access_token, transaction_id, timeout=0.2)
    assert time.monotonic() - started < 0.55
    sim_merchant.sim.inject_fault(path=path, disconnect=True)
    time.sleep(0.5)   # the delayed call has finished
    with pytest.raises(requests.ConnectionError):
        _call_for(sim_merchant, path, access_token, transaction_id)


@pytest.mark.parametrize("spec", [
    {"path": "/v3/pay/transactions/jsapi", "errcode": 10060001},
    {"errcode": 10060001},
    {"path": "/*", "errcode": 10060001},
    {"path": UPLOAD, "errcode": 0},
    {"path": UPLOAD, "errcode": "10060001"},
    {"path": UPLOAD, "errcode": 10060001, "status": 500},
    {"path": UPLOAD, "errcode": 10060001, "rate_limited": True},
    {"path": UPLOAD, "errcode": 10060001, "body": "{}"},
])
def test_errcode_faults_are_validated(sim_merchant, spec):
    response = sim_merchant.control("POST", "/_sim/faults", spec)
    assert response.status_code == 400 and response.json()["code"] == "BAD_FAULT"
    assert sim_merchant.sim.faults() == []


# --- control API and reset --------------------------------------------------------------

def test_control_routes_and_settings_are_validated(sim_merchant):
    transaction_id = paid(sim_merchant)
    access_token = token(sim_merchant)
    upload(sim_merchant, access_token, upload_body(transaction_id))
    listed = sim_merchant.control("GET", "/_sim/shipping").json()
    assert [r["transaction_id"] for r in listed] == [transaction_id]
    assert len(sim_merchant.control("GET", "/_sim/shipping/uploads").json()) == 1
    tokens = sim_merchant.control("GET", "/_sim/tokens").json()
    assert [(t["access_token"], t["kind"], t["valid"]) for t in tokens] == [(access_token, "stable", True)]
    state_path = f"/_sim/shipping/{transaction_id}/state"
    for bad in ({"order_state": 2}, {"order_state": 5}, {"in_complaint": "yes"}, {"clear": True, "order_state": 3},
                {"bogus": 1}):
        assert sim_merchant.control("POST", state_path, bad).status_code == 400, bad
    assert sim_merchant.control("POST", "/_sim/shipping/4200000000202405010000000000/state",
                                {"order_state": 3}).status_code == 404
    for bad in ({"token_ttl_s": 0}, {"token_ttl_s": 7201}, {"token_ttl_s": 60, "token_refresh_margin_s": 60},
                {"force_refresh_interval_s": -1}, {"token_ttl_s": True}):
        assert sim_merchant.control("POST", "/_sim/config", bad).status_code == 400, bad
    settings = sim_merchant.sim.configure(token_ttl_s=60)
    assert (settings["token_ttl_s"], settings["token_refresh_margin_s"]) == (60, 2.5)


def test_reset_forgets_tokens_shipping_and_token_settings(sim_merchant):
    sim = sim_merchant.sim
    transaction_id = paid(sim_merchant)
    sim.configure(token_ttl_s=100)
    access_token = token(sim_merchant)
    assert upload(sim_merchant, access_token, upload_body(transaction_id))["errcode"] == 0
    assert sim.shipping() and sim.shipping_uploads() and sim.access_tokens_state()
    assert sim_merchant.control("POST", "/_sim/reset").json() == {"reset": True}
    assert sim.shipping() == [] and sim.shipping_uploads() == [] and sim.access_tokens_state() == []
    assert sim.counters()["stable_token_fetches"] == 0
    assert weixin(sim_merchant, GET_ORDER, access_token, {"transaction_id": transaction_id}).json()["errcode"] \
        == 40001
    fresh = fetch_token(sim_merchant).json()
    assert fresh["access_token"] != access_token and fresh["expires_in"] == 7200
    # The payment is gone with the ledger: WeChat's shipping service no longer knows it.
    assert get_order(sim_merchant, fresh["access_token"], {"transaction_id": transaction_id})["errcode"] == 10060001


def test_in_process_methods_mirror_the_routes(sim_keys, simulator):
    merchant = SimMerchant(sim_keys, simulator)
    try:
        transaction_id = paid(merchant)
        access_token = token(merchant)
        body = copy.deepcopy(upload_body(transaction_id))
        upload(merchant, access_token, body)
        assert simulator.shipping(transaction_id) == merchant.control("GET", f"/_sim/shipping/{transaction_id}").json()
        assert simulator.shipping() == merchant.control("GET", "/_sim/shipping").json()
        assert simulator.set_shipping_state(transaction_id, order_state=6)["order_state_desc"] == "资金待结算"
        assert order_state(merchant, access_token, transaction_id) == 6
    finally:
        merchant.http.close()
