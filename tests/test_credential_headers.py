"""Credential headers: never shown, never lost.

An endpoint's credential headers (by name, `Authorization`, or by the shape of the value, a
token under `X-Session`) are masked in the API, the admin and the attempt log. The mask written
back (a GET then a PUT, an admin form saved unchanged) keeps the stored value, so the receiver
still gets the real one; a new value replaces it; a header left out is removed; a mask with
nothing stored behind it is a 400. Test events go through the real worker to the real receiver.
"""

import json

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.urls import reverse

from deliveries.models import Attempt
from webhooks.credentials import MASK
from webhooks.forms import parse_headers
from webhooks.models import Endpoint, redact_headers

PUBLIC = "https://93.184.216.34/hook"  # a public address literal: valid without DNS
AUTHORIZATION = "Bearer s3cret-9f8e7d"
SESSION = "k8Jd93LmQp02ZxVb7Ty5Rw1N"  # a token under a name that does not say so
SIGNATURE = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhY21lIn0.Q2hhbmdlTWUtbm90LWEtcmVhbC1zaWc"
CREDENTIALS = {"Authorization": AUTHORIZATION, "X-Session": SESSION, "X-Sig": SIGNATURE}
IN_CLEAR = ("s3cret-9f8e7d", SESSION, SIGNATURE)


def create(api, url: str = PUBLIC, **headers) -> str:
    response = api.post("/api/v1/webhooks/", {"url": url, "headers": headers}, format="json")
    assert response.status_code == 201, response.json()
    return f"/api/v1/webhooks/{response.json()['id']}/"


def send_test_event(api, receiver, webhook: str, path: str = "/hook"):
    """Send a test event through the worker; return (the API's attempt, the request received)."""
    sent = api.post(f"{webhook}test/?wait=15")
    assert sent.status_code == 202 and sent.json()["attempt"]["status_code"] == 200, sent.json()
    (request,) = receiver.wait_for(1, path=path)
    return sent.json()["attempt"], request


def change_url(endpoint: Endpoint) -> str:
    return reverse("admin:webhooks_endpoint_change", args=[quote(endpoint.pk)])


def as_submitted(form) -> dict:
    """An admin form's fields as a browser submits them when nobody touched them."""
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is True:
            data[name] = "on"
        elif value not in (None, False):
            data[name] = value
    return data


# --- the API -------------------------------------------------------------------------------


def test_a_webhook_read_and_written_back_keeps_its_credentials(live, api):
    webhook = create(api, live.url("/hook"), **CREDENTIALS, **{"X-Team": "ops"})
    shown = api.get(webhook).json()
    assert shown["headers"] == {"Authorization": MASK, "X-Session": MASK, "X-Sig": MASK, "X-Team": "ops"}

    written = api.put(webhook, {**shown, "description": "billing"}, format="json")
    assert written.status_code == 200, written.json()
    assert written.json()["headers"] == shown["headers"] and written.json()["description"] == "billing"

    _, request = send_test_event(api, live, webhook)
    for name, value in {**CREDENTIALS, "X-Team": "ops"}.items():
        assert request.headers[name] == value


def test_patch_replaces_a_credential_keeps_a_masked_one_and_removes_one_left_out(live, api):
    webhook = create(api, live.url("/hook"), Authorization="Bearer old-1a2b3c", **{"X-Session": SESSION, "X-Team": "a"})
    patched = api.patch(webhook, {"headers": {"Authorization": "Bearer new-4d5e6f", "X-Session": MASK}}, format="json")
    assert patched.status_code == 200, patched.json()
    assert patched.json()["headers"] == {"Authorization": MASK, "X-Session": MASK}
    assert "new-4d5e6f" not in patched.content.decode()

    _, request = send_test_event(api, live, webhook)
    assert request.headers["Authorization"] == "Bearer new-4d5e6f"
    assert request.headers["X-Session"] == SESSION
    assert "X-Team" not in request.headers


def test_a_mask_with_no_stored_value_behind_it_is_refused(api):
    response = api.post("/api/v1/webhooks/", {"url": PUBLIC, "headers": {"Authorization": MASK}}, format="json")
    assert response.status_code == 400
    assert "'Authorization'" in response.json()["headers"][0]
    assert not Endpoint.objects.exists()

    webhook = create(api, **{"Authorization": AUTHORIZATION})
    response = api.put(webhook, {"url": PUBLIC, "headers": {"Authorization": MASK, "X-Api-Key": MASK}}, format="json")
    assert response.status_code == 400
    assert "'X-Api-Key'" in response.json()["headers"][0]
    assert Endpoint.objects.get().headers == {"Authorization": AUTHORIZATION}


