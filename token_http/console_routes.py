"""The web console's static files (token_http/console/), served at `/console`.

The page holds no secret and does nothing by itself: it signs in with Firebase (the Auth emulator's REST
API in dev) and reads the admin routes with the admin's ID token; its demo panel writes to the Firestore
emulator as the apps do. Files are read once, at the first request, from the installed package.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from memharbor.settings import HttpSettings
from token_http.errors import ApiError, json_response
from token_http.keys import SETTINGS

# The files the console consists of, and their types; nothing else under /console is served.
CONSOLE_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
# The page's settings, made per request from the service's settings.
CONFIG = "config.json"


@cache
def _read(name: str) -> bytes:
    return resources.files("token_http").joinpath("console", name).read_bytes()


def _file(name: str) -> web.Response:
    # no-cache: a browser revalidates after an upgrade instead of mixing old and new files.
    return web.Response(
        body=_read(name),
        content_type=CONSOLE_FILES[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def get_console(_: web.Request) -> web.Response:
    """The console's page."""
    return _file("index.html")


def console_config(settings: HttpSettings) -> dict[str, object]:
    """Where the page signs in and, in emulator mode, the emulators and demo accounts of its demo panel."""
    firebase = settings.firebase
    emulated = settings.auth_label == "firebase-emulator"
    config: dict[str, object] = {
        "projectId": firebase.project_id,
        "authEmulator": f"http://{firebase.auth_emulator_host}" if emulated else None,
        "firestoreEmulator": f"http://{firebase.firestore_emulator_host}"
        if emulated and firebase.firestore_emulator_host
        else None,
        "demo": None,
    }
    if emulated:
        from memharbor import dev  # the demo accounts `memharbor dev` creates; loaded only in emulator mode

        caller, receiver, admin = dev.DEMO_ACCOUNTS
        config["demo"] = {
            "groupId": dev.DEMO_GROUP_ID,
            "password": dev.DEMO_PASSWORD,
            "caller": {"uid": caller.uid, "email": caller.email, "name": caller.display_name},
            "receiver": {"uid": receiver.uid, "email": receiver.email, "name": receiver.display_name},
            "admin": {"uid": admin.uid, "email": admin.email, "name": admin.display_name},
            "receiverDevice": dev.DEMO_DEVICES[receiver.uid][0],
        }
    return config


async def get_console_file(request: web.Request) -> web.Response:
    """One of the console's scripts or style sheets, or its configuration; 404 for any other name."""
    name = request.match_info["name"]
    if name == CONFIG:
        return json_response(console_config(request.app[SETTINGS]))
    if name not in CONSOLE_FILES:
        raise ApiError(404, f"no console file {name}", field="name")
    return _file(name)


def routes() -> list[web.RouteDef]:
    """The console's routes, for the application's router."""
    return [web.get("/console", get_console), web.get("/console/{name}", get_console_file)]
