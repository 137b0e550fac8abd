"""The Dagster UI in a real browser: `dagster dev` on the dev instance, driven through Debian's chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from portrait_pipeline.prompts import SYSTEM_PROMPT_VERSION
from tests.dagster_dev import (
    REPO_ROOT,
    DagsterProcess,
    Webserver,
    demo_players_of,
    free_port,
    prepare_app_database,
    project_env,
    started,
    wait_until,
)

# One worker runs them all (`make test` runs pytest-xdist with --dist loadgroup): one `dagster dev` for the module.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("dagster-dev")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Screenshots stay after the run (gitignored), for a person or a CI artifact to look at.
OUTPUT_DIR = REPO_ROOT / "test-output" / "ui_browser"

RUNS_OF_PARTITION_QUERY = """
query RunsOfPartition($partition: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $partition}]}) {
    __typename
    ... on Runs { results { runId status } }
  }
}
"""


@dataclass
class DevServer:
    """A running `dagster dev` and the folder its runs write images to."""

    web: Webserver
    process: DagsterProcess
    image_dir: Path

    @property
    def url(self) -> str:
        return self.web.url

    def runs_of(self, partition: str) -> list[dict[str, str]]:
        runs: list[dict[str, str]] = self.web.graphql(RUNS_OF_PARTITION_QUERY, {"partition": partition})["runsOrError"][
            "results"
        ]
        return runs


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """`dagster dev` on a temp dev instance, with a migrated SQLite app database holding the demo roster."""
    root = tmp_path_factory.mktemp("dagster_dev")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.dev.yaml", home / "dagster.yaml")
    env = project_env(
        DAGSTER_HOME=str(home),
        DATABASE_URL=f"sqlite:///{root / 'portraits.db'}",
        IMAGE_LOCAL_DIR=str(root / "images"),
        PORTRAIT_RENDERER="offline",
    )
    prepare_app_database(env)
    port = free_port()
    command = ["dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]
    with started("dagster-dev", command, env, root) as process:
        web = Webserver(port)
        wait_until("dagster dev to load the code location", web.location_loaded, 90, [process])
        web.graphql("mutation { setNuxSeen }")  # else a community sign-up dialog covers the first page
        yield DevServer(web=web, process=process, image_dir=root / "images")
    assert not process.leftovers(), f"dagster dev left processes behind: {process.leftovers()}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    screenshot(page, f"{request.node.name}-last")  # where the test ended, pass or fail
    context.close()


def screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    print(f"screenshot: {path}")
    return path


def pick_partition(page: Page, key: str) -> None:
    """Open the first dimension still empty in the launch dialog and tick `key` in its list."""
    page.get_by_text("Select a partition or create one").first.click()
    page.get_by_title(key, exact=True).click()
    page.keyboard.press("Escape")


def test_materialize_a_partition_from_the_asset_page(dev_server: DevServer, page: Page) -> None:
    page.goto(f"{dev_server.url}/assets/player_portraits")
    page.get_by_role("button", name="Materialize…").click()
    # Dagster asks first when an upstream asset (likeness_descriptions) was never materialized.
    confirm = page.get_by_role("button", name="Confirm")
    expect(confirm.or_(page.get_by_text("Partition selection"))).to_be_visible()
    if confirm.is_visible():
        confirm.click()

    pick_partition(page, "2025")
    pick_partition(page, "vector")
    expect(page.get_by_role("dialog").get_by_text("1 partition", exact=True)).to_be_visible()
    page.get_by_role("button", name="Launch 1 run").click()
    expect(page.get_by_text("Launched run")).to_be_visible()

    runs = wait_until(
        "the UI's run to be recorded", lambda: dev_server.runs_of("2025|vector"), 15, [dev_server.process]
    )
    assert len(runs) == 1
    status = dev_server.web.wait_for_run(runs[0]["runId"], 90, [dev_server.process])
    assert status == "SUCCESS", dev_server.process.log_tail()

    images = sorted((dev_server.image_dir / "players").glob("*_vector.png"))
    assert len(images) == demo_players_of("2025")
    assert all(image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for image in images)

    page.reload()
    expect(page.get_by_text("2025|vector")).to_be_visible()  # the latest materialization's partition
    prompt_version = page.get_by_role("row").filter(has=page.get_by_role("cell", name="prompt_version", exact=True))
    expect(prompt_version).to_contain_text(SYSTEM_PROMPT_VERSION)
    screenshot(page, "player_portraits_materialized")

    preview = page.get_by_role("row").filter(has=page.get_by_role("cell", name="preview", exact=True))
    preview.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator("img[src^='data:image/png;base64,']")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.naturalWidth") > 0, "the preview's data URL does not decode to an image"
    screenshot(page, "player_portraits_preview", full_page=False)


def test_automation_page_lists_the_sensor_and_schedules(dev_server: DevServer, page: Page) -> None:
    page.goto(f"{dev_server.url}/overview")
    page.get_by_role("navigation").get_by_role("link", name="Automation").click()
    expect(page).to_have_url(f"{dev_server.url}/automation")
    for name in ("new_prospects_sensor", "batch_collector_sensor", "draft_class_backfill", "nba_refresh"):
        expect(page.get_by_text(name, exact=True)).to_be_visible()
    # Rows load their details after the names: the sensors say what they are, the schedules their cron.
    expect(page.get_by_text("Standard sensor")).to_have_count(2)
    expect(page.get_by_text("Scheduled").first).to_be_visible()
    screenshot(page, "automation")
