"""Firebase adapters: the Admin app, Firestore clients and the Storage bucket, all emulator-aware."""

from __future__ import annotations

import json
import os
from typing import Any

import firebase_admin
import google.auth.credentials
from firebase_admin import credentials as fb_credentials
from google.cloud import firestore

from memharbor.settings import Settings


class _EmulatorCredential(fb_credentials.Base):  # type: ignore[misc]
    """Firebase Admin needs a credential object; against emulators nothing is ever signed."""

    def get_credential(self) -> google.auth.credentials.Credentials:
        return google.auth.credentials.AnonymousCredentials()


def export_emulator_hosts(settings: Settings) -> None:
    """Hand the emulator addresses to Google's libraries, which only read them from the environment."""
    if not settings.use_emulator:
        return
    if settings.firestore_emulator_host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = settings.firestore_emulator_host
    if settings.storage_emulator_host:
        host = settings.storage_emulator_host
        os.environ["STORAGE_EMULATOR_HOST"] = host if "://" in host else f"http://{host}"
    if settings.auth_emulator_host:
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = settings.auth_emulator_host


def _credential(settings: Settings) -> Any:
    if settings.service_account is not None:
        return fb_credentials.Certificate(json.loads(settings.service_account.value))
    if settings.use_emulator:
        return _EmulatorCredential()
    return fb_credentials.ApplicationDefault()


def admin_app(settings: Settings, name: str = "[DEFAULT]") -> firebase_admin.App:
    """Return the Firebase Admin app for these settings, creating it on first use."""
    export_emulator_hosts(settings)
    try:
        return firebase_admin.get_app(name)
    except ValueError:
        options: dict[str, Any] = {"projectId": settings.project_id}
        if settings.storage_bucket:
            options["storageBucket"] = settings.storage_bucket
        return firebase_admin.initialize_app(_credential(settings), options, name=name)


def _google_credentials(settings: Settings) -> google.auth.credentials.Credentials | None:
    if settings.use_emulator:
        return google.auth.credentials.AnonymousCredentials()
    if settings.service_account is not None:
        return _credential(settings).get_credential()
    return None


def firestore_async(settings: Settings) -> firestore.AsyncClient:
    """An asyncio Firestore client (for request handlers and workers)."""
    export_emulator_hosts(settings)
    return firestore.AsyncClient(project=settings.project_id, credentials=_google_credentials(settings))


def firestore_sync(settings: Settings) -> firestore.Client:
    """A thread-based Firestore client: the only one that offers on_snapshot listeners."""
    export_emulator_hosts(settings)
    return firestore.Client(project=settings.project_id, credentials=_google_credentials(settings))


def storage_configured(settings: Settings) -> bool:
    """True when recordings can be uploaded: a bucket is named (and, with emulators, a Storage emulator)."""
    if not settings.storage_bucket:
        return False
    return not settings.use_emulator or settings.storage_emulator_host is not None


def storage_bucket(settings: Settings) -> Any | None:
    """The Storage bucket (`google.cloud.storage.Bucket`) for recordings, or None when none is configured.

    Firebase Admin's `storage.bucket` wraps google-cloud-storage, which reaches the gcp-storage-emulator
    through STORAGE_EMULATOR_HOST (exported by `export_emulator_hosts`) with anonymous credentials.
    """
    if not storage_configured(settings):
        return None
    from firebase_admin import storage

    return storage.bucket(settings.storage_bucket, app=admin_app(settings))
