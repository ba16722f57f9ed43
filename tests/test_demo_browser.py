"""The checkout demo page in headless Chromium (Debian's chromium + chromium-driver),
driven by Selenium against the real local stack (issues 7 and 15): the cart total before
ordering, the order's line items, paying with the notification and without it (the iOS
case: confirmed by the status query), Pay disabled while paying and once paid, errors in
words.  Plus the demo's own routes and `make demo`'s loop.

Each state is saved as a screenshot under $ARTIFACTS_DIR/demo/ (default: artifacts/demo/
in the repository)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "artifacts")) / "demo"
ORDER_NO = re.compile(r"^[0-9]{12}[0-9A-Za-z]{14}$")
PAID_BY_NOTIFICATION = "Paid — confirmed by the notification"
PAID_BY_QUERY = "Paid — the notification never came; confirmed by querying WeChat Pay"


def yuan(fen: int) -> str:
    return f"¥{fen // 100}.{fen % 100:02d}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from devtools.local_stack import LocalStack

    with LocalStack(tmp_path_factory.mktemp("stack"), retry_factor=0.01) as running:
        yield running


@pytest.fixture(scope="module")
def catalog():
    from devtools.local_stack import DEMO_PRODUCTS

    return {sku: (name, price) for sku, name, price in DEMO_PRODUCTS}


@pytest.fixture
def page(stack, browser):
    """The demo page, loaded afresh, with its catalog rendered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{stack.gateway.url}/demo/")
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.ID, "qty-C3")))
    return browser


def text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def enabled(browser, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).is_enabled()


def click(browser, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, element_id).click()


def wait_text(browser, element_id: str, expected: str, timeout: float = 20) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, timeout).until(ec.text_to_be_present_in_element((By.ID, element_id), expected))
    except Exception:
        shot(browser, f"failed-waiting-for-{element_id}")
        raise AssertionError(f"#{element_id} never showed {expected!r}; it shows {text(browser, element_id)!r}, "
                             f"error: {text(browser, 'error')!r}") from None


def wait_visible(browser, element_id: str, timeout: float = 20) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(ec.visibility_of_element_located((By.ID, element_id)))


def set_cart(browser, quantities: dict[str, object]) -> None:
    from selenium.webdriver.common.by import By

    for sku, quantity in quantities.items():
        field = browser.find_element(By.ID, f"qty-{sku}")
        field.clear()
        field.send_keys(str(quantity))


