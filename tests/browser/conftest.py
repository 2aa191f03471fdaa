"""The chat page in a real browser: Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver.

No browser is downloaded: ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(``CHROMIUM`` and ``CHROMEDRIVER`` override them) come from Debian's packages,
which ``make test`` installs when they are missing; Selenium Manager is kept
offline. (Playwright's synchronous API was tried first: it keeps an asyncio
loop running in the test's thread, which the suite's async fixtures and
Django's async-safety check then trip over.) The page is served by a live
uvicorn on the test database, with the session's workers of ``echo`` and
``slow`` (simulated engines) behind it; every test logs in through the login
page in a new browser with a fresh profile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, WorkerProcess, worker_env, worker_running
from tests.openai_api.conftest import ServerProcess, free_port, start_server

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
# The machine's network is closed: without these, Chromium's background services try
# to reach the internet and have connections refused many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What the live server refuses, small enough to type in a test.
MAX_MESSAGE_CHARS = 300
PASSWORD = "a passphrase for tests"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.worker)
            if missing:
                reason = (
                    f"no {' nor '.join(missing)} (make test installs Debian's chromium and chromium-driver)"
                )
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def slow_worker(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The session's worker for model ``slow``: answers of 1.6 to 4.8 s, one token a delta."""
    with worker_running(django_db_blocker, "slow", tmp_path_factory.mktemp("worker") / "slow.log") as worker:
        yield worker


class ChatServer:
    """The live web server of the browser tests, which a test may restart on the same port."""

    ENV = {"API_KEY_CACHE_SECONDS": "0", "LLM_MAX_MESSAGE_CHARS": str(MAX_MESSAGE_CHARS)}

    def __init__(self, django_db_blocker: Any, log_dir: Path) -> None:
        self.django_db_blocker = django_db_blocker
        self.log_dir = log_dir
        self.starts = 0
        self.process: ServerProcess = self._start(port=None)

    def _start(self, port: int | None) -> ServerProcess:
        self.starts += 1
        log = self.log_dir / f"uvicorn-{self.starts}.log"
        port = port or free_port()
        # PORT: the page's own origin is the one allowed to open WebSockets with a session.
        return start_server(self.django_db_blocker, log, port=port, PORT=str(port), **self.ENV)

    @property
    def url(self) -> str:
        return self.process.root_url

    def stop(self) -> None:
        self.process.stop()

    def start_again(self) -> None:
        self.process = self._start(port=self.process.port)


@pytest.fixture(scope="session")
def chat_server(
    django_db_setup: None,
    django_db_blocker: Any,
    echo_worker: WorkerProcess,
    slow_worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChatServer]:
    # The server serves static files from STATIC_ROOT, as in production (make run
    # collects them too).
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "collectstatic", "--noinput", "-v0"],
        env=worker_env(),
        cwd=ROOT,
        check=True,
    )
    server = ChatServer(django_db_blocker, tmp_path_factory.mktemp("chat-server"))
    try:
        yield server
    finally:
        server.stop()


class Browser:
    """One headless Chromium (a fresh profile), with the waits and looks the tests need."""

    def __init__(self, base_url: str, *, width: int = 1280, height: int = 900) -> None:
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager downloads nothing
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base_url = base_url
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in [
            *CHROMIUM_ARGS,
            f"--user-data-dir={self.profile.name}",
            f"--window-size={width},{height}",
        ]:
            options.add_argument(arg)
        # A dialog opened by the page stays open, for the test to see (XSS checks).
        options.set_capability("unhandledPromptBehavior", "ignore")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        self.driver.implicitly_wait(0)
        if width < 500:  # narrower than a desktop window gets: a phone's screen
            self.driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True},
            )

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self.profile.cleanup()

    def visit(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.base_url)

    def wait(self, predicate: Callable[[], Any], *, timeout: float = 15, message: str = "") -> Any:
        """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except (NoSuchElementException, StaleElementReferenceException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s: {message or predicate}")
            time.sleep(0.05)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(self, css: str, *, timeout: float = 15) -> Any:
        return self.wait(lambda: self.find(css), timeout=timeout, message=css)

    def button(self, name: str, *, within: Any = None) -> Any:
        """The visible button whose accessible name (its aria-label, else its text) is ``name``."""
        from selenium.webdriver.common.by import By

        scope = within or self.driver
        for button in scope.find_elements(By.CSS_SELECTOR, "button"):
            label = button.get_attribute("aria-label") or button.text
            if label.strip() == name and button.is_displayed():
                return button
        raise AssertionError(f"no visible button named {name!r}")

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def dialog_opened(self) -> str | None:
        """The text of a dialog (alert, confirm, prompt) the page opened, if one is open."""
        from selenium.common.exceptions import NoAlertPresentException

        try:
            return self.driver.switch_to.alert.text
        except NoAlertPresentException:
            return None

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def log_in(self, user: Any, *, password: str = PASSWORD) -> None:
        """Through the login page, as a person would: ``/`` sends there and back."""
        self.visit("/")
        self.wait(lambda: self.path.startswith("/accounts/login/"), message="the login page")
        self.find("#id_username").send_keys(user.username)
        self.find("#id_password").send_keys(password)
        self.button("Log in").click()
        self.wait(lambda: self.path == "/", message="the chat page after logging in")
        self.wait_for("#model option")


@pytest.fixture
def make_person(db: None) -> Callable[..., Any]:
    """``make_person()``: a user who logs in with ``PASSWORD`` (factory users have none stored)."""
    from django.contrib.auth import get_user_model

    made = iter(range(1, 1000))

    def make(username: str | None = None) -> Any:
        return get_user_model().objects.create_user(username or f"person{next(made)}", password=PASSWORD)

    return make


@pytest.fixture
def open_browser(chat_server: ChatServer) -> Iterator[Callable[..., Browser]]:
    """``open_browser()``: a new headless Chromium on the chat server; closed after the test."""
    browsers: list[Browser] = []

    def open_one(**size: int) -> Browser:
        browser = Browser(chat_server.url, **size)
        browsers.append(browser)
        return browser

    yield open_one
    for browser in browsers:
        browser.close()


@pytest.fixture
def log_in(open_browser: Callable[..., Browser]) -> Callable[..., Browser]:
    """``log_in(user)``: a new browser, logged in as ``user`` through the login page."""

    def open_logged_in(user: Any, **size: int) -> Browser:
        browser = open_browser(**size)
        browser.log_in(user)
        return browser

    return open_logged_in
