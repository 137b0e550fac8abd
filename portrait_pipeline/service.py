"""The seed's programmatic entry point: a ready-made generation service, built from the environment.

    from portrait_pipeline.service import image_generation_service
    await image_generation_service.generate_for_player(db=..., player=..., snapshot=..., style=...)

It sits above `defs` (it reads the resources) and nothing imports it, so it can cause no import cycle.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import dagster as dg

from portrait_pipeline.defs.resources import generation_service, resources_from_env
from portrait_pipeline.generation.player import ImageGenerationService


def __getattr__(name: str) -> Any:
    """`image_generation_service` is built on first use, so importing this module reads no environment."""
    if name != "image_generation_service":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _default_service()


@cache
def _default_service() -> ImageGenerationService:
    resources = resources_from_env()
    keys = ("storage", "gemini", "likeness", "settings")
    with dg.build_resources({key: resources[key] for key in keys}) as built:
        return generation_service(built.storage, built.gemini, built.likeness, built.settings)
