"""The review desk in Debian's chromium through Playwright: log in with the token, approve one, reject one with
guidance, see the history; screenshots in test-output/review_desk/."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from portrait_pipeline.audit.models import APPROVED, REJECTED
from portrait_pipeline.defs.resources import DatabaseResource
from tests.dagster_dev import REPO_ROOT
from tests.test_review import assets_of
from tests.test_review_app import TOKEN, desk  # noqa: F401  (the fixture)
from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser]
OUTPUT_DIR = REPO_ROOT / "test-output" / "review_desk"


@pytest.fixture
def page() -> Iterator[Page]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        yield page
        browser.close()


def test_a_reviewer_logs_in_approves_one_rejects_one_and_reads_the_history(
    desk: str,  # noqa: F811
    page: Page,
    roster_loaded: DatabaseResource,
    database_url: str,
) -> None:
    _, pending = assets_of(roster_loaded, 1)
    (other,) = assets_of(roster_loaded, 2)
    page.goto(f"{desk}/")
    expect(page.get_by_text("log in with the review token")).to_be_visible()
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Pending review")).to_be_visible()
    expect(page.locator(".card")).to_have_count(2)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    backend = database_url.split(":", 1)[0]
    page.screenshot(path=str(OUTPUT_DIR / f"grid-{backend}.png"), full_page=True)

    page.locator(f'[data-asset="{pending.id}"]').get_by_role("button", name="Approve").click()
    expect(page.locator(".card")).to_have_count(1)
    card = page.locator(f'[data-asset="{other.id}"]')
    card.get_by_placeholder("reason").fill("hair too long")
    card.get_by_placeholder("guidance for the next prompt").fill("shorter hair")
    card.get_by_role("button", name="Reject").click()
    expect(page.get_by_text("Nothing is waiting.")).to_be_visible()

    assert assets_of(roster_loaded, 1)[1].review_status == APPROVED
    (rejected,) = assets_of(roster_loaded, 2)
    assert (rejected.review_status, rejected.guidance) == (REJECTED, "shorter hair")
    page.goto(f"{desk}/player/1")
    expect(page.get_by_text(f"{pending.id} (live)")).to_be_visible()
    expect(page.get_by_role("button", name="Promote")).to_have_count(1)
    page.screenshot(path=str(OUTPUT_DIR / f"history-{backend}.png"), full_page=True)
