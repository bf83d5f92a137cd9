"""Headless Chromium (Debian's package) driven by Playwright, for looking at the web UI.

Playwright's own browser download is never used: the tests launch ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Without the networking flags Chromium keeps dialling hosts this sandbox cannot reach."""


def chromium_path() -> str:
    """Debian's chromium; a missing browser skips locally but fails in CI (which installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("install Debian's chromium package to run the web UI tests")
    return path


@asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    """A fresh page in headless Chromium with a laptop-sized viewport."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(20_000)
            yield page
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """Save the whole page under test-artifacts/ui/ for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
