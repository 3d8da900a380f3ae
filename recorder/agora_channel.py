"""AgoraChannel: the AudioSource over Agora's Linux server SDK (agora-python-server-sdk, imported lazily).

The bot joins as an audience member (it never publishes), subscribes to every remote audio track and
asks the SDK for each participant's audio before mixing, as 16 kHz mono (`set_playback_audio_frame_
before_mixing_parameters(1, 16000)`, delivered to `on_playback_audio_frame_before_mixing`). The SDK
calls back on its own threads and forbids SDK calls and heavy work there, so the observers only copy
bytes and facts into the session's `Inbox` (and resolve the join future through the loop).

The SDK allows one `AgoraService` per process; it is created on first use and shared by every
connection. Which parts of this adapter ran in this repository's tests is stated in recorder/README.md.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from typing import Any

from recorder.audio import CONNECTION_FAILED, JOINED, LEFT, SAMPLE_RATE, TOKEN_WILL_EXPIRE, Inbox, JoinError

_service_lock = threading.Lock()
_service: Any = None
_service_app_id: str | None = None


class AgoraUnavailable(RuntimeError):
    """agora-python-server-sdk (or its native library) is not installed."""


def sdk() -> tuple[Any, Any]:
    """The SDK modules `agora.rtc.agora_service` and `agora.rtc.agora_base`, imported on first use."""
    try:
        service = importlib.import_module("agora.rtc.agora_service")
        base = importlib.import_module("agora.rtc.agora_base")
    except (ImportError, OSError) as exc:
        raise AgoraUnavailable(
            "agora-python-server-sdk is not usable here (pip install 'memharbor[agora]'; "
            f"it downloads its native library at install time): {type(exc).__name__}: {exc}"
        ) from None
    return service, base


def shared_service(app_id: str) -> Any:
    """The process's one initialized AgoraService."""
    global _service, _service_app_id
    with _service_lock:
        if _service is None:
            service_mod, base = sdk()
            config = service_mod.AgoraServiceConfig()
            config.appid = app_id
            config.enable_audio_processor = 1
            config.enable_audio_device = 0
            config.enable_video = 0
            config.use_string_uid = 0
            config.audio_scenario = base.AudioScenarioType.AUDIO_SCENARIO_DEFAULT
            service = service_mod.AgoraService()
            result = service.initialize(config)
            if result not in (0, None):
                raise JoinError(f"AgoraService.initialize returned {result}")
            _service, _service_app_id = service, app_id
        elif _service_app_id != app_id:
            raise JoinError("one process can serve one Agora app id")
        return _service


class _ConnectionObserver:
    """IRTCConnectionObserver's callbacks that matter here; each only records and returns."""

    def __init__(self, owner: AgoraChannel) -> None:
        self._owner = owner

    def on_connected(self, agora_rtc_conn: Any, conn_info: Any, reason: Any) -> None:
        self._owner._joined(None)

    def on_connection_failure(self, agora_rtc_conn: Any, info: Any, reason: Any) -> None:
        self._owner._joined(f"connection failure (reason {reason})")
        self._owner.inbox.event(CONNECTION_FAILED, "", time.monotonic(), f"reason {reason}")

    def on_connection_lost(self, agora_rtc_conn: Any, conn_info: Any) -> None:
        self._owner.inbox.event(CONNECTION_FAILED, "", time.monotonic(), "connection lost")

    def on_user_joined(self, agora_rtc_conn: Any, user_id: Any) -> None:
        self._owner.inbox.event(JOINED, str(user_id), time.monotonic())

    def on_user_left(self, agora_rtc_conn: Any, user_id: Any, reason: Any) -> None:
        self._owner.inbox.event(LEFT, str(user_id), time.monotonic(), f"reason {reason}")

    def on_token_privilege_will_expire(self, agora_rtc_conn: Any, token: Any) -> None:
        self._owner.inbox.event(TOKEN_WILL_EXPIRE, "", time.monotonic())

    def __getattr__(self, name: str) -> Any:
        # Every other callback of the observer interface is a no-op.
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


