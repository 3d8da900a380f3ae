"""firebase.json as the one source of truth: its loader, the emulators' rules, `memharbor dev`'s ports."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memharbor import dev, emulators, firebase_project
from memharbor.emulators import free_port, port_in_use
from memharbor.firebase_project import FirebaseProject, FirebaseProjectError
from memharbor.settings import SettingsError, stack_settings

REPO = Path(__file__).resolve().parents[2]
RAW = json.loads((REPO / "firebase.json").read_text())


def _write(tmp_path: Path, data: Any) -> Path:
    """A firebase.json in `tmp_path` with its own copy of the rule files, holding `data`."""
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    for name in ("firestore.rules", "storage.rules", "firestore.indexes.json"):
        (rules / name).write_text((REPO / "rules" / name).read_text())
    path = tmp_path / "firebase.json"
    path.write_text(json.dumps(data))
    return path


def _with_port(name: str, port: object) -> dict[str, Any]:
    data = json.loads(json.dumps(RAW))
    data["emulators"][name]["port"] = port
    return data


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port something listens on for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _dev_settings(**values: str) -> Any:
    return stack_settings({**dev.dev_defaults(firebase_project.load()), **values})


class TestLoad:
    """Reading and checking firebase.json."""

    def test_repository_file_matches_the_firebase_cli_layout(self) -> None:
        """The repository's firebase.json loads, and its typed view equals what the raw JSON says."""
        project = firebase_project.load()
        assert project.firestore_rules == (REPO / RAW["firestore"]["rules"]).resolve()
        assert project.firestore_indexes == (REPO / RAW["firestore"]["indexes"]).resolve()
        assert project.storage_rules == (REPO / RAW["storage"]["rules"]).resolve()
        for name in ("firestore", "storage", "auth"):
            assert getattr(project, name).port == RAW["emulators"][name]["port"]
        assert RAW["emulators"]["ui"] == {"enabled": False}
        assert RAW["emulators"]["singleProjectMode"] is True

    def test_named_rule_and_index_files_exist(self) -> None:
        """Every rules or indexes path in firebase.json is an existing file under rules/."""
        project = firebase_project.load()
        for file in (project.firestore_rules, project.firestore_indexes, project.storage_rules):
            assert file.is_file() and file.parent == REPO / "rules"
        assert project.relative(project.firestore_rules) == "rules/firestore.rules"

    def test_paths_are_relative_to_the_file(self, tmp_path: Path) -> None:
        """A firebase.json elsewhere resolves its paths against its own folder, not the working directory."""
        project = firebase_project.load(_write(tmp_path, RAW))
        assert project.firestore_rules == (tmp_path / "rules" / "firestore.rules").resolve()

    def test_missing_rules_file_is_named(self, tmp_path: Path) -> None:
        """A rules path that does not exist fails naming the key, the path and the firebase.json."""
        data = json.loads(json.dumps(RAW))
        data["storage"]["rules"] = "rules/nope.rules"
        path = _write(tmp_path, data)
        with pytest.raises(FirebaseProjectError) as caught:
            firebase_project.load(path)
        assert caught.value.name == "storage.rules"
        assert "rules/nope.rules" in str(caught.value) and str(path) in str(caught.value)

    @pytest.mark.parametrize("port", [0, 70000, "8080", True, None])
    def test_bad_port_is_named(self, tmp_path: Path, port: object) -> None:
        """A port that is not an integer in 1..65535 fails naming emulators.<name>.port."""
        with pytest.raises(FirebaseProjectError) as caught:
            firebase_project.load(_write(tmp_path, _with_port("storage", port)))
        assert caught.value.name == "emulators.storage.port"

    def test_missing_or_broken_file_is_a_settings_error(self, tmp_path: Path) -> None:
        """No file and no JSON both raise a SettingsError (one line from the CLI) naming the path."""
        with pytest.raises(SettingsError, match="cannot be read"):
            firebase_project.load(tmp_path / "firebase.json")
        (tmp_path / "firebase.json").write_text("{not json")
        with pytest.raises(SettingsError, match="is not JSON"):
            firebase_project.load(tmp_path / "firebase.json")


class TestEmulatorRules:
    """The emulators enforce the rules firebase.json names, the ones `firebase deploy` ships."""

    def test_default_rules_come_from_firebase_json(self) -> None:
        """default_rules() is firebase.json's firestore.rules, and the emulator's command line loads it."""
        rules = emulators.default_rules()
        assert rules == (REPO / RAW["firestore"]["rules"]).resolve()
        argv = emulators.firestore_emulator().argv
        assert argv[argv.index("--rules") + 1] == str(rules)

    def test_test_harness_keeps_free_ports(self) -> None:
        """EmulatorSet.create without ports (the test fixtures) picks free ports, not firebase.json's."""
        project = firebase_project.load()
        described = emulators.EmulatorSet.create("demo-ports")
        assert described.firestore.port != project.firestore.port
        assert described.storage.port != project.storage.port
        argv = described.firestore.argv
        assert argv[argv.index("--rules") + 1] == str(project.firestore_rules)


