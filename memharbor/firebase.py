"""Firebase adapters: the Admin app, Firestore clients and the Storage bucket, all emulator-aware.

In emulator mode a composition root calls `use_emulators` once, before it makes any client here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import firebase_admin
import google.auth.credentials
from firebase_admin import credentials as fb_credentials
from google.cloud import firestore

from memharbor.settings import FirebaseSettings


class UsesFirebase(Protocol):
    """Any process's settings: each holds the Firebase part."""

    @property
    def firebase(self) -> FirebaseSettings:
        """The Firebase project, credentials and emulators."""
        ...


class _EmulatorCredential(fb_credentials.Base):  # type: ignore[misc]
    """Firebase Admin needs a credential object; against emulators nothing is ever signed."""

    def get_credential(self) -> google.auth.credentials.Credentials:
        return google.auth.credentials.AnonymousCredentials()


def use_emulators(settings: UsesFirebase) -> None:
    """Point Google's client libraries at the emulators these settings name (nothing outside emulator mode).

    This writes the process environment, the only code outside memharbor.settings that touches it: the
    Firestore client (FIRESTORE_EMULATOR_HOST), google-cloud-storage (STORAGE_EMULATOR_HOST) and Firebase
    Admin's ID-token check (FIREBASE_AUTH_EMULATOR_HOST) take an emulator's address from there and from
    nowhere else. Outside emulator mode the settings refused to start with any of them set.
    """
    fb = settings.firebase
    if not fb.use_emulator:
        return
    if fb.firestore_emulator_host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = fb.firestore_emulator_host
    if fb.storage_emulator_host:
        host = fb.storage_emulator_host
        os.environ["STORAGE_EMULATOR_HOST"] = host if "://" in host else f"http://{host}"
    if fb.auth_emulator_host:
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = fb.auth_emulator_host


def use_metrics_directory(directory: Path) -> None:
    """Set PROMETHEUS_MULTIPROC_DIR for prometheus-client's multiprocess mode (memharbor.metrics calls this).

    Like the emulator addresses above, a library reads it from the process environment and nowhere
    else; it is written here so this module stays the one writer of the environment. Forked workers
    inherit it.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _credential(fb: FirebaseSettings) -> Any:
    if fb.service_account is not None:
        return fb_credentials.Certificate(json.loads(fb.service_account.value))
    if fb.use_emulator:
        return _EmulatorCredential()
    return fb_credentials.ApplicationDefault()


def admin_app(settings: UsesFirebase, name: str = "[DEFAULT]") -> firebase_admin.App:
    """Return the Firebase Admin app for these settings, creating it on first use."""
    fb = settings.firebase
    try:
        return firebase_admin.get_app(name)
    except ValueError:
        options: dict[str, Any] = {"projectId": fb.project_id}
        if fb.storage_bucket:
            options["storageBucket"] = fb.storage_bucket
        return firebase_admin.initialize_app(_credential(fb), options, name=name)


def _google_credentials(fb: FirebaseSettings) -> google.auth.credentials.Credentials | None:
    if fb.use_emulator:
        return google.auth.credentials.AnonymousCredentials()
    if fb.service_account is not None:
        return _credential(fb).get_credential()
    return None


def firestore_async(settings: UsesFirebase) -> firestore.AsyncClient:
    """An asyncio Firestore client (for request handlers and workers); its caller closes it."""
    fb = settings.firebase
    return firestore.AsyncClient(project=fb.project_id, credentials=_google_credentials(fb))


def firestore_sync(settings: UsesFirebase) -> firestore.Client:
    """A thread-based Firestore client: the only one that offers on_snapshot listeners."""
    fb = settings.firebase
    return firestore.Client(project=fb.project_id, credentials=_google_credentials(fb))


def storage_configured(settings: UsesFirebase) -> bool:
    """True when recordings can be uploaded: a bucket is named (and, with emulators, a Storage emulator)."""
    fb = settings.firebase
    if not fb.storage_bucket:
        return False
    return not fb.use_emulator or fb.storage_emulator_host is not None


def storage_bucket(settings: UsesFirebase) -> Any | None:
    """The Storage bucket (`google.cloud.storage.Bucket`) for recordings, or None when none is configured.

    Firebase Admin's `storage.bucket` wraps google-cloud-storage, which reaches the gcp-storage-emulator
    through STORAGE_EMULATOR_HOST (set by `use_emulators`) with anonymous credentials. Its client is cached
    in the Admin app, which outlives any one composition.
    """
    if not storage_configured(settings):
        return None
    from firebase_admin import storage

    return storage.bucket(settings.firebase.storage_bucket, app=admin_app(settings))
