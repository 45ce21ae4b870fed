"""The web view in a real browser: headless Chromium (Debian's ``chromium``, which
``bash .ci/run`` installs) driven by Playwright. A file dropped shows up as COMPLETE
without a reload; a failed file's page shows its errors; with actions on, "retry"
puts the file back into inbox/. With ``BULKDROP_SCREENSHOT=path.png`` it also saves the
screenshot the README shows."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, free_port, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (bash .ci/run installs it)")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to run as root (CI runs as root).
        launched = await pw.chromium.launch(executable_path=CHROMIUM,
                                            args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def open_view(make_settings, run_daemon, browser: Browser,
                    **overrides: Any) -> tuple[Page, str, Any]:
    port = free_port()
    daemon = await run_daemon(make_settings(http__listen=f"127.0.0.1:{port}", **overrides))
    page = await browser.new_page(viewport={"width": 1200, "height": 1000})
    base = f"http://127.0.0.1:{port}"
    await page.goto(base + "/")
    return page, base, daemon


async def test_a_dropped_file_appears_complete_without_a_reload(
        make_settings, run_daemon, sim: SimServer, spool_root: Path,
        browser: Browser) -> None:
    page, _base, _daemon = await open_view(make_settings, run_daemon, browser)
    # the API is asked once someone watches: "not asked yet", then "ready"
    await expect(page.locator("#instances")).to_contain_text("default ready",
                                                             timeout=15_000)
    await page.evaluate("window.notReloaded = true")
    drop(spool_root, "contact/people.csv", contacts_csv(3))
    drop(spool_root, "contact/some-bad.csv", contacts_csv(6, tag="s", bad_every=3))
    row = page.locator("#latest tr", has_text="contact/people.csv")
    await expect(row).to_contain_text("COMPLETE", timeout=20_000)
    await expect(row).to_contain_text("3")
    partial = page.locator("#latest tr", has_text="contact/some-bad.csv")
    await expect(partial).to_contain_text("partial", timeout=20_000)
    await expect(page.locator("#today-complete")).to_have_text("1")
    await expect(page.locator("#today-partial")).to_have_text("1")
    assert await page.evaluate("window.notReloaded") is True, "updated in place"
    assert await page.locator("#chart rect.files").count() >= 1
    shot = os.environ.get("BULKDROP_SCREENSHOT")
    if shot:
        await page.screenshot(path=shot, full_page=True)


async def test_a_failed_files_page_shows_its_errors(make_settings, run_daemon, sim: SimServer,
                                                    spool_root: Path, browser: Browser) -> None:
    page, _base, _daemon = await open_view(make_settings, run_daemon, browser)
    drop(spool_root, "contact/bad.csv", "email,first_name\nnope,Ann\nnever,Bob\n")
    link = page.locator("#latest a", has_text="contact/bad.csv")
    await expect(link).to_be_visible(timeout=20_000)
    await link.click()
    await expect(page.locator("h1")).to_contain_text("contact/bad.csv")
    errors = page.locator("#errors tr")
    await expect(errors).to_have_count(2)
    await expect(errors.first).to_contain_text("Invalid email address 'nope'")
    await expect(page.locator("a", has_text="failed.csv")).to_be_visible()
    await expect(page.locator("form")).to_have_count(0)


async def test_retry_puts_a_failed_file_back_into_the_inbox(
        make_settings, run_daemon, sim: SimServer, spool_root: Path,
        browser: Browser) -> None:
    page, _base, daemon = await open_view(make_settings, run_daemon, browser,
                                          http__actions=True)
    sim.sim.config.job_outcome = "ERROR"  # every job ends badly, the file in failed/
    drop(spool_root, "contact/retry-me.csv", contacts_csv(2))
    link = page.locator("#latest a", has_text="contact/retry-me.csv")
    await expect(link).to_be_visible(timeout=20_000)
    await link.click()
    sim.sim.config.job_outcome = None  # the API is well again
    await page.locator("button#retry").click()
    await expect(page.locator("#note")).to_contain_text("Moved back into inbox/")
    # Claimed again from inbox/ as a new file, and this time it completes.
    await wait_for(lambda: daemon.filer.counts["COMPLETE"] == 1, what="the retried file done")
    assert (spool_root / "done" / "contact" / "retry-me.csv").exists()
    assert not (spool_root / "failed" / "contact" / "retry-me.csv").exists()