class TestDevPorts:
    """`memharbor dev` listens where firebase.json says, and refuses a port that is taken."""

    def test_defaults_equal_firebase_json(self) -> None:
        """Without overrides, dev's Firestore, Storage and Auth emulator addresses are firebase.json's."""
        settings = _dev_settings()
        ports = {port.what: port for port in dev.dev_ports(settings, firebase_project.load())}
        emulators_json = RAW["emulators"]
        assert ports["Firestore emulator"].port == emulators_json["firestore"]["port"]
        assert ports["Storage emulator"].port == emulators_json["storage"]["port"]
        assert ports["Firestore emulator"].host == emulators_json["firestore"]["host"]
        assert settings.http.firebase.auth_emulator_host == f"127.0.0.1:{emulators_json['auth']['port']}"
        assert ports["Firestore emulator"].setting == "emulators.firestore.port"

    def test_metrics_port_is_split_between_the_workers(self) -> None:
        """With MEMHARBOR_METRICS_PORT, the watcher gets it and the recorder the next port; without it, neither."""
        ports = dev.metrics_ports(_dev_settings(MEMHARBOR_METRICS_PORT="9100"))
        assert ports == {"watcher": {"MEMHARBOR_METRICS_PORT": "9100"}, "recorder": {"MEMHARBOR_METRICS_PORT": "9101"}}
        assert dev.metrics_ports(_dev_settings()) == {}

    def test_environment_moves_an_emulator(self) -> None:
        """FIRESTORE_EMULATOR_HOST and STORAGE_EMULATOR_HOST move the emulators for one run."""
        settings = _dev_settings(
            FIRESTORE_EMULATOR_HOST="127.0.0.1:18080", STORAGE_EMULATOR_HOST="http://127.0.0.1:19199"
        )
        firestore, storage, auth, http = dev.dev_ports(settings, firebase_project.load())
        assert (firestore.host, firestore.port, firestore.setting) == ("127.0.0.1", 18080, "FIRESTORE_EMULATOR_HOST")
        assert (auth.port, auth.setting) == (RAW["emulators"]["auth"]["port"], "emulators.auth.port")
        assert (storage.host, storage.port, storage.setting) == ("127.0.0.1", 19199, "FIREBASE_STORAGE_EMULATOR_HOST")
        assert http.port == settings.http.port

    def test_busy_firebase_json_port_names_port_and_file(self, tmp_path: Path, listening: int) -> None:
        """A firebase.json port something already listens on stops dev naming the port, the key and the file."""
        path = _write(tmp_path, _with_port("firestore", listening))
        project = firebase_project.load(path)
        with pytest.raises(dev.PortInUse) as caught:
            dev.check_ports(dev.dev_ports(_dev_settings(MEMHARBOR_HTTP_PORT=str(free_port())), project))
        message = str(caught.value)
        assert f"port {listening} on 127.0.0.1" in message and str(path) in message
        assert caught.value.name == "emulators.firestore.port" and "FIRESTORE_EMULATOR_HOST" in message

    def test_busy_http_port_is_refused_before_anything_starts(self, listening: int) -> None:
        """token_http's port taken is reported as MEMHARBOR_HTTP_PORT, not discovered by a dying child."""
        project = _free_project()
        settings = _dev_settings(MEMHARBOR_HTTP_PORT=str(listening), FIREBASE_AUTH_EMULATOR_HOST=project.auth.address)
        with pytest.raises(dev.PortInUse) as caught:
            dev.check_ports(dev.dev_ports(settings, project))
        assert caught.value.name == "MEMHARBOR_HTTP_PORT" and f"port {listening}" in str(caught.value)

    def test_free_ports_pass(self) -> None:
        """With every port free, the check lets dev start."""
        project = _free_project()
        settings = _dev_settings(MEMHARBOR_HTTP_PORT=str(free_port()), FIREBASE_AUTH_EMULATOR_HOST=project.auth.address)
        ports = dev.dev_ports(settings, project)
        dev.check_ports(ports)
        assert all(not port_in_use(port.host, port.port) for port in ports)


def _free_project() -> FirebaseProject:
    """The repository's project with every started emulator moved to free ports."""
    project = firebase_project.load()
    return FirebaseProject(
        path=project.path,
        firestore_rules=project.firestore_rules,
        firestore_indexes=project.firestore_indexes,
        storage_rules=project.storage_rules,
        firestore=firebase_project.EmulatorAddress("127.0.0.1", free_port()),
        storage=firebase_project.EmulatorAddress("127.0.0.1", free_port()),
        auth=firebase_project.EmulatorAddress("127.0.0.1", free_port()),
    )


class TestPortInUse:
    """port_in_use tells a listened-on port from a free one."""

    def test_listening_and_free(self, listening: int) -> None:
        """A listening socket's port is in use; a fresh free port is not."""
        assert port_in_use("127.0.0.1", listening)
        assert not port_in_use("127.0.0.1", free_port())
