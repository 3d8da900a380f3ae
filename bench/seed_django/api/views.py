"""The seed's POST /api/token view, written the seed's way: a plain Django function view."""

import json
import logging
import os
import time

from agora_token_builder import RtcTokenBuilder
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

logger = logging.getLogger("api")

ROLE_PUBLISHER = 1
ROLE_SUBSCRIBER = 2
MAX_EXPIRE_SECONDS = 86400


def get_client_ip(request: HttpRequest) -> str:
    """Return the caller's address, preferring the proxy's X-Forwarded-For."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.META.get("REMOTE_ADDR", "")


@csrf_exempt
@require_POST
def generate_token(request: HttpRequest) -> JsonResponse:
    """Issue an Agora RTC token for a channel and a uid or user account."""
    logger.info(f"[TOKEN] POST from {get_client_ip(request)}")
    try:
        data = json.loads(request.body)
        logger.info(f"[TOKEN] Request data: {data}")

        channel = data.get("channel")
        uid = data.get("uid")
        user_account = data.get("user_account")
        role = ROLE_PUBLISHER if data.get("role", "subscriber") == "publisher" else ROLE_SUBSCRIBER
        expire = min(int(data.get("expire", MAX_EXPIRE_SECONDS)), MAX_EXPIRE_SECONDS)

        if not channel:
            return JsonResponse({"error": "channel is required"}, status=400)
        if uid is None and not user_account:
            return JsonResponse({"error": "uid or user_account is required"}, status=400)

        app_id = os.environ.get("AGORA_APP_ID")
        app_cert = os.environ.get("AGORA_APP_CERT")
        if not app_id or not app_cert:
            logger.error("[TOKEN] AGORA_APP_ID / AGORA_APP_CERT not configured")
            return JsonResponse({"error": "Agora credentials not configured"}, status=500)

        expire_at = int(time.time()) + expire
        if uid is not None:
            token = RtcTokenBuilder.buildTokenWithUid(app_id, app_cert, channel, int(uid), role, expire_at)
        else:
            token = RtcTokenBuilder.buildTokenWithAccount(app_id, app_cert, channel, user_account, role, expire_at)

        logger.info(f"[TOKEN] Success: channel={channel}, uid={uid if uid is not None else user_account}")
        return JsonResponse({"token": token, "expire_at": expire_at, "expire_in": expire})
    except json.JSONDecodeError:
        logger.warning("[TOKEN] Invalid JSON body")
        return JsonResponse({"error": "Invalid JSON"}, status=400)
    except (TypeError, ValueError) as exc:
        logger.warning(f"[TOKEN] Bad request: {exc}")
        return JsonResponse({"error": str(exc)}, status=400)
    except Exception as exc:
        logger.exception(f"[TOKEN] Error: {exc}")
        return JsonResponse({"error": str(exc)}, status=500)
