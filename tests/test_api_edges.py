"""The API's rough edges as a new user meets them: a URL without its trailing slash, an unknown
/api/ URL, and an API key sent the wrong way. Each answer is JSON and says what to do instead,
in DEBUG as in production; paths outside /api/ keep Django's behaviour."""

import json
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[False, True], ids=["production", "debug"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


# --- trailing slash and unknown URLs ---------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete", "head", "options"])
def test_a_url_without_its_slash_is_a_json_404_naming_the_url_that_works(api, debug, method):
    body = None if method in ("get", "head") else {"url": "https://93.184.216.34/hook"}
    response = getattr(api, method)("/api/v1/webhooks", body, format="json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    if method != "head":
        assert response.json() == {"detail": "Not found; API URLs end with a slash: /api/v1/webhooks/"}


def test_the_url_named_keeps_the_query_and_the_object_id(api, debug, agent):
    detail = api.post("/api/v1/webhooks/ep_123/test?wait=5").json()["detail"]
    assert detail.endswith("API URLs end with a slash: /api/v1/webhooks/ep_123/test/?wait=5")
    assert api.get(f"/api/v1/agents/{agent.pk}").json()["detail"].endswith(f": /api/v1/agents/{agent.pk}/")
    assert api.get("/api/v1/event-types").json()["detail"].endswith(": /api/v1/event-types/")
    assert api.get("/api/schema").json()["detail"].endswith(": /api/schema/")


def test_nothing_is_created_by_a_post_without_the_slash(api, debug, org):
    api.post("/api/v1/agents", {"name": "lost"}, format="json")
    assert not org.agents.exists()


def test_a_post_without_the_slash_and_without_a_key_is_still_a_json_404(debug):
    response = APIClient(enforce_csrf_checks=True).post("/api/v1/webhooks", {}, format="json")
    assert (response.status_code, response.json()["detail"]) == (
        404,
        "Not found; API URLs end with a slash: /api/v1/webhooks/",
    )


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing-here/", "/api/v1/nothing-here", "/api/v2/webhooks/", "/api/", "/api"]
)
def test_an_unknown_api_url_is_a_json_404(api, debug, path):
    response = api.get(path)
    assert (response.status_code, response["Content-Type"]) == (404, "application/json")
    assert response.json() == {"detail": "Not found."}


def test_an_unknown_object_is_a_json_404(api, debug):
    response = api.get("/api/v1/agents/agent-nobody/")
    assert (response.status_code, response.json()) == (404, {"detail": "No Agent matches the given query."})


def test_the_api_still_answers_with_the_slash(api, debug):
    assert api.get("/api/v1/webhooks/").status_code == 200
    assert api.post("/api/v1/agents/", {"name": "found"}, format="json").status_code == 201


def test_paths_outside_the_api_keep_their_behaviour(client, debug):
    assert client.get("/health/live").status_code == 200  # probes: with or without the slash
    assert client.get("/health/ready").status_code in (200, 503)
    redirect = client.get("/admin")
    assert (redirect.status_code, redirect["Location"]) == (301, "/admin/")
    assert client.get("/health")["Location"] == "/health/"
    missing = client.get("/nothing-here/")
    assert missing.status_code == 404 and missing["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("debug_mode", [True, False], ids=["debug", "production"])
def test_a_real_post_without_the_slash(live_server, settings, key, debug_mode):
    """Through a real server, as curl sends it (the test client is not the WSGI stack's only path)."""
    settings.DEBUG = debug_mode
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/webhooks",
        data=json.dumps({"url": "https://93.184.216.34/hook"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 404
    assert answer.value.headers["Content-Type"] == "application/json"
    assert json.load(answer.value) == {"detail": "Not found; API URLs end with a slash: /api/v1/webhooks/"}


# --- an API key sent the wrong way -----------------------------------------------------------


def refusal(headers: dict) -> tuple[int, str, str]:
    response = APIClient(headers=headers).get("/api/v1/webhooks/")
    return response.status_code, response.json()["detail"], response.get("WWW-Authenticate", "")


def test_token_scheme_is_refused_naming_what_to_send(key):
    assert refusal({"Authorization": f"Token {key}"}) == (
        401,
        "use 'Authorization: Bearer <api key>' (got scheme 'Token')",
        "Bearer",
    )


def test_a_bare_key_is_refused_naming_what_to_send(key):
    assert refusal({"Authorization": key})[:2] == (401, "use 'Authorization: Bearer <api key>' (got a bare key)")


def test_another_bare_value_is_refused_without_being_repeated():
    status, detail, _ = refusal({"Authorization": "sk_live_abcdef123456"})
    assert (status, detail) == (401, "use 'Authorization: Bearer <api key>' (got a value with no scheme)")


def test_x_api_key_is_refused_naming_what_to_send(key):
    assert refusal({"X-API-Key": key})[:2] == (401, "X-API-Key is not read: use 'Authorization: Bearer <api key>'")


def test_bearer_without_a_key_is_refused(db):
    assert refusal({"Authorization": "Bearer"})[:2] == (401, "use 'Authorization: Bearer <api key>' (got no key)")


def test_a_wrong_key_and_no_key_keep_their_messages(db):
    assert refusal({"Authorization": "Bearer ahk_wrong"})[:2] == (401, "Invalid or revoked API key")
    assert refusal({})[:2] == (401, "Authentication credentials were not provided.")


def test_the_bearer_scheme_in_any_case_is_accepted(key):
    assert APIClient(headers={"Authorization": f"bearer {key}"}).get("/api/v1/webhooks/").status_code == 200
    # With Bearer, an X-API-Key beside it is not in the way.
    both = APIClient(headers={"Authorization": f"Bearer {key}", "X-API-Key": "whatever"})
    assert both.get("/api/v1/webhooks/").status_code == 200


def test_a_logged_in_staff_user_behind_basic_auth_is_not_refused(org):
    """A proxy's Basic auth in front of the browsable API sends Authorization on every request:
    the session decides, as before."""
    client = APIClient(headers={"Authorization": "Basic dXNlcjpwYXNz"})
    client.force_login(User.objects.create_user("staff", is_staff=True))
    assert client.get("/api/v1/webhooks/").status_code == 200


def test_an_open_page_stays_open_to_a_proxys_basic_auth(db):
    from rest_framework.test import APIClient

    client = APIClient(HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert client.get("/api/schema/").status_code == 200
    refused = client.get("/api/v1/webhooks/")  # a page that needs a key still says which way
    assert refused.status_code == 401 and "Authorization: Bearer <api key>" in refused.json()["detail"]
