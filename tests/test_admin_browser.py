"""The admin in a real browser, as a person uses it: log in, tick an endpoint, choose "Send
test event", click Go, read the answer; create an endpoint and copy its secret, retry a
delivery from its page; screenshots are kept for a human to look at. And the statistics
pages: a week of traffic, as charts.

Headless Chromium with the Debian packages (`apt-get install chromium chromium-driver`): no
browser is downloaded. Without them the test is skipped, unless CI is set: then it fails.
The window is 1400 px wide (a laptop), and the lists must fit it. Screenshots (endpoint list,
delivery page, delivery list, endpoint form, a new endpoint's page with its secret, the API
docs, statistics of the service and of an endpoint) go to $ADMIN_SCREENSHOTS_DIR, by default
var/screenshots/.
"""

import datetime
import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
from django.utils import timezone

from deliveries.models import Attempt, Delivery, Event
from tests.support import ROOT, logged_delivery, wait_until
from webhooks.models import Endpoint

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
    "--window-size=1400,900",
]
WIDTH = 1400


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
    height, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(WIDTH, max(900, height + chrome + 20))  # the window's own bars are not page
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 900)


def test_send_test_event_from_the_endpoint_list(
    live, live_server, browser, screenshots, django_user_model, make_endpoint
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    django_user_model.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    endpoint = make_endpoint(description="ops receiver", headers={"Authorization": "Bearer ops-s3cret"})
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
    assert "ops-s3cret" not in browser.page_source and "[redacted]" in browser.page_source  # nor a credential
    save_page(browser, screenshots / "endpoint-change.png")


def log_in(browser, live_server, next_url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{live_server.url}/admin/login/?next={next_url}")
    browser.find_element(By.NAME, "username").send_keys("ops")
    browser.find_element(By.NAME, "password").send_keys("correct horse battery")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def assert_list_fits(browser) -> None:
    """The list's table fits its column of the page: nothing cut off, no sideways scrolling."""
    widths = browser.execute_script(
        "const r = document.querySelector('#changelist .results');"
        "return [r.scrollWidth, r.clientWidth, document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert widths[0] <= widths[1] and widths[2] <= widths[3], f"wider than the window at {WIDTH} px: {widths}"


def test_a_new_user_creates_an_endpoint_and_retries_a_delivery(
    live_server, browser, screenshots, django_user_model, org, receiver, make_endpoint
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    django_user_model.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    long_url = "https://hooks.example-customer.com/services/T0ABCDEFG/B0HIJKLMN/4f9aQx7ZkLmN2pR8sT1uV3wY?channel=ops"
    busy = make_endpoint(
        url=long_url,
        description="Slack: #ops-alerts, failures of the nightly ingestion agents and their tools",
        event_types=["agent.step.failed", "agent.run.completed", "agent.job.completed", "tool.execution.completed"],
    )
    failed = logged_delivery(busy, "failed", codes=(503, 503, 400), event_type="agent.step.failed")
    waiting = logged_delivery(busy, "pending", codes=(503,), event_type="agent.run.completed")
    Delivery.objects.filter(pk=waiting.pk).update(next_attempt_at=timezone.now() + datetime.timedelta(minutes=4))
    wait = WebDriverWait(browser, 20)

    # Add an endpoint as a new user would: event types and headers typed as lines.
    log_in(browser, live_server, "/admin/webhooks/endpoint/add/")
    wait.until(ec.presence_of_element_located((By.ID, "endpoint_form")))
    browser.execute_script(  # the organization box is a select2 autocomplete: choose as it would
        "const s = document.getElementById('id_organization');"
        "s.append(new Option(arguments[1], arguments[0], true, true)); s.dispatchEvent(new Event('change'));",
        org.pk,
        org.name,
    )
    browser.find_element(By.ID, "id_url").send_keys(receiver.url("/new"))
    browser.find_element(By.ID, "id_description").send_keys("made in the browser")
    browser.find_element(By.ID, "id_event_types").send_keys("agent.step.*\nagent.run.completed")
    browser.find_element(By.ID, "id_headers").send_keys("X-Team: ops")
    browser.find_element(By.NAME, "_save").click()
    message = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .warning")))
    created = Endpoint.objects.get(description="made in the browser")
    assert created.event_types == ["agent.step.*", "agent.run.completed"] and created.headers == {"X-Team": "ops"}
    secret = browser.find_element(By.CSS_SELECTOR, ".messagelist code.new-secret")
    assert secret.is_displayed() and secret.text == created.secret  # the secret itself, on screen
    assert "it will not be shown again" in message.text
    assert browser.find_element(By.ID, "endpoint_form")  # on the endpoint's own page
    save_page(browser, screenshots / "endpoint-created.png")
    browser.refresh()
    wait.until(ec.presence_of_element_located((By.ID, "endpoint_form")))
    assert created.secret not in browser.page_source  # once

    # The list: an event types column, and every column on screen at 1400 px.
    browser.get(f"{live_server.url}/admin/webhooks/endpoint/")
    rows = wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    headers = [th.text for th in rows.find_elements(By.CSS_SELECTOR, "thead th")]
    assert "EVENT TYPES" in headers, headers
    assert "agent.step.*, agent.run.completed" in rows.text
    assert "agent.step.failed, agent.run.completed, agent.job.completed +1 more" in rows.text
    cut = rows.find_element(By.CSS_SELECTOR, f'span[title="{long_url}"]')
    assert cut.text.endswith("…") and cut.is_displayed()
    assert "Show all" not in browser.page_source
    save_page(browser, screenshots / "endpoint-list-1400.png")  # before the check, to see what it finds
    assert_list_fits(browser)

    browser.get(f"{live_server.url}/admin/deliveries/delivery/")
    rows = wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    assert re.search(r"overdue|in [34] min", rows.text)  # the waiting one, to the second
    assert "Show all" not in browser.page_source
    save_page(browser, screenshots / "delivery-list-1400.png")  # before the check, to see what it finds
    assert_list_fits(browser)

    # A failed delivery's page: what an operator needs, and a Retry button.
    browser.get(f"{live_server.url}/admin/deliveries/delivery/{failed.pk}/change/")
    button = wait.until(ec.element_to_be_clickable((By.ID, "retry-delivery")))
    assert button.text == "RETRY NOW"  # the object tools' capitals
    content = browser.find_element(By.ID, "content").text
    assert "failed" in content and "Series start" not in content and "HTTP 400" in content
    save_page(browser, screenshots / "delivery-retry.png")
    button.click()
    done = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    assert done.text.startswith(f"Retrying delivery {failed.pk} now")
    save_page(browser, screenshots / "delivery-retried.png")

    # The API docs, in the same 1400 px window.
    browser.get(f"{live_server.url}/api/docs/")
    wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, '.opblock-summary-path[data-path="/api/v1/webhooks/"]'))
    )
    assert "/api/v1/deliveries/{id}/retry/" in browser.page_source
    browser.save_screenshot(str(screenshots / "api-docs-1400.png"))  # the first screen, as a reader sees it


def a_week_of_traffic(endpoint, now: datetime.datetime) -> int:
    """About a week of logged deliveries to `endpoint`, ending at `now`, busier in working hours:
    mostly quick 200s, an outage two days ago (a 503, a timeout, then a retry that succeeds), a
    few 400s and connection errors. Returns the number of attempts."""
    rng = random.Random(20261201)
    plans = []
    for hour in range(7 * 24 + 5):
        outage = 48 <= hour < 54
        busy = 9 <= (now - datetime.timedelta(hours=hour)).hour <= 17
        for _ in range(rng.randint(4, 12) + (20 if busy else 0)):
            created = now - datetime.timedelta(hours=hour, seconds=rng.uniform(0, 3600))
            roll = rng.random()
            if outage:
                answers = [(503, rng.randint(5, 40), ""), (None, 5000, "timeout after 5s"), (200, 45, "")]
            elif roll < 0.04:
                answers = [(400, rng.randint(5, 30), "")]
            elif roll < 0.07:
                error = "ConnectionRefusedError: [Errno 111] Connection refused"
                answers = [(None, rng.randint(1, 5), error), (200, rng.randint(20, 80), "")]
            else:
                answers = [(200, int(rng.lognormvariate(3.4, 0.6)), "")]
            plans.append((created, answers, "failed" if answers[-1][0] == 400 else "succeeded"))
    events = Event.objects.bulk_create(
        Event(
            type="agent.step.completed",
            organization_id=endpoint.organization_id,
            body="{}",
            created_at=c,
            fanned_out_at=c,  # else a worker's due loop takes them up as stranded, and delivers them now
        )
        for c, _, _ in plans
    )
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            event=event, endpoint=endpoint, status=status, attempt_count=len(answers), created_at=created,
            last_attempt_at=created + datetime.timedelta(seconds=len(answers) - 1), last_status_code=answers[-1][0],
            finished_at=created + datetime.timedelta(seconds=len(answers) - 1, milliseconds=answers[-1][1] + 20),
        )
        for event, (created, answers, status) in zip(events, plans, strict=True)
    )  # fmt: skip
    attempts = Attempt.objects.bulk_create(
        Attempt(
            delivery=delivery, number=n, started_at=created + datetime.timedelta(seconds=n - 1), url=endpoint.url,
            status_code=code, duration_ms=duration, error=error,
        )
        for delivery, (created, answers, _) in zip(deliveries, plans, strict=True)
        for n, (code, duration, error) in enumerate(answers, 1)
    )  # fmt: skip
    return len(attempts)


