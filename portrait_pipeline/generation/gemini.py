"""Gemini through google-genai, the one module that imports it: portraits, likeness descriptions, retries, pacing."""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from portrait_pipeline.errors import ConfigurationError, GenerationFailed
from portrait_pipeline.generation.pacing import SlotStore, shared_pacing
from portrait_pipeline.generation.renderer import RenderedImage, RenderRequest
from portrait_pipeline.interrupts import check_before_sending
from portrait_pipeline.model_registry import MODELS, ImagePricing, ModelKind, lifecycle_problems, replacement_text
from portrait_pipeline.prompts import LIKENESS_PROMPT

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call is retried: 429, 5xx and timeouts, with backoff that honours the server's RetryInfo.

    A 429 is the server pacing us, not the request failing: for `quota_wait_s` after a call's first attempt its
    429s are waited out (the shared pacer slows down and honours RetryInfo) without using up `max_attempts`.
    """

    max_attempts: int = 5
    initial_s: float = 1.0
    max_s: float = 60.0
    quota_wait_s: float = 900.0


class GeminiClient:
    """One google-genai client; its calls share the process's pacing for the same key and endpoint (`call`)."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        requests_per_minute: int = 60,
        max_concurrency: int = 8,
        retry: RetryPolicy = RetryPolicy(),
        store: SlotStore | None = None,
        quota_model: str = "",
    ) -> None:
        # The SDK's own retries ignore RetryInfo, so `call` retries instead (retry_options stays None).
        options = types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000))
        self.sdk = genai.Client(api_key=api_key, http_options=options)
        self.requests_per_minute = requests_per_minute
        self.retry = retry
        # Every run of this process calling the same quota shares one rate and one pool of calls in flight.
        # (`quota_model`: a model paced on a quota of its own, e.g. the quality judge's; "" for the image model's.)
        self.pacing = shared_pacing(api_key, base_url, requests_per_minute, max_concurrency, store, quota_model)

    def __repr__(self) -> str:  # never the key
        return f"GeminiClient(requests_per_minute={self.requests_per_minute})"

    def _sync_retry_policy(self, retryable: Callable[[BaseException], bool] | None = None) -> dict[str, Any]:
        # Outside a run's loop there is no pacer to wait out 429s: each one counts and waits its RetryInfo.
        attempts = _Attempts(replace(self.retry, quota_wait_s=0))
        return {
            "stop": attempts.stop,
            "wait": attempts.wait,
            "retry": retry_if_exception(retryable or is_retryable),
            "reraise": True,
        }

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run one API call in a shared slot at a paced start time, retrying 429, 5xx and timeouts.

        A stop request that came while the call waited for its slot or start time sends nothing (`NotSent`).
        """
        attempts = _Attempts(self.retry)
        retrying = AsyncRetrying(
            stop=attempts.stop, wait=attempts.wait, retry=retry_if_exception(is_retryable), reraise=True
        )
        pacer, slots = self.pacing.pacer, self.pacing.slots
        try:
            async for attempt in retrying:
                with attempt:
                    async with slots:
                        ticket = await pacer.wait()
                        check_before_sending()
                        try:
                            return await request()
                        except genai_errors.APIError as exc:
                            if exc.code == 429:
                                pacer.throttled(ticket, retry_delay_s(exc))
                            raise
        except (genai_errors.APIError, httpx2.HTTPError) as exc:
            raise _failure(exc, attempt.retry_state.attempt_number) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def call_sync(self, request: Callable[[], T], retryable: Callable[[BaseException], bool] | None = None) -> T:
        """`call` for the few requests made outside a run's event loop (the preflight's `models.get`, the Batch
        API's create and polls), with the same retries (or only those `retryable` allows); outside the rate limiter,
        which lives in that loop."""
        try:
            for attempt in Retrying(**self._sync_retry_policy(retryable)):
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


class _Attempts:
    """One call's retry accounting for tenacity: which failures use up attempts, and how long to back off.

    While the quota wait lasts a 429 uses no attempt and needs no backoff here: the shared pacer has slowed
    down and holds every start until the RetryInfo delay. Other failures back off exponentially, with jitter,
    never shorter than the delay the server asked for.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + policy.quota_wait_s
        self.used = 0
        self._backoff = wait_exponential_jitter(policy.initial_s, policy.max_s)

    def wait(self, state: RetryCallState) -> float:  # tenacity calls wait, then stop
        exc = state.outcome.exception() if state.outcome else None
        if _is_throttle(exc) and time.monotonic() < self.deadline:
            return 0.0
        self.used += 1
        counted = copy.copy(state)
        counted.attempt_number = self.used  # backoff grows with the failures that count
        backoff = self._backoff(counted)
        hinted = retry_delay_s(exc) if exc else None
        return max(backoff, hinted) if hinted is not None else backoff

    def stop(self, state: RetryCallState) -> bool:
        return self.used >= self.policy.max_attempts


