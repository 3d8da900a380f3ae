"""The AgoraChannel adapter against a stub of agora-python-server-sdk 2.4.10's Python API.

The real SDK cannot run here (its native library downloads at install time), so these tests check our
side of the contract: which SDK calls we make with which arguments, and that callbacks arriving on the
SDK's own threads only land in the inbox. The stub mirrors the signatures of the SDK's Python layer.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memharbor import wav
from recorder import agora_channel
from recorder.agora_channel import AgoraChannel, AgoraUnavailable
from recorder.audio import JOINED, LEFT, Event, JoinError
from recorder.clock import SessionClock
from recorder.files import RecordingDir
from recorder.session import RecordingSession, SessionConfig, SessionPlan
from recorder.simulated import tone


class ClientRoleType(IntEnum):
    CLIENT_ROLE_BROADCASTER = 1
    CLIENT_ROLE_AUDIENCE = 2


class ChannelProfileType(IntEnum):
    CHANNEL_PROFILE_LIVE_BROADCASTING = 1


class AudioScenarioType(IntEnum):
    AUDIO_SCENARIO_DEFAULT = 0
    AUDIO_SCENARIO_AI_SERVER = 9


class AudioPublishType(IntEnum):
    AUDIO_PUBLISH_TYPE_NONE = 0
    AUDIO_PUBLISH_TYPE_PCM = 1


class VideoPublishType(IntEnum):
    VIDEO_PUBLISH_TYPE_NONE = 0


@dataclass(kw_only=True)
class RTCConnConfig:
    auto_subscribe_audio: int = 0
    auto_subscribe_video: int = 0
    client_role_type: ClientRoleType = ClientRoleType.CLIENT_ROLE_BROADCASTER
    channel_profile: ChannelProfileType = ChannelProfileType.CHANNEL_PROFILE_LIVE_BROADCASTING


@dataclass(kw_only=True)
class RtcConnectionPublishConfig:
    audio_scenario: AudioScenarioType = AudioScenarioType.AUDIO_SCENARIO_AI_SERVER
    is_publish_audio: bool = True
    is_publish_video: bool = False
    audio_publish_type: AudioPublishType = AudioPublishType.AUDIO_PUBLISH_TYPE_PCM
    video_publish_type: VideoPublishType = VideoPublishType.VIDEO_PUBLISH_TYPE_NONE


@dataclass(kw_only=True)
class AudioFrame:
    samples_per_channel: int
    bytes_per_sample: int
    channels: int
    samples_per_sec: int
    buffer: bytearray


class AgoraServiceConfig:
    appid = ""
    enable_audio_processor = 1
    enable_audio_device = 0
    enable_video = 0
    use_string_uid = 0
    audio_scenario = AudioScenarioType.AUDIO_SCENARIO_AI_SERVER


@dataclass
class LocalUser:
    before_mixing: tuple[int, int] | None = None

    def set_playback_audio_frame_before_mixing_parameters(self, channels: int, sample_rate_hz: int) -> int:
        self.before_mixing = (channels, sample_rate_hz)
        return 0


@dataclass
class Connection:
    """What RTCConnection offers; `connect` starts a thread that plays `behaviour` like the SDK would."""

    conn_config: RTCConnConfig
    publish_config: RtcConnectionPublishConfig
    behaviour: str
    local_user: LocalUser = field(default_factory=LocalUser)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    observer: Any = None
    frames: Any = None
    threads: list[str] = field(default_factory=list)

    def register_observer(self, observer: Any) -> int:
        self.observer = observer
        return 0

    def get_local_user(self) -> LocalUser:
        return self.local_user

    def register_audio_frame_observer(self, observer: Any, enable_vad: int, vad_configure: Any) -> int:
        self.frames = observer
        self.calls.append(("register_audio_frame_observer", enable_vad, vad_configure))
        return 0

    def connect(self, token: str, chan_id: str, user_id: str) -> int:
        self.calls.append(("connect", token, chan_id, user_id))
        if self.behaviour != "silent":
            threading.Thread(target=self._play, args=(chan_id,), name="sdk-callbacks", daemon=True).start()
        return 0

    def _play(self, channel: str) -> None:
        self.threads.append(threading.current_thread().name)
        if self.behaviour == "fail":
            self.observer.on_connection_failure(self, None, 17)
            return
        self.observer.on_connected(self, None, 0)
        self.observer.on_user_joined(self, "4242")
        self.observer.on_transport_stats(self, None)  # a callback we do not care about
        pcm = tone(1000.0, 0.5, seconds=0.5)
        for k in range(50):
            chunk = bytearray(pcm[k * 320 : (k + 1) * 320])
            frame = AudioFrame(
                samples_per_channel=160, bytes_per_sample=2, channels=1, samples_per_sec=16000, buffer=chunk
            )
            self.frames.on_playback_audio_frame_before_mixing(None, channel, "4242", frame, -1, None)
        odd = AudioFrame(
            samples_per_channel=480, bytes_per_sample=2, channels=1, samples_per_sec=48000, buffer=bytearray(960)
        )
        self.frames.on_playback_audio_frame_before_mixing(None, channel, "4242", odd, -1, None)
        self.observer.on_user_left(self, "4242", 0)

    def renew_token(self, token: str) -> int:
        self.calls.append(("renew_token", token))
        return 0

    def disconnect(self) -> int:
        self.calls.append(("disconnect",))
        return 0

    def release(self) -> None:
        self.calls.append(("release",))


class AgoraService:
    instances: list[AgoraService] = []  # noqa: RUF012
    behaviour = "talk"

    def __init__(self) -> None:
        self.initialized: list[AgoraServiceConfig] = []
        self.connections: list[Connection] = []
        AgoraService.instances.append(self)

    def initialize(self, config: AgoraServiceConfig) -> int:
        self.initialized.append(config)
        return 0

    def create_rtc_connection(self, con_config: RTCConnConfig, publish_config: RtcConnectionPublishConfig) -> Any:
        conn = Connection(con_config, publish_config, AgoraService.behaviour)
        self.connections.append(conn)
        return conn


@pytest.fixture
def stub_sdk(monkeypatch: pytest.MonkeyPatch) -> type[AgoraService]:
    """Install the stub as `agora.rtc.agora_service` / `agora.rtc.agora_base`; reset the shared service."""
    base = types.ModuleType("agora.rtc.agora_base")
    for cls in (
        ClientRoleType,
        ChannelProfileType,
        AudioScenarioType,
        AudioPublishType,
        VideoPublishType,
        RTCConnConfig,
        RtcConnectionPublishConfig,
    ):
        setattr(base, cls.__name__, cls)
    service = types.ModuleType("agora.rtc.agora_service")
    service.AgoraService = AgoraService  # type: ignore[attr-defined]
    service.AgoraServiceConfig = AgoraServiceConfig  # type: ignore[attr-defined]
    for name, module in (
        ("agora", types.ModuleType("agora")),
        ("agora.rtc", types.ModuleType("agora.rtc")),
        ("agora.rtc.agora_base", base),
        ("agora.rtc.agora_service", service),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(agora_channel, "_service", None)
    monkeypatch.setattr(agora_channel, "_service_app_id", None)
    AgoraService.instances = []
    AgoraService.behaviour = "talk"
    return AgoraService


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class TestJoin:
    """Joining configures an audience bot that receives each participant's 16 kHz mono audio."""

    async def test_join_configures_an_audience_subscriber(self, stub_sdk: type[AgoraService]) -> None:
        """Audience role, audio auto-subscribed, nothing published, 16 kHz mono before mixing, uid as a string."""
        channel = AgoraChannel("a" * 32)
        await channel.join("group1_alice_bob", 999999, "tok")
        [service] = stub_sdk.instances
        [conn] = service.connections
        assert service.initialized[0].appid == "a" * 32
        assert conn.conn_config.client_role_type == ClientRoleType.CLIENT_ROLE_AUDIENCE
        assert conn.conn_config.auto_subscribe_audio == 1 and conn.conn_config.auto_subscribe_video == 0
        assert not conn.publish_config.is_publish_audio and not conn.publish_config.is_publish_video
        assert conn.local_user.before_mixing == (1, 16000)
        assert ("connect", "tok", "group1_alice_bob", "999999") in conn.calls
        await channel.leave()

    async def test_callbacks_from_the_sdk_thread_land_in_the_inbox(self, stub_sdk: type[AgoraService]) -> None:
        """Frames and joined/left events arrive, copied, from the SDK's thread; wrong formats are counted."""
        channel = AgoraChannel("a" * 32)
        await channel.join("c", 999999, "tok")
        await _until(lambda: any(isinstance(i, Event) and i.kind == LEFT for i in list(channel.inbox._items)))
        items = channel.inbox.drain()
        frames = [i for i in items if not isinstance(i, Event)]
        events = [i.kind for i in items if isinstance(i, Event)]
        assert events == [JOINED, LEFT] and len(frames) == 50
        assert all(uid == "4242" and isinstance(pcm, bytes) and len(pcm) == 320 for uid, _, pcm in frames)
        assert channel.wrong_format == 1
        [conn] = stub_sdk.instances[0].connections
        assert conn.threads == ["sdk-callbacks"]
        await channel.leave()

    async def test_connection_failure_is_a_join_error(self, stub_sdk: type[AgoraService]) -> None:
        """on_connection_failure before on_connected fails the join and releases the connection."""
        stub_sdk.behaviour = "fail"
        channel = AgoraChannel("a" * 32)
        with pytest.raises(JoinError, match="reason 17"):
            await channel.join("c", 999999, "tok")
        [conn] = stub_sdk.instances[0].connections
        assert conn.calls[-2:] == [("disconnect",), ("release",)]

    async def test_no_answer_times_out(self, stub_sdk: type[AgoraService]) -> None:
        """Without on_connected the join gives up after join_timeout_s."""
        stub_sdk.behaviour = "silent"
        channel = AgoraChannel("a" * 32, join_timeout_s=0.2)
        with pytest.raises(JoinError, match="not connected"):
            await channel.join("c", 999999, "tok")

    async def test_renew_and_leave(self, stub_sdk: type[AgoraService]) -> None:
        """renew_token hands the token over; leave disconnects, then releases."""
        channel = AgoraChannel("a" * 32)
        await channel.join("c", 999999, "tok")
        await channel.renew_token("tok2")
        await channel.leave()
        [conn] = stub_sdk.instances[0].connections
        assert ("renew_token", "tok2") in conn.calls and conn.calls[-2:] == [("disconnect",), ("release",)]

    async def test_one_service_per_process(self, stub_sdk: type[AgoraService]) -> None:
        """Two connections share the one initialized AgoraService."""
        one, two = AgoraChannel("a" * 32), AgoraChannel("a" * 32)
        await one.join("c1", 999999, "t")
        await two.join("c2", 999999, "t")
        assert len(stub_sdk.instances) == 1 and len(stub_sdk.instances[0].connections) == 2
        await one.leave()
        await two.leave()

    def test_missing_sdk_says_how_to_install_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the package, sdk() raises AgoraUnavailable naming the extra."""
        monkeypatch.setitem(sys.modules, "agora", None)
        with pytest.raises(AgoraUnavailable, match=r"memharbor\[agora\]"):
            agora_channel.sdk()


class TestSessionOverAgora:
    """A whole session with the adapter: SDK frames become a WAV."""

    async def test_sdk_frames_are_recorded(self, stub_sdk: type[AgoraService], tmp_path: Path) -> None:
        """The participant's 0.5 s of 1000 Hz from the SDK thread is in the file; idle stops it."""

        class Hooks:
            async def started(self, plan: SessionPlan, filename: str, started_at: datetime) -> bool:
                return True

            async def stopping(self, plan: SessionPlan, reason: str) -> None:
                return None

        session = RecordingSession(
            SessionPlan("s", "c", "w"),
            AgoraChannel("a" * 32),
            RecordingDir(tmp_path),
            SessionClock(),
            SessionConfig(idle_s=0.3),
            lambda c, u, t: "tok",
            Hooks(),
        )
        segment = await session.run()
        x = np.frombuffer(wav.read_pcm(tmp_path / segment.mix.filename)[1], dtype="<i2")
        assert segment.stop_reason == "idle" and segment.frames == 50
        loud = np.nonzero(x)[0]
        assert loud[-1] + 1 - loud[0] <= 8000 <= len(x) <= 8000 + 5 * 160  # 50 frames end to end, not piled up
        x = x[loud[0] : loud[0] + 8000]
        assert 16000 <= int(np.abs(x).max()) <= 16384  # the tone's own amplitude: nothing summed twice
        spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
        assert spectrum[500] / spectrum.sum() > 0.9  # bin 500 of a 0.5 s window is 1000 Hz
