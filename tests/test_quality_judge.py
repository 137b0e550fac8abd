"""The quality judge and its policy, against the real SDK and the local Gemini server, on both databases.

The server answers the judge's structured requests with JSON of the schema they send; markers in the player's name
(which the judge's prompt carries) make an image fail a criterion or the judge fail (see tests/servers/gemini.py).
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select

from portrait_pipeline.audit import queries
from portrait_pipeline.audit.models import NOT_SCORED, SCORED, CallPacing, ImageQualityScore, Player, PlayerImageAsset
from portrait_pipeline.audit.models import PlayerImageSnapshot as Snapshot
from portrait_pipeline.cli.main import main
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    generation_service,
    resources_from_env,
)
from portrait_pipeline.errors import ConfigurationError
from portrait_pipeline.generation import batch
from portrait_pipeline.generation.judge import CRITERIA, RUBRIC_VERSION, JudgeAnswerInvalid, parse_answer
from portrait_pipeline.generation.pacing import quota_id
from portrait_pipeline.generation.partition import PartitionRequest, PartitionResult, run_partition
from portrait_pipeline.interrupts import StopRequest
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, DEFAULT_JUDGE_MODEL, MODELS
from tests import helpers
from tests.helpers import current_catalogue, generate_requests, materialize_portraits, resources_for
from tests.servers import gemini as fake

DRAFT_YEAR = "2031"
IMAGE_PRICE = Decimal("0.134")  # gemini-3-pro-image, 512 made at 1K


@pytest.fixture(scope="module")
def server() -> Iterator[fake.GeminiTestServer]:
    with fake.GeminiTestServer(image_size=(320, 400), models=current_catalogue()) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_server(server: fake.GeminiTestServer) -> None:
    server.reset()


def gemini_for(server: fake.GeminiTestServer) -> GeminiResource:
    return helpers.gemini_for(
        server, "judge-test-key", max_attempts=2, retry_initial_s=0.01, retry_max_s=0.05, max_concurrency=4
    )


def add_players(database: DatabaseResource, *names: str) -> list[int]:
    with database.session() as db:
        players = [
            Player(
                slug=f"judged-{index}",
                display_name=name,
                first_name=name.split()[0],
                last_name=name.split()[-1],
                draft_year=int(DRAFT_YEAR),
            )
            for index, name in enumerate(names)
        ]
        db.add_all(players)
        db.commit()
        return [player.id for player in players]


def run(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    **request: Any,
) -> PartitionResult:
    """One partition through the core, the way the asset runs it (max_concurrency 1: a deterministic budget)."""
    service = generation_service(storage, gemini, LikenessResource(), PortraitSettings(current_draft_year=2025))
    partition = PartitionRequest(draft_year_key=DRAFT_YEAR, style="default", image_size="512", **request)
    return run_partition(database.check(), service, partition, max_concurrency=1)


def rows(database: DatabaseResource) -> list[tuple[PlayerImageAsset, ImageQualityScore | None]]:
    with database.session() as db:
        found = db.execute(
            select(PlayerImageAsset, ImageQualityScore)
            .outerjoin(ImageQualityScore, ImageQualityScore.asset_id == PlayerImageAsset.id)
            .order_by(PlayerImageAsset.id)
        ).all()
        db.expunge_all()
        return [(asset, score) for asset, score in found]


def judge_requests(server: fake.GeminiTestServer) -> list[fake.RecordedRequest]:
    return [request for request in server.requests if request.kind == "judge"]


def usage_cost(score: ImageQualityScore) -> Decimal:
    """The row's tokens at the registry's prices for the judge model ($0.75 in, $3.75 out per 1M)."""
    prices = MODELS[DEFAULT_JUDGE_MODEL]
    assert prices.input_usd_per_million == Decimal("0.75") and prices.output_usd_per_million == Decimal("3.75")
    spent = prices.input_usd_per_million * (score.prompt_tokens or 0) + prices.output_usd_per_million * (
        score.output_tokens or 0
    )
    return spent / 1_000_000


def test_a_passing_image_goes_live_with_its_score_row(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    add_players(database, "Pass Able", "Fine Shape")
    result = materialize_portraits(
        resources_for(database, storage_resource, gemini_for(server)), (DRAFT_YEAR, "default"), {"image_size": "512"}
    )
    assert result.success
    # The judge saw each stored image inline, asked for JSON of its schema, in the judge model.
    asked = judge_requests(server)
    assert len(asked) == 2 and {request.model for request in asked} == {DEFAULT_JUDGE_MODEL}
    config = asked[0].body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and "criteria" in config["responseSchema"]["properties"]
    image = asked[0].body["contents"][0]["parts"][0]["inlineData"]
    assert image.get("mimeType", image.get("mime_type")) == "image/png" and image["data"]
    assert len(generate_requests(server, DEFAULT_IMAGE_MODEL)) == 2
    for asset, score in rows(database):
        assert asset.is_current and asset.review_status == "approved"
        assert score is not None and (score.status, score.score, score.passed) == (SCORED, 95, True)
        assert (score.judge_model, score.rubric_version) == (DEFAULT_JUDGE_MODEL, RUBRIC_VERSION)
        names = [criterion["name"] for criterion in json.loads(score.criteria or "[]")]
        assert names == [c.name for c in CRITERIA if c.name != "likeness"]  # no description: likeness skipped
        # Thinking tokens are billed as output: the server reports 120 of them beside the answer's own tokens.
        assert score.output_tokens is not None and score.output_tokens > fake.JUDGE_THOUGHTS_TOKENS
        assert score.total_tokens == (score.prompt_tokens or 0) + score.output_tokens
        assert score.cost_usd == usage_cost(score).quantize(Decimal("0.000001")) and score.cost_usd > 0
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    table = metadata["players"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [record.data["quality_score"] for record in table.records] == ["95", "95"]
    assert metadata["judge_cost_usd"].value == pytest.approx(float(sum(s.cost_usd for _, s in rows(database) if s)))


def test_a_failing_criterion_is_retried_once_with_its_reason_then_left_for_review(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    failing, passing = add_players(database, "Twin QFAIL:one_person Double", "Solo Player")
    result = run(database, storage_resource, gemini_for(server))
    image_calls = [
        request for request in generate_requests(server, DEFAULT_IMAGE_MODEL) if "Twin" in json.dumps(request.body)
    ]
    assert len(image_calls) == 2  # the first attempt and one retry, no more
    first, retry = (request.body["contents"][0]["parts"][0]["text"] for request in image_calls)
    assert "reviewer_correction" not in first
    # The failed criterion and the judge's reason reach the next prompt as a field of the data block, not as an
    # instruction.
    data = json.loads(retry.split("<player_data>\n", 1)[1].split("\n</player_data>", 1)[0])
    assert data["reviewer_correction"].startswith("the last portrait failed the quality check on exactly one person")
    assert "QFAIL marker" in data["reviewer_correction"]

    by_player: dict[int, list[tuple[PlayerImageAsset, ImageQualityScore | None]]] = {}
    for asset, score in rows(database):
        by_player.setdefault(asset.player_id, []).append((asset, score))
    (one, one_score), (two, two_score) = by_player[failing]
    for asset, score in ((one, one_score), (two, two_score)):
        assert asset.status == "succeeded" and asset.review_status == "pending" and not asset.is_current
        assert asset.cost_usd == IMAGE_PRICE
        assert score is not None and (score.status, score.score, score.passed) == (SCORED, 40, False)
        failed = [c["name"] for c in json.loads(score.criteria or "[]") if not c["passed"]]
        assert failed == ["one_person"] and score.cost_usd == usage_cost(score).quantize(Decimal("0.000001"))
    assert two.replaces_asset_id == one.id and two.snapshot_id != one.snapshot_id
    ((solo, solo_score),) = by_player[passing]
    assert solo.is_current and solo_score is not None and solo_score.passed

    with database.session() as db:
        retries = db.get_one(Snapshot, two.snapshot_id)
        assert retries.run_key == f"{result.run_key}:quality-retry-1" and not retries.is_current
        assert (retries.status, retries.success_count, retries.population_size) == ("succeeded", 1, 1)
        # The partition's quality figures read each player's last attempt: the retry, not the image it replaced.
        quality = queries.partition_quality(db, DRAFT_YEAR, "default")
        assert quality is not None and {image.asset_id for image in quality.images} == {two.id, solo.id}
    outcome = next(o for o in result.outcomes if o.player_id == failing)
    assert outcome.attempts == 2 and outcome.asset_id == two.id
    assert outcome.quality_score == "40 (below 70: one_person) (1 automatic retry)"
    assert outcome.cost_usd == 2 * IMAGE_PRICE
    assert outcome.judge_cost_usd == one_score.cost_usd + two_score.cost_usd  # type: ignore[union-attr]
    # The run's figures are the audit rows' sums: images from the asset rows, judge calls from the score rows.
    assert result.cost_usd == sum((a.cost_usd for a, _ in rows(database)), Decimal("0"))
    assert result.judge_cost_usd == sum((s.cost_usd for _, s in rows(database) if s is not None), Decimal("0"))


def test_the_judge_is_paced_on_its_own_models_quota(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    """Gemini's rate limits are per model: the judge's Flash calls must not take the image model's starts."""
    gemini = gemini_for(server).model_copy(update={"database": database})
    assert gemini.judge_client().pacing is not gemini.client().pacing
    add_players(database, "Paced Player")
    run(database, storage_resource, gemini)
    assert len(judge_requests(server)) == 1
    with database.session() as db:
        quotas = set(db.scalars(select(CallPacing.quota)))
    assert quotas == {
        quota_id("judge-test-key", server.base_url),
        quota_id("judge-test-key", server.base_url, DEFAULT_JUDGE_MODEL),
    }