def _is_throttle(exc: BaseException | None) -> bool:
    return isinstance(exc, genai_errors.APIError) and exc.code == 429


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


@dataclass(frozen=True)
class StructuredAnswer:
    """A vision model's JSON answer about an image, unparsed, with what it cost in tokens; `blocked` says why there
    is no answer (a safety block of the prompt or of the answer), None when there is one."""

    text: str
    blocked: str | None
    prompt_tokens: int | None
    output_tokens: int | None  # candidates + thoughts: both are billed at the output price
    total_tokens: int | None


class GeminiStructured:
    """Structured answers about an image from a vision model (the quality judge's calls).

    Structured output: `response_mime_type="application/json"` with a `response_schema` (a pydantic model, which the
    SDK turns into the API's Schema) constrains the answer to that schema (ai.google.dev/gemini-api/docs/
    structured-output; firebase.google.com/docs/ai-logic/generate-structured-output lists gemini-3.8-flash among the
    models that support it; read 2026-11-29). Images go inline as a Part (Part.from_bytes) when the whole request is
    under 20 MB (ai.google.dev/gemini-api/docs/image-understanding, read 2026-11-29): a stored portrait is ~1 MB.
    """

    def __init__(self, client: GeminiClient, model: str) -> None:
        self._client = client
        self.model = model

    async def ask(self, image: bytes, mime_type: str, prompt: str, schema: type[Any]) -> StructuredAnswer:
        sdk = self._client.sdk
        contents: Any = [types.Part.from_bytes(data=image, mime_type=mime_type), prompt]
        config = types.GenerateContentConfig(response_mime_type="application/json", response_schema=schema)
        response = await self._client.call(
            lambda: sdk.aio.models.generate_content(model=self.model, contents=contents, config=config)
        )
        usage = response.usage_metadata
        output = None
        if usage is not None and (usage.candidates_token_count is not None or usage.thoughts_token_count is not None):
            output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        blocked = None
        if response.prompt_feedback and response.prompt_feedback.block_reason:
            blocked = f"the prompt was blocked ({response.prompt_feedback.block_reason.value})"
        elif _finish_reason(response) not in ("STOP", "MAX_TOKENS", "unknown"):
            blocked = f"the answer stopped with finish reason {_finish_reason(response)}"
        return StructuredAnswer(
            text=(response.text or "") if blocked is None else "",
            blocked=blocked,
            prompt_tokens=usage.prompt_token_count if usage else None,
            output_tokens=output,
            total_tokens=usage.total_token_count if usage else None,
        )


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


# The Batch API (ai.google.dev/gemini-api/docs/batch-api, read 2026-11-29): the same GenerateContentRequests at 50%
# of the price, a 24 h turnaround target; inline requests are capped at 20 MB in total, a JSONL input file (through
# the Files API) at 2 GB; a job pending or running for more than 48 h ends JOB_STATE_EXPIRED. `batches.create` is
# not idempotent (the same request twice is two jobs), so it is retried only on 429, which creates nothing.
ENDED_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
INLINE_LIMIT_BYTES = 20_000_000


@dataclass(frozen=True)
class BatchSubmission:
    name: str  # "batches/..."
    input_file: str | None  # "files/..." when the requests went as a JSONL file


@dataclass(frozen=True)
class BatchStatus:
    """A job as one poll saw it; once it succeeded, its answers by request key (an image, or why there is none)."""

    name: str
    state: str
    done: bool
    answers: Mapping[str, RenderedImage | str] | None = None  # an inline job's, read with the poll
    results_file: str | None = None  # a file job's answers ("files/..."), read a line at a time by `batch_answers`

    @property
    def answered(self) -> bool:
        return self.answers is not None or self.results_file is not None


def _only_rejections(exc: BaseException) -> bool:
    return isinstance(exc, genai_errors.APIError) and exc.code == 429


