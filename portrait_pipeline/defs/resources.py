"""Dagster resources: the database, image storage and Gemini, configured by the seed's environment variables."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import quote

import dagster as dg
from pydantic import Field, PrivateAttr, ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from portrait_pipeline.audit.call_pacing import DatabaseSlotStore
from portrait_pipeline.audit.db import DEFAULT_DATABASE_URL, REPO_ROOT, check_migrated, engine_for, session_scope
from portrait_pipeline.cohorts import default_current_draft_year
from portrait_pipeline.errors import ConfigurationError, InvalidInput
from portrait_pipeline.generation.batch import BatchSettings
from portrait_pipeline.generation.gemini import (
    GeminiClient,
    GeminiDescriber,
    GeminiRenderer,
    GeminiStructured,
    RetryPolicy,
    check_model,
)
from portrait_pipeline.generation.judge import DEFAULT_MAX_RETRIES, DEFAULT_THRESHOLD, Judge, QualityPolicy
from portrait_pipeline.generation.offline import OfflineRenderer
from portrait_pipeline.generation.pacing import quota_id
from portrait_pipeline.generation.player import ImageGenerationService
from portrait_pipeline.generation.renderer import Renderer
from portrait_pipeline.likeness import FetchPolicy, LikenessService
from portrait_pipeline.model_registry import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_JUDGE_MODEL,
    DEFAULT_VISION_MODEL,
    ImagePricing,
    ImageSize,
    Lane,
    ModelKind,
)
from portrait_pipeline.storage import ImageStorage, LocalImageStorage, S3ImageStorage
from portrait_pipeline.styles import Style, parse_style

log = logging.getLogger(__name__)

RendererChoice = Literal["auto", "gemini", "offline"]
RENDERER_CHOICES: tuple[RendererChoice, ...] = get_args(RendererChoice)
SharedPacing = Literal["database", "process"]
DEFAULT_IMAGE_DIR = REPO_ROOT / ".portraits" / "images"
DEFAULT_MAX_FAILURE_RATE = 0.10


class DatabaseResource(dg.ConfigurableResource):
    """The app's database (players and the audit trail): SQLite by default, PostgreSQL in production."""

    url: str = Field(default=DEFAULT_DATABASE_URL, description="DATABASE_URL: a SQLAlchemy URL")

    @property
    def engine(self) -> Engine:
        return engine_for(self.url)

    _migrated: bool = PrivateAttr(default=False)

    def check(self) -> Engine:
        """The engine, after making sure the schema is migrated (a clear error otherwise); checked once."""
        if not self._migrated:
            check_migrated(self.engine)
            self._migrated = True
        return self.engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.check()) as db:
            yield db


