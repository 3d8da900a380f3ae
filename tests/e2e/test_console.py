"""The web console in headless Chromium against a real `memharbor dev` stack: the demo panel's whole call.

Debian's chromium and chromedriver (installed by .ci/run), driven by Selenium; nothing is downloaded. The
screenshots of each view go to MEMHARBOR_CONSOLE_SCREENSHOTS (`make console-screenshots`: docs/), else
to the test's temporary directory.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from memharbor import dev
from tests.support.dev_stack import DevStack, dev_stack

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The closed network makes Chromium's background services hang start-up; none of them is needed.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
)
T = TypeVar("T")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """The whole local stack, as `make run` starts it, on free ports."""
    with dev_stack(tmp_path_factory.mktemp("dev")) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots are saved."""
    folder = Path(os.environ.get("MEMHARBOR_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def until(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def text(driver: WebDriver, element_id: str) -> str:
    """The visible text of the element with this id."""
    return str(driver.find_element(By.ID, element_id).text)


def shows(driver: WebDriver, element_id: str, expected: str) -> Callable[[], bool]:
    """A probe: the element's text equals `expected`."""
    return lambda: text(driver, element_id) == expected


def errors(driver: WebDriver) -> str:
    """What the page's error box says."""
    return text(driver, "errors")


def open_view(driver: WebDriver, view: str) -> Any:
    """Click the tab of `view` and return its section."""
    driver.find_element(By.CSS_SELECTOR, f'#tabs button[data-view="{view}"]').click()
    return driver.find_element(By.ID, f"view-{view}")


class TestDemoPanel:
    """The demo panel runs a recorded call from ring to playback, and each admin view shows it."""

    def test_recorded_call_from_ring_to_playback(self, stack: DevStack, browser: WebDriver, shots: Path) -> None:
        """Sign in, place, ring, accept, record, end and play; the admin views list the call, its timeline,
        the workers and the recording."""
        caller, receiver = dev.DEMO_ACCOUNTS[0], dev.DEMO_ACCOUNTS[1]
        browser.get(f"{stack.http}/console")
        until(lambda: browser.find_element(By.ID, "email").get_attribute("value"), "the demo admin's email")
        browser.find_element(By.ID, "signin-button").click()
        until(lambda: not browser.find_element(By.ID, "place-call").get_attribute("disabled"), "signed in")
        assert text(browser, "who") == "signed in as admin@demo.memharbor.test"
        assert caller.uid in text(browser, "caller") and receiver.uid in text(browser, "receiver")

        browser.find_element(By.ID, "place-call").click()
        until(lambda: browser.find_element(By.ID, "ringing").is_displayed(), "the receiver's phone ringing")
        call_id = text(browser, "caller-call")
        assert text(browser, "ringing") == f"Incoming call from {caller.display_name}"
        assert text(browser, "caller-status") == "pending"
        assert text(browser, "caller-channel").startswith(f"{dev.DEMO_GROUP_ID}_")
        assert text(browser, "caller-push") == "sent (android)"
        device = dev.DEMO_DEVICES[receiver.uid][0]
        until(shows(browser, "receiver-push", f"{device} (android): sent"), "the device's push record")
        browser.save_screenshot(str(shots / "console-demo-ringing.png"))

        browser.find_element(By.ID, "accept").click()
        until(shows(browser, "caller-status", "accepted"), "the call accepted")
        assert not browser.find_element(By.ID, "ringing").is_displayed()
        until(shows(browser, "demo-recording-status", "recording"), "the recording started", timeout=30)
        time.sleep(1.5)  # a second or so of (simulated) audio
        browser.find_element(By.ID, "caller-end").click()
        until(shows(browser, "caller-status", "ended"), "the call ended")
        until(shows(browser, "demo-recording-status", "stopped"), "the recording stopped", timeout=45)
        assert text(browser, "demo-recording-file").startswith("wav 16000 Hz, 1 channel(s), 16 bit, ")
        audio_id = f"audio-call-{call_id}"
        duration = until(
            lambda: browser.execute_script(f"return document.getElementById('{audio_id}')?.duration || 0"),
            "the player loaded the file",
        )
        assert float(duration) > 1.0
        assert browser.find_element(By.CSS_SELECTOR, "#demo-player canvas.waveform").size["height"] == 80
        browser.save_screenshot(str(shots / "console-demo-recorded.png"))

        calls = open_view(browser, "calls")
        until(lambda: call_id[:13] in calls.text, "the call in the live calls view")
        assert f"{device}: sent" in calls.text and "ended" in calls.text
        browser.save_screenshot(str(shots / "console-calls.png"))

        calls.find_element(By.XPATH, f'.//td[@title="{call_id}"]').click()
        timeline = browser.find_element(By.ID, "view-timeline")
        until(lambda: "push.sent" in timeline.text, "the call's timeline")
        for kind in ("call.seen", "channel.assigned", "recording.requested", "recording.uploaded"):
            assert kind in timeline.text
        browser.save_screenshot(str(shots / "console-timeline.png"))

        workers = open_view(browser, "workers")
        until(lambda: "watcher" in workers.text and "recorder" in workers.text, "both workers")
        assert workers.text.count("alive") >= 2
        browser.save_screenshot(str(shots / "console-workers.png"))

        problems = open_view(browser, "problems")
        until(lambda: "no push errors or violations" in problems.text, "the problems view")
        browser.save_screenshot(str(shots / "console-problems.png"))

        recordings = open_view(browser, "recordings")
        until(lambda: f"call-{call_id}" in recordings.text, "the recording listed")
        assert "wav 16000 Hz 1ch 16-bit" in recordings.text
        recordings.find_element(By.XPATH, f'.//tr[td[text()="call-{call_id}"]]//button').click()
        until(lambda: browser.find_elements(By.CSS_SELECTOR, "#recordings-player audio"), "the player")
        browser.save_screenshot(str(shots / "console-recordings.png"))
        assert errors(browser) == ""

    def test_refused_write_is_shown(self, stack: DevStack, browser: WebDriver) -> None:
        """A write the rules refuse (answering as the caller) shows permission-denied in the page."""
        browser.get(f"{stack.http}/console")
        until(lambda: browser.find_element(By.ID, "email").get_attribute("value"), "the demo admin's email")
        browser.find_element(By.ID, "signin-button").click()
        until(lambda: not browser.find_element(By.ID, "place-call").get_attribute("disabled"), "signed in")
        browser.find_element(By.ID, "place-call").click()
        until(lambda: browser.find_element(By.ID, "ringing").is_displayed(), "ringing")
        # The caller may not accept its own call: the page's receiver acts with the caller's token here.
        browser.execute_script("state.receiver = state.caller; document.getElementById('accept').click();")
        until(lambda: "permission-denied" in errors(browser), "the refusal shown")
        assert "caregiver@demo.memharbor.test writing calls/" in errors(browser)
