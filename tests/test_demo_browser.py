"""The checkout demo page in headless Chromium (Debian's chromium + chromium-driver),
driven by Selenium against the real local stack: choose products, create the order,
pay in the simulator, watch the status change (issue 7).  Plus `make demo`'s loop."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from devtools.local_stack import LocalStack

    with LocalStack(tmp_path_factory.mktemp("stack"), retry_factor=0.01) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Chromium is needed: `make test` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.mark.parametrize("button, quantity", [("pay", 2), ("pay-drop", 1)])
def test_checkout_page_shows_the_payment_the_server_confirms(stack, browser, button, quantity):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(f"{stack.gateway.url}/demo/")
    field = wait.until(ec.presence_of_element_located((By.ID, "qty-A1")))
    field.clear()
    field.send_keys(str(quantity))
    browser.find_element(By.ID, "create").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "NOTPAY"))
    number = browser.find_element(By.ID, "order-no").text
    assert browser.find_element(By.ID, "order-total").text == f"{1990 * quantity // 100}.{1990 * quantity % 100:02d}"
    browser.find_element(By.ID, button).click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "SUCCESS"))
    assert browser.find_element(By.ID, "error").text == ""

    store = stack.store
    assert store.get_order(number)["payStatus"] == "SUCCESS"
    assert store.count_events("order.paid", number) == 1


def test_make_demo_loop(stack):
    from devtools.demo import run_loop

    lines = []
    assert run_loop(stack.gateway.url, say=lines.append)
    text = "\n".join(lines)
    assert text.count("GET status -> SUCCESS") == 2 and "FAILED" not in text
