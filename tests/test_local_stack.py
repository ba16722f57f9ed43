"""`make run`'s stack: paying an order prints a signed delivery at the local shop, and
the sweep uploads its shipping information (SHIPPING_MODE=virtual)."""

from __future__ import annotations

import time

import requests

from devtools.local_stack import LocalStack, walkthrough


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_pay_deliver_ship_the_whole_chain(tmp_path):
    printed: list[str] = []
    with LocalStack(tmp_path, retry_factor=0.01, out=printed.append) as stack:
        created = requests.post(f"{stack.gateway.url}/prepare/orders", timeout=10, json={
            "code": "test-alice", "items": [{"sku": "A1", "quantity": 2}]}).json()
        number = created["outTradeNo"]
        assert requests.post(f"{stack.simulator.url}/_sim/orders/{number}/pay", json={}, timeout=10).ok
        assert _wait(lambda: any("order.paid" in line for line in printed)), printed
        [paid] = [line for line in printed if "order.paid" in line]
        assert number in paid and "3980 fen" in paid and f"id=order.paid:{number}" in paid

        report = stack.sweep()
        assert report["ok"] and report["sweep"]["shipping"] == {"uploaded": 1}, report
        assert report["sweep"]["deliveries"] == {"delivered": 1}
        assert any(line.startswith("[shop] order.shipped") and "logistics_type 3" in line for line in printed)
        [shipped] = requests.get(f"{stack.simulator.url}/_sim/shipping", timeout=5).json()
        assert shipped["order_state"] == 2 and len(shipped["uploads"]) == 1
        assert [fact["type"] for fact in stack.shop.facts] == ["order.paid", "order.shipped"]
        assert not any("refused" in line for line in printed)


def test_the_sweep_timer_runs_by_itself(tmp_path):
    with LocalStack(tmp_path, retry_factor=0.01, sweep_every=0.2, out=lambda line: None) as stack:
        number = requests.post(f"{stack.gateway.url}/prepare/orders", timeout=10, json={
            "code": "test-bob", "items": [{"sku": "C3", "quantity": 1}]}).json()["outTradeNo"]
        requests.post(f"{stack.simulator.url}/_sim/orders/{number}/pay", json={}, timeout=10)
        assert _wait(lambda: [f["type"] for f in stack.shop.facts] == ["order.paid", "order.shipped"])


def test_the_walkthrough_names_the_shop_and_the_timer():
    text = walkthrough("http://127.0.0.1:8080", "http://127.0.0.1:8090", "http://127.0.0.1:8091/hooks/cloudpay", 10)
    assert "shop      http://127.0.0.1:8091/hooks/cloudpay" in text and "every 10 s" in text
    assert "/_sim/shipping" in text