def test_statistics_pages_draw_their_charts(live_server, browser, screenshots, django_user_model, make_endpoint):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    django_user_model.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    endpoint = make_endpoint(description="billing receiver")
    a_week_of_traffic(endpoint, timezone.now())
    wait = WebDriverWait(browser, 20)

    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("ops")
    browser.find_element(By.NAME, "password").send_keys("correct horse battery")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    link = "Deliveries: volume, success rate, latency and errors"
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, link))).click()  # on the admin's index
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg.chart")))
    assert_charts_drawn(browser)
    save_page(browser, screenshots / "stats-service.png")

    browser.get(f"{live_server.url}/admin/webhooks/endpoint/")
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    browser.find_element(By.LINK_TEXT, "charts").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg.chart")))
    assert f"Statistics of {endpoint.url}" in browser.find_element(By.TAG_NAME, "h1").text
    assert_charts_drawn(browser)
    save_page(browser, screenshots / "stats-endpoint.png")


def assert_charts_drawn(browser) -> None:
    """Eight charts (four per window) on screen at a readable size, each with something drawn
    in it, and the headline figures filled in."""
    from selenium.webdriver.common.by import By

    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 8
    for chart in charts:
        assert chart.is_displayed() and chart.size["width"] > 400 and chart.size["height"] > 120, chart.size
        assert chart.find_elements(By.CSS_SELECTOR, "rect[fill^='#'], polyline, circle")
    ok_bars = browser.find_elements(By.CSS_SELECTOR, "#window-24h svg.chart rect[fill='#2e7d32']")
    assert len(ok_bars) >= 24 and all(bar.size["height"] > 0 for bar in ok_bars)
    tiles = browser.find_element(By.CSS_SELECTOR, "#window-7d .stats-tiles").text
    assert "Attempts" in tiles and " ms" in tiles and "—" not in tiles


