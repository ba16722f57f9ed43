"""The developer console at /console/ (issue 15), its JSON API and, in real headless
Chromium, the page: an order created, paid with the notification lost, recovered by the
status query, refunded and the refund completed, each step appearing in the timeline.
Screenshots go to $ARTIFACTS_DIR/console/ (default artifacts/console/).

Real peers: the local stack (nx-27017, the simulator, the gateway, the shop's receiver)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "artifacts")) / "console"
WINDOW_SIZE = "1400,1100"   # the browser fixture (tests/browser.py) reads it


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from devtools.local_stack import LocalStack

    with LocalStack(tmp_path_factory.mktemp("console"), retry_factor=0.01, out=lambda line: None) as running:
        yield running


def api(stack, method: str, path: str, body: dict | None = None):
    answer = requests.request(method, f"{stack.gateway.url}/console/api{path}", json=body, timeout=30)
    return answer.status_code, answer.json()


def titles(stack, number: str) -> list[str]:
    return [entry["title"] for entry in api(stack, "GET", f"/orders/{number}")[1]["timeline"]]


def test_a_lost_notification_recovered_by_the_query_then_refunded(stack):
    status, created = api(stack, "POST", "/orders", {"items": [{"sku": "A1", "quantity": 2}]})
    assert status == 200 and created["totalFee"] == 3980
    number = created["outTradeNo"]
    assert titles(stack, number)[:2] == ["Order created", "Prepay requested at WeChat Pay"]

    assert api(stack, "POST", f"/orders/{number}/pay_lost")[0] == 200
    lost = titles(stack, number)
    assert "The user paid (WeChat Pay)" in lost
    assert not any(title.startswith("Notification") for title in lost)       # none was sent
    assert not any(title.startswith("Settled") for title in lost)

    assert api(stack, "POST", f"/orders/{number}/query")[1]["result"] == "SUCCESS"
    settled = titles(stack, number)
    assert "Settled as paid by a status query (the notification was lost)" in settled
    assert "Fact order.paid" in settled and "Delivered to the shop" in settled

    assert api(stack, "POST", f"/orders/{number}/refund")[1]["result"] == "PROCESSING"
    assert api(stack, "POST", f"/orders/{number}/complete_refund")[1]["result"] == "SUCCESS"
    stack.simulator.wait_idle(5)
    order, timeline = (lambda data: (data["order"], data["timeline"]))(api(stack, "GET", f"/orders/{number}")[1])
    assert order["payStatus"] == "REFUND" and order["refundedFee"] == 3980
    refund_titles = [e["title"] for e in timeline if e["kind"] == "refund"]
    assert refund_titles[0].endswith("requested") and refund_titles[-1].endswith(": SUCCESS")
    notified = [e for e in timeline if e["kind"] == "notification"]
    assert notified and notified[-1]["title"].startswith("Notification REFUND.SUCCESS")
    assert notified[-1]["detail"] == "our answer: 204"
    times = [e["at"] for e in timeline if e["at"] is not None]
    assert times == sorted(times)


def test_notifications_show_our_answer_and_a_tampered_one_is_refused(stack):
    number = api(stack, "POST", "/orders", {})[1]["outTradeNo"]
    api(stack, "POST", f"/orders/{number}/pay")
    assert api(stack, "POST", f"/orders/{number}/tamper")[1]["result"] == [401]
    assert api(stack, "POST", f"/orders/{number}/replay")[1]["result"] == [204]
    timeline = api(stack, "GET", f"/orders/{number}")[1]["timeline"]
    answers = [(e["title"], e["detail"]) for e in timeline if e["kind"] == "notification"]
    assert ("Notification TRANSACTION.SUCCESS (tampered), attempt 1", "our answer: 401") in answers
    assert answers.count(("Notification TRANSACTION.SUCCESS, attempt 1", "our answer: 204")) == 2
    assert "Settled as paid by the notification" in [e["title"] for e in timeline]


def test_the_test_clock_expires_an_unpaid_order_without_waiting(stack):
    number = api(stack, "POST", "/orders", {})[1]["outTradeNo"]
    before = api(stack, "GET", "/clock")[1]["offsetMinutes"]
    status, moved = api(stack, "POST", "/clock", {"advanceMinutes": 31})   # the order lives 30 minutes
    assert status == 200 and moved["offsetMinutes"] == before + 31
    assert moved["sweep"]["sweep"]["close_expired"].get("closed", 0) >= 1, moved
    data = api(stack, "GET", f"/orders/{number}")[1]
    assert data["order"]["payStatus"] == "CLOSED"
    assert "Closed" in [e["title"] for e in data["timeline"]]
    assert number in [o["outTradeNo"] for o in api(stack, "GET", "/orders?state=CLOSED")[1]]
    assert number not in [o["outTradeNo"] for o in api(stack, "GET", "/orders?state=NOTPAY")[1]]


def test_anomalies_reach_the_queue(stack):
    number = api(stack, "POST", "/orders", {})[1]["outTradeNo"]
    stack.simulator.pay(number, amount_override=1)        # WeChat Pay reports another amount
    stack.simulator.wait_idle(5)
    queue = api(stack, "GET", "/anomalies")[1]
    assert {"kind": "amount_mismatch", "outTradeNo": number} in [
        {"kind": a["kind"], "outTradeNo": a["outTradeNo"]} for a in queue]
    assert "Anomaly: amount_mismatch" in titles(stack, number)


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("GET", "/orders?state=PAID", None, 400, "INVALID_STATE"),
    ("POST", "/orders", {"items": [{"sku": "A1", "quantity": 0}]}, 400, "INVALID_ITEMS"),
    ("POST", "/orders", {"items": [{"sku": "NOPE", "quantity": 1}]}, 400, "UNKNOWN_SKU"),
    ("GET", "/orders/261202000000NoSuchOrder00", None, 404, "ORDER_NOT_FOUND"),
    ("POST", "/clock", {"advanceMinutes": -5}, 400, "INVALID_ADVANCE"),
    ("POST", "/clock", {"advanceMinutes": 1.5}, 400, "INVALID_ADVANCE"),
    ("GET", "/nothing", None, 404, "ROUTE_NOT_FOUND"),
])
def test_bad_requests_get_a_clear_error(stack, method, path, body, status, code):
    answer = api(stack, method, path, body)
    assert answer[0] == status and answer[1]["error"]["code"] == code, answer
    assert answer[1]["error"]["message"]


def test_actions_that_do_not_fit_the_order_are_refused_in_words(stack):
    number = api(stack, "POST", "/orders", {})[1]["outTradeNo"]
    status, answer = api(stack, "POST", f"/orders/{number}/complete_refund")
    assert status == 409 and answer["error"]["code"] == "NO_REFUND_IN_PROGRESS"
    status, answer = api(stack, "POST", f"/orders/{number}/explode")
    assert status == 404 and answer["error"]["code"] == "UNKNOWN_ACTION"
    api(stack, "POST", f"/orders/{number}/pay")
    status, answer = api(stack, "POST", f"/orders/{number}/pay")
    assert status == 400 or status == 409, answer        # the simulator: already paid
    assert answer["error"]["message"]


# --- the page, in Chromium ----------------------------------------------------------------


def _shot(browser, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_the_page_follows_an_order_through_its_life(stack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def timeline() -> list[str]:   # read in one go: the page redraws the rows every 3 s
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#timeline tr')).map(r => r.cells[2].textContent)")

    def wait_for(title: str, name: str) -> None:
        try:
            WebDriverWait(browser, 20).until(lambda _: any(t.startswith(title) for t in timeline()))
        except Exception:
            _shot(browser, f"failed-waiting-for-{name}")
            raise
        _shot(browser, name)

    def press(action: str) -> None:
        button = browser.find_element(By.CSS_SELECTOR, f'#actions button[data-action="{action}"]')
        WebDriverWait(browser, 20).until(lambda _: button.is_enabled())
        button.click()

    browser.get(f"{stack.gateway.url}/console/")
    browser.find_element(By.ID, "new-order").click()
    wait_for("Prepay requested at WeChat Pay", "1-created")
    number = browser.find_element(By.ID, "order-number").text
    assert number in browser.execute_script(
        "return Array.from(document.querySelectorAll('#orders tr')).map(r => r.dataset.order)")
    assert browser.find_element(By.CSS_SELECTOR, '#actions button[data-action="complete_refund"]').is_enabled() is False

    press("pay_lost")
    wait_for("The user paid (WeChat Pay)", "2-paid-notification-lost")
    assert not any(t.startswith("Settled") for t in timeline())
    press("query")
    wait_for("Settled as paid by a status query", "3-recovered-by-query")
    WebDriverWait(browser, 20).until(
        lambda _: not browser.find_element(By.CSS_SELECTOR, '#actions button[data-action="pay"]').is_enabled())

    press("refund")
    wait_for("Refund", "4-refund-requested")
    press("complete_refund")
    wait_for("Notification REFUND.SUCCESS", "5-refund-completed")
    assert "REFUND" in browser.find_element(By.ID, "summary").text
    assert stack.store.get_order(number)["payStatus"] == "REFUND"

    before = api(stack, "GET", "/clock")[1]["offsetMinutes"]
    browser.find_element(By.ID, "advance-60").click()
    WebDriverWait(browser, 20).until(lambda _: browser.find_element(By.ID, "clock").text == f"+{before + 60} min")
    _shot(browser, "6-clock-moved")


# --- make run: safe by default ---------------------------------------------------------------

@pytest.mark.parametrize(("part", "named"), [("mongo_port", "port {port} for MongoDB"),
                                             ("sim_port", "port {port} for the simulator"),
                                             ("gateway_port", "port {port} for the gateway"),
                                             ("shop_port", "port {port} for the shop's receiver")])
def test_a_taken_port_stops_the_stack_and_names_it(tmp_path, part, named):
    import socket

    from devtools.local_stack import LocalStack
    from devtools.mongo_server import PortInUse

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = LocalStack(tmp_path, **{part: port})
        with pytest.raises(PortInUse) as caught:
            stack.start()
        stack.stop()
    assert named.format(port=port) in str(caught.value)
    if part == "mongo_port":
        assert "real database" in str(caught.value)
        assert not (tmp_path / "mongo" / "cloudpay.db").exists()      # nothing was written anywhere


def test_make_run_prints_no_error_line_and_runs_the_walkthrough_twice(tmp_path):
    """`python -m devtools.local_stack` as `make run` starts it; the printed walk-through,
    run twice in a row in bash, answers NOTPAY then SUCCESS both times."""
    import re
    import signal
    import subprocess
    import sys

    if shutil.which("curl") is None:
        pytest.fail("curl is needed for the walk-through (Debian package curl)")
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.local_stack", "--data-dir", str(tmp_path), "--mongo-port", "0",
         "--sim-port", "0", "--gateway-port", "0", "--shop-port", "0", "--sweep-every", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C to stop." in line or not line:
                break
        printed = "".join(lines)
        assert "Press Ctrl-C to stop." in printed, printed
        assert '"level":"error"' not in printed and "Traceback" not in printed, printed
        steps = printed.split("Walk-through", 1)[1].split("# 4.", 1)[0]
        script = "\n".join(line.strip() for line in steps.splitlines()[1:] if line.strip()
                           and not line.strip().startswith("#"))
        script = script.replace("\\\n", " ")
        for run in (1, 2):
            done = subprocess.run(["bash", "-c", "set -e\n" + script], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (run, done.stderr)
            statuses = re.findall(r'"payStatus": ?"([A-Z]+)"', done.stdout)
            assert statuses[:1] == ["NOTPAY"] and statuses[-1] == "SUCCESS", (run, done.stdout)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_admin_commands_and_the_catalog_loader_work_against_the_local_stack(tmp_path):
    import json
    import subprocess
    import sys

    from devtools.local_stack import LocalStack

    workdir = tmp_path / "work"
    workdir.mkdir()
    good = workdir / "catalog.csv"
    good.write_text("sku,name,price,active\nT1,Green tea,2590,true\nT2,Black tea,1,false\n")
    bad = workdir / "bad.json"
    bad.write_text(json.dumps([{"sku": "T3", "name": "Jasmine", "price": 19.9},
                               {"sku": "not ok!", "name": "x", "price": 100}]))
    environ = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}   # no MONGODB_URI, nothing by hand

    def admin(*argv):
        return subprocess.run([sys.executable, "-m", "shared.admin", *argv], cwd=workdir, env=environ,
                              capture_output=True, text=True, timeout=120)

    with LocalStack(workdir / ".local", retry_factor=0.01, out=lambda line: None) as stack:
        loaded = admin("products", "load", str(good))
        assert loaded.returncode == 0, loaded.stderr
        assert json.loads(loaded.stdout) == {"ok": True, "loaded": 2, "added": 2, "updated": 0}
        assert "using the environment in .local/stack.env" in loaded.stderr
        products = {p["sku"]: p for p in stack.store.list_products()}
        assert products["T1"]["price"] == 2590 and products["T2"]["active"] is False

        refused = admin("products", "load", str(bad))
        assert refused.returncode == 1
        assert "product 1: price 19.9 is not integer fen" in refused.stderr
        assert "product 2: sku 'not ok!' is not a product code" in refused.stderr
        assert "T3" not in {p["sku"] for p in stack.store.list_products()}      # nothing written

        swept = admin("sweep")
        assert swept.returncode == 0 and json.loads(swept.stdout)["ok"] is True, swept.stderr
