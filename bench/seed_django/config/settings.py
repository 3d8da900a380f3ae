"""Settings of the seed-style token server: DEBUG off, no database, request logging to logs/api.log."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("MEMHARBOR_SECRET_KEY", "seed-bench-not-a-secret")
DEBUG = os.environ.get("MEMHARBOR_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["*"]

# The seed keeps everything in Firestore: no local database, so no auth/session/admin apps.
INSTALLED_APPS = ["api"]
DATABASES: dict[str, dict[str, str]] = {}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# The seed writes logs/api.log (API requests) and logs/django.log beside the project;
# SEED_LOG_DIR lets the benchmark put them in a scratch directory.
LOG_DIR = Path(os.environ.get("SEED_LOG_DIR", str(BASE_DIR / "logs")))
LOG_DIR.mkdir(parents=True, exist_ok=True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "verbose": {
            "format": "[{asctime}] {levelname} {name} {message}",
            "datefmt": "%Y-%m-%d %H:%M:%S",
            "style": "{",
        },
    },
    "handlers": {
        "api_file": {
            "class": "logging.FileHandler",
            "filename": str(LOG_DIR / "api.log"),
            "formatter": "verbose",
        },
        "django_file": {
            "class": "logging.FileHandler",
            "filename": str(LOG_DIR / "django.log"),
            "formatter": "verbose",
        },
    },
    "loggers": {
        "api": {"handlers": ["api_file"], "level": "INFO", "propagate": False},
        "django": {"handlers": ["django_file"], "level": "INFO", "propagate": False},
    },
}
