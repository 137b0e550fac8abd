"""The renderer interface: prompts in, image bytes out; Gemini and the offline poster renderer implement it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from portrait_pipeline.model_registry import ImagePricing, ImageSize
from portrait_pipeline.styles import Style


@dataclass(frozen=True)
class RenderRequest:
    player_id: int
    seed: str
    style: Style
    system_prompt: str
    user_prompt: str
    size: ImageSize


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class Renderer(Protocol):
    """Turns prompts into image bytes; raises GenerationFailed with a reason when it cannot."""

    @property
    def model(self) -> str: ...

    @property
    def pricing(self) -> ImagePricing:
        """What the renderer's images cost, per size: the audit rows and the budget use it."""
        ...

    async def render(self, request: RenderRequest) -> RenderedImage: ...
