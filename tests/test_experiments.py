"""Prompt variants and experiments: the variant is sent and recorded, its images never go live, and the experiment
report's every number can be recomputed from the audit rows. The real SDK against the local Gemini server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from portrait_pipeline.audit import experiments as experiment_records
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
from portrait_pipeline.experiments import ExperimentSpec, fisher_exact, sample
from portrait_pipeline.generation import batch
from portrait_pipeline.generation.partition import PartitionRequest, plan_partition, run_partition
from portrait_pipeline.prompts import PROMPT_VARIANTS, prompt_variant
from portrait_pipeline.styles import STYLES
from tests.helpers import generate_requests
from tests.servers import gemini as fake

API_KEY = "experiments-test-key-91c2"
CLI = str(Path(sys.executable).with_name("portrait-pipeline"))
FAST_BATCH = batch.BatchSettings(poll_initial_s=0.02, poll_max_s=0.05)


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
        with pytest.raises(InvalidInput, match=r"trial image .* never goes live"):
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


BAD_RUNS = [
    (["--variants", "default,nope"], "--variants: prompt variant 'nope': choose default, strict-exclusions"),
    (["--variants", "default"], "--variants default: name at least two prompt variants"),
    (["--variants", "default,flat-vector", "--style", "comic"], "flat-vector and default send the same prompt"),
    (["--sample", "0"], "--sample 0: use a positive number of players"),
    (["--sample", "21"], "--sample 21: draft year 2025 has only 20 players"),
    (["--draft-year", "2031"], "--draft-year 2031: no players; draft years in the roster: 2019"),
    (["--name", "a:b"], "--name 'a:b': use 1 to 100 letters"),
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # input checks: one database is enough
def test_bad_experiment_arguments_exit_2_and_write_nothing(
    roster_loaded: DatabaseResource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in cli_environment(roster_loaded.url, tmp_path).items():
        monkeypatch.setenv(name, value)
    base = {"--draft-year": "2025", "--variants": "default,strict-exclusions", "--sample": "3"}
    for args, message in BAD_RUNS:
        given = dict(zip(args[::2], args[1::2], strict=True))
        assert main(["experiment", "run", *[item for pair in (base | given).items() for item in pair]]) == 2, args
        assert message in capsys.readouterr().err
    assert main(["experiment", "report", "nothing-here"]) == 2
    assert "experiment 'nothing-here': no such experiment; known: none yet" in capsys.readouterr().err
    with roster_loaded.session() as db:
        assert db.scalars(select(PromptExperiment)).all() == [] and db.scalars(select(PlayerImageSnapshot)).all() == []


def cli_environment(database_url: str, tmp_path: Path, server: fake.GeminiTestServer | None = None) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "CURRENT_DRAFT_YEAR": "2025",
    }
    if server is None:
        return env | {"PORTRAIT_RENDERER": "offline"}
    # Pacing is tested in test_pacing.py: at the default 60 a minute, 20 images and their 20 verdicts take 20 s each.
    return env | {"GEMINI_API_KEY": API_KEY, "GEMINI_BASE_URL": server.base_url, "GEMINI_REQUESTS_PER_MINUTE": "6000"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the report on PostgreSQL: the test below
def test_an_experiment_runs_both_variants_never_touches_live_portraits_and_reports_what_the_rows_say(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    server: fake.GeminiTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Live portraits of the whole 2025 class first (offline, in process): the experiment must leave them alone.
    offline = generation_service(
        storage_resource, GeminiResource(renderer_choice="offline"), LikenessResource(), PortraitSettings()
    )
    assert len(run_partition(roster_loaded.check(), offline, PartitionRequest("2025", "default")).generated) == 20
    live = live_state(roster_loaded, storage_resource)
    with roster_loaded.session() as db:
        live_snapshot = queries.latest_snapshot(db, "2025", "default").id  # type: ignore[union-attr]
    environment = cli_environment(roster_loaded.url, tmp_path, server)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    command = ["experiment", "run", "--draft-year", "2025", "--variants", "default,strict-exclusions"]
    command += ["--sample", "10", "--seed", "7", "--name", "blank-jerseys"]
    # The real console script once; the rerun and the reports call the same `main` in this process (faster).
    done = subprocess.run([CLI, *command], env=env | environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with roster_loaded.session() as db:
        experiment = db.scalars(select(PromptExperiment)).one()
        sample = json.loads(experiment.player_ids)
        recorded = (experiment.name, json.loads(experiment.variants), experiment.lane)
    assert recorded == ("blank-jerseys", ["default", "strict-exclusions"], "standard")
    assert len(sample) == 10 and set(sample) <= set(live)
    assert live_state(roster_loaded, storage_resource) == live  # same current rows, same alias bytes
    sent = generate_requests(server)
    assert len(sent) == 20
    with roster_loaded.session() as db:
        assert queries.latest_snapshot(db, "2025", "default").id == live_snapshot  # type: ignore[union-attr]
        live_ids = [asset_id for asset_id, _ in live.values()]
        trial = db.scalars(select(PlayerImageAsset).where(PlayerImageAsset.id.not_in(live_ids))).all()
    assert {(a.review_status, a.is_current, a.status) for a in trial} == {("pending", False, "succeeded")}
    for name in ("default", "strict-exclusions"):
        text = prompt_variant(name).full_system_prompt("default")
        arm = [asset for asset in trial if asset.prompt_variant == name]
        assert sorted(asset.player_id for asset in arm) == sorted(sample), name  # the sample, each player once
        prompts = sorted(user_text(request) for request in sent if system_instruction(request) == text)
        assert prompts == sorted(asset.user_prompt or "" for asset in arm), name  # what was sent, recorded

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(command) == 0
    assert len(generate_requests(server)) == 20  # a rerun resumes: nobody is paid for twice
    assert "nothing to do" in capsys.readouterr().out

    judge_and_review(roster_loaded, storage_resource)
    assert live_state(roster_loaded, storage_resource) == live  # approving trial images makes none of them live
    report = reported(roster_loaded, "blank-jerseys", capsys)
    assert_report_matches_the_rows(roster_loaded, report, sample)
    assert main(["experiment", "report", "blank-jerseys"]) == 0
    text = capsys.readouterr().out
    assert "not significant at N = " in text and "strict-exclusions   v3.0-sx.1" in text


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite: the end-to-end test above
def test_the_report_query_on_postgresql_matches_the_rows(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The experiment's arms generated in process through the partition code, then judged, reviewed, reported."""
    with roster_loaded.session() as db:
        players = [player.id for player in queries.players_in_draft_year(db, "2025")]
        spec = ExperimentSpec(
            "blank-jerseys", 2025, "default", ("default", "strict-exclusions"), sample(players, 10, 7), "standard"
        )
        experiment_records.create(db, spec)
    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    for variant in spec.variants:
        run_key = queries.experiment_run_key(spec.name, variant)
        request = PartitionRequest(
            "2025", "default", player_ids=spec.player_ids, run_key=run_key, prompt_variant=variant
        )
        assert len(run_partition(roster_loaded.check(), service, request).generated) == 10
    judge_and_review(roster_loaded, storage_resource)
    for name, value in cli_environment(roster_loaded.url, tmp_path).items():
        monkeypatch.setenv(name, value)
    assert_report_matches_the_rows(
        roster_loaded, reported(roster_loaded, "blank-jerseys", capsys), list(spec.player_ids)
    )


