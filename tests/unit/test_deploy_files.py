"""The deployment files agree with the code: compose.yaml, .env.example and the Dockerfile's layer order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from memharbor import cli
from memharbor.settings import SettingsError, http_settings, recorder_settings, watcher_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
ENV_EXAMPLE = (REPO / ".env.example").read_text()
DOCKERFILE = (REPO / "Dockerfile").read_text()
# Every variable settings.py reads is a quoted upper-case name in it (the one reader of the environment).
SETTINGS_NAMES = set(re.findall(r'"([A-Z][A-Z0-9]*_[A-Z0-9_]+)"', (REPO / "memharbor" / "settings.py").read_text()))
# Valid values, used to find which variables a production process cannot start without.
VALID = {"FIREBASE_PROJECT_ID": "demo-deploy", "AGORA_APP_ID": "a" * 32, "AGORA_APP_CERT": "b" * 32}


def _active(text: str) -> dict[str, str]:
    """NAME=value lines that are not comments."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def _mentioned(text: str) -> set[str]:
    """Every NAME= in the file, commented out or not."""
    return set(re.findall(r"(?:^|[#\s])([A-Z][A-Z0-9]*_[A-Z0-9_]+)=", text, flags=re.MULTILINE))


def _required() -> set[str]:
    """The variables without which some production process refuses to start, found by trying."""
    values: dict[str, str] = {}
    required: set[str] = set()
    for _ in range(len(VALID) + 1):
        try:
            http_settings(values).require_agora()
            watcher_settings(values)
            recorder_settings(values).require_agora()
        except SettingsError as exc:
            required.add(exc.name)
            values[exc.name] = VALID[exc.name]
            continue
        return required
    raise AssertionError(f"settings kept failing: {required}")


class TestCompose:
    """compose.yaml: the seed's production setup, from the one image."""

    def test_three_services_from_one_image(self) -> None:
        """http, watcher and recorder each build the Dockerfile into the same image, with .env."""
        services = COMPOSE["services"]
        assert set(services) == {"http", "watcher", "recorder"}
        for service in services.values():
            assert service["build"] == "." and service["image"] == "memharbor:latest"
            assert service["env_file"] == ".env"
            assert service["restart"] in {"always", "unless-stopped"}

    def test_commands_are_memharbor_subcommands(self) -> None:
        """Each service's command is its own name and a subcommand the CLI really has."""
        for name, service in COMPOSE["services"].items():
            assert service["command"] == [name]
            assert name in cli.RUNNERS

    def test_recordings_volume_is_mounted_at_recordings_dir(self) -> None:
        """The named recordings volume is the recorder's RECORDINGS_DIR, as the image sets it."""
        assert "recordings" in COMPOSE["volumes"]
        image_dir = re.search(r"RECORDINGS_DIR=(\S+)", DOCKERFILE)
        assert image_dir is not None
        assert COMPOSE["services"]["recorder"]["volumes"] == [f"recordings:{image_dir.group(1)}"]

    def test_grace_periods_cover_the_drains(self) -> None:
        """stop_grace_period exceeds each drain: token_http 10 s, the watcher 10 s, the recorder's default 60 s."""

        def seconds(service: str) -> int:
            value = COMPOSE["services"][service]["stop_grace_period"]
            assert value.endswith("s")
            return int(value[:-1])

        recorder_drain = recorder_settings(VALID).drain_s
        assert seconds("http") > 10 and seconds("watcher") > 10
        assert seconds("recorder") > recorder_drain

    def test_each_service_checks_its_own_livez(self) -> None:
        """http's healthcheck asks /livez on its port (not Firestore); each worker its /livez on its metrics port."""
        services = COMPOSE["services"]
        test = " ".join(services["http"]["healthcheck"]["test"])
        port = http_settings(VALID).port
        assert f"127.0.0.1:{port}/livez" in test and services["http"]["ports"] == [f"{port}:{port}"]
        for name in ("watcher", "recorder"):
            metrics_port = services[name]["environment"]["MEMHARBOR_METRICS_PORT"]
            assert f"127.0.0.1:{metrics_port}/livez" in " ".join(services[name]["healthcheck"]["test"]), name


class TestEnvExample:
    """.env.example lists what settings reads, and every required variable."""

    def test_every_name_is_read_by_settings(self) -> None:
        """No variable in .env.example (set or commented out) is one that settings does not read."""
        mentioned = _mentioned(ENV_EXAMPLE)
        assert mentioned, "no NAME= lines found"
        assert mentioned - SETTINGS_NAMES == set()

    def test_required_variables_are_set(self) -> None:
        """Every variable a production process cannot start without is an active line."""
        required = _required()
        assert required == {"FIREBASE_PROJECT_ID", "AGORA_APP_ID", "AGORA_APP_CERT"}
        assert required <= set(_active(ENV_EXAMPLE))

    def test_every_setting_is_listed(self) -> None:
        """Every variable settings reads appears in .env.example, so an operator sees them all in one place."""
        assert SETTINGS_NAMES - _mentioned(ENV_EXAMPLE) == set()

    def test_secrets_are_placeholders(self) -> None:
        """The Agora credentials in the example are not valid values, so a forgotten one stops start-up."""
        values = _active(ENV_EXAMPLE)
        with pytest.raises(SettingsError) as caught:
            http_settings(values)
        assert caught.value.name == "AGORA_APP_ID"
        assert values["FIREBASE_USE_EMULATOR"] == "0"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


class TestDockerfile:
    """Dependencies are a layer of their own, built from pyproject.toml before any code is copied."""

    def test_dependencies_before_code(self) -> None:
        """Only pyproject.toml is copied before the dependency install; the code comes after it."""
        steps = _instructions(DOCKERFILE)
        deps = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install -r" in args)
        project = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install --no-deps ." in args)
        copies = [(i, args.split()[0]) for i, (op, args) in enumerate(steps) if op == "COPY"]
        assert [source for i, source in copies if i < deps] == ["pyproject.toml"]
        copied_after = {source for i, source in copies if deps < i < project}
        assert {"README.md", "memharbor", "watcher", "token_http", "recorder"} <= copied_after
        assert "tomllib" in steps[deps][1] and "optional-dependencies" in steps[deps][1]

    def test_entrypoint_and_default_command(self) -> None:
        """The image runs `memharbor`, `http` unless told otherwise, as a non-root user."""
        steps = dict(_instructions(DOCKERFILE))
        assert steps["ENTRYPOINT"] == '["memharbor"]' and steps["CMD"] == '["http"]'
        assert steps["USER"] not in {"root", "0"}

    def test_dockerignore_keeps_the_context_to_the_install(self) -> None:
        """.dockerignore excludes everything but what the Dockerfile copies (no .venv, .git or .env)."""
        lines = [
            line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")
        ]
        assert lines[0] == "*"
        allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        copied = {args.split()[0] for op, args in _instructions(DOCKERFILE) if op == "COPY"}
        assert allowed == copied
