"""Gemini through google-genai, the one module that imports it: portraits, likeness descriptions, retries, pacing."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import httpx2
from aiolimiter import AsyncLimiter
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from portrait_pipeline.errors import ConfigurationError, GenerationFailed
from portrait_pipeline.generation.renderer import RenderedImage, RenderRequest
from portrait_pipeline.model_registry import MODELS, ImagePricing, ModelKind, lifecycle_problems, replacement_text
from portrait_pipeline.prompts import LIKENESS_PROMPT

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call is retried: 429, 5xx and timeouts, with backoff that honours the server's RetryInfo."""

    max_attempts: int = 5
    initial_s: float = 1.0
    max_s: float = 60.0


class GeminiClient:
    """One google-genai client and one rate limiter: every call of a run goes through `call`."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        requests_per_minute: int = 60,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        # The SDK's own retries ignore RetryInfo, so `call` retries instead (retry_options stays None).
        options = types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000))
        self.sdk = genai.Client(api_key=api_key, http_options=options)
        self.requests_per_minute = requests_per_minute
        self.retry = retry
        self._limiter: AsyncLimiter | None = None

    def __repr__(self) -> str:  # never the key
        return f"GeminiClient(requests_per_minute={self.requests_per_minute})"

    def _retry_policy(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.retry.max_attempts),
            "wait": _WaitForServer(wait_exponential_jitter(self.retry.initial_s, self.retry.max_s)),
            "retry": retry_if_exception(is_retryable),
            "reraise": True,
        }

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run one API call within the rate limit, retrying 429, 5xx and timeouts with backoff."""
        if self._limiter is None:
            # Spread the per-minute quota evenly: bursts are what trigger 429s. Made on first use, inside the
            # event loop that will use it.
            self._limiter = AsyncLimiter(self.requests_per_minute / 60, 1)
        try:
            async for attempt in AsyncRetrying(**self._retry_policy()):
                with attempt:
                    async with self._limiter:
                        return await request()
        except (genai_errors.APIError, httpx2.HTTPError) as exc:
            raise _failure(exc, attempt.retry_state.attempt_number) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def call_sync(self, request: Callable[[], T]) -> T:
        """`call` for the few requests made before a run's event loop (the preflight's `models.get`), with the
        same retries; outside the rate limiter, which lives in that loop (one request per model per run)."""
        try:
            for attempt in Retrying(**self._retry_policy()):
                with attempt:
                    return request()
        except (genai_errors.APIError, httpx2.HTTPError) as exc:
            raise _failure(exc, attempt.retry_state.attempt_number) from None
        raise AssertionError("unreachable: tenacity either returns or raises")


class GeminiCallFailed(GenerationFailed):
    """A call that ended in an error answer (`code`, e.g. 404) or no answer at all (`code` None)."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


def _failure(exc: genai_errors.APIError | httpx2.HTTPError, attempts: int) -> GeminiCallFailed:
    if isinstance(exc, genai_errors.APIError):
        return GeminiCallFailed(_describe_error(exc, attempts), exc.code)
    return GeminiCallFailed(f"Gemini did not answer ({exc.__class__.__name__}) after {attempts} attempt(s)", None)


def is_retryable(exc: BaseException) -> bool:
    """429 and 5xx answers and transport timeouts; other 4xx mean the request itself is wrong."""
    if isinstance(exc, genai_errors.APIError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, httpx2.TimeoutException | httpx2.NetworkError)


def retry_delay_s(exc: BaseException) -> float | None:
    """The server's `RetryInfo.retryDelay` ("7s", "0.25s"), which the SDK does not honour itself."""
    details = getattr(exc, "details", None)
    error = details.get("error", {}) if isinstance(details, dict) else {}
    for detail in error.get("details", []) if isinstance(error, dict) else []:
        if isinstance(detail, dict) and detail.get("@type", "").endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"([0-9.]+)s", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