def shot(browser, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def place_order(browser, quantities: dict[str, int]) -> str:
    set_cart(browser, quantities)
    click(browser, "create")
    wait_text(browser, "status", "Waiting for payment")
    number = text(browser, "order-no")
    assert ORDER_NO.match(number), number
    return number


def order_lines(browser) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#order-lines tr")
    return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def test_cart_total_shows_before_ordering(page, catalog):
    assert text(page, "cart-total") == yuan(catalog["A1"][1])   # the page starts with one A1
    set_cart(page, {"A1": 2, "B2": 1, "C3": 0})
    assert text(page, "cart-total") == yuan(2 * 1990 + 1288) == "¥52.68"
    assert text(page, "sub-A1") == "¥39.80" and text(page, "sub-B2") == "¥12.88" and text(page, "sub-C3") == ""
    assert enabled(page, "create")
    shot(page, "01-cart")

    set_cart(page, {"A1": 0, "B2": 0, "C3": 5})   # 5 fen: the integer formatting keeps the leading zero
    assert text(page, "cart-total") == "¥0.05"
    set_cart(page, {"C3": 0})
    assert text(page, "cart-total") == "¥0.00" and not enabled(page, "create")
    assert "at least one product" in text(page, "cart-note")
    set_cart(page, {"C3": 1000})
    assert text(page, "cart-total") == "–" and not enabled(page, "create")
    assert "0 to 999" in text(page, "cart-note")
    assert not page.find_element("id", "order").is_displayed()   # nothing was ordered


def test_pay_then_new_order_paid_with_the_notification_lost(page, stack, catalog):
    store = stack.store
    # 1. the order lists its lines and total
    first = place_order(page, {"A1": 2, "B2": 1, "C3": 3})
    assert order_lines(page) == [["Oolong tea 250g", "2", "¥19.90", "¥39.80"],
                                 ["Moon cake", "1", "¥12.88", "¥12.88"],
                                 ["Sticker pack", "3", "¥0.01", "¥0.03"]]
    assert text(page, "order-total") == yuan(store.get_order(first)["totalFee"]) == "¥52.71"
    assert not page.find_element("id", "total-note").is_displayed()
    assert not page.find_element("id", "cart").is_displayed()   # the order's lines replace the cart
    assert not enabled(page, "create") and not enabled(page, "qty-A1")
    assert enabled(page, "pay") and enabled(page, "pay-drop")
    shot(page, "02-ordered")

    # 2. pay: the notification arrives, and the page says so
    click(page, "pay")
    wait_text(page, "status", PAID_BY_NOTIFICATION)
    assert text(page, "status-code") == "SUCCESS"
    assert not enabled(page, "pay") and not enabled(page, "pay-drop")
    assert text(page, "error") == ""
    order = store.get_order(first)
    assert (order["payStatus"], order["paidVia"]) == ("SUCCESS", "notification")
    assert store.count_events("order.paid", first) == 1
    shot(page, "03-paid-by-notification")

    # 3. a new order of the same cart, with a fresh idempotency key (the paid order's key would
    #    answer ORDER_ALREADY_PAID): the cart is back, untouched, and ordering it again is a new order
    click(page, "new-order")
    assert not page.find_element("id", "order").is_displayed() and page.find_element("id", "cart").is_displayed()
    assert enabled(page, "create") and enabled(page, "qty-A1") and text(page, "cart-total") == "¥52.71"
    click(page, "create")
    wait_text(page, "status", "Waiting for payment")
    second = text(page, "order-no")
    assert ORDER_NO.match(second) and second != first
    assert text(page, "error") == ""
    assert store.get_order(second)["idemKey"] != store.get_order(first)["idemKey"]
    assert len(order_lines(page)) == 3 and text(page, "order-total") == "¥52.71"

    # 4. pay, notification lost: while the status query is slow, Pay stays disabled
    requests.post(f"{stack.simulator.url}/_sim/faults", timeout=5,
                  json={"path": "/v3/pay/transactions/out-trade-no/*", "method": "GET", "delay_ms": 1500}
                  ).raise_for_status()
    try:
        click(page, "pay-drop")
        wait_text(page, "status", "Paying", timeout=1)
        assert not enabled(page, "pay") and not enabled(page, "pay-drop") and not enabled(page, "new-order")
        shot(page, "04-paying")
        wait_text(page, "status", PAID_BY_QUERY)
    finally:
        requests.delete(f"{stack.simulator.url}/_sim/faults", timeout=5)
    assert not enabled(page, "pay") and not enabled(page, "pay-drop") and enabled(page, "new-order")
    assert text(page, "error") == ""
    order = store.get_order(second)
    assert (order["payStatus"], order["paidVia"]) == ("SUCCESS", "query")
    assert requests.get(f"{stack.simulator.url}/_sim/deliveries", params={"out_trade_no": second},
                        timeout=5).json() == []   # WeChat Pay really sent nothing
    shot(page, "05-paid-by-query")


def test_paying_an_order_paid_elsewhere_says_so_in_words(page, stack):
    number = place_order(page, {"A1": 1, "B2": 0, "C3": 0})
    # paid on another phone, behind the page's back: the simulator refuses the second payment (409)
    requests.post(f"{stack.simulator.url}/_sim/orders/{number}/pay", json={"notify": "send"},
                  timeout=10).raise_for_status()
    click(page, "pay")
    wait_text(page, "status", "Paid —")
    assert text(page, "error-text") == "This order is already paid; there is nothing more to pay."
    assert text(page, "error-code") == "(ORDERPAID)"
    assert "409" not in text(page, "error")
    assert not enabled(page, "pay") and not enabled(page, "pay-drop")
    shot(page, "06-already-paid")


def test_a_prepay_failure_reads_as_words(page, stack):
    requests.post(f"{stack.simulator.url}/_sim/faults", timeout=5,
                  json={"path": "/v3/pay/transactions/jsapi", "status": 500, "count": 1}).raise_for_status()
    try:
        set_cart(page, {"A1": 1, "B2": 0, "C3": 0})
        click(page, "create")
        wait_visible(page, "error")
    finally:
        requests.delete(f"{stack.simulator.url}/_sim/faults", timeout=5)
    sentence = text(page, "error-text")
    assert sentence == ("WeChat Pay had a problem and did not start the payment. "
                        "Nothing was charged; please try again.")
    assert "WECHATPAY" not in sentence and "502" not in text(page, "error")
    assert text(page, "error-code") == "(WECHATPAY_SYSTEM_ERROR)"
    assert not page.find_element("id", "order").is_displayed()
    assert enabled(page, "create") and enabled(page, "qty-A1")
    shot(page, "07-prepay-failed")

    # retrying (the same idempotency key) creates a fresh order, and the error goes away
    click(page, "create")
    wait_text(page, "status", "Waiting for payment")
    assert not page.find_element("id", "error").is_displayed()


def test_a_product_taken_off_sale_reads_as_words(page, stack, catalog):
    name, price = catalog["B2"]
    stack.store.upsert_product("B2", name, price, active=False)   # after the page loaded its catalog
    try:
        set_cart(page, {"A1": 0, "B2": 1, "C3": 0})
        click(page, "create")
        wait_visible(page, "error")
    finally:
        stack.store.upsert_product("B2", name, price, active=True)
    assert text(page, "error-text") == "One of the products is no longer on sale. Reload the page to see what is."
    assert text(page, "error-code") == "(SKU_INACTIVE)"
    shot(page, "08-sku-inactive")


def test_demo_order_route(stack):
    base = f"{stack.gateway.url}/demo"
    unknown = requests.get(f"{base}/orders/261126120000a8Kx2LmQ9pZrT1", timeout=5)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "ORDER_NOT_FOUND"
    for bad in ("abc", "x" * 33, "261126120000a8Kx2LmQ9p%7BrT1"):
        answer = requests.get(f"{base}/orders/{bad}", timeout=5)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "ROUTE_NOT_FOUND", bad

    order = requests.post(f"{stack.gateway.url}/prepare/orders", timeout=15,
                          json={"code": "test-route", "items": [{"sku": "C3", "quantity": 1}]}).json()
    number = order["outTradeNo"]
    assert requests.get(f"{base}/orders/{number}", timeout=5).json() == {
        "outTradeNo": number, "payStatus": "NOTPAY", "paidVia": None}
    paid = requests.post(f"{base}/pay/{number}", json={"notify": "send"}, timeout=15)
    assert paid.status_code == 200
    assert requests.get(f"{base}/orders/{number}", timeout=5).json()["paidVia"] == "notification"
    again = requests.post(f"{base}/pay/{number}", json={"notify": "send"}, timeout=15)
    assert again.status_code == 409 and again.json()["error"]["code"] == "ORDERPAID"   # rewrapped, with words
    assert again.json()["error"]["message"]
    assert requests.post(f"{base}/pay/{number}", data="[1]", timeout=5).status_code == 400


def test_make_demo_loop(stack):
    from devtools.demo import run_loop

    lines = []
    assert run_loop(stack.gateway.url, say=lines.append)
    text = "\n".join(lines)
    assert text.count("GET status -> SUCCESS") == 2 and "FAILED" not in text
    assert "SUCCESS (confirmed by the notification)" in text and "SUCCESS (confirmed by the query)" in text
