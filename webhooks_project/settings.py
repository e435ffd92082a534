"""Settings: every environment variable the service reads, read once, here.

Defaults are the embedded development configuration (SQLite and a filesystem broker under
./var/, nothing to install). Production sets at least DJANGO_SECRET_KEY, DJANGO_DEBUG=false,
DJANGO_ALLOWED_HOSTS, DATABASE_URL=postgres://... and CELERY_BROKER_URL=redis://...
The README's "Configuration" table lists the same variables.

A variable that cannot be parsed stops start-up with ImproperlyConfigured naming it, rather
than a bare ValueError from deep inside a cast.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("WEBHOOKS_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

_env = environ.Env()


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def env(name: str, cast, default):
    """Read one variable with `cast`; a bad value names the variable in the error.

    Booleans are read strictly: django-environ takes any word it does not know ("maybe",
    "ture") for false, which would switch a setting off without a word."""
    if cast == "bool" and name in _env.ENVIRON:
        raw = _env.str(name).strip().lower()
        if not raw:
            return default  # set but empty: as if unset
        if raw not in _BOOLEANS:
            raise ImproperlyConfigured(f"{name}: invalid value {raw!r} (expected true or false)")
        return _BOOLEANS[raw]
    try:
        value = getattr(_env, cast)(name, default=default)
    except (ValueError, TypeError, environ.ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"{name}: invalid value {_env.str(name, default='')!r} ({exc})") from exc
    return value


def env_positive(name: str, cast, default, minimum=0):
    value = env(name, cast, default)
    if value < minimum:
        raise ImproperlyConfigured(f"{name}: must be >= {minimum}, got {value!r}")
    return value


# --- Django core -------------------------------------------------------------------------
DEBUG = env("DJANGO_DEBUG", "bool", True)
SECRET_KEY = env("DJANGO_SECRET_KEY", "str", "dev-only-insecure-key-change-me" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY: required when DJANGO_DEBUG is false")
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", "list", ["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI as static files: /api/docs/ offline
    "agents_hooks",
    "webhooks",
    "deliveries",
]

MIDDLEWARE = [
    # First: an API body over API_MAX_BODY_BYTES is a 413 before anything reads it.
    "webhooks_project.api.body_limit_middleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin CSS) from STATIC_ROOT, as WhiteNoise asks: right after security.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webhooks_project.urls"
# Admin messages can carry a secret shown once (rotation, new API key): keep them server-side,
# not in the (signed, unencrypted) messages cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
WSGI_APPLICATION = "webhooks_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASE_URL: sqlite:///path or postgres://user:pass@host:port/name.
try:
    DATABASES = {"default": _env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
except Exception as exc:  # environ raises several types for a malformed URL
    raise ImproperlyConfigured(f"DATABASE_URL: invalid value ({exc})") from exc
if DATABASES["default"]["ENGINE"] not in set(environ.Env.DB_SCHEMES.values()):
    raise ImproperlyConfigured(
        f"DATABASE_URL: unknown database scheme {DATABASES['default']['ENGINE']!r} (use postgres:// or sqlite:///)"
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file: WAL and a busy timeout keep them from tripping
    # over each other's write locks.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # Persistent connections: a worker delivering hundreds of webhooks a second should not
    # reconnect per task. DATABASE_CONN_MAX_AGE seconds, 0 to close after each request.
    DATABASES["default"]["CONN_MAX_AGE"] = env_positive("DATABASE_CONN_MAX_AGE", "int", 600)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Server-side parameter binding: psycopg's client-side quoting of bulk INSERTs (attempt
    # and delivery rows) was a tenth of the worker's time.
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
FORMAT_MODULE_PATH = ["webhooks_project.formats"]  # times to the second (formats/en/formats.py)
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every start without it (before collectstatic)
# WhiteNoise serves STATIC_ROOT from the app. In production, files under hashed names,
# compressed and cached forever; that storage reads the manifest `collectstatic` writes, so
# it needs `manage.py collectstatic` before start. Development and the tests (DEBUG) serve
# the apps' own files unhashed, with nothing to collect.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- HTTPS (README "Production"; `check --deploy` passes with deploy/agent-webhooks.env.example)
# Behind a TLS-terminating proxy, the header it sets and the value meaning "the client used
# HTTPS", e.g. "HTTP_X_FORWARDED_PROTO,https". Set it only when the proxy always sets or
# overwrites that header: Django then trusts it. Empty: requests are HTTPS only if they
# arrive over TLS themselves.
_proxy_ssl_header = env("DJANGO_SECURE_PROXY_SSL_HEADER", "list", [])
if _proxy_ssl_header and (len(_proxy_ssl_header) != 2 or not _proxy_ssl_header[0].startswith("HTTP_")):
    raise ImproperlyConfigured(
        f"DJANGO_SECURE_PROXY_SSL_HEADER: expected 'HTTP_<HEADER>,<value>', e.g. 'HTTP_X_FORWARDED_PROTO,https',"
        f" got {','.join(_proxy_ssl_header)!r}"
    )
SECURE_PROXY_SSL_HEADER = tuple(_proxy_ssl_header) or None
# Plain-HTTP requests are redirected to HTTPS, except the probes and /metrics, which load
# balancers and Prometheus call on the host's own address. False when the proxy redirects.
SECURE_SSL_REDIRECT = env("DJANGO_SECURE_SSL_REDIRECT", "bool", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
# Strict-Transport-Security: browsers use only HTTPS for this long (seconds; 0: no header).
# Subdomains and preload are opt-in: they bind hosts this service does not serve, and a
# preload listing takes months to undo.
SECURE_HSTS_SECONDS = env_positive("DJANGO_SECURE_HSTS_SECONDS", "int", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", "bool", False)
SECURE_HSTS_PRELOAD = env("DJANGO_SECURE_HSTS_PRELOAD", "bool", False)
# Session (admin login) and CSRF cookies only over HTTPS.
SESSION_COOKIE_SECURE = env("DJANGO_SESSION_COOKIE_SECURE", "bool", not DEBUG)
CSRF_COOKIE_SECURE = env("DJANGO_CSRF_COOKIE_SECURE", "bool", not DEBUG)
# Origins (scheme://host[:port]) allowed to POST forms (the admin) besides the request's
# own host, e.g. "https://hooks.example.com" when the proxy changes Host.
CSRF_TRUSTED_ORIGINS = env("DJANGO_CSRF_TRUSTED_ORIGINS", "list", [])

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "agents_hooks.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["agents_hooks.auth.HasOrganization"],
    "DEFAULT_PARSER_CLASSES": ["webhooks_project.api.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "webhooks_project.api.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "webhooks_project.schema.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "agent-webhooks API",
    "DESCRIPTION": "Manage webhook endpoints, drive the agent lifecycle, inspect and replay deliveries.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from our static files (drf-spectacular-sidecar), not a CDN: the docs work offline.
    # Served by runserver in DEBUG, and by collectstatic + WhiteNoise in production.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # One tag per resource, described (webhooks_project/schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "webhooks_project.schema.describe"],
    "ENUM_NAME_OVERRIDES": {
        "EndpointKindEnum": "webhooks.models.EndpointKind",
        "DeliveryKindEnum": "deliveries.models.DeliveryKind",
        "RunStatusEnum": "agents_hooks.models.RunStatus",
        "StepStatusEnum": "agents_hooks.models.StepStatus",
        "ToolExecutionStatusEnum": "agents_hooks.models.ToolExecutionStatus",
        "DeliveryStatusEnum": "deliveries.models.DeliveryStatus",
        "EndpointStateEnum": "webhooks.models.EndpointState",
        "ReplayStateEnum": "deliveries.models.ReplayState",
        "PayloadRemovedEnum": "deliveries.models.PayloadRemoved",
    },
}
# Largest request body the API accepts (413 above it).
API_MAX_BODY_BYTES = env_positive("API_MAX_BODY_BYTES", "int", 1024 * 1024, minimum=1024)
# Django's own limit on a body read whole: DRF reads API bodies so, which must never trip it
# (a 400 HTML page); the admin's forms keep Django's 2.5 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(API_MAX_BODY_BYTES, 2_621_440)

LOG_LEVEL = env("LOG_LEVEL", "str", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "agents_hooks": {"level": LOG_LEVEL},
        "webhooks": {"level": LOG_LEVEL},
        "deliveries": {"level": LOG_LEVEL},
    },
}

# --- Webhook delivery ----------------------------------------------------------------------
# Timeouts in seconds for one POST: connect, and the whole request including the response.
WEBHOOK_CONNECT_TIMEOUT = env_positive("WEBHOOK_CONNECT_TIMEOUT", "float", 5.0, minimum=0.01)
WEBHOOK_TIMEOUT = env_positive("WEBHOOK_TIMEOUT", "float", 5.0, minimum=0.01)
# Retries (deliveries/policy.py): the waits before each retry, the first retry included, as
# seconds or durations ("5s,5m,30m,2h"); after the last one fails the delivery is dead. The
# default, Svix's, spans about 27 hours. An endpoint may set its own (`retry_schedule`).
from deliveries.policy import ScheduleError as _ScheduleError  # noqa: E402 (pure: reads no settings on import)
from deliveries.policy import parse_schedule as _parse_schedule  # noqa: E402

try:
    WEBHOOK_RETRY_SCHEDULE = _parse_schedule(env("WEBHOOK_RETRY_SCHEDULE", "str", "5s,5m,30m,2h,5h,10h,10h"))
except _ScheduleError as exc:
    raise ImproperlyConfigured(f"WEBHOOK_RETRY_SCHEDULE: {exc}") from exc
# Each wait is drawn from [wait x (1 - JITTER), wait x (1 + JITTER)], so deliveries that
# failed together (an outage) come back spread out, not as one burst on a recovering receiver.
# 0 turns it off.
WEBHOOK_RETRY_JITTER = env_positive("WEBHOOK_RETRY_JITTER", "float", 0.2)
if WEBHOOK_RETRY_JITTER >= 1:
    raise ImproperlyConfigured(f"WEBHOOK_RETRY_JITTER: a fraction below 1 (0.2 = 20%), got {WEBHOOK_RETRY_JITTER}")
# A receiver's Retry-After (429, 503) longer than the schedule's wait is honoured up to this.
WEBHOOK_RETRY_AFTER_MAX = env_positive("WEBHOOK_RETRY_AFTER_MAX", "float", 3600.0)
# Each worker process's due loop (deliveries/dueloop.py) looks for due deliveries at least
# this often (seconds); sooner when it knows something comes due sooner.
WEBHOOK_DUE_POLL_INTERVAL = env_positive("WEBHOOK_DUE_POLL_INTERVAL", "float", 1.0, minimum=0.05)
# Tasks and the due loop take turns in a worker process, tasks first: the loop waits at most
# this many seconds for running tasks before its next batch (deliveries/dueloop.py).
WEBHOOK_DUE_YIELD_MAX = env_positive("WEBHOOK_DUE_YIELD_MAX", "float", 0.25)
# An event not fanned out this many seconds after it was published lost its message (broker
# down at the time): the due loop fans it out from the database.
WEBHOOK_STRANDED_AFTER = env_positive("WEBHOOK_STRANDED_AFTER", "float", 10.0)
# The longest a pull-feed request waits for new events (GET /api/v1/events/feed/?wait=):
# each waiting request holds a web worker thread (deliveries/feed.py).
WEBHOOK_FEED_MAX_WAIT = env_positive("WEBHOOK_FEED_MAX_WAIT", "float", 25.0, minimum=0.0)
# The longest any wait sits in the broker: a task that could not run (database unreachable)
# is retried by Celery with exponential backoff, each wait at most this, up to
# TASK_MAX_RETRIES times. Delivery retries never wait in the broker.
WEBHOOK_BROKER_WAIT_MAX = env_positive("WEBHOOK_BROKER_WAIT_MAX", "int", 60, minimum=1)
WEBHOOK_TASK_MAX_RETRIES = env_positive("WEBHOOK_TASK_MAX_RETRIES", "int", 8)
_RENAMED = {
    "WEBHOOK_MAX_RETRIES": "WEBHOOK_RETRY_SCHEDULE (one wait per retry)",
    "WEBHOOK_RETRY_BACKOFF": "WEBHOOK_RETRY_SCHEDULE",
    "WEBHOOK_RETRY_BACKOFF_MAX": "WEBHOOK_RETRY_SCHEDULE",
    "WEBHOOK_SWEEP_INTERVAL": "WEBHOOK_DUE_POLL_INTERVAL (the workers' due loop replaced beat's sweeper)",
    "WEBHOOK_SWEEP_GRACE": "WEBHOOK_STRANDED_AFTER",
}
for _old, _new in _RENAMED.items():
    if _env.str(_old, default=None) is not None:
        raise ImproperlyConfigured(f"{_old}: no longer read; see {_new} in the README")
# Largest event envelope (bytes) sent to endpoints. A larger event is recorded without its
# data: seed targets still get their bodies, endpoint deliveries fail unsent saying why; the
# API refuses a change whose event would be larger (deliveries/events.py).
WEBHOOK_MAX_PAYLOAD_BYTES = env_positive("WEBHOOK_MAX_PAYLOAD_BYTES", "int", 256 * 1024, minimum=1024)
# Bytes of each response body kept in the attempt log.
WEBHOOK_RESPONSE_BODY_LIMIT = env_positive("WEBHOOK_RESPONSE_BODY_LIMIT", "int", 4096)
# POSTs one worker process's batches keep in flight at once (the batch pool has twice this
# many threads, so requests that straggle keep theirs without taking the batches' place); also
# the most the slow lane runs at once.
WEBHOOK_HTTP_CONCURRENCY = env_positive("WEBHOOK_HTTP_CONCURRENCY", "int", 32, minimum=1)
# A batch waits this long (seconds) for a request; one still running then finishes in the
# background, and its target becomes "slow": its deliveries go to the slow lane, at most
# ENDPOINT_CONCURRENCY at a time per target and process; the rest wait in the database
# (deliveries/lanes.py).
WEBHOOK_STRAGGLER_AFTER = env_positive("WEBHOOK_STRAGGLER_AFTER", "float", 0.5, minimum=0.01)
WEBHOOK_ENDPOINT_CONCURRENCY = env_positive("WEBHOOK_ENDPOINT_CONCURRENCY", "int", 8, minimum=1)
# A publishing process sends at most one message of each kind per this many seconds, with every
# id gathered meanwhile (an event that comes alone goes at once): deliveries/enqueue.py.
WEBHOOK_ENQUEUE_WINDOW = env_positive("WEBHOOK_ENQUEUE_WINDOW", "float", 0.02)
# Deliveries handed to the broker in one message (first attempts are sent as a batch).
WEBHOOK_BATCH_SIZE = env_positive("WEBHOOK_BATCH_SIZE", "int", 50, minimum=1)
# A worker holds a delivery for the longest possible attempt plus this margin (seconds); if it
# dies meanwhile, the delivery is free for the due loop once the lease runs out.
WEBHOOK_LEASE_MARGIN = env_positive("WEBHOOK_LEASE_MARGIN", "float", 30.0)
# A worker fans out up to FANOUT_BATCH waiting events together (those that waited at least
# BACKLOG_AFTER seconds): batching cuts the worker's cost per delivery (fanout.py).
WEBHOOK_FANOUT_BATCH = env_positive("WEBHOOK_FANOUT_BATCH", "int", 20, minimum=1)
WEBHOOK_BACKLOG_AFTER = env_positive("WEBHOOK_BACKLOG_AFTER", "float", 0.0)
# An endpoint whose every attempt has failed for this long is disabled (its deliveries are
# held until it is enabled again). Svix uses 5 days.
WEBHOOK_DISABLE_AFTER_HOURS = env_positive("WEBHOOK_DISABLE_AFTER_HOURS", "float", 120.0, minimum=0.001)
# An endpoint whose attempts failed this many times in a row is reported failing (the
# operational event `endpoint.failing`), at most once per endpoint in each FAILING_WINDOW
# seconds of the clock (webhooks/health.py, deliveries/operational.py).
WEBHOOK_FAILING_AFTER_FAILURES = env_positive("WEBHOOK_FAILING_AFTER_FAILURES", "int", 10, minimum=1)
WEBHOOK_FAILING_WINDOW = env_positive("WEBHOOK_FAILING_WINDOW", "float", 3600.0, minimum=1)
# Attempt rows older than this many days are purged daily; 0 keeps them forever.
WEBHOOK_ATTEMPT_RETENTION_DAYS = env_positive("WEBHOOK_ATTEMPT_RETENTION_DAYS", "int", 30)
# Event and delivery payloads and response excerpts older than this many days are removed
# hourly (the rows stay, as tombstones: deliveries/retention.py); an organization may set a
# shorter period (Organization.payload_retention_days); 0 keeps them forever.
WEBHOOK_PAYLOAD_RETENTION_DAYS = env_positive("WEBHOOK_PAYLOAD_RETENTION_DAYS", "int", 30)
# Health (webhooks_project/probes.py: GET /health/ready, `manage.py health`). Each worker
# process's due loop, and beat, write a heartbeat row at most every HEARTBEAT_INTERVAL seconds;
# ready wants a worker's and beat's at most READY_HEARTBEAT_MAX_AGE old, the oldest due delivery
# at most READY_BACKLOG_MAX_AGE late, and the broker to answer within READY_BROKER_TIMEOUT.
WEBHOOK_HEARTBEAT_INTERVAL = env_positive("WEBHOOK_HEARTBEAT_INTERVAL", "float", 10.0, minimum=0.1)
WEBHOOK_READY_HEARTBEAT_MAX_AGE = env_positive("WEBHOOK_READY_HEARTBEAT_MAX_AGE", "float", 60.0, minimum=1)
if WEBHOOK_READY_HEARTBEAT_MAX_AGE <= WEBHOOK_HEARTBEAT_INTERVAL + WEBHOOK_DUE_POLL_INTERVAL:
    raise ImproperlyConfigured(
        "WEBHOOK_READY_HEARTBEAT_MAX_AGE: must exceed WEBHOOK_HEARTBEAT_INTERVAL + WEBHOOK_DUE_POLL_INTERVAL"
        f" ({WEBHOOK_HEARTBEAT_INTERVAL} + {WEBHOOK_DUE_POLL_INTERVAL}), or a healthy worker looks dead"
    )
WEBHOOK_READY_BACKLOG_MAX_AGE = env_positive("WEBHOOK_READY_BACKLOG_MAX_AGE", "float", 300.0, minimum=1)
WEBHOOK_READY_BROKER_TIMEOUT = env_positive("WEBHOOK_READY_BROKER_TIMEOUT", "float", 2.0, minimum=0.1)

# Fernet keys (comma-separated, newest first) encrypting endpoint secrets at rest; see
# webhooks/crypto.py. Empty: a key derived from DJANGO_SECRET_KEY (development only).
WEBHOOK_ENCRYPTION_KEYS = env("WEBHOOK_ENCRYPTION_KEYS", "list", [])
try:
    from cryptography.fernet import Fernet as _Fernet

    for _key in WEBHOOK_ENCRYPTION_KEYS:
        _Fernet(_key)
except ValueError as exc:
    raise ImproperlyConfigured(f"WEBHOOK_ENCRYPTION_KEYS: not a list of Fernet keys ({exc})") from exc
if not DEBUG and not WEBHOOK_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("WEBHOOK_ENCRYPTION_KEYS: required when DJANGO_DEBUG is false")
# A rotated-out endpoint secret keeps signing (as a second signature) this many hours.
WEBHOOK_SECRET_ROTATION_GRACE_HOURS = env_positive("WEBHOOK_SECRET_ROTATION_GRACE_HOURS", "float", 24.0)
# A run subscription (POST /api/v1/runs/<id>/subscriptions/) given no `ttl_seconds` nor
# `expires_at` takes new events this many hours at most, if its run's last event never comes.
# At most 720 (30 days), the longest a request may ask for (webhooks/run_subscriptions.py).
WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS = env_positive("WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS", "float", 24.0)
if not 0 < WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS <= 720:
    raise ImproperlyConfigured(
        f"WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS: must be over 0 and at most 720, got {WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS}"
    )

# SSRF guard (webhooks/urlsafety.py): endpoint URLs whose host resolves to a loopback,
# private, link-local, carrier-grade NAT, multicast, reserved... address are refused, when
# created and again before every POST. WEBHOOK_ALLOWED_CIDRS: comma-separated networks allowed
# all the same, for development and tests. Default: loopback while DJANGO_DEBUG (the embedded
# development setup, receivers on localhost), nothing in production. A bare address is a
# one-address network; host bits set (10.0.0.1/8) is an error.
# WEBHOOK_CA_BUNDLE: a PEM file of CA certificates trusted for HTTPS endpoints in addition to
# the system's (a private CA's receivers). Checked at start-up: a bundle that cannot be read
# would otherwise fail every HTTPS delivery, one attempt at a time.
WEBHOOK_CA_BUNDLE = env("WEBHOOK_CA_BUNDLE", "str", "")
if WEBHOOK_CA_BUNDLE:
    import ssl as _ssl

    try:
        _ssl.create_default_context().load_verify_locations(cafile=WEBHOOK_CA_BUNDLE)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ImproperlyConfigured(
            f"WEBHOOK_CA_BUNDLE: cannot load {WEBHOOK_CA_BUNDLE!r} as a PEM file of CA certificates ({exc})"
        ) from exc
_LOOPBACK = ["127.0.0.0/8", "::1/128"]
WEBHOOK_ALLOWED_CIDRS = [
    c.strip() for c in env("WEBHOOK_ALLOWED_CIDRS", "list", _LOOPBACK if DEBUG else []) if c.strip()
]
try:
    import ipaddress as _ipaddress

    for _cidr in WEBHOOK_ALLOWED_CIDRS:
        _ipaddress.ip_network(_cidr)
except ValueError as exc:
    raise ImproperlyConfigured(f"WEBHOOK_ALLOWED_CIDRS: not a list of CIDRs ({exc})") from exc
# Refuse plain http:// endpoint URLs: https only.
WEBHOOK_HTTPS_ONLY = env("WEBHOOK_HTTPS_ONLY", "bool", False)
# Egress proxy: `http://[user:pass@]host:port`. Every POST then goes through an HTTP CONNECT
# tunnel to the endpoint's checked address (URL safety still applies to the endpoint; the
# proxy itself is the operator's and is not checked). Empty: connect directly.
WEBHOOK_PROXY_URL = env("WEBHOOK_PROXY_URL", "str", "").strip()
if WEBHOOK_PROXY_URL:
    from urllib.parse import urlsplit as _urlsplit

    try:
        _proxy = _urlsplit(WEBHOOK_PROXY_URL)
        if _proxy.scheme != "http" or not _proxy.hostname or _proxy.port is None:
            raise ValueError("expected http://[user:pass@]host:port")
        if _proxy.path not in ("", "/") or _proxy.query or _proxy.fragment:
            raise ValueError("a proxy URL has no path, query or fragment")
    except ValueError as exc:
        raise ImproperlyConfigured(f"WEBHOOK_PROXY_URL: invalid value ({exc})") from exc

# Seed 000 compatibility: every step reaching success/failed/cancelled POSTs {"step_id": ...}
# here, with `Authorization: Bearer STEP_COMPLETE_KEY` when that is set.
STEP_COMPLETE_WEBHOOK = env("STEP_COMPLETE_WEBHOOK", "str", "")
STEP_COMPLETE_KEY = env("STEP_COMPLETE_KEY", "str", "")
STEP_COMPLETE_TIMEOUT = env_positive("STEP_COMPLETE_TIMEOUT", "float", 10.0, minimum=0.01)

# --- Metrics (deliveries/metrics.py) ------------------------------------------------------
# Prometheus counters are kept in files every process of a host writes (prometheus-client's
# multiprocess mode), added up by GET /metrics. Processes that should count together share
# the directory; empty it when they all restart (it is prometheus-client's own variable, read
# when the library loads: settings set it before anything imports it).
PROMETHEUS_MULTIPROC_DIR = Path(env("PROMETHEUS_MULTIPROC_DIR", "str", str(VAR_DIR / "metrics")))
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)
# Off: nothing is counted (GET /metrics still serves the gauges read at scrape time).
WEBHOOK_METRICS_ENABLED = env("WEBHOOK_METRICS_ENABLED", "bool", True)
# One series per endpoint on webhooks_attempts_total: fine for tens of endpoints, not thousands.
WEBHOOK_METRICS_ENDPOINT_LABELS = env("WEBHOOK_METRICS_ENDPOINT_LABELS", "bool", False)
# A worker serves its host's counters on this port (0: not at all; a worker sharing the web's
# PROMETHEUS_MULTIPROC_DIR is counted by the web's /metrics already).
WEBHOOK_METRICS_PORT = env_positive("WEBHOOK_METRICS_PORT", "int", 0)
# If set, GET /metrics asks for `Authorization: Bearer <token>`.
WEBHOOK_METRICS_TOKEN = env("WEBHOOK_METRICS_TOKEN", "str", "")

# --- Celery --------------------------------------------------------------------------------
# The default broker is kombu's filesystem transport under var/broker: no server to install.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "str", "filesystem://localhost/")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
        "polling_interval": 0.1,
    }
    for _name in ("queue", "processed", "control"):
        (_broker_dir / _name).mkdir(parents=True, exist_ok=True)
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Redis hands an unacknowledged message to another worker after the visibility timeout.
    # Nothing here stays unacknowledged long: a task runs for at most one batch's lease, and
    # the only waits in the broker are a task's own retries (BROKER_WAIT_MAX). So a killed
    # worker's messages come back after minutes, not hours (its deliveries, sooner: when
    # their lease ends, through the due loop).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_positive("CELERY_VISIBILITY_TIMEOUT", "int", 300, minimum=1),
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", "str", "webhooks")

# Endpoints' rate limits are counted in this Redis, shared by all workers (webhooks/ratelimit.py);
# by default the broker's, when that is Redis. Empty: counted per process. Slots are reserved
# up to HORIZON seconds ahead; deliveries beyond try again after it.
WEBHOOK_RATE_LIMIT_REDIS_URL = env(
    "WEBHOOK_RATE_LIMIT_REDIS_URL", "str", CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else ""
)
if WEBHOOK_RATE_LIMIT_REDIS_URL and not WEBHOOK_RATE_LIMIT_REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured("WEBHOOK_RATE_LIMIT_REDIS_URL: not a redis://, rediss:// or unix:// URL")
WEBHOOK_RATE_LIMIT_HORIZON = env_positive("WEBHOOK_RATE_LIMIT_HORIZON", "int", 60, minimum=1)
CELERY_TASK_ACKS_LATE = True
# Celery's Django fixup closes every database connection before and after each task unless
# this is set (then it closes them once every 2 x this many tasks): a new PostgreSQL backend
# per task cost more than the task's own queries. Connections are still checked before each
# task (webhooks_project/celery.py) and recycled after DATABASE_CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = 10_000
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# When the broker connection drops, tasks in progress run to the end (their POSTs recorded);
# their messages come back and find nothing to claim. Cancelling them (Celery 6's default)
# would only abandon POSTs already made, to be sent again after their lease.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# After a reconnection Celery lowers the prefetch count while tasks from before run out. With
# a pool of threads on RabbitMQ, restoring it afterwards is called from the pool threads on
# the one AMQP connection, which is not thread-safe: the worker hangs after a RabbitMQ restart.
# Without the reduction a reconnected worker may prefetch a few more messages than usual.
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_positive("CELERY_WORKER_PREFETCH_MULTIPLIER", "int", 4, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Celery's persistent scheduler, writing beat's heartbeat for the readiness probe.
CELERY_BEAT_SCHEDULER = "webhooks_project.beat:HeartbeatScheduler"
CELERY_BEAT_SCHEDULE = {
    "purge-old-attempts": {"task": "deliveries.tasks.purge_attempts", "schedule": 3600.0},
    "purge-idempotency-keys": {"task": "deliveries.tasks.purge_idempotency_keys", "schedule": 3600.0},
    "expire-payloads": {"task": "deliveries.tasks.expire_payloads", "schedule": 3600.0},
}
