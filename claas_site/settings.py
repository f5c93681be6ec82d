"""Django settings: every value read from the environment here, with embedded defaults."""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _env_float(name: str, default: float, *, min_value: float, max_value: float) -> float:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not min_value <= number <= max_value:  # NaN fails too
        raise ValueError(f"{name} must be a number from {min_value:g} to {max_value:g}; it is {value!r}.")
    return number


def _env_rate(name: str, default: str) -> str | None:
    """A DRF throttle rate such as "120/min"; "off" or empty means no limit."""
    value = os.environ.get(name, default).strip().lower()
    if value in {"", "off", "none", "0"}:
        return None
    if not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ValueError(f"{name} must look like 120/min (a count per s, min, hour or day) or be off; "
                         f"it is {value!r}.")
    return value


def _env_window(name: str, default: str) -> tuple[int, int] | None:
    """A count per window such as "10/15min" -> (10, 900); "off" or empty means no limit."""
    value = os.environ.get(name, default).strip().lower()
    if value in {"", "off", "none", "0"}:
        return None
    match = re.fullmatch(r"(\d+)/(\d*)(s|sec|m|min|h|hour|d|day)", value)
    if not match or int(match[1]) < 1 or match[2] == "0":
        raise ValueError(f"{name} must look like 10/15min (a count per n s, min, hour or day) or be off; "
                         f"it is {value!r}.")
    unit_s = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
    return int(match[1]), int(match[2] or 1) * unit_s[match[3]]


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# --- the data directory: SQLite files, MLflow store, checkpoints, uploads -----------------
DATA_DIR = Path(os.environ.get("CLAAS_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
DATASET_ROOT = Path(os.environ.get("CLAAS_DATASET_ROOT", DATA_DIR / "datasets")).resolve()
MEDIA_ROOT = DATA_DIR / "files"
MEDIA_URL = "/files/"
CHECKPOINT_DIR = DATA_DIR / "checkpoints"
DEPLOYMENT_DIR = DATA_DIR / "deployments"


def _secret_key() -> str:
    key = os.environ.get("CLAAS_SECRET_KEY")
    if key:
        return key
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        # Written once so that sessions and tokens survive restarts.
        key_file.write_text(secrets.token_urlsafe(64))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = _env_bool("CLAAS_DEBUG")
ALLOWED_HOSTS = _env_list("CLAAS_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = _env_list("CLAAS_CSRF_TRUSTED_ORIGINS", "")

# Production-like deployments set CLAAS_SECURE=1 behind TLS.
_SECURE = _env_bool("CLAAS_SECURE")
SESSION_COOKIE_SECURE = _SECURE
CSRF_COOKIE_SECURE = _SECURE
SECURE_SSL_REDIRECT = _SECURE
SECURE_HSTS_SECONDS = 31536000 if _SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = _SECURE
SECURE_HSTS_PRELOAD = _SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _SECURE else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "huey.contrib.djhuey",
    "claas_site",
    "modelfactory",
    "clserver",
    "frontend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "claas_site.urls"
ASGI_APPLICATION = "claas_site.asgi.application"
WSGI_APPLICATION = None

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

# --- database ------------------------------------------------------------------------------
SQLITE_BUSY_TIMEOUT_S = 30
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # Scaled mode (PostgreSQL): persistent connections, checked before reuse so a restarted
    # database server costs one reconnect, not an error in a worker's heartbeat.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "claas.sqlite3",
            "OPTIONS": {
                # WAL lets the web process read while the worker writes; the busy timeout
                # and IMMEDIATE transactions keep "database is locked" away from users.
                "timeout": SQLITE_BUSY_TIMEOUT_S,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": DATA_DIR / "test_claas.sqlite3"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- sign-in limits (claas_site/login_limit.py): password attempts per username and per client address
# in a window, counted in Django's cache; beyond them a sign-in answers 429, the right password too,
# until the window ends. "off" lifts a limit. The address is REMOTE_ADDR: behind a proxy, start the web
# server with --proxy-headers --forwarded-allow-ips=<the proxy's address> (claas_site/web.py passes them
# to uvicorn), or lift the address limit, as every client would share the proxy's.
AUTHENTICATION_BACKENDS = ["claas_site.login_limit.LoginLimitedBackend"]
LOGIN_FAILURES_PER_USERNAME = _env_window("CLAAS_LOGIN_FAILURES", "10/15min")
LOGIN_FAILURES_PER_ADDRESS = _env_window("CLAAS_LOGIN_FAILURES_PER_IP", "50/15min")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Front-end libraries come from the npm registry (package.json), never from the repository.
NODE_MODULES_DIR = BASE_DIR / "node_modules"
STATICFILES_DIRS = [("vendor", NODE_MODULES_DIR)] if NODE_MODULES_DIR.exists() else []
WHITENOISE_USE_FINDERS = True

# --- request bodies: every limit on what one request may carry ------------------------------
# - MAX_UPLOAD_BYTES: a dataset or model file (clserver/datasets/services.py, modelfactory/api.py and
#   services.py); the web server reads a body up to it plus DATA_UPLOAD_MAX_MEMORY_SIZE for the form's
#   other fields (clserver/serving/body_limit.py), then 413.
# - DATA_UPLOAD_MAX_MEMORY_SIZE (Django's): a body parsed in memory (JSON, form fields); over it, 413.
#   The fast predict path (clserver/serving/predict_fast.py) hands a larger body on to Django.
# - FILE_UPLOAD_MAX_MEMORY_SIZE (Django's): an uploaded file over it is spooled to disk, not refused.
# - MAX_ANONYMOUS_BODY_BYTES (issue 13, clserver/serving/body_limit.py): a body over this many bytes, or of
#   unknown length, is read only with a valid token or session; otherwise 401 before it is read.
# - MAX_DEPLOYMENT_BODY_BYTES: a deployment request (clserver/deployments/api.py) declaring a larger
#   Content-Length is refused (413) naming its size, unread; a smaller one over DATA_UPLOAD_MAX_MEMORY_SIZE
#   is refused by Django's limit (413) as it is read.
# - MAX_BATCH_ROWS: rows of one predict or ingest request (clserver/deployments/data.py), 413 over it.
MAX_UPLOAD_BYTES = _env_int("CLAAS_MAX_UPLOAD_BYTES", 200 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
MAX_ANONYMOUS_BODY_BYTES = _env_int("CLAAS_MAX_ANONYMOUS_BODY_BYTES", 64 * 1024)
MAX_DEPLOYMENT_BODY_BYTES = 64 * 1024 * 1024
MAX_BATCH_ROWS = 10_000

# --- what data and models may cost ------------------------------------------------------------
MAX_DATASET_ROWS = _env_int("CLAAS_MAX_DATASET_ROWS", 1_000_000)
MAX_DATASET_COLUMNS = _env_int("CLAAS_MAX_DATASET_COLUMNS", 4096)
# Largest model a user may describe (registered or trained); 0 lifts the limit. 200M float32 = 800 MB.
MAX_MODEL_PARAMETERS = _env_int("CLAAS_MAX_MODEL_PARAMETERS", 200_000_000)
# Model cost per sample (issue 13: the parameter limit does not bound activations), worked out on torch's
# meta device before any forward pass; 0 lifts a limit. resnet18 at 3x512x512 takes 149 MiB and 19 GFLOPs.
MAX_ACTIVATION_BYTES = _env_int("CLAAS_MAX_ACTIVATION_BYTES", 256 * 1024 * 1024)
MAX_MODEL_FLOPS = _env_int("CLAAS_MAX_MODEL_FLOPS", 20_000_000_000)
# Drift detection (issue 13: one lsdd ingest took 16 GB): a detector fit or the test of one ingested batch
# whose estimated peak exceeds this is refused, and those running at once share it (clserver/drift/budget.py).
# The default detector (mmd) testing the largest ingest (10,000 rows of 64 features) measured 487 MiB.
DRIFT_MEMORY_BYTES = _env_int("CLAAS_DRIFT_MEMORY_BYTES", 1024 * 1024 * 1024)

# --- REST API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "claas_site.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # One throttle for the whole API: writes (POST, PUT, PATCH, DELETE) per user; reads are free.
    # A rate is "<n>/<s|min|hour|day>"; "off" (or empty) lifts it (claas_site/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": ["claas_site.throttling.WriteRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "writes": _env_rate("CLAAS_THROTTLE_WRITES", "120/min"),
        # predict changes nothing: it is serving traffic, limited apart from the other writes.
        "predict": _env_rate("CLAAS_THROTTLE_PREDICT", "off"),
    },
}

# Token `predict` calls are answered by an ASGI layer in front of Django (clserver/serving/predict_fast.py);
# with a predict rate limit set, every call goes through DRF, where the throttle is.
PREDICT_FAST_PATH = (_env_bool("CLAAS_PREDICT_FAST_PATH", True)
                     and REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["predict"] is None)
# Threads of the fast path's pool (database lookup and forward pass, off the event loop).
PREDICT_THREADS = max(1, _env_int("CLAAS_PREDICT_THREADS", 4))
# How long, at most, concurrent predict calls on one champion version wait to be gathered into one
# forward pass (clserver/serving/batching.py), in milliseconds; a call alone never waits; 0 turns it off.
PREDICT_BATCH_MS = _env_float("CLAAS_PREDICT_BATCH_MS", 2.0, min_value=0.0, max_value=1000.0)
# Threads that answer the hot reads (status, results, events, detail endpoints, /healthz) with the
# synchronous middleware chain (clserver/serving/pooled_reads.py); 0 leaves them to Django's ASGI handler.
READ_THREADS = max(0, _env_int("CLAAS_READ_THREADS", 4))

# --- per-user quotas (claas_site/quotas.py); 0 lifts a quota ---------------------------------
QUOTA_CONCURRENT_EXPERIMENTS = _env_int("CLAAS_QUOTA_CONCURRENT_EXPERIMENTS", 4)
QUOTA_STORED_BYTES = _env_int("CLAAS_QUOTA_STORED_BYTES", 5 * 1024**3)
# How many of each resource a user may have (issue 13: creating them was unbounded).
QUOTA_DEPLOYMENTS = _env_int("CLAAS_QUOTA_DEPLOYMENTS", 20)
QUOTA_MODELS = _env_int("CLAAS_QUOTA_MODELS", 100)
QUOTA_DATASETS = _env_int("CLAAS_QUOTA_DATASETS", 100)
QUOTA_EXPERIMENTS = _env_int("CLAAS_QUOTA_EXPERIMENTS", 500)

SPECTACULAR_SETTINGS = {
    "TITLE": "CLaaS API",
    "DESCRIPTION": "Continual-Learning-as-a-Service: register models, run continual-learning "
    "experiments, deploy models that detect drift and update themselves by replay.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from the installed sidecar package, served as static files: /api/docs/ works
    # offline (drf-spectacular's default loads them from a CDN).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The error format on every 4xx, and the answers (401, 413, 415, 429) any operation may give.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "claas_site.openapi.error_responses"],
}

# --- jobs (Huey) -------------------------------------------------------------------------------
REDIS_URL = os.environ.get("CLAAS_REDIS_URL", "")
# Worker threads per `run_huey` process; an idle worker polls at most every max_delay seconds.
_CONSUMER = {"workers": _env_int("CLAAS_WORKER_THREADS", 1), "worker_type": "thread",
             "initial_delay": 0.1, "max_delay": 1.0, "backoff": 1.15}
# A websocket's channel waits on Redis with a blocking pop of a few seconds (channels_redis);
# redis-py 8 reads with a 5 s socket timeout by default, which would cut every idle websocket
# after 5 s, so the read timeout is set above the blocking time (a dead server is still noticed).
CHANNEL_LAYER_READ_TIMEOUT_S = 30.0


def redis_channel_layer(url: str, prefix: str) -> dict:
    """The channel layer on Redis at `url` (websocket events from the workers, across processes)."""
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": url, "socket_timeout": CHANNEL_LAYER_READ_TIMEOUT_S}],
                   "prefix": prefix},
    }


# Queues (clserver/jobs/queues.py): `train` (training, model updates: GPU workers) and `default`
# (drift checks, light jobs). HUEY is the `default` queue; HUEY_QUEUES holds the others.
# Embedded: one SQLite queue and one worker serve both, so HUEY_QUEUES is empty.
HUEY_QUEUES: dict[str, dict] = {}
# Workers run at a lower CPU priority (a nice value) than the web process: on a shared machine
# serving answers first and training takes what is left. 0 keeps the priority the worker started with.
WORKER_NICE = _env_int("CLAAS_WORKER_NICE", 10)
# torch compute threads of each worker process. 0 (auto): OMP_NUM_THREADS when that is set, else in
# the embedded mode one fewer than the machine's cores, so that a core stays free for the web process
# beside it, and torch's own choice in the scaled mode, where workers have their machines.
TORCH_THREADS = _env_int("CLAAS_TORCH_THREADS", 0)
# What this worker trains on: "auto" (CUDA when torch sees it), "cpu" or "cuda".
WORKER_DEVICE = os.environ.get("CLAAS_WORKER_DEVICE", "auto").strip().lower() or "auto"
if REDIS_URL:
    _HUEY_NAME = os.environ.get("CLAAS_HUEY_NAME", "claas")
    HUEY = {
        "huey_class": "huey.RedisHuey",
        "name": _HUEY_NAME,
        "url": REDIS_URL,
        "immediate": False,
        "consumer": _CONSUMER,
    }
    HUEY_QUEUES = {"train": {**HUEY, "name": f"{_HUEY_NAME}.train"}}
    CHANNEL_LAYERS = {"default": redis_channel_layer(REDIS_URL, _HUEY_NAME)}
    # One cache for every web process: sign-in limits and write throttles count across processes
    # (with a cache per process, N web processes would allow N times each limit).
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": _HUEY_NAME}}
else:
    HUEY = {
        "huey_class": "huey.SqliteHuey",
        "name": "claas",
        "filename": str(DATA_DIR / "huey.sqlite3"),
        "immediate": False,
        "consumer": _CONSUMER,
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # One cache for the machine's web processes (./claas run starts several): a SQLite file, so that
    # sign-in limits and write throttles count once across processes (claas_site/shared_cache.py).
    CACHES = {"default": {"BACKEND": "claas_site.shared_cache.SQLiteCache",
                          "LOCATION": str(DATA_DIR / "cache.sqlite3")}}

# A running job writes a heartbeat this often; a job silent for longer than the timeout is
# taken as abandoned by its worker and re-queued (at most JOB_MAX_ATTEMPTS times).
JOB_HEARTBEAT_S = float(os.environ.get("CLAAS_JOB_HEARTBEAT_S", "5"))
JOB_STALE_AFTER_S = float(os.environ.get("CLAAS_JOB_STALE_AFTER_S", "30"))
JOB_REAPER_INTERVAL_S = float(os.environ.get("CLAAS_JOB_REAPER_INTERVAL_S", "10"))
JOB_MAX_ATTEMPTS = _env_int("CLAAS_JOB_MAX_ATTEMPTS", 3)
# Fair training (clserver/jobs/runner.py): a free worker thread starts the queued job of the user with the
# fewest running jobs, so one tenant's queue never holds the others back. This also caps how many train
# jobs one user runs at once, over all workers (0: no cap; the fair order alone).
FAIR_RUNNING_PER_USER = max(0, _env_int("CLAAS_FAIR_RUNNING_PER_USER", 0))

# --- MLflow -----------------------------------------------------------------------------------
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
MLFLOW_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{DATA_DIR / 'mlflow.db'}")
MLFLOW_ARTIFACT_ROOT = os.environ.get("CLAAS_MLFLOW_ARTIFACT_ROOT", str(DATA_DIR / "mlartifacts"))
MLFLOW_UI_URL = os.environ.get("CLAAS_MLFLOW_UI_URL", "http://127.0.0.1:5000")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("CLAAS_LOG_LEVEL", "INFO")},
    "loggers": {
        "alembic": {"level": "WARNING"},
        "huey": {"level": "INFO"},
    },
}
