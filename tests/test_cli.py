"""The `portrait-pipeline` CLI against a temp database, instance and folder: in this process (`run_cli`), and the
console script itself in a subprocess for the demo flow."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portrait_pipeline.audit.db import engine_for, session_scope, upgrade
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.roster import import_roster, read_roster
from tests.helpers import run_cli, run_console_script

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    env.update(
        DATABASE_URL=database_url,
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        IMAGE_LOCAL_DIR=str(tmp_path / "images"),
        PORTRAIT_RENDERER="offline",
        CURRENT_DRAFT_YEAR="2025",
    )
    return env


@pytest.fixture
def run(cli_env: dict[str, str]) -> Run:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(args, {**cli_env, **(env or {})})

    return run


@pytest.fixture
def seeded(cli_env: dict[str, str], demo_roster: Path) -> dict[str, str]:
    """Migrated and loaded in-process: the commands under test are the only subprocesses."""
    url = cli_env["DATABASE_URL"]
    upgrade(url)
    with session_scope(engine_for(url)) as db:
        import_roster(db, read_roster(demo_roster))
    return cli_env


def count(url: str, model: type) -> int:
    with session_scope(engine_for(url)) as db:
        return db.scalar(select(func.count()).select_from(model)) or 0


def test_demo_flow_migrates_imports_and_materializes_a_partition(cli_env: dict[str, str], demo_roster: Path) -> None:
    """Through the console script itself, as `make demo` runs it."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_console_script(args, cli_env)

    assert run("db", "upgrade").returncode == 0
    imported = run("players", "import", str(demo_roster))
    assert imported.returncode == 0, imported.stderr
    assert "40 created" in imported.stdout and "2025" in imported.stdout

    generated = run("generate", "--draft-year", "2025", "--run-key", "demo_2025")
    assert generated.returncode == 0, generated.stderr
    assert "2025|default" in generated.stdout and cli_env["IMAGE_LOCAL_DIR"] in generated.stdout
    images = sorted((Path(cli_env["IMAGE_LOCAL_DIR"]) / "players").glob("*_default.png"))
    assert len(images) == 20
    url = cli_env["DATABASE_URL"]
    assert count(url, PlayerImageAsset) == 20
    with session_scope(engine_for(url)) as db:
        snapshot = db.scalars(select(PlayerImageSnapshot)).one()
    assert (snapshot.run_key, snapshot.version, snapshot.model) == ("demo_2025", 1, "offline-renderer")

    # The run is on the persistent instance, so `make ui` shows it.
    import dagster as dg

    instance = dg.DagsterInstance.from_config(cli_env["DAGSTER_HOME"])
    assert instance.get_run_by_id(snapshot.dagster_run_id or "") is not None
    assert "2025" in instance.get_dynamic_partitions("draft_years")