def submit_batch(
    client: GeminiClient,
    pricing: ImagePricing,
    requests: Sequence[RenderRequest],
    display_name: str,
    inline_limit_bytes: int,
    inline_max_requests: int,
    keys: Sequence[str] | None = None,
) -> BatchSubmission:
    """One job for `requests`, each under its key (default: the player id): inline when small, else a JSONL file
    (Files API). Inline answers come back all at once in a poll, a file's can be read a line at a time: only a job
    of at most `inline_max_requests` goes inline."""
    keys = keys if keys is not None else [str(request.player_id) for request in requests]
    lines = [_jsonl_line(pricing, request, key) for request, key in zip(requests, keys, strict=True)]
    sdk = client.sdk
    if len(requests) <= inline_max_requests and sum(len(line) for line in lines) <= inline_limit_bytes:
        inline = [
            types.InlinedRequest(
                contents=request.user_prompt,
                config=content_config(pricing, request),
                metadata={"key": key},
            )
            for request, key in zip(requests, keys, strict=True)
        ]
        created = client.call_sync(
            lambda: sdk.batches.create(model=pricing.model, src=inline, config={"display_name": display_name}),
            _only_rejections,
        )
        return BatchSubmission(_name(created.name), None)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requests.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        upload = types.UploadFileConfig(display_name=display_name, mime_type="jsonl")
        uploaded = client.call_sync(lambda: sdk.files.upload(file=path, config=upload))
    file_name = _name(uploaded.name)
    created = client.call_sync(
        lambda: sdk.batches.create(model=pricing.model, src=file_name, config={"display_name": display_name}),
        _only_rejections,
    )
    return BatchSubmission(_name(created.name), file_name)


def _jsonl_line(pricing: ImagePricing, request: RenderRequest, key: str) -> str:
    """One JSONL input line ({"key", "request"}): the GenerateContentRequest of `content_config`, as REST JSON."""
    config = content_config(pricing, request)
    image = config.image_config
    generation: dict[str, Any] = {"responseModalities": config.response_modalities}
    if image is not None:
        generation["imageConfig"] = image.model_dump(by_alias=True, exclude_none=True)
    body = {
        "contents": [{"role": "user", "parts": [{"text": request.user_prompt}]}],
        "systemInstruction": {"parts": [{"text": request.system_prompt}]},
        "generationConfig": generation,
    }
    return json.dumps({"key": key, "request": body})


def poll_batch(client: GeminiClient, name: str) -> BatchStatus:
    """The job's state; once it succeeded, every request's answer read like a standard one (`image_from`)."""
    sdk = client.sdk
    job = client.call_sync(lambda: sdk.batches.get(name=name))
    state = job.state.name if job.state else "JOB_STATE_UNSPECIFIED"
    if state != "JOB_STATE_SUCCEEDED":
        return BatchStatus(name, state, state in ENDED_STATES)
    answers: dict[str, RenderedImage | str] = {}
    dest = job.dest
    if dest is not None and dest.inlined_responses:
        for index, item in enumerate(dest.inlined_responses):
            key = str((item.metadata or {}).get("key", index))
            answers[key] = _answer(item.response, item.error.message if item.error else None, item.error)
    elif dest is not None and dest.file_name:
        return BatchStatus(name, state, True, results_file=dest.file_name)
    return BatchStatus(name, state, True, answers)


def batch_answers(client: GeminiClient, status: BatchStatus) -> Generator[tuple[str, RenderedImage | str]]:
    """A succeeded job's answers by key. A results file (one GenerateContentResponse or status per line, in the
    order of the requests: ai.google.dev/gemini-api/docs/batch-api, read 2026-11-29) is streamed to a temporary
    file by the SDK and read a line at a time, so a job's images are never all in memory at once."""
    if status.answers is not None:
        yield from status.answers.items()
        return
    if status.results_file is None:
        return
    sdk, file_name = client.sdk, status.results_file
    with tempfile.TemporaryDirectory(prefix="batch-results-") as folder:
        path = Path(folder) / "results.jsonl"
        client.call_sync(lambda: sdk.files.download(file=file_name, destination=path))
        with path.open("rb") as lines:
            for line in lines:
                if line.strip():
                    yield _file_answer(json.loads(line))


def _file_answer(item: dict[str, Any]) -> tuple[str, RenderedImage | str]:
    error = item.get("error") or item.get("status")
    found = item.get("response")
    response = types.GenerateContentResponse.model_validate(found) if found is not None else None
    return str(item.get("key")), _answer(response, (error or {}).get("message"), error)


def _answer(response: types.GenerateContentResponse | None, message: str | None, error: object) -> RenderedImage | str:
    if error is not None or response is None:
        code = getattr(error, "code", None) or (error.get("code") if isinstance(error, dict) else None)
        return f"the batch job answered this request with error {code or ''}: {message or 'no reason given'}".replace(
            "  ", " "
        )
    try:
        return image_from(response)
    except GenerationFailed as exc:
        return str(exc)


def batch_names_by_display_name(client: GeminiClient) -> dict[str, str]:
    """Every job the API lists for this key, display name -> name (a run that died may have created one)."""
    sdk = client.sdk
    jobs = client.call_sync(lambda: list(sdk.batches.list(config={"page_size": 100})))
    return {job.display_name: job.name for job in jobs if job.display_name and job.name}


def cancel_batch(client: GeminiClient, name: str) -> None:
    sdk = client.sdk
    client.call_sync(lambda: sdk.batches.cancel(name=name))


def _name(name: str | None) -> str:
    if not name:
        raise GenerationFailed("the Batch API answered without a name")
    return name