def test_an_operator_replays_a_run_to_a_new_ordered_endpoint(
    live, live_server, browser, screenshots, django_user_model, org, agent, make_endpoint
):
    """A run's three events went out before the endpoint existed: the endpoint's "Replay
    events" page sends them; its receiver refuses the first, so the next waits its turn, and
    the delivery's page says so."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from agents_hooks.models import Run
    from deliveries.events import publish

    django_user_model.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    make_endpoint("/before")
    run = Run.objects.create(agent=agent)
    events = [publish("agent.custom.step", organization=org, agent=agent, run=run, data={"n": n}) for n in range(3)]
    live.wait_for(3, "/before")
    wait_until(lambda: Event.objects.filter(fanned_out_at__isnull=True).count() == 0, message="fanned out")
    late = make_endpoint("/late", ordering="run", retry_schedule=[3600], description="added after the run")
    live.answer("/late", lambda body: 500 if b'"sequence":1,' in body else None)
    wait = WebDriverWait(browser, 20)

    log_in(browser, live_server, f"/admin/webhooks/endpoint/{late.pk}/change/")
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, 'a[href$="/replay/"]'))).click()
    form = wait.until(ec.presence_of_element_located((By.ID, "replay-form")))
    since = form.find_element(By.NAME, "since")
    since.clear()
    since.send_keys((timezone.now() - datetime.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"))
    form.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "replays")))
    live.wait_for(1, "/late")  # the first, refused; the others wait behind it
    waiting = wait_until(lambda: Delivery.objects.filter(event=events[1], endpoint=late, waiting=True).first())
    browser.refresh()
    table = wait.until(ec.presence_of_element_located((By.ID, "replays")))
    assert "done" in table.text
    save_page(browser, screenshots / "endpoint-replay.png")

    browser.get(f"{live_server.url}/admin/deliveries/delivery/{waiting.pk}/change/")
    content = wait.until(ec.presence_of_element_located((By.ID, "content"))).text
    assert "waiting for its turn" in content and f"event 2 of run {run.pk}" in content
    save_page(browser, screenshots / "delivery-waiting.png")
    assert len(live.received("/late")) == 1


def test_an_operator_subscribes_a_url_to_one_run_from_its_page(
    live, live_server, browser, screenshots, django_user_model, agent
):
    """From a run's page, "Subscribe a URL to this run" opens the endpoint form with the run
    chosen and in order; saved with a URL, the run's next step reaches that URL, and the run's
    page lists the subscription."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from agents_hooks.models import Run, Step

    django_user_model.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    run, other = Run.objects.create(agent=agent), Run.objects.create(agent=agent)
    wait = WebDriverWait(browser, 20)

    log_in(browser, live_server, f"/admin/agents_hooks/run/{run.pk}/change/")
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "Subscribe a URL to this run"))).click()
    url = wait.until(ec.presence_of_element_located((By.NAME, "url")))
    url.send_keys(live.url("/one-run"))
    save_page(browser, screenshots / "run-subscription-add.png")
    browser.find_element(By.NAME, "_save").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".messagelist")))
    subscription = Endpoint.objects.get(run=run)
    assert subscription.ordering == "run" and subscription.agent_id == agent.pk

    for of_run in (other, run):
        step = Step.objects.create(agent=agent, run=of_run)
        step.status = "success"
        step.save()
    live.wait_for(1, "/one-run")
    wait_until(lambda: not Event.objects.filter(fanned_out_at__isnull=True).exists(), message="both fanned out")
    (received,) = live.received("/one-run")
    assert json.loads(received.body)["run_id"] == run.pk  # that run's step only

    browser.get(f"{live_server.url}/admin/agents_hooks/run/{run.pk}/change/")
    content = wait.until(ec.presence_of_element_located((By.ID, "content"))).text
    assert subscription.pk in content and "active" in content
    save_page(browser, screenshots / "run-subscriptions.png")
