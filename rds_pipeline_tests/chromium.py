"""The Dagster UI in Debian's headless Chromium (through Debian's chromedriver: the same version, nothing
downloaded), for the UI test and `make screenshots`."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1600, 1000
FIRST_VISIT_DIALOG_SECONDS = 10


def available() -> bool:
    return Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER) is not None


@contextmanager
def chromium(width: int = WIDTH, height: int = HEIGHT) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        driver.set_window_size(width, height)
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, found: Callable[[WebDriver], object], what: str, seconds: float = 60) -> object:
    """Poll ``found`` until it returns something truthy (bounded), re-raising nothing but a timeout that names
    what was awaited."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = found(driver)
            if value:
                return value
        except WebDriverException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Dagster UI never showed {what} within {seconds:.0f} s (at {driver.current_url})")
        time.sleep(0.5)


def dismiss_first_visit_dialog(driver: WebDriver) -> bool:
    """Dagster's first visit opens "Join the Dagster community": skip it (once per browser profile)."""
    for dialog in driver.find_elements(By.CSS_SELECTOR, "[role=dialog]"):
        for button in dialog.find_elements(By.TAG_NAME, "button"):
            if button.text.strip() in ("Skip", "Dismiss", "Close", "Got it"):
                button.click()
                wait_for(
                    driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "[role=dialog]"), "the dialog closed", 10
                )
                return True
    return False


def open_page(driver: WebDriver, url: str, ready: Callable[[WebDriver], object], what: str) -> None:
    """Open ``url``, skip the first-visit dialog whenever it shows, and wait until ``ready``."""
    driver.get(url)
    wait_for(driver, lambda d: d.find_elements(By.TAG_NAME, "nav") or d.find_elements(By.TAG_NAME, "main"), "the page")

    wait_for(driver, ready, what)
    if not getattr(driver, "_rds_dialog_skipped", False):  # it opens a moment after the first page
        deadline = time.monotonic() + FIRST_VISIT_DIALOG_SECONDS
        while time.monotonic() < deadline and not dismiss_first_visit_dialog(driver):
            time.sleep(0.5)
        driver._rds_dialog_skipped = True  # type: ignore[attr-defined]  # Dagster remembers it was skipped
    dismiss_first_visit_dialog(driver)
    time.sleep(1.5)  # let the graph's layout animation finish before anyone looks


def body_text(driver: WebDriver) -> str:
    return str(driver.execute_script("return document.body.innerText"))