def test_bad_roster_row_exits_2_with_the_row_and_writes_nothing(
    run: Run, cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert run("db", "upgrade").returncode == 0
    roster = tmp_path / "bad.csv"
    roster.write_text("name,draft_year\nGood Player,2025\n,2025\nOther Player,20x5\n", encoding="utf-8")
    result = run("players", "import", str(roster))
    assert result.returncode == 2
    assert "row 3" in result.stderr and "row 4" in result.stderr and "20x5" in result.stderr
    assert count(cli_env["DATABASE_URL"], Player) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--draft-year", "2025", "--style", "pastel"], "--style 'pastel': choose default, vector"),
        (["generate", "--draft-year", "2025", "--size", "3K"], "--size 3K: choose 512, 1K, 2K, 4K"),
        (["generate", "--cohort", "rookies"], "invalid choice: 'rookies'"),
        (["generate", "--player-id", "99999"], "--player-id 99999: no such player"),
        (
            ["generate", "--draft-year", "2031"],
            "no players match; draft years in the roster: 2019, 2020, 2021, 2022, 2025, 2026, undrafted",
        ),
        (["generate", "--cohort", "current_draft"], "current_draft is 2030; set CURRENT_DRAFT_YEAR to change it"),
        (["generate", "--draft-year", "2025", "--limit", "0"], "0: use a positive number"),
        (["generate"], "one of the arguments --player-id --player-slug --cohort --draft-year --all is required"),
        (["generate", "--draft-year", "2025", "--all"], "not allowed with argument"),
        (["generate", "--draft-year", "2025", "--likeness-url", "https://x.test/a.jpg"], "needs a single player"),
        (["generate", "--player-id", "1", "--likeness-url", "file:///etc/passwd"], "only http(s) URLs"),
        (["players", "import", "/nonexistent/roster.csv"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line_and_write_nothing(
    run: Run, seeded: dict[str, str], args: list[str], message: str
) -> None:
    result = run(*args, env={"CURRENT_DRAFT_YEAR": "2030"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert count(seeded["DATABASE_URL"], PlayerImageSnapshot) == 0


def test_a_roster_without_draft_years_imports_with_a_warning_that_all_are_undrafted(
    run: Run, cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert run("db", "upgrade").returncode == 0
    roster = tmp_path / "names.csv"
    roster.write_text("name\nCooper Flagg\nDylan Harper\n", encoding="utf-8")
    result = run("players", "import", str(roster))
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "no draft_year column" in result.stderr
    assert "draft years: undrafted" in result.stdout and count(cli_env["DATABASE_URL"], Player) == 2


def test_unmigrated_database_exits_2_and_says_how_to_fix(run: Run, demo_roster: Path) -> None:
    result = run("players", "import", str(demo_roster))
    assert result.returncode == 2
    assert "portrait-pipeline db upgrade" in result.stderr


def test_unwritable_image_folder_exits_2_before_generating(run: Run, seeded: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run("generate", "--draft-year", "2025", env={"IMAGE_LOCAL_DIR": str(blocker / "images")})
    assert result.returncode == 2
    assert "not writable" in result.stderr and "IMAGE_LOCAL_DIR" in result.stderr
    assert count(seeded["DATABASE_URL"], PlayerImageSnapshot) == 0


def test_dry_run_prints_the_plan_and_writes_nothing(run: Run, seeded: dict[str, str]) -> None:
    result = run("generate", "--all", "--dry-run", "--style", "default", "--style", "comic")
    assert result.returncode == 0, result.stderr
    assert "2025|comic" in result.stdout and "2026|default" in result.stdout and "undrafted|default" in result.stdout
    assert "total" in result.stdout and "offline-renderer" in result.stdout
    assert count(seeded["DATABASE_URL"], PlayerImageSnapshot) == 0
    assert not Path(seeded["IMAGE_LOCAL_DIR"]).exists()


def test_history_url_and_promote_let_a_reviewer_roll_back(run: Run, seeded: dict[str, str]) -> None:
    for _ in range(2):
        assert run("generate", "--player-id", "1", "--style", "comic").returncode == 0
    url = seeded["DATABASE_URL"]
    with session_scope(engine_for(url)) as db:
        first, second = db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.id)).all()
        first_id, first_url, second_url = first.id, first.public_url, second.public_url

    history = run("history", "--player-id", "1")
    assert history.returncode == 0, history.stderr
    lines = [line for line in history.stdout.splitlines() if "comic" in line]
    assert len(lines) == 2 and lines[1].split()[0] == f"{second.id}*" and "offline-renderer" in lines[0]
    assert run("url", "--player-id", "1", "--style", "comic").stdout.strip() == second_url

    promoted = run("promote", "--asset-id", str(first_id))
    assert promoted.returncode == 0, promoted.stderr
    assert run("url", "--player-id", "1", "--style", "comic").stdout.strip() == first_url
    assert run("history", "--player-id", "1").stdout.count("*") == 2  # one row and the legend
    assert run("url", "--player-id", "1", "--style", "retro").stdout.strip().startswith("https://placehold.co/")
    missing = run("history", "--player-id", "99999")
    assert missing.returncode == 2 and "--player-id 99999: no such player" in missing.stderr


def test_review_desk_rejects_regenerates_with_guidance_and_approves(run: Run, seeded: dict[str, str]) -> None:
    """PORTRAIT_REQUIRE_REVIEW: the old image stays live through a rejection and a regeneration until approval."""
    url = seeded["DATABASE_URL"]
    assert run("generate", "--player-id", "1").returncode == 0
    review = {"PORTRAIT_REQUIRE_REVIEW": "true"}
    assert run("generate", "--player-id", "1", env=review).returncode == 0
    with session_scope(engine_for(url)) as db:
        live, pending = db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.id)).all()
        live_id, live_url, pending_id = live.id, live.public_url, pending.id
    assert run("url", "--player-id", "1").stdout.strip() == live_url
    queue = run("review", "list", "--draft-year", "2025", "--style", "default")
    assert queue.returncode == 0, queue.stderr
    (row,) = [line for line in queue.stdout.splitlines() if line.split()[:1] == [str(pending_id)]]
    assert "pending" in row and row.split()[-2] == str(live_id)

    rejected = run(
        "review", "reject", str(pending_id), "--reason", "hair too long", "--guidance", "shorter hair",
        "--regenerate", "--by", "art-director",
    )  # fmt: skip
    assert rejected.returncode == 0, rejected.stderr
    with session_scope(engine_for(url)) as db:
        old, first, second = db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.id)).all()
        assert (first.review_status, first.reviewed_by, first.review_reason, first.guidance) == (
            "rejected", "art-director", "hair too long", "shorter hair"
        )  # fmt: skip
        assert (second.review_status, second.is_current, second.replaces_asset_id) == ("pending", False, first.id)
        prompt, second_id, second_url = second.user_prompt or "", second.id, second.public_url
    data = prompt.split("<player_data>", 1)[1].split("</player_data>", 1)[0]
    assert '"reviewer_correction": "shorter hair"' in data and prompt.count("shorter hair") == 1
    assert old.is_current and run("url", "--player-id", "1").stdout.strip() == live_url

    approved = run("review", "approve", str(second_id))
    assert approved.returncode == 0, approved.stderr
    assert run("url", "--player-id", "1").stdout.strip() == second_url
    again = run("review", "approve", str(second_id))
    assert again.returncode == 2 and f"asset {second_id}: it is approved, not pending review" in again.stderr
    assert "0 image(s)" in run("review", "list").stdout


def test_review_serve_refuses_a_network_address_without_a_token(run: Run, seeded: dict[str, str]) -> None:
    refused = run("review", "serve", "--host", "0.0.0.0", env={"REVIEW_TOKEN": ""})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "portrait-pipeline: error: review serve --host 0.0.0.0: set REVIEW_TOKEN to serve beyond this machine"
    )


def test_with_local_storage_the_command_never_imports_the_s3_client() -> None:
    """dagster-aws imports all its components and boto3 (over a second of a CLI start-up): only a bucket needs it."""
    code = (
        "import sys; import portrait_pipeline.cli.main, portrait_pipeline.defs.definitions as d;"
        "d.defs.resources['storage'].get_storage();"
        "print(sorted(m for m in ('dagster_aws', 'boto3') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "IMAGE_"))}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
