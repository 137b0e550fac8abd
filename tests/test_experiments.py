"""Prompt variants and experiments: the variant is sent and recorded, its images never go live, and the experiment
report's every number can be recomputed from the audit rows. The real SDK against the local Gemini server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from portrait_pipeline.audit import queries, records, serving
from portrait_pipeline.audit.models import (
    NOT_SCORED,
    SCORED,
    ImageQualityScore,
    PlayerImageAsset,
    PlayerImageSnapshot,
    PromptExperiment,
)
from portrait_pipeline.cli.main import main
from portrait_pipeline.defs.config import PortraitRunConfig
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    generation_service,
)
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.experiments import fisher_exact
from portrait_pipeline.generation import batch
from portrait_pipeline.generation.partition import PartitionRequest, plan_partition, run_partition
from portrait_pipeline.prompts import PROMPT_VARIANTS, prompt_variant
from portrait_pipeline.styles import STYLES
from tests.helpers import current_catalogue, generate_requests
from tests.servers import gemini as fake

API_KEY = "experiments-test-key-91c2"
CLI = str(Path(sys.executable).with_name("portrait-pipeline"))
FAST_BATCH = batch.BatchSettings(poll_initial_s=0.02, poll_max_s=0.05)


@pytest.fixture
def server() -> Iterator[fake.GeminiTestServer]:
    with fake.GeminiTestServer(api_key=API_KEY, models=current_catalogue()) as running:
        yield running


@pytest.fixture
def gemini(server: fake.GeminiTestServer) -> GeminiResource:
    return GeminiResource(api_key=API_KEY, base_url=server.base_url, timeout_s=5, retry_initial_s=0.05, retry_max_s=0.2)


def system_instruction(request: fake.RecordedRequest) -> str:
    return "".join(part["text"] for part in request.body["systemInstruction"]["parts"])


def user_text(request: fake.RecordedRequest) -> str:
    return "".join(part.get("text", "") for part in request.body["contents"][0]["parts"])


def live_state(database: DatabaseResource, storage: ImageStorageResource) -> dict[int, tuple[int, str]]:
    """Player id -> (current asset id, SHA-256 of the serving alias's bytes), for every current image."""
    local = storage.get_storage()
    with database.session() as db:
        return {
            asset.player_id: (
                asset.id,
                hashlib.sha256(local.get(serving.naming.current_key(p.id, p.slug, "default"))).hexdigest(),
            )
            for asset, p in queries.all_current_images(db)
        }


def test_a_variant_is_sent_and_recorded_but_its_images_never_go_live(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    engine = roster_loaded.check()
    live = run_partition(engine, service, PartitionRequest("2025", "vector", player_ids=(1, 2)))
    assert len(live.generated) == 2
    with roster_loaded.session() as db:
        before = {p: queries.current_asset(db, p, "vector").id for p in (1, 2)}  # type: ignore[union-attr]
    server.reset()

    trial = run_partition(
        engine, service, PartitionRequest("2025", "vector", player_ids=(1, 2, 3), prompt_variant="flat-vector")
    )
    assert len(trial.generated) == 3
    sent = generate_requests(server)
    variant = prompt_variant("flat-vector")
    assert [system_instruction(r) for r in sent] == [variant.full_system_prompt("vector")] * 3
    assert (
        variant.style_block("vector")
        in system_instruction(sent[0])
        != prompt_variant("default").full_system_prompt("vector")
    )
    with roster_loaded.session() as db:
        snapshot = db.get_one(PlayerImageSnapshot, trial.snapshot_id)
        assert (snapshot.prompt_variant, snapshot.system_prompt_version, snapshot.is_current) == (
            "flat-vector",
            "v3.0-fv.1",
            False,
        )
        assert snapshot.system_prompt == variant.full_system_prompt("vector")
        rows = db.scalars(select(PlayerImageAsset).where(PlayerImageAsset.snapshot_id == trial.snapshot_id)).all()
        assert {(r.prompt_variant, r.system_prompt_version, r.review_status, r.is_current) for r in rows} == {
            ("flat-vector", "v3.0-fv.1", "pending", False)
        }
        assert {p: queries.current_asset(db, p, "vector").id for p in (1, 2)} == before  # type: ignore[union-attr]
        assert queries.current_asset(db, 3, "vector") is None
        assert queries.latest_snapshot(db, "2025", "vector").id == live.snapshot_id  # type: ignore[union-attr]
        # A trial image is no portrait: missing_only still plans player 3, who has only a trial image.
        plan = plan_partition(
            db,
            service.storage,
            PartitionRequest("2025", "vector", player_ids=(1, 2, 3), missing_only=True),
            service.renderer.pricing,
        )
        assert [ref.id for ref in plan.to_generate] == [3]
        trial_ids = sorted(r.id for r in rows)
    with roster_loaded.session() as db:
        approved = serving.approve(db, service.storage, trial_ids[0], "reviewer")
        assert (approved.review_status, approved.is_current) == ("approved", False)
        with pytest.raises(InvalidInput, match="trial image .* never goes live"):
            serving.promote_asset(db, service.storage, trial_ids[0])
    with roster_loaded.session() as db:
        assert {p: queries.current_asset(db, p, "vector").id for p in (1, 2)} == before  # type: ignore[union-attr]


def test_the_batch_lane_sends_and_records_the_variant(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    request = PartitionRequest("2025", "default", player_ids=(1, 2), lane="batch", prompt_variant="strict-exclusions")
    result = batch.run_batch_partition(roster_loaded.check(), service, gemini.client(), request, FAST_BATCH)
    assert len(result.generated) == 2
    [created] = [r for r in server.requests if r.kind == "batch_create"]
    inline = created.body["batch"]["inputConfig"]["requests"]["requests"]
    expected = prompt_variant("strict-exclusions").full_system_prompt("default")
    assert [
        system_instruction(fake.RecordedRequest("", "", None, None, None, {}, item["request"], 0)) for item in inline
    ] == [expected] * 2
    with roster_loaded.session() as db:
        rows = db.scalars(select(PlayerImageAsset)).all()
        assert {(r.prompt_variant, r.system_prompt_version, r.is_current) for r in rows} == {
            ("strict-exclusions", "v3.0-sx.1", False)
        }


def test_an_unknown_variant_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidInput, match="'nope': choose default, strict-exclusions, flat-vector"):
        PortraitRunConfig(prompt_variant="nope")
    with pytest.raises(InvalidInput, match="never go live"):
        PortraitRunConfig(prompt_variant="flat-vector", missing_only=True)


# Every variant's full text per style, pinned to its version: an experiment compares versions, so a text that
# changes under the same version would make two arms of one name incomparable. Changed one? Bump its version.
VARIANT_DIGESTS = {
    "default": ("v3.0", "9a88329ba2b955c5c8f2417dcaa708fe83ba86542f39667f9d4ab0a8f7968928"),
    "strict-exclusions": ("v3.0-sx.1", "63a00a4e45a39a86094b97bf2697139975c4b31e597f3d482c8c3c65b3201055"),
    "flat-vector": ("v3.0-fv.1", "7db807e039aebc835f51e3cfa3b926411e3d2d1b3c913b36ba761e51e7708224"),
}


@pytest.mark.parametrize("name", list(PROMPT_VARIANTS))
def test_each_variant_text_is_pinned_to_its_version(name: str) -> None:
    variant = PROMPT_VARIANTS[name]
    texts = {style: variant.full_system_prompt(style) for style in STYLES}
    digest = hashlib.sha256(json.dumps(texts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert (variant.version, digest) == VARIANT_DIGESTS[name]
    assert "<player_data>" in variant.system_prompt and "never instructions" in variant.system_prompt


def test_fisher_exact_matches_the_tea_tasting_values() -> None:
    """Fisher's own example: 4 of 4 cups right against 0 of 4 gives p = 2/70; 3 of 4 against 1 of 4, 34/70."""
    assert fisher_exact(4, 4, 0, 4) == pytest.approx(2 / 70)
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert fisher_exact(5, 10, 5, 10) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "default,nope"], "--variants: prompt variant 'nope': choose default, strict-exclusions"),
        (["--variants", "default"], "--variants default: name at least two prompt variants"),
        (["--variants", "default,flat-vector", "--style", "comic"], "flat-vector and default send the same prompt"),
        (["--sample", "0"], "--sample 0: use a positive number of players"),
        (["--sample", "21"], "--sample 21: draft year 2025 has only 20 players"),
        (["--draft-year", "2031"], "--draft-year 2031: no players; draft years in the roster: 2019"),
        (["--name", "a:b"], "--name 'a:b': use 1 to 100 letters"),
    ],
)
def test_bad_experiment_arguments_exit_2_and_write_nothing(
    roster_loaded: DatabaseResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    for name, value in cli_environment(roster_loaded.url, tmp_path).items():
        monkeypatch.setenv(name, value)
    base = {"--draft-year": "2025", "--variants": "default,strict-exclusions", "--sample": "3"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["experiment", "run", *[item for pair in (base | given).items() for item in pair]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    with roster_loaded.session() as db:
        assert db.scalars(select(PromptExperiment)).all() == [] and db.scalars(select(PlayerImageSnapshot)).all() == []
    assert main(["experiment", "report", "nothing-here"]) == 2
    assert "experiment 'nothing-here': no such experiment" in capsys.readouterr().err


def cli_environment(database_url: str, tmp_path: Path, server: fake.GeminiTestServer | None = None) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "CURRENT_DRAFT_YEAR": "2025",
    }
    if server is None:
        return env | {"PORTRAIT_RENDERER": "offline"}
    return env | {"GEMINI_API_KEY": API_KEY, "GEMINI_BASE_URL": server.base_url}
