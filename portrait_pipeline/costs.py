"""Sizes and prices: one table of what each model is asked for and what an image costs."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

from portrait_pipeline.errors import InvalidInput

ImageSize = Literal["512", "1K", "2K", "4K"]
IMAGE_SIZES: tuple[ImageSize, ...] = get_args(ImageSize)
OFFLINE_MODEL = "offline-renderer"
DEFAULT_IMAGE_MODEL = "gemini-3-pro-image-preview"
DEFAULT_VISION_MODEL = "gemini-2.5-flash"

# Every size is 4:5; 1K is the seed's 800x1000.
TARGET_DIMENSIONS: dict[ImageSize, tuple[int, int]] = {
    "512": (400, 500),
    "1K": (800, 1000),
    "2K": (1600, 2000),
    "4K": (3200, 4000),
}


@dataclass(frozen=True)
class SizePrice:
    api_size: str | None  # what `image_config.image_size` gets; None: the model takes no size
    usd_per_image: Decimal
    note: str = ""


# Gemini API list prices per output image; update this table when Google changes them. No 512 size:
# it is generated at 1K and downscaled, at the 1K price.
PRICES: dict[str, dict[ImageSize, SizePrice]] = {
    "gemini-3-pro-image-preview": {
        "512": SizePrice("1K", Decimal("0.134"), "no 512 in the API: made at 1K, downscaled"),
        "1K": SizePrice("1K", Decimal("0.134")),
        "2K": SizePrice("2K", Decimal("0.134")),
        "4K": SizePrice("4K", Decimal("0.24")),
    },
    "gemini-2.5-flash-image": {
        "512": SizePrice(None, Decimal("0.039"), "fixed ~1024px output, downscaled"),
        "1K": SizePrice(None, Decimal("0.039"), "fixed ~1024px output, resized"),
    },
    OFFLINE_MODEL: {size: SizePrice(None, Decimal("0")) for size in IMAGE_SIZES},
}


def parse_image_size(value: str, model: str = DEFAULT_IMAGE_MODEL) -> ImageSize:
    """The size if the model offers it, else an error that lists the choices."""
    choices = sizes_for(model)
    for size in choices:
        if value == size:
            return size
    raise InvalidInput(f"--size {value}: choose {', '.join(choices)}")


def sizes_for(model: str) -> tuple[ImageSize, ...]:
    return tuple(PRICES.get(model, PRICES[DEFAULT_IMAGE_MODEL]))


def price(model: str, size: ImageSize) -> SizePrice:
    table = PRICES.get(model)
    if table is None:
        raise InvalidInput(f"image model {model!r} has no price in costs.PRICES; add it before generating")
    if size not in table:
        raise InvalidInput(f"--size {size}: {model} offers {', '.join(table)}")
    return table[size]


def estimate_cost(model: str, size: ImageSize, images: int) -> Decimal:
    return price(model, size).usd_per_image * images


# Image output tokens are what Google bills; `usage_metadata` lets the audit check the estimate against them.
USD_PER_MILLION_OUTPUT_TOKENS: dict[str, Decimal] = {
    "gemini-3-pro-image-preview": Decimal("120"),
    "gemini-2.5-flash-image": Decimal("30"),
}


def token_cost(model: str, output_tokens: int) -> Decimal:
    """What the answers' token counts say was spent (0 for models without a token price, e.g. offline)."""
    return USD_PER_MILLION_OUTPUT_TOKENS.get(model, Decimal("0")) * output_tokens / 1_000_000