class GeminiResource(dg.ConfigurableResource):
    """Gemini settings and client; without an API key the offline renderer stands in."""

    api_key: str | None = Field(default=None, description="GEMINI_API_KEY (secret)")
    base_url: str | None = Field(default=None, description="GEMINI_BASE_URL: a gateway, proxy or test server")
    image_model: str = Field(default=DEFAULT_IMAGE_MODEL, description="GEMINI_IMAGE_MODEL")
    vision_model: str = Field(default=DEFAULT_VISION_MODEL, description="GEMINI_VISION_MODEL (likeness)")
    judge_model: str = Field(
        default=DEFAULT_JUDGE_MODEL, description="GEMINI_JUDGE_MODEL: the vision model that scores stored portraits"
    )
    image_price_usd: float | None = Field(
        default=None,
        gt=0,
        description="GEMINI_IMAGE_PRICE_USD: USD per image where the model registry has no price (a newer model)",
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Per-request timeout in seconds")
    max_attempts: int = Field(default=5, ge=1, description="Attempts per call for 429, 5xx and timeouts")
    retry_initial_s: float = Field(default=1.0, ge=0, description="First backoff delay; doubles, with jitter")
    retry_max_s: float = Field(default=60.0, ge=0, description="Longest backoff delay")
    max_concurrency: int = Field(default=8, ge=1, description="GEMINI_MAX_CONCURRENCY: calls in flight per process")
    requests_per_minute: int = Field(
        default=60,
        ge=1,
        description="GEMINI_REQUESTS_PER_MINUTE, shared by every process on the database (see shared_pacing)",
    )
    shared_pacing: SharedPacing = Field(
        default="database",
        description="GEMINI_SHARED_PACING: database (one rate for every process using `database`) or process "
        "(each process keeps the rate on its own)",
    )
    database: DatabaseResource | None = Field(
        default=None,
        description="The database whose call_pacing rows pace every process (resources_from_env sets it); "
        "without one, this process paces alone",
    )
    quota_wait_s: float = Field(
        default=900.0, ge=0, description="How long a call waits out 429s before they use up its attempts"
    )
    renderer_choice: RendererChoice = Field(default="auto", description="PORTRAIT_RENDERER: auto, gemini, offline")
    batch_poll_initial_s: float = Field(default=30.0, gt=0, description="Batch lane: first wait between polls")
    batch_poll_max_s: float = Field(default=600.0, gt=0, description="Batch lane: longest wait between polls")
    batch_max_requests_per_job: int = Field(default=1000, ge=1, description="Batch lane: players per job")
    batch_inline_limit_bytes: int = Field(
        default=8_000_000,
        ge=1,
        le=20_000_000,
        description="Batch lane: requests above this go as a JSONL file (the API caps inline requests at 20 MB)",
    )

    _client: GeminiClient | None = PrivateAttr(default=None)
    _judge_client: GeminiClient | None = PrivateAttr(default=None)
    # (kind, model) -> (refusal, warnings) of its preflight: one metadata request per model per run (a run has its
    # own copy of the resource). Reassigned, never mutated, so copies never share it.
    _checked: dict[tuple[str, str], tuple[str | None, list[str]]] = PrivateAttr(default_factory=dict)

    def batch_settings(self) -> BatchSettings:
        return BatchSettings(
            max_requests_per_job=self.batch_max_requests_per_job,
            inline_limit_bytes=self.batch_inline_limit_bytes,
            poll_initial_s=self.batch_poll_initial_s,
            poll_max_s=self.batch_poll_max_s,
            max_concurrency=self.max_concurrency,
        )

    @property
    def uses_gemini(self) -> bool:
        if self.renderer_choice == "offline":
            return False
        if self.renderer_choice == "gemini" and not self.api_key:
            raise ConfigurationError("PORTRAIT_RENDERER=gemini needs GEMINI_API_KEY")
        return bool(self.api_key)

    @property
    def model(self) -> str:
        return self.image_model if self.uses_gemini else OfflineRenderer.model

    def client(self) -> GeminiClient:
        """One client per resource instance: its HTTP pool and rate limiter serve every call of the run."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def judge_client(self) -> GeminiClient:
        """The quality judge's client: the same settings, paced on the judge model's own quota (limits are per
        model), so judging never takes the image model's calls."""
        if self._judge_client is None:
            self._judge_client = self._new_client(self.judge_model)
        return self._judge_client

    def _new_client(self, quota_model: str = "") -> GeminiClient:
        if not self.api_key:
            raise ConfigurationError("Gemini needs GEMINI_API_KEY")
        return GeminiClient(
            self.api_key,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
            requests_per_minute=self.requests_per_minute,
            max_concurrency=self.max_concurrency,
            retry=RetryPolicy(self.max_attempts, self.retry_initial_s, self.retry_max_s, self.quota_wait_s),
            store=self.slot_store(quota_model),
            quota_model=quota_model,
        )

    def slot_store(self, quota_model: str = "") -> DatabaseSlotStore | None:
        """Where the client's start times are reserved: the database's row for this key and endpoint (and model,
        for the judge's), or None (this process alone) with GEMINI_SHARED_PACING=process or no database."""
        if self.shared_pacing == "process" or self.database is None or not self.api_key:
            return None
        return DatabaseSlotStore(self.database.check(), quota_id(self.api_key, self.base_url, quota_model))

    def image_pricing(self) -> ImagePricing:
        """The image model's sizes and prices: the registry's, GEMINI_IMAGE_PRICE_USD where it has none."""
        if not self.uses_gemini:
            return OfflineRenderer.pricing
        configured = Decimal(str(self.image_price_usd)) if self.image_price_usd is not None else None
        return ImagePricing(self.image_model, configured)

    def renderer(self) -> Renderer:
        if not self.uses_gemini:
            log.info("No GEMINI_API_KEY: portraits come from the offline renderer (placeholder posters, $0).")
            return OfflineRenderer()
        return GeminiRenderer(self.client(), self.image_pricing())

    def preflight(
        self,
        *,
        image_size: ImageSize | None = None,
        vision: bool = False,
        judge: bool = False,
        dry_run: bool = False,
        today: date | None = None,
    ) -> list[str]:
        """Check the models a run will call before its first paid call; the one check of the CLI and both assets.

        `image_size`: the run makes portraits of that size (the image model, and its price unless `dry_run`);
        `vision`: it describes reference photos (the vision model). A portraits run without likeness never calls the
        vision model, so a dead one does not stop it; `judge`: it scores its images (the judge model, which must have
        token prices). Raises ConfigurationError (one line: variable, model, why, replacement); returns warnings.
        Offline there is nothing to check.
        """
        if not self.uses_gemini:
            return []
        today = today or date.today()
        checks: list[tuple[str, str, ModelKind]] = []
        if image_size is not None:
            checks.append(("GEMINI_IMAGE_MODEL", self.image_model, "image"))
        if vision:
            checks.append(("GEMINI_VISION_MODEL", self.vision_model, "vision"))
        if judge and not dry_run:
            checks.append(("GEMINI_JUDGE_MODEL", self.judge_model, "vision"))
        # The price first: a run that could not record its cost stops before any request.
        warnings = self._price_warnings(image_size, dry_run) if image_size is not None else []
        if judge and not dry_run:
            self.judge()  # raises when the registry has no token prices for the judge model
        for variable, model, kind in checks:
            refusal, found = self._checked_model(model, kind, today)
            if refusal is not None:
                raise ConfigurationError(f"{variable}={model} {refusal}")
            warnings += [f"{variable}={model} {warning}" for warning in found]
        return warnings

    def _checked_model(self, model: str, kind: ModelKind, today: date) -> tuple[str | None, list[str]]:
        """`check_model`'s refusal (or None) and warnings, asked once per resource; a pass is remembered by the
        process for `PREFLIGHT_TTL_S` (`_PASSED`), a refusal only by this resource."""
        if (kind, model) not in self._checked:
            passed = (quota_id(self.api_key or "", self.base_url), kind, model, today)
            until, warnings = _PASSED.get(passed, (0.0, []))
            outcome: tuple[str | None, list[str]] = (None, warnings)
            if time.monotonic() >= until:
                try:
                    outcome = (None, check_model(self.client(), model, kind, today))
                    _PASSED[passed] = (time.monotonic() + PREFLIGHT_TTL_S, outcome[1])
                except ConfigurationError as exc:
                    outcome = (str(exc), [])
            self._checked = {**self._checked, (kind, model): outcome}
        return self._checked[kind, model]

    def _price_warnings(self, image_size: ImageSize, dry_run: bool) -> list[str]:
        """A run needs the image price (its audit rows and budget); a dry run shows "unknown" instead."""
        pricing = self.image_pricing()
        listed = pricing.offer(image_size).standard_usd
        if listed is not None and self.image_price_usd is not None:
            return [f"GEMINI_IMAGE_PRICE_USD ignored: the registry prices {self.image_model} {image_size} at ${listed}"]
        if listed is None and not dry_run:
            pricing.usd_per_image(image_size)  # raises: no price, no paid run
        return []

    def describer(self) -> GeminiDescriber | None:
        """The vision model for likeness; None offline, where no model can look at a photo."""
        return GeminiDescriber(self.client(), self.vision_model) if self.uses_gemini else None

    def judge(self) -> Judge | None:
        """The quality judge (its model must have token prices in the registry); None offline."""
        return Judge(GeminiStructured(self.judge_client(), self.judge_model)) if self.uses_gemini else None


class ImageStorageResource(dg.ConfigurableResource):
    """Where portraits go: S3 (or R2, Tigris, MinIO) when a bucket is set, else a local folder."""

    local: bool | None = Field(default=None, description="IMAGE_STORAGE_LOCAL; default: local unless a bucket is set")
    local_dir: str = Field(default=str(DEFAULT_IMAGE_DIR), description="IMAGE_LOCAL_DIR")
    bucket_name: str | None = Field(default=None, description="S3_BUCKET_NAME")
    region: str = Field(default="us-east-1", description="S3_REGION")
    access_key_id: str | None = Field(default=None, description="S3_ACCESS_KEY_ID")
    secret_access_key: str | None = Field(default=None, description="S3_SECRET_ACCESS_KEY")
    public_url_base: str | None = Field(default=None, description="S3_PUBLIC_URL_BASE (CDN)")
    endpoint_url: str | None = Field(default=None, description="S3_ENDPOINT_URL for S3-compatible stores")
    max_pool_connections: int = Field(default=32, description="S3 connection pool; >= the engine's concurrency")

    _storage: ImageStorage | None = PrivateAttr(default=None)

    @property
    def uses_s3(self) -> bool:
        return not self.local and bool(self.bucket_name)

    def get_storage(self) -> ImageStorage:
        """One storage (and one S3 client) per resource instance."""
        if self._storage is None:
            self._storage = self._build()
        return self._storage

    def _build(self) -> ImageStorage:
        if self.local is False and not self.bucket_name:
            raise ConfigurationError("IMAGE_STORAGE_LOCAL=false needs S3_BUCKET_NAME (and the S3_* credentials)")
        if not self.uses_s3:
            return LocalImageStorage(Path(self.local_dir))
        from portrait_pipeline.defs.s3 import PortraitS3Resource  # dagster-aws only when a bucket is set: see there

        client = PortraitS3Resource(
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            max_pool_connections=self.max_pool_connections,
        ).get_client()
        assert self.bucket_name is not None
        return S3ImageStorage(client, self.bucket_name, self.public_url_base)


class LikenessResource(dg.ConfigurableResource):
    """How reference photos may be fetched: the SSRF allow-list and limits."""

    allow_hosts: str | None = Field(default=None, description="LIKENESS_FETCH_ALLOW_HOSTS: host:port,host:port")
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest reference accepted")
    timeout_s: float = Field(default=10.0, gt=0, description="Time allowed for one fetch")

    def policy(self) -> FetchPolicy:
        return FetchPolicy.from_allow_list(self.allow_hosts, max_bytes=self.max_bytes, timeout_s=self.timeout_s)


class QualitySettings(dg.ConfigurableResource):
    """Thresholds the quality checks judge a partition by."""

    max_failure_rate: float = Field(
        default=DEFAULT_MAX_FAILURE_RATE, ge=0, le=1, description="PORTRAIT_MAX_FAILURE_RATE: warn above (0.1 = 10%)"
    )
    min_quality_pass_rate: float = Field(
        default=0.8, ge=0, le=1, description="PORTRAIT_QUALITY_PASS_RATE: warn when fewer scored images pass the judge"
    )


class PortraitSettings(dg.ConfigurableResource):
    """Project settings that are not credentials: the current draft class and what automation covers."""

    current_draft_year: int = Field(
        default_factory=default_current_draft_year, description="CURRENT_DRAFT_YEAR; default: the next June draft"
    )
    sensor_styles: str = Field(default="default", description="PORTRAIT_SENSOR_STYLES, comma-separated")
    require_review: bool = Field(
        default=False,
        description="PORTRAIT_REQUIRE_REVIEW: new images wait for a reviewer's approval before going live",
    )
    review_url: str | None = Field(
        default=None, description="PORTRAIT_REVIEW_URL: where `portrait-pipeline review serve` is reachable"
    )
    schedule_lane: Lane = Field(
        default="batch", description="PORTRAIT_SCHEDULE_LANE: the schedules' backfills (batch: half price, within 24 h)"
    )
    sensor_lane: Lane = Field(default="standard", description="PORTRAIT_SENSOR_LANE: the new-prospects sensor's runs")
    quality_judge: bool = Field(
        default=True,
        description="PORTRAIT_QUALITY_JUDGE: score every stored portrait with GEMINI_JUDGE_MODEL (a not_scored row "
        "offline)",
    )
    quality_threshold: int = Field(
        default=DEFAULT_THRESHOLD,
        ge=0,
        le=100,
        description="PORTRAIT_QUALITY_THRESHOLD: below it (or with a failed criterion) an image waits for review",
    )
    max_quality_retries: int = Field(
        default=DEFAULT_MAX_RETRIES,
        ge=0,
        le=5,
        description="PORTRAIT_MAX_QUALITY_RETRIES: automatic regenerations of a player whose image failed, per run",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.automated_styles()  # a misspelt style stops the process at start, not at the sensor's first tick

    def review_page(self, partition_key: str) -> str | None:
        """The review desk's page of one partition, for links in the Dagster UI; None when no desk is configured."""
        if not self.review_url:
            return None
        return f"{self.review_url.rstrip('/')}/?partition={quote(partition_key, safe='')}"

    def automated_styles(self) -> list[Style]:
        """The styles the sensor and the schedules fill."""
        names = [name.strip() for name in self.sensor_styles.split(",") if name.strip()]
        try:
            return [parse_style(name) for name in names]
        except InvalidInput as exc:
            raise ConfigurationError(f"PORTRAIT_SENSOR_STYLES={self.sensor_styles!r}: {exc}") from None


# Every setting a deployment makes through the environment (the seed's names): resource → field → variable.
ENVIRONMENT: dict[str, dict[str, str]] = {
    "database": {"url": "DATABASE_URL"},
    "storage": {
        "local": "IMAGE_STORAGE_LOCAL",
        "local_dir": "IMAGE_LOCAL_DIR",
        "bucket_name": "S3_BUCKET_NAME",
        "region": "S3_REGION",
        "access_key_id": "S3_ACCESS_KEY_ID",
        "secret_access_key": "S3_SECRET_ACCESS_KEY",
        "public_url_base": "S3_PUBLIC_URL_BASE",
        "endpoint_url": "S3_ENDPOINT_URL",
    },
    "gemini": {
        "api_key": "GEMINI_API_KEY",
        "base_url": "GEMINI_BASE_URL",
        "image_model": "GEMINI_IMAGE_MODEL",
        "vision_model": "GEMINI_VISION_MODEL",
        "judge_model": "GEMINI_JUDGE_MODEL",
        "image_price_usd": "GEMINI_IMAGE_PRICE_USD",
        "max_concurrency": "GEMINI_MAX_CONCURRENCY",
        "requests_per_minute": "GEMINI_REQUESTS_PER_MINUTE",
        "shared_pacing": "GEMINI_SHARED_PACING",
        "renderer_choice": "PORTRAIT_RENDERER",
    },
    "settings": {
        "current_draft_year": "CURRENT_DRAFT_YEAR",
        "sensor_styles": "PORTRAIT_SENSOR_STYLES",
        "require_review": "PORTRAIT_REQUIRE_REVIEW",
        "review_url": "PORTRAIT_REVIEW_URL",
        "schedule_lane": "PORTRAIT_SCHEDULE_LANE",
        "sensor_lane": "PORTRAIT_SENSOR_LANE",
        "quality_judge": "PORTRAIT_QUALITY_JUDGE",
        "quality_threshold": "PORTRAIT_QUALITY_THRESHOLD",
        "max_quality_retries": "PORTRAIT_MAX_QUALITY_RETRIES",
    },
    "likeness": {"allow_hosts": "LIKENESS_FETCH_ALLOW_HOSTS"},
    "quality": {"max_failure_rate": "PORTRAIT_MAX_FAILURE_RATE", "min_quality_pass_rate": "PORTRAIT_QUALITY_PASS_RATE"},
}
RESOURCE_TYPES: dict[str, type[dg.ConfigurableResource]] = {
    "database": DatabaseResource,
    "storage": ImageStorageResource,
    "gemini": GeminiResource,
    "settings": PortraitSettings,
    "likeness": LikenessResource,
    "quality": QualitySettings,
}


# Models that passed the preflight in this process, by (quota, kind, model, day): until when, and their warnings. The
# CLI's partition runs are threads of one process, each with its own resources; without this each asked `models.get`
# again (80 partitions: 80-160 metadata requests). `models.get` only describes a model (its version, token limits and
# parameters: ai.google.dev/api/models#method:-models.get, read 2026-11-29), so remembering a pass loses nothing but
# a retirement within the 10 minutes, and a model retired meanwhile fails its calls with 404 NOT_FOUND "The requested
# resource wasn't found" (ai.google.dev/gemini-api/docs/troubleshooting, read 2026-11-29), which is not retried.
PREFLIGHT_TTL_S = 600.0
_PASSED: dict[tuple[str, str, str, date], tuple[float, list[str]]] = {}


def resources_from_env() -> dict[str, Any]:
    """The one place environment variables become configuration.

    Text settings (URLs, keys, bucket names, paths) are `dg.EnvVar`s, so Dagster stores and shows only the
    variable's name, never a value such as the password in DATABASE_URL. Numbers, switches and choices are not
    secrets: pydantic reads them from the variable's text ("8", "true", "0.1") and checks them here.
    """
    resources = {key: _resource_from_env(key) for key in RESOURCE_TYPES if key != "gemini"}
    # Gemini paces its calls through the same database (call_pacing), so every process keeps one rate.
    gemini = _resource_from_env("gemini", database=resources["database"])
    return {key: gemini if key == "gemini" else resources[key] for key in RESOURCE_TYPES}


def _resource_from_env(key: str, **resources: dg.ConfigurableResource) -> dg.ConfigurableResource:
    """One resource from its variables; `resources`: the other resources it holds (nested, as Dagster allows)."""
    cls, variables = RESOURCE_TYPES[key], ENVIRONMENT[key]
    values: dict[str, Any] = {**resources}
    for field, name in variables.items():
        value = os.environ.get(name)
        if value:
            text = cls.model_fields[field].annotation in (str, str | None)
            values[field] = dg.EnvVar(name) if text else value.strip()
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = [
            f"{variables[str(error['loc'][0])]}={os.environ.get(variables[str(error['loc'][0])])!r}: {error['msg']}"
            for error in exc.errors()
        ]
        raise ConfigurationError("; ".join(problems)) from None


@dataclass(frozen=True)
class Resources:
    """Every resource, configured and set up: what the CLI and scripts use outside a Dagster run."""

    database: DatabaseResource
    storage: ImageStorageResource
    gemini: GeminiResource
    settings: PortraitSettings
    likeness: LikenessResource
    quality: QualitySettings

    @classmethod
    @contextmanager
    def from_env(cls) -> Iterator[Resources]:
        """Build the environment's resources as Dagster would for a run (EnvVars resolved, setup done)."""
        with dg.build_resources(resources_from_env()) as built:
            yield cls(**{name: getattr(built, name) for name in RESOURCE_TYPES})


def generation_service(
    storage: ImageStorageResource,
    gemini: GeminiResource,
    likeness: LikenessResource,
    settings: PortraitSettings,
) -> ImageGenerationService:
    """The seed's ImageGenerationService wired from resources: the one code path of the asset and of scripts."""
    describer = gemini.describer()
    source = LikenessService(describer, likeness.policy()).for_generation if describer else None
    quality = None
    if settings.quality_judge:
        quality = QualityPolicy(gemini.judge(), settings.quality_threshold, settings.max_quality_retries)
    return ImageGenerationService(gemini.renderer(), storage.get_storage(), source, settings.require_review, quality)