def reported(database: DatabaseResource, name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """`experiment report NAME --json`, checked to be what the experiment row now stores."""
    assert main(["experiment", "report", name, "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    with database.session() as db:
        stored = db.scalars(select(PromptExperiment).where(PromptExperiment.name == name)).one()
        assert json.loads(stored.report or "") == report and stored.reported_at is not None
    return report


CRITERIA = ("no_text", "one_person", "requested_style")


def judge_and_review(database: DatabaseResource, storage: ImageStorageResource) -> None:
    """Score rows as the judge writes them (an older row first for some images, so only the latest may count) and
    reviewers' verdicts through the review desk's own functions."""
    with database.session() as db:
        trial = db.scalars(
            select(PlayerImageAsset).where(PlayerImageAsset.review_status == "pending").order_by(PlayerImageAsset.id)
        ).all()
        for index, asset in enumerate(trial):
            strict = asset.prompt_variant == "strict-exclusions"
            if index % 3 == 0:  # superseded by the row below
                db.add(score_row(asset.id, SCORED, 10, (False, False, False), Decimal("0.0009")))
            if index % 7 == 3:
                db.add(score_row(asset.id, NOT_SCORED, None, None, Decimal("0")))
            elif index % 7 == 5:  # never judged: the test server's judge row goes, as for an image made before it
                db.execute(delete(ImageQualityScore).where(ImageQualityScore.asset_id == asset.id))
            else:
                results = (strict or index % 2 == 0, index % 4 != 1, strict or index % 3 != 2)
                db.add(score_row(asset.id, SCORED, 40 + 20 * sum(results) - index % 5, results, Decimal("0.0011")))
        db.commit()
        decisions = [(asset.id, index % 4) for index, asset in enumerate(trial)]
    for asset_id, decision in decisions:
        with database.session() as db:
            if decision in (0, 1):
                serving.approve(db, storage.get_storage(), asset_id, "art-director")
            elif decision == 2:
                records.reject(db, asset_id, "art-director", "letters on the jersey")


def score_row(
    asset_id: int, status: str, score: int | None, results: tuple[bool, ...] | None, cost: Decimal
) -> ImageQualityScore:
    criteria = (
        None
        if results is None
        else json.dumps([{"name": n, "passed": r, "reason": "-"} for n, r in zip(CRITERIA, results, strict=True)])
    )
    return ImageQualityScore(
        asset_id=asset_id,
        status=status,
        score=score,
        passed=None if score is None else score >= 70,
        criteria=criteria,
        reason="judge error: 503" if status == NOT_SCORED else None,
        judge_model="gemini-3.8-flash",
        rubric_version="r1",
        cost_usd=cost,
    )


def assert_report_matches_the_rows(database: DatabaseResource, report: dict[str, Any], sample: list[int]) -> None:
    """Every number of the report, recomputed here straight from the asset and score rows."""
    assert (report["experiment"], report["players"], report["player_ids"]) == ("blank-jerseys", 10, sample)
    arms = {arm["variant"]: arm for arm in report["variants"]}
    assert list(arms) == ["default", "strict-exclusions"]
    with database.session() as db:
        for name, arm in arms.items():
            assets = db.scalars(
                select(PlayerImageAsset)
                .join(PlayerImageSnapshot)
                .where(PlayerImageSnapshot.run_key == f"experiment:blank-jerseys:{name}")
            ).all()
            assert {a.prompt_variant for a in assets} == {name} and len(assets) == 10
            rows = {
                a.id: db.scalars(
                    select(ImageQualityScore).where(ImageQualityScore.asset_id == a.id).order_by(ImageQualityScore.id)
                ).all()
                for a in assets
            }
            latest = {asset_id: scores[-1] for asset_id, scores in rows.items() if scores}
            scored = [s for s in latest.values() if s.status == SCORED]
            passed = sum(1 for s in scored if s.passed)
            approved = sum(1 for a in assets if a.review_status == "approved")
            reviewed = approved + sum(1 for a in assets if a.review_status == "rejected")
            generation = sum((a.cost_usd for a in assets), Decimal(0))
            judge = sum((s.cost_usd for scores in rows.values() for s in scores), Decimal(0))
            assert arm["version"] == prompt_variant(name).version
            assert (arm["images"], arm["failed_attempts"], arm["missing"]) == (10, 0, 0)
            assert arm["scored"] == len(scored) and 0 < len(scored) < 10
            assert arm["not_scored"] == sum(1 for s in latest.values() if s.status == NOT_SCORED) > 0
            assert arm["unjudged"] == 10 - len(latest) > 0
            assert (arm["passed"], arm["pass_rate"]) == (passed, pytest.approx(passed / len(scored), abs=1e-4))
            assert arm["mean_score"] == pytest.approx(sum(s.score or 0 for s in scored) / len(scored), abs=0.01)
            for criterion in CRITERIA:
                results = [
                    c["passed"] for s in scored for c in json.loads(s.criteria or "[]") if c["name"] == criterion
                ]
                assert arm["criteria"][criterion]["passed"] == sum(results)
                assert arm["criteria"][criterion]["scored"] == len(results) == len(scored)
            assert (arm["approved"], arm["reviewed"]) == (approved, reviewed) and 0 < approved < reviewed
            assert arm["approval_rate"] == pytest.approx(approved / reviewed, abs=1e-4)
            assert arm["pending_review"] == 10 - reviewed
            assert arm["generation_cost_usd"] == pytest.approx(float(generation)) and generation > 0
            assert arm["judge_cost_usd"] == pytest.approx(float(judge)) and judge > 0
            assert arm["cost_per_approved_usd"] == pytest.approx(float((generation + judge) / approved), abs=1e-6)
    base, strict = arms["default"], arms["strict-exclusions"]
    [pass_rate, approval] = report["comparisons"]
    assert pass_rate["metric"] == "pass_rate" and approval["metric"] == "approval_rate"
    assert pass_rate["baseline_count"] == [base["passed"], base["scored"]]
    assert pass_rate["variant_count"] == [strict["passed"], strict["scored"]]
    assert approval["variant_count"] == [strict["approved"], strict["reviewed"]]
    for comparison in (pass_rate, approval):
        p_value = fisher_exact(*comparison["baseline_count"], *comparison["variant_count"])
        assert comparison["p_value"] == round(p_value, 4) and comparison["significant"] == (p_value < 0.05)
