"""The admin in a real browser, as a person uses it: log in, tick an endpoint, choose "Send
test event", click Go, read the answer; screenshots of the endpoint list and the delivery page
are kept for a human to look at.

Headless Chromium with the Debian packages (`apt-get install chromium chromium-driver`): no
browser is downloaded. Without them the test is skipped, unless CI is set: then it fails.
Screenshots (endpoint list, delivery page, delivery list, endpoint form) go to
$ADMIN_SCREENSHOTS_DIR, by default var/screenshots/.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from deliveries.models import Delivery
from tests.support import ROOT, wait_until

# The Debian packages' paths; CHROMIUM_BIN / CHROMEDRIVER_BIN point elsewhere.
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,900",
]
WIDTH = 1600


def _missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not shutil.which(path):
            return f"{path} not found: apt-get install -y {package}"
    return None


MISSING = _missing()
if MISSING and not os.environ.get("CI"):
    pytestmark = pytest.mark.skip(reason=MISSING)


@pytest.fixture
def browser(tmp_path):
    if MISSING:  # only with CI set: a check that cannot run must not pass as skipped
        pytest.fail(f"CI is set, so the browser check must run: {MISSING}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    yield driver
    driver.quit()


@pytest.fixture
def screenshots() -> Path:
    directory = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or ROOT / "var" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def save_page(driver, path: Path) -> None:
    """A screenshot of the whole page, not only the window."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, max(900, height + 20))
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 900)


def test_send_test_event_from_the_endpoint_list(
    live, live_server, browser, screenshots, django_user_model, make_endpoint
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    django_user_model.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    endpoint = make_endpoint(description="ops receiver")
    make_endpoint("/billing", is_active=False, description="billing (paused)")
    wait = WebDriverWait(browser, 20)

    browser.get(f"{live_server.url}/admin/login/?next=/admin/webhooks/endpoint/")
    browser.find_element(By.NAME, "username").send_keys("ops")
    browser.find_element(By.NAME, "password").send_keys("correct horse battery")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))

    browser.find_element(By.CSS_SELECTOR, f'input[name="_selected_action"][value="{endpoint.pk}"]').click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("send_test_event")
    browser.find_element(By.NAME, "index").click()  # "Go"

    message = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    assert f"Test event to {endpoint.url}: HTTP 200 in" in message.text
    (request,) = live.wait_for(1, path="/hook")
    assert json.loads(request.body)["event_type"] == "webhook.test"
    save_page(browser, screenshots / "endpoint-list-after-test.png")

    delivery = Delivery.objects.get(event__type="webhook.test")
    wait_until(lambda: Delivery.objects.filter(pk=delivery.pk, status="succeeded").exists(), message="delivery row")
    message.find_element(By.LINK_TEXT, f"delivery {delivery.pk}").click()
    attempts = wait.until(ec.presence_of_element_located((By.ID, "attempts-group")))
    assert "200" in attempts.text
    assert "succeeded" in browser.find_element(By.ID, "content").text
    save_page(browser, screenshots / "delivery.png")

    browser.get(f"{live_server.url}/admin/webhooks/endpoint/")  # once the worker has recorded it
    rows = wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    assert "succeeded" in rows.text and "100% of 1" in rows.text
    save_page(browser, screenshots / "endpoint-list.png")

    browser.get(f"{live_server.url}/admin/deliveries/delivery/")
    rows = wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    assert "webhook.test" in rows.text and endpoint.url in rows.text
    save_page(browser, screenshots / "delivery-list.png")

    browser.find_element(By.LINK_TEXT, endpoint.url).click()  # the delivery's endpoint
    wait.until(ec.presence_of_element_located((By.ID, "endpoint_form")))
    assert "whsec_" not in browser.page_source  # the secret is never shown on the form
    save_page(browser, screenshots / "endpoint-change.png")
