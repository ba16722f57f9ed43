"""The whole loop over HTTP: the simulator notifies the callback through the local
gateway (issue 5), as WeChat Pay would reach the Function URL."""

from __future__ import annotations

import time

from shared import order_states as st


def test_pay_an_order_one_notification_marks_it_paid(live_stack):
    order = live_stack.create_order(items=(("A1", 2),))
    live_stack.simulator.pay(order["outTradeNo"])
    assert live_stack.simulator.wait_idle(10)
    stored = live_stack.store.get_order(order["outTradeNo"])
    assert stored["payStatus"] == st.SUCCESS and stored["paidVia"] == "notification"
    assert live_stack.store.count_events("order.paid", order["outTradeNo"]) == 1
    deliveries = live_stack.simulator.deliveries(order["outTradeNo"])
    assert [d["status"] for d in deliveries] == [204]


def test_fifty_concurrent_deliveries_plus_retries_one_transition(live_stack):
    order = live_stack.create_order()
    live_stack.simulator.pay(order["outTradeNo"], duplicates=49)
    assert live_stack.simulator.wait_idle(30)
    deliveries = live_stack.simulator.deliveries(order["outTradeNo"])
    assert len(deliveries) >= 50
    assert all(200 <= d["status"] < 300 for d in deliveries), {d["status"] for d in deliveries}
    assert live_stack.store.count_events("order.paid", order["outTradeNo"]) == 1


def test_amount_mismatch_from_the_simulator_is_an_anomaly(live_stack):
    order = live_stack.create_order()
    live_stack.simulator.pay(order["outTradeNo"], amount_override=1)
    assert live_stack.simulator.wait_idle(10)
    assert live_stack.store.get_order(order["outTradeNo"])["payStatus"] == st.NOTPAY
    assert [a["kind"] for a in live_stack.store.list_anomalies(order["outTradeNo"])] == ["amount_mismatch"]


def test_probe_and_tampered_notifications_are_refused(live_stack):
    order = live_stack.create_order()
    url = f"{live_stack.gateway.url}/callback"
    for options in ({"probe": True}, {"tamper": "body"}, {"tamper": "signature"}, {"tamper": "serial"},
                    {"tamper": "timestamp_old"}, {"tamper": "timestamp_future"}):
        results = live_stack.simulator.notify(url=url, out_trade_no=order["outTradeNo"], retry=False, **options)
        statuses = {d["status"] for d in results["deliveries"]} if isinstance(results, dict) else None
        assert statuses and all(400 <= s < 500 for s in statuses), (options, results)
    assert live_stack.store.get_order(order["outTradeNo"])["payStatus"] == st.NOTPAY


def test_store_down_while_notifications_arrive_then_retries_settle_all(live_stack, private_mongo, db_name,
                                                                        function_env):
    """nx is stopped while WeChat notifies: 503s; its retries after the restart settle
    every order exactly once."""
    from shared.store.mongo import MongoOrderStore

    uri = f"{private_mongo.uri}/?serverSelectionTimeoutMS=500&connectTimeoutMS=500"
    function_env(MONGODB_URI=uri)
    store = MongoOrderStore(uri, db_name)
    store.upsert_product("A1", "Oolong tea", 1990)
    live_stack.simulator.configure(retry_factor=0.02)  # 15 s -> 0.3 s, 30 s -> 0.6 s ...
    orders = [live_stack.create_order(code=f"test-u{i}") for i in range(3)]

    private_mongo.stop()
    for order in orders:
        live_stack.simulator.pay(order["outTradeNo"])
    deadline = time.monotonic() + 10
    while not all(live_stack.simulator.deliveries(o["outTradeNo"]) for o in orders):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = [live_stack.simulator.deliveries(o["outTradeNo"])[0]["status"] for o in orders]
    assert first == [503, 503, 503]

    private_mongo.start()
    assert live_stack.simulator.wait_idle(60)
    for order in orders:
        assert store.get_order(order["outTradeNo"])["payStatus"] == st.SUCCESS
        assert store.count_events("order.paid", order["outTradeNo"]) == 1
        statuses = [d["status"] for d in live_stack.simulator.deliveries(order["outTradeNo"])]
        assert statuses[-1] == 204 and set(statuses[:-1]) <= {503}