class _WaitForServer:
    """Exponential backoff with jitter, but never shorter than the delay the server asked for."""

    def __init__(self, backoff: Callable[[RetryCallState], float]) -> None:
        self._backoff = backoff

    def __call__(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_delay_s(exc) if exc else None
        return max(backoff, hinted) if hinted is not None else backoff


def _describe_error(exc: genai_errors.APIError, attempts: int) -> str:
    message = (exc.message or "").strip()[:200]
    return f"Gemini answered {exc.code} {exc.status or ''} after {attempts} attempt(s): {message}".replace("  ", " ")


class GeminiRenderer:
    """Portraits from a Gemini image model, read carefully: no image → a reason, never a crash."""

    def __init__(self, client: GeminiClient, pricing: ImagePricing) -> None:
        self._client = client
        self.model = pricing.model
        self.pricing = pricing

    async def render(self, request: RenderRequest) -> RenderedImage:
        config = content_config(self.pricing, request)
        sdk = self._client.sdk
        response = await self._client.call(
            lambda: sdk.aio.models.generate_content(model=self.model, contents=request.user_prompt, config=config)
        )
        return image_from(response)


def content_config(pricing: ImagePricing, request: RenderRequest) -> types.GenerateContentConfig:
    """A portrait's generation config: the same for a standard call and a batch job's request."""
    return types.GenerateContentConfig(
        system_instruction=request.system_prompt,
        response_modalities=["IMAGE"],
        image_config=types.ImageConfig(aspect_ratio="4:5", image_size=pricing.api_size(request.size)),
    )


class GeminiDescriber:
    """Neutral descriptions of reference photos from the vision model (the seed's likeness step)."""

    def __init__(self, client: GeminiClient, model: str) -> None:
        self._client = client
        self.model = model

    async def describe(self, image: bytes, mime_type: str) -> str:
        sdk = self._client.sdk
        contents: Any = [types.Part.from_bytes(data=image, mime_type=mime_type), LIKENESS_PROMPT]
        response = await self._client.call(lambda: sdk.aio.models.generate_content(model=self.model, contents=contents))
        text = (response.text or "").strip()
        if not text:
            raise GenerationFailed(f"the vision model returned no description ({_finish_reason(response)})")
        return text


def image_from(response: types.GenerateContentResponse) -> RenderedImage:
    """The first image part of an answer, with token usage; otherwise a reason in words."""
    usage = response.usage_metadata
    tokens = {
        "prompt_tokens": usage.prompt_token_count if usage else None,
        "output_tokens": usage.candidates_token_count if usage else None,
        "total_tokens": usage.total_token_count if usage else None,
    }
    if response.prompt_feedback and response.prompt_feedback.block_reason:
        raise GenerationFailed(f"no image: Gemini blocked the prompt ({response.prompt_feedback.block_reason.value})")
    if not response.candidates:
        raise GenerationFailed("no image: Gemini returned no candidates")
    candidate = response.candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    for part in parts:
        if part.inline_data and part.inline_data.data:
            return RenderedImage(data=part.inline_data.data, **tokens)
    reason = _finish_reason(response)
    text = " ".join(part.text for part in parts if part.text)[:200]
    if reason not in ("STOP", "unknown"):
        raise GenerationFailed(f"no image: Gemini stopped with finish reason {reason}")
    if text:
        raise GenerationFailed(f"no image: Gemini answered with text only ({text!r})")
    raise GenerationFailed("no image in Gemini's answer")


def _finish_reason(response: types.GenerateContentResponse) -> str:
    candidate = response.candidates[0] if response.candidates else None
    return candidate.finish_reason.value if candidate and candidate.finish_reason else "unknown"


def check_model(client: GeminiClient, model: str, kind: ModelKind, today: date) -> list[str]:
    """Whether `model` may be called as the run's `kind` model: the registry's lifecycle, then the API's `models.get`.

    Raises ConfigurationError (a predicate: "was shut down on ...; use X instead") when it may not: shut down by
    the registry's date (no request made), or not served by the API. A retired id answers 404 NOT_FOUND, "This model
    models/... is no longer available" (the API's answer as quoted in public issue reports, e.g.
    github.com/The-Pocket/PocketFlow-Tutorial-Codebase-Knowledge/issues/175; read 2026-11-29); models.get is
    GET /v1beta/models/{id} (ai.google.dev/api/models). Returns warnings: a shutdown within 30 days, a
    deprecation, a model the registry does not know.
    """
    refusal, warnings = lifecycle_problems(model, kind, today)
    if refusal is not None:
        raise ConfigurationError(refusal)
    try:
        found = client.call_sync(lambda: client.sdk.models.get(model=model))
    except GeminiCallFailed as exc:
        if exc.code == 404:
            raise ConfigurationError(f"is not served by the API ({exc}); {replacement_text(model)}") from None
        raise ConfigurationError(f"could not be checked: {exc}") from None
    # The Model resource lists the methods it serves, supportedGenerationMethods (ai.google.dev/api/models).
    if found.supported_actions and "generateContent" not in found.supported_actions:
        raise ConfigurationError(f"does not serve generateContent ({', '.join(found.supported_actions)})")
    if model not in MODELS:
        warnings.append(
            "is not in portrait_pipeline/model_registry.py: the API has it, but no lifecycle dates are known"
        )
    return warnings
