"""Gemini: the one module that talks to google-genai, for portraits and for likeness descriptions."""

from __future__ import annotations

import logging
from typing import Literal, get_args

import dagster as dg
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import Field, PrivateAttr

from portrait_pipeline.costs import DEFAULT_IMAGE_MODEL, price
from portrait_pipeline.errors import ConfigurationError, GenerationFailed
from portrait_pipeline.image_generation import OfflineRenderer, RenderedImage, Renderer, RenderRequest

log = logging.getLogger(__name__)

DEFAULT_VISION_MODEL = "gemini-2.5-flash"
RendererChoice = Literal["auto", "gemini", "offline"]
RENDERER_CHOICES: tuple[RendererChoice, ...] = get_args(RendererChoice)


class GeminiResource(dg.ConfigurableResource):
    """Gemini settings and client; without an API key the offline renderer stands in."""

    api_key: str | None = Field(default=None, description="GEMINI_API_KEY (secret)")
    base_url: str | None = Field(default=None, description="GEMINI_BASE_URL: a gateway, proxy or test server")
    image_model: str = Field(default=DEFAULT_IMAGE_MODEL, description="GEMINI_IMAGE_MODEL")
    vision_model: str = Field(default=DEFAULT_VISION_MODEL, description="GEMINI_VISION_MODEL (likeness)")
    timeout_s: float = Field(default=120.0, description="Per-request timeout in seconds")
    max_concurrency: int = Field(default=8, ge=1, description="GEMINI_MAX_CONCURRENCY: calls in flight per run")
    requests_per_minute: int = Field(default=60, ge=1, description="GEMINI_REQUESTS_PER_MINUTE per run")
    renderer_choice: RendererChoice = Field(default="auto", description="PORTRAIT_RENDERER: auto, gemini, offline")

    _client: genai.Client | None = PrivateAttr(default=None)

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

    def client(self) -> genai.Client:
        """One client per resource instance (its HTTP pool is shared by every call)."""
        if self._client is None:
            options = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout_s * 1000))
            self._client = genai.Client(api_key=self.api_key, http_options=options)
        return self._client

    def renderer(self) -> Renderer:
        if not self.uses_gemini:
            log.info("No GEMINI_API_KEY: portraits come from the offline renderer (placeholder posters, $0).")
            return OfflineRenderer()
        return GeminiRenderer(self.client(), self.image_model)


class GeminiRenderer:
    """Portraits from a Gemini image model, read carefully: no image → a reason, never a crash."""

    def __init__(self, client: genai.Client, model: str) -> None:
        self._client = client
        self.model = model

    async def render(self, request: RenderRequest) -> RenderedImage:
        api_size = price(self.model, request.size).api_size
        config = types.GenerateContentConfig(
            system_instruction=request.system_prompt,
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="4:5", image_size=api_size),
        )
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model, contents=request.user_prompt, config=config
            )
        except genai_errors.APIError as exc:
            raise GenerationFailed(f"Gemini answered {exc.code} {exc.status}: {exc.message}") from None
        return _image_from(response)


def _image_from(response: types.GenerateContentResponse) -> RenderedImage:
    usage = response.usage_metadata
    tokens = {
        "prompt_tokens": usage.prompt_token_count if usage else None,
        "output_tokens": usage.candidates_token_count if usage else None,
        "total_tokens": usage.total_token_count if usage else None,
    }
    if response.prompt_feedback and response.prompt_feedback.block_reason:
        raise GenerationFailed(f"prompt blocked by Gemini ({response.prompt_feedback.block_reason.value})")
    if not response.candidates:
        raise GenerationFailed("Gemini returned no candidates")
    candidate = response.candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    for part in parts:
        if part.inline_data and part.inline_data.data:
            return RenderedImage(data=part.inline_data.data, **tokens)
    reason = candidate.finish_reason.value if candidate.finish_reason else "unknown"
    text = " ".join(part.text for part in parts if part.text)[:200]
    if reason != "STOP":
        raise GenerationFailed(f"no image: Gemini stopped with finish reason {reason}")
    raise GenerationFailed(f"no image: Gemini answered with text only ({text!r})" if text else "no image in answer")