class _FrameObserver:
    """IAudioFrameObserver: copies each participant's frame into the inbox, nothing more."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self.wrong_format = 0

    def on_playback_audio_frame_before_mixing(
        self, agora_local_user: Any, channel_id: Any, uid: Any, frame: Any, *vad: Any
    ) -> int:
        if frame.samples_per_sec != SAMPLE_RATE or frame.channels != 1 or frame.bytes_per_sample != 2:
            self.wrong_format += 1
            return 1
        self._inbox.frame(str(uid), time.monotonic(), bytes(frame.buffer))
        return 1

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: 1
        raise AttributeError(name)


class AgoraChannel:
    """One bot connection to one channel."""

    def __init__(self, app_id: str, join_timeout_s: float = 10.0) -> None:
        self.app_id = app_id
        self.join_timeout_s = join_timeout_s
        self.inbox = Inbox()
        self._conn: Any = None
        self._frames: _FrameObserver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._join_future: asyncio.Future[str | None] | None = None

    def _joined(self, error: str | None) -> None:
        """From the SDK's thread: resolve the join future on the loop."""
        loop, future = self._loop, self._join_future
        if loop is not None and future is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._settle, future, error)

    @staticmethod
    def _settle(future: asyncio.Future[str | None], error: str | None) -> None:
        if not future.done():
            future.set_result(error)

    def _connect(self, channel: str, uid: int, token: str) -> None:
        _, base = sdk()
        service = shared_service(self.app_id)
        conn_config = base.RTCConnConfig(
            auto_subscribe_audio=1,
            auto_subscribe_video=0,
            client_role_type=base.ClientRoleType.CLIENT_ROLE_AUDIENCE,
            channel_profile=base.ChannelProfileType.CHANNEL_PROFILE_LIVE_BROADCASTING,
        )
        publish_config = base.RtcConnectionPublishConfig(
            audio_scenario=base.AudioScenarioType.AUDIO_SCENARIO_DEFAULT,
            is_publish_audio=False,
            is_publish_video=False,
            audio_publish_type=base.AudioPublishType.AUDIO_PUBLISH_TYPE_NONE,
            video_publish_type=base.VideoPublishType.VIDEO_PUBLISH_TYPE_NONE,
        )
        conn = service.create_rtc_connection(conn_config, publish_config)
        if conn is None:
            raise JoinError("create_rtc_connection returned None")
        self._conn = conn
        conn.register_observer(_ConnectionObserver(self))
        local_user = conn.get_local_user()
        _check(local_user.set_playback_audio_frame_before_mixing_parameters(1, SAMPLE_RATE), "frame parameters")
        self._frames = _FrameObserver(self.inbox)
        _check(conn.register_audio_frame_observer(self._frames, 0, None), "register_audio_frame_observer")
        _check(conn.connect(token, channel, str(uid)), "connect")

    async def join(self, channel: str, uid: int, token: str) -> None:
        if self._conn is not None:
            raise JoinError("already joined")
        self._loop = asyncio.get_running_loop()
        self._join_future = self._loop.create_future()
        try:
            await asyncio.to_thread(self._connect, channel, uid, token)
            async with asyncio.timeout(self.join_timeout_s):
                error = await self._join_future
        except TimeoutError:
            await self.leave()
            raise JoinError(f"not connected within {self.join_timeout_s:.0f}s") from None
        except BaseException:
            await self.leave()
            raise
        if error is not None:
            await self.leave()
            raise JoinError(error)

    async def renew_token(self, token: str) -> None:
        conn = self._conn
        if conn is not None:
            _check(await asyncio.to_thread(conn.renew_token, token), "renew_token")

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            finally:
                conn.release()

    async def leave(self) -> None:
        self._join_future = None
        await asyncio.to_thread(self._release)

    @property
    def wrong_format(self) -> int:
        return self._frames.wrong_format if self._frames is not None else 0


def _check(result: Any, what: str) -> None:
    if isinstance(result, int) and result < 0:
        raise JoinError(f"{what} failed with {result}")
