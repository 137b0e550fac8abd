"""Dagster resources: the database, image storage and Gemini, configured by the seed's environment variables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from botocore.config import Config
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from portrait_pipeline.cohorts import default_current_draft_year
from portrait_pipeline.costs import DEFAULT_IMAGE_MODEL
from portrait_pipeline.db import DEFAULT_DATABASE_URL, REPO_ROOT, check_migrated, engine_for, session_scope
from portrait_pipeline.errors import ConfigurationError
from portrait_pipeline.gemini import DEFAULT_VISION_MODEL, RENDERER_CHOICES, GeminiResource, RendererChoice
from portrait_pipeline.image_generation import ImageGenerationService
from portrait_pipeline.images import ContactSheet
from portrait_pipeline.likeness import FetchPolicy, LikenessService
from portrait_pipeline.storage import ImageStorage, LocalImageStorage, S3ImageStorage
from portrait_pipeline.styles import STYLES, Style, parse_style

DEFAULT_IMAGE_DIR = REPO_ROOT / ".portraits" / "images"
DEFAULT_MAX_FAILURE_RATE = 0.10


class PortraitS3Resource(S3Resource):
    """dagster-aws's S3Resource, plus the botocore settings S3-compatible stores need."""

    max_pool_connections: int = Field(default=32, description="HTTP pool size: at least the engine's concurrency.")

    def __repr_args__(self) -> Any:
        # Keep credentials out of repr()/str(), which end up in logs and error messages.
        hidden = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
        for name, value in super().__repr_args__():
            yield name, ("***" if name in hidden and value else value)

    def get_client(self) -> Any:
        import boto3
        from botocore import UNSIGNED

        config = Config(
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            max_pool_connections=self.max_pool_connections,
            # Path-style keeps bucket names out of DNS, which R2, MinIO and SeaweedFS expect.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # boto3's default CRC checksums break R2, MinIO and SeaweedFS over HTTPS.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        if self.use_unsigned_session:  # honoured by dagster-aws's S3Resource, so here too
            config = config.merge(Config(signature_version=UNSIGNED))
        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=config,
        )


class DatabaseResource(dg.ConfigurableResource):
    """The app's database (players and the audit trail): SQLite by default, PostgreSQL in production."""

    url: str = Field(default=DEFAULT_DATABASE_URL, description="SQLAlchemy URL; env DATABASE_URL.")

    @property
    def engine(self) -> Engine:
        return engine_for(self.url)

    def check(self) -> Engine:
        """The engine, after making sure the schema is migrated (a clear error otherwise)."""
        check_migrated(self.engine)
        return self.engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.check()) as db:
            yield db


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


class PortraitSettings(dg.ConfigurableResource):
    """Project settings that are not credentials: the current draft class and what automation covers."""

    current_draft_year: int = Field(
        default_factory=default_current_draft_year, description="CURRENT_DRAFT_YEAR; default: the next June draft"
    )
    sensor_styles: list[str] = Field(default=["default"], description="PORTRAIT_SENSOR_STYLES, comma-separated")

    def automated_styles(self) -> list[Style]:
        return [parse_style(style) for style in self.sensor_styles]


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={value!r}: write true or false")


def _env_secret(name: str) -> Any:
    """Secrets stay `EnvVar`s, so Dagster shows the variable's name, never its value."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def resources_from_env() -> dict[str, Any]:
    """The one place environment variables become configuration (the seed's names)."""
    env = os.environ
    storage = ImageStorageResource(
        local=_env_bool("IMAGE_STORAGE_LOCAL"),
        local_dir=env.get("IMAGE_LOCAL_DIR") or str(DEFAULT_IMAGE_DIR),
        bucket_name=env.get("S3_BUCKET_NAME") or None,
        region=env.get("S3_REGION") or "us-east-1",
        access_key_id=_env_secret("S3_ACCESS_KEY_ID"),
        secret_access_key=_env_secret("S3_SECRET_ACCESS_KEY"),
        public_url_base=env.get("S3_PUBLIC_URL_BASE") or None,
        endpoint_url=env.get("S3_ENDPOINT_URL") or None,
    )
    settings = PortraitSettings(
        current_draft_year=_env_int("CURRENT_DRAFT_YEAR", default_current_draft_year()),
        **({"sensor_styles": _env_list("PORTRAIT_SENSOR_STYLES")} if env.get("PORTRAIT_SENSOR_STYLES") else {}),
    )
    return {
        "database": DatabaseResource(url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
        "storage": storage,
        "gemini": GeminiResource(
            api_key=_env_secret("GEMINI_API_KEY"),
            base_url=env.get("GEMINI_BASE_URL") or None,
            image_model=env.get("GEMINI_IMAGE_MODEL") or DEFAULT_IMAGE_MODEL,
            vision_model=env.get("GEMINI_VISION_MODEL") or DEFAULT_VISION_MODEL,
            max_concurrency=_env_int("GEMINI_MAX_CONCURRENCY", 8),
            requests_per_minute=_env_int("GEMINI_REQUESTS_PER_MINUTE", 60),
            renderer_choice=_env_choice("PORTRAIT_RENDERER", RENDERER_CHOICES),
        ),
        "settings": settings,
        "likeness": LikenessResource(allow_hosts=env.get("LIKENESS_FETCH_ALLOW_HOSTS") or None),
        "quality": QualitySettings(max_failure_rate=_env_float("PORTRAIT_MAX_FAILURE_RATE", DEFAULT_MAX_FAILURE_RATE)),
    }


def _env_choice(name: str, choices: tuple[RendererChoice, ...]) -> RendererChoice:
    value = os.environ.get(name) or choices[0]
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigurationError(f"{name}={value!r}: choose {', '.join(choices)}")


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r}: expected a number like 0.1") from None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r}: expected a whole number") from None


def _env_list(name: str) -> list[str]:
    values = [part.strip() for part in os.environ[name].split(",") if part.strip()]
    unknown = [value for value in values if value not in STYLES]
    if unknown:
        raise ConfigurationError(f"{name}: unknown style(s) {', '.join(unknown)}; choose {', '.join(STYLES)}")
    return values


def generation_service(
    storage: ImageStorageResource,
    gemini: GeminiResource,
    likeness: LikenessResource,
    contact_sheet: ContactSheet | None = None,
) -> ImageGenerationService:
    """The seed's ImageGenerationService wired from resources: the one code path of the asset and of scripts."""
    describer = gemini.describer()
    source = LikenessService(describer, likeness.policy()).for_generation if describer else None
    return ImageGenerationService(gemini.renderer(), storage.get_storage(), source, contact_sheet)