def test_a_prompt_experiments_failed_image_is_scored_but_not_retried(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    (failing,) = add_players(database, "Trial QFAIL:no_text Lettered")
    run(database, storage_resource, gemini_for(server), prompt_variant="strict-exclusions")
    assert len(generate_requests(server, DEFAULT_IMAGE_MODEL)) == 1  # a trial image waits for a reviewer anyway
    ((asset, score),) = rows(database)
    assert (asset.player_id, asset.prompt_variant, asset.review_status) == (failing, "strict-exclusions", "pending")
    assert score is not None and (score.status, score.passed) == (SCORED, False)


def test_the_cli_summary_counts_a_retried_player_once_and_adds_the_judge_calls(
    database: DatabaseResource,
    server: fake.GeminiTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_players(database, "Twin QFAIL:one_person Double", "Solo Player")
    environment = {
        "DATABASE_URL": database.url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "CURRENT_DRAFT_YEAR": "2025",
        "GEMINI_API_KEY": "judge-test-key",
        "GEMINI_BASE_URL": server.base_url,
        "GEMINI_REQUESTS_PER_MINUTE": "60000",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(["generate", "--draft-year", DRAFT_YEAR, "--style", "default", "--size", "512"]) == 0
    out = capsys.readouterr().out
    found = rows(database)
    assert len(found) == 3  # two players, one of them retried: three paid images
    line = next(line for line in out.splitlines() if line.startswith(f"{DRAFT_YEAR}|default ") and "SUCCESS" in line)
    generated, skipped, failed, not_started = line.split()[2:6]
    assert (generated, skipped, failed, not_started) == ("2", "0", "0", "0")  # players, not rows
    assert f"REVIEW {DRAFT_YEAR}|default: 2 image(s) held for review, 1 automatic quality retry(ies)" in out
    images = sum((asset.cost_usd for asset, _ in found), Decimal("0"))
    judged = sum((score.cost_usd for _, score in found if score is not None), Decimal("0"))
    assert judged > 0 and f"cost ${images + judged:.2f} (quality judge ${judged:.4f})" in out


def test_the_batch_lane_judges_what_it_collects_and_leaves_a_failure_for_review(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    failing, passing = add_players(database, "Batch QFAIL:no_text Lettered", "Batch Clean")
    gemini = gemini_for(server)
    service = generation_service(
        storage_resource, gemini, LikenessResource(), PortraitSettings(current_draft_year=2025)
    )
    request = PartitionRequest(draft_year_key=DRAFT_YEAR, style="default", image_size="512", lane="batch")
    fast = batch.BatchSettings(poll_initial_s=0.02, poll_max_s=0.05)
    result = batch.run_batch_partition(database.check(), service, gemini.client(), request, fast)
    assert server.batch_request_counts["create"] == 1 and len(judge_requests(server)) == 2
    assert generate_requests(server) == []  # no retry: that would be another job
    found = {asset.player_id: (asset, score) for asset, score in rows(database)}
    lettered, lettered_score = found[failing]
    assert lettered.review_status == "pending" and not lettered.is_current
    assert lettered_score is not None and lettered_score.passed is False
    assert [c["name"] for c in json.loads(lettered_score.criteria or "[]") if not c["passed"]] == ["no_text"]
    clean, clean_score = found[passing]
    assert clean.is_current and clean_score is not None and clean_score.passed
    assert {o.player_id: o.attempts for o in result.outcomes} == {failing: 1, passing: 1}


@pytest.mark.parametrize(
    ("marker", "reason", "live", "paid"),
    [
        ("QJUDGE:500", "judge call failed: Gemini answered 500 INTERNAL after 2 attempt(s)", True, False),
        ("QJUDGE:safety", "judge safety block: the prompt was blocked (SAFETY)", False, True),
        ("QJUDGE:garbage", "the judge's answer is not valid JSON", True, True),
    ],
)
def test_a_judge_failure_stores_the_image_unscored_with_the_reason(
    database: DatabaseResource,
    storage_resource: ImageStorageResource,
    server: fake.GeminiTestServer,
    marker: str,
    reason: str,
    live: bool,
    paid: bool,
) -> None:
    add_players(database, f"Judge {marker} Trouble")
    result = run(database, storage_resource, gemini_for(server))
    ((asset, score),) = rows(database)
    assert asset.status == "succeeded" and asset.cost_usd == IMAGE_PRICE
    # A judge error is no verdict on the image: it goes live as without a judge; a safety block waits for a person.
    assert asset.is_current is live and asset.review_status == ("approved" if live else "pending")
    assert score is not None and score.status == NOT_SCORED and score.score is None and score.passed is None
    assert score.reason is not None and score.reason.startswith(reason)
    assert (score.cost_usd > 0) is paid  # an error answer is not billed; a blocked or garbled answer is
    assert len(generate_requests(server, DEFAULT_IMAGE_MODEL)) == 1  # never retried for the judge's fault
    assert result.outcomes[0].quality_score == f"not scored: {score.reason}"


def test_the_offline_renderer_records_not_scored_without_a_judge_call(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    add_players(database, "Off Line")
    result = run(database, storage_resource, GeminiResource(renderer_choice="offline", base_url=server.base_url))
    ((asset, score),) = rows(database)
    assert asset.is_current and asset.model == "offline-renderer"
    assert score is not None and (score.status, score.score, score.judge_model) == (NOT_SCORED, None, None)
    assert score.reason is not None and score.reason.startswith("offline renderer") and score.cost_usd == 0
    assert server.requests == []
    assert result.outcomes[0].quality_score == f"not scored: {score.reason}"


def test_the_budget_counts_the_judge_calls(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    add_players(database, "Budget One", "Budget Two", "Budget Three")
    # Three images alone ($0.402) fit; with each one's judge call set aside, the third would pass the budget.
    result = run(database, storage_resource, gemini_for(server), max_cost_usd=Decimal("0.407"))
    assert [o.status for o in result.outcomes] == ["succeeded", "succeeded", "not_started"]
    assert result.stopped is not None and result.stopped.startswith("budget:")
    judged = [score for _, score in rows(database) if score is not None]
    assert len(judged) == 2 and all(score.cost_usd > 0 for score in judged)
    assert result.cost_usd == 2 * IMAGE_PRICE and result.judge_cost_usd == sum(score.cost_usd for score in judged)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ('{"criteria": [], "score": 150}', "score: Input should be less than or equal to 100"),
        ('{"criteria": [{"name": "no_text", "passed": true, "reason": "ok"}], "score": 90}', "lacks criteria: "),
        ('{"criteria": [{"name": "halo", "passed": true, "reason": "ok"}], "score": 90}', "criteria.0.name"),
    ],
)
def test_an_answer_that_does_not_fit_the_rubric_is_a_judge_failure(answer: str, problem: str) -> None:
    with pytest.raises(JudgeAnswerInvalid, match=r"^the judge's answer") as raised:
        parse_answer(answer, CRITERIA)
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("PORTRAIT_QUALITY_THRESHOLD", "150", "PORTRAIT_QUALITY_THRESHOLD='150': Input should be less than or equal"),
        ("PORTRAIT_MAX_QUALITY_RETRIES", "-1", "PORTRAIT_MAX_QUALITY_RETRIES='-1': Input should be greater than"),
        ("PORTRAIT_QUALITY_JUDGE", "maybe", "PORTRAIT_QUALITY_JUDGE='maybe': Input should be a valid boolean"),
    ],
)
def test_a_bad_quality_setting_stops_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        resources_from_env()


def test_a_judge_model_without_token_prices_is_refused_before_any_call(server: fake.GeminiTestServer) -> None:
    gemini = gemini_for(server).model_copy(update={"judge_model": "gemini-3.7-flash"})  # in the registry, unpriced
    with pytest.raises(ConfigurationError, match=r"GEMINI_JUDGE_MODEL=gemini-3\.7-flash has no token prices"):
        gemini.preflight(image_size="512", judge=True)
    assert generate_requests(server) == [] and judge_requests(server) == []


def test_a_stop_before_the_judge_call_leaves_the_stored_image_unscored_at_no_cost(
    database: DatabaseResource, storage_resource: ImageStorageResource, server: fake.GeminiTestServer
) -> None:
    """A signal while the image call is in flight: the answer is stored within the grace period, and the judge's
    call, which had not left, is not sent. Its row says why, at $0: a call that never left is never billed."""
    add_players(database, "Stopped Before Judging")
    server.enqueue(fake.slow_reply(1.0), kind="generate_content")  # the image call, held a second
    stop = StopRequest()

    def signal_once_the_image_call_is_in_flight() -> None:
        deadline = time.monotonic() + 10
        while not generate_requests(server, DEFAULT_IMAGE_MODEL) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.request(signal.SIGTERM)

    signaller = threading.Thread(target=signal_once_the_image_call_is_in_flight)
    signaller.start()
    service = generation_service(
        storage_resource, gemini_for(server), LikenessResource(), PortraitSettings(current_draft_year=2025)
    )
    partition = PartitionRequest(draft_year_key=DRAFT_YEAR, style="default", image_size="512")
    result = run_partition(database.check(), service, partition, max_concurrency=1, stop=stop)
    signaller.join()
    assert stop.requested and judge_requests(server) == []  # the judge's call was never sent
    ((asset, score),) = rows(database)
    assert asset.status == "succeeded" and asset.cost_usd == IMAGE_PRICE  # the paid image is kept
    assert score is not None and score.status == NOT_SCORED and score.cost_usd == Decimal("0")
    assert score.reason is not None and "SIGTERM" in score.reason
    assert result.judge_cost_usd == Decimal("0")
