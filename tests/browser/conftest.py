"""Headless Chromium (Debian ``chromium`` + ``chromium-driver``) logged in to an Orthanc, for the browser tests."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.orthanc import OrthancProcess
from tests.conftest import need

COMMON_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@contextmanager
def chromium(orthanc: OrthancProcess, profile: Path, *flags: str, console_log: bool = False) -> Iterator[Any]:
    """A driver whose every request carries Orthanc's Basic auth header (credentials in the URL break
    Orthanc Explorer's page script: field notes), sent through the DevTools protocol."""
    need("chromium")
    need("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (*COMMON_FLAGS, *flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))
    token = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    try:
        yield driver
    finally:
        driver.quit()