def test_a_token_is_hidden_whatever_its_headers_name(live, api, admin_client):
    webhook = create(api, live.url("/hook"), **{"X-Session": SESSION, "X-Sig": SIGNATURE, "X-Team": "ops"})
    assert api.get(webhook).json()["headers"] == {"X-Session": MASK, "X-Sig": MASK, "X-Team": "ops"}
    listed = api.get("/api/v1/webhooks/").content.decode()
    assert SESSION not in listed and SIGNATURE not in listed

    attempt, request = send_test_event(api, live, webhook)
    assert (request.headers["X-Session"], request.headers["X-Sig"]) == (SESSION, SIGNATURE)  # sent as configured

    logged = Attempt.objects.get().request_headers
    assert (logged["X-Session"], logged["X-Sig"], logged["X-Team"]) == (MASK, MASK, "ops")
    # Ours are derived, not secret: shown as sent, though a signature looks like a token.
    for name in ("webhook-id", "webhook-signature", "X-Letta-Signature", "Content-Type"):
        assert logged[name] == request.headers[name]
    assert attempt["request_headers"] == logged  # the API's attempt log

    endpoint = Endpoint.objects.get()
    pages = [change_url(endpoint), reverse("admin:deliveries_attempt_change", args=[Attempt.objects.get().pk])]
    for page in pages:
        html = admin_client.get(page).content.decode()
        assert SESSION not in html and SIGNATURE not in html, page
    assert request.headers["webhook-signature"] in html  # the attempt page shows ours


# --- the admin -----------------------------------------------------------------------------


def test_the_admin_form_masks_credentials_and_saving_it_unchanged_keeps_them(live, admin_client, make_endpoint):
    headers = {**CREDENTIALS, "X-Team": "ops"}
    endpoint = make_endpoint(headers=headers)
    page = admin_client.get(change_url(endpoint))
    html = page.content.decode()
    for secret in IN_CLEAR:
        assert secret not in html
    form = page.context["adminform"].form
    masked = {"Authorization": MASK, "X-Session": MASK, "X-Sig": MASK, "X-Team": "ops"}
    assert parse_headers(form["headers"].value()) == masked  # "Name: value" lines

    response = admin_client.post(change_url(endpoint), {**as_submitted(form), "description": "ops receiver"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    endpoint.refresh_from_db()
    assert endpoint.headers == headers and endpoint.description == "ops receiver"

    changelist = reverse("admin:webhooks_endpoint_changelist")
    admin_client.post(changelist, {"action": "send_test_event", "_selected_action": [endpoint.pk]})
    (request,) = live.wait_for(1, path="/hook")
    for name, value in headers.items():
        assert request.headers[name] == value


def test_the_admin_form_replaces_a_credential_and_refuses_a_mask_for_a_new_header(admin_client, make_endpoint):
    endpoint = make_endpoint(headers={"Authorization": AUTHORIZATION, "X-Session": SESSION})
    form = as_submitted(admin_client.get(change_url(endpoint)).context["adminform"].form)

    refused = admin_client.post(change_url(endpoint), {**form, "headers": json.dumps({"X-Api-Key": MASK})})
    assert refused.status_code == 200
    assert "'X-Api-Key'" in refused.context["adminform"].form.errors["headers"][0]

    replaced = {"Authorization": "Bearer typed-7g8h9i", "X-Session": MASK}
    assert admin_client.post(change_url(endpoint), {**form, "headers": json.dumps(replaced)}).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.headers == {"Authorization": "Bearer typed-7g8h9i", "X-Session": SESSION}


def test_someone_who_may_only_view_an_endpoint_sees_its_credentials_masked(client, django_user_model, make_endpoint):
    endpoint = make_endpoint(headers={**CREDENTIALS, "X-Team": "ops"})
    viewer = django_user_model.objects.create_user("viewer", password="unused", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_endpoint", content_type__app_label="webhooks"))
    client.force_login(viewer)
    response = client.get(change_url(endpoint))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="_save"' not in html  # viewed, not edited
    for secret in IN_CLEAR:
        assert secret not in html
    assert MASK in html and "ops" in html


# --- what counts as a credential -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc",
        "Basic dXNlcjpwYXNz",
        SIGNATURE,  # a JWT
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "xoxb-123456789012-1234567890123-abcdefghijklmnop",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # an AWS secret key
        "5d41402abc4b2a76b9719d911017c592",  # 32 hex digits
        "3f2504e0-4f89-41d3-9a0c-0305e82c3301",  # a UUID: many services issue them as keys
        "dGhpcyBpcyBhIHJhbmRvbSBibG9iIG9mIGJ5dGVz",  # base64
        "01hzy3k9qw8x7t6v5b4n3m2p1r",  # base32, one case
        f"sid={SESSION}; Path=/",  # a token inside a longer value
    ],
)
def test_values_shaped_like_credentials_are_masked_whatever_the_name(value):
    assert redact_headers({"X-Custom": value}) == {"X-Custom": MASK}


@pytest.mark.parametrize(
    "value",
    [
        "application/json",
        "ops",
        "gzip, deflate",
        "max-age=3600",
        "2026-12-01T10:00:00Z",
        "https://example.com/callback",
        "customer-12345-eu-west-1",
        "v2.3.1-release-candidate",
        "my-service-name-production",
        "MyCompanyProductionReceiver",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    ],
)
def test_ordinary_values_are_shown(value):
    assert redact_headers({"X-Custom": value}) == {"X-Custom": value}
