"""The model registry: every Gemini model this project knows, what it is asked for, what it costs, when it dies.

The one place a model is added. Sizes, prices and lifecycle dates are facts with sources; where a fact was not
published in what we could read, the field is None ("unknown") and the source says so: never a guess shown as a
price. The token-based cost (the answers' `usageMetadata` x the token price) stays the measured truth.
A model outside the registry still runs when the API has it (see `pricing` and GEMINI_IMAGE_PRICE_USD).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Literal, get_args

from portrait_pipeline.errors import ConfigurationError, InvalidInput

ImageSize = Literal["512", "1K", "2K", "4K"]
IMAGE_SIZES: tuple[ImageSize, ...] = get_args(ImageSize)
ModelKind = Literal["image", "vision"]
Lane = Literal["standard", "batch"]  # interactive calls, or the Batch API at its own price
OFFLINE_MODEL = "offline-renderer"
WARN_DAYS = 30  # a shutdown this close warns in the run log and the CLI

# Every size is 4:5; 1K is the seed's 800x1000.
TARGET_DIMENSIONS: dict[ImageSize, tuple[int, int]] = {
    "512": (400, 500),
    "1K": (800, 1000),
    "2K": (1600, 2000),
    "4K": (3200, 4000),
}


@dataclass(frozen=True)
class SizeOffer:
    """One size of one image model: the `image_config.image_size` it is asked for and USD per image."""

    api_size: str | None  # None: the model takes no size (fixed output, resized here)
    standard_usd: Decimal | None  # None: not published in what we could read
    batch_usd: Decimal | None
    note: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """One model id: its kind, sizes and prices (with their source) and its lifecycle (with its source)."""

    id: str
    kind: ModelKind
    sizes: Mapping[ImageSize, SizeOffer] = field(default_factory=dict)  # image models only
    input_usd_per_million: Decimal | None = None  # text/image input tokens
    output_usd_per_million: Decimal | None = None  # output tokens (image models: image-output tokens)
    price_source: str = ""
    released: date | None = None
    deprecated: date | None = None  # deprecated without a shutdown date: warn, still run
    shutdown: date | None = None  # from this day the model is gone: refuse
    replacement: str | None = None
    lifecycle_source: str = ""
    note: str = ""

    def is_retired(self, today: date) -> bool:
        return self.shutdown is not None and today >= self.shutdown


def _half(usd: str) -> Decimal:
    """The batch lane's price: "50% of the standard cost" (ai.google.dev/gemini-api/docs/batch-api)."""
    return Decimal(usd) / 2


def _priced(api_size: str | None, usd: str, note: str = "") -> SizeOffer:
    return SizeOffer(api_size, Decimal(usd), _half(usd), note)


_AT_1K = "no 512 in the API: made at 1K, downscaled (1K price)"
_512_UNVERIFIED = "the API's spelling of its 512 tier is not in the docs we read: made at 1K, downscaled (1K price)"

# Nano Banana Pro, preview and GA: same sizes, same prices.
_PRO_IMAGE_SIZES: dict[ImageSize, SizeOffer] = {
    "512": _priced("1K", "0.134", _AT_1K),
    "1K": _priced("1K", "0.134"),
    "2K": _priced("2K", "0.134"),
    "4K": _priced("4K", "0.24"),
}
# Nano Banana 2, preview and GA.
_FLASH_IMAGE_SIZES: dict[ImageSize, SizeOffer] = {
    "512": _priced("1K", "0.067", _512_UNVERIFIED),
    "1K": _priced("1K", "0.067"),
    "2K": _priced("2K", "0.101"),
    "4K": _priced("4K", "0.151"),
}
_PRO_PRICE_SOURCE = (
    "official $120/1M image-output tokens (pricing page, transcription read 2026-10-07); per-image $0.134/$0.24 "
    "as quoted from the pricing page by a third party (checked 2026-07-01)"
)
_FLASH_PRICE_SOURCE = (
    "third party quoting the pricing page (2026-03); matches official tokens/image x $60/1M (image-generation "
    "page, copy fetched 2026-09-28)"
)
_DEPRECATIONS = "ai.google.dev/gemini-api/docs/deprecations"

# Sources, all read on 2026-11-29 from stored copies (newest official snapshots: changelog to 2026-10-13,
# deprecations page listing models up to 2026-09-15, image-generation page fetched 2026-09-28, pricing page
# transcribed 2026-10-07; none showed a "Last updated" date):
# - ids, release and shutdown dates, replacements: https://ai.google.dev/gemini-api/docs/deprecations and
#   https://ai.google.dev/gemini-api/docs/changelog (2026-05-28 GA of gemini-3-pro-image and
#   gemini-3.1-flash-image; 2026-06-30 gemini-3.1-flash-lite-image; 2026-10-06 gemini-nano-banana-2.1 and the
#   deprecation of gemini-3.1-flash-image; 2026-10-08 gemini-3.5-flash / gemini-3.7-flash deprecated and routed).
# - sizes and `image_size` values per model: https://ai.google.dev/gemini-api/docs/image-generation (copy fetched
#   2026-09-28): pro 1K/2K/4K; 3.1 flash 512/1K/2K/4K; flash lite 512/1K; 2.5 flash image takes no size.
#   The API reference's ImageConfig: "Supported values are 1K, 2K, 4K" (ai.google.dev/api/generate-content).
# - prices: https://ai.google.dev/gemini-api/docs/pricing (per-image rows not readable; sources per row below);
#   batch = 50% of standard: https://ai.google.dev/gemini-api/docs/batch-api.
# - third-party rows say so in `price_source` / `lifecycle_source`; "unknown" (None) where nothing was found.
MODELS: dict[str, ModelEntry] = {
    entry.id: entry
    for entry in (
        # --- image models -------------------------------------------------------------------------------
        ModelEntry(
            "gemini-3-pro-image",
            "image",
            _PRO_IMAGE_SIZES,
            output_usd_per_million=Decimal("120"),
            price_source=_PRO_PRICE_SOURCE,
            released=date(2026, 5, 28),
            lifecycle_source=f"{_DEPRECATIONS}: GA, no shutdown date announced",
            note="Nano Banana Pro",
        ),
        ModelEntry(
            "gemini-3-pro-image-preview",
            "image",
            _PRO_IMAGE_SIZES,
            output_usd_per_million=Decimal("120"),
            price_source=_PRO_PRICE_SOURCE,
            released=date(2025, 11, 20),
            shutdown=date(2026, 6, 25),
            replacement="gemini-3-pro-image",
            lifecycle_source=_DEPRECATIONS,
        ),
        ModelEntry(
            "gemini-nano-banana-2.1",
            "image",
            {
                "512": SizeOffer("1K", Decimal("0.0336"), None, "512 is rejected (third party): made at 1K"),
                "1K": SizeOffer("1K", Decimal("0.0336"), None),
                "2K": SizeOffer("2K", Decimal("0.0504"), None),
                "4K": SizeOffer("4K", Decimal("0.1134"), None),
            },
            input_usd_per_million=Decimal("1.50"),
            output_usd_per_million=Decimal("30"),
            price_source=(
                "third party only (LiteLLM discussion #44983; inference.sh, 2026-11-06): not on Google's pages we "
                "could read; batch lane not found"
            ),
            released=date(2026, 10, 6),
            lifecycle_source="changelog 2026-10-06: GA",
            note="Nano Banana 2.1",
        ),
        ModelEntry(
            "gemini-3.1-flash-image",
            "image",
            _FLASH_IMAGE_SIZES,
            output_usd_per_million=Decimal("60"),
            price_source=_FLASH_PRICE_SOURCE,
            released=date(2026, 5, 28),
            deprecated=date(2026, 10, 6),
            replacement="gemini-nano-banana-2.1",
            lifecycle_source=(
                "changelog 2026-10-06: deprecated, no shutdown date announced; a third party reports a shutdown "
                "on 2026-10-29 (not confirmed by Google's pages we read)"
            ),
            note="Nano Banana 2",
        ),
        ModelEntry(
            "gemini-3.1-flash-image-preview",
            "image",
            _FLASH_IMAGE_SIZES,
            output_usd_per_million=Decimal("60"),
            price_source=_FLASH_PRICE_SOURCE,
            released=date(2026, 2, 26),
            shutdown=date(2026, 6, 25),
            replacement="gemini-3.1-flash-image",
            lifecycle_source=_DEPRECATIONS,
        ),
        ModelEntry(
            "gemini-3.1-flash-lite-image",
            "image",
            {
                "512": SizeOffer("1K", None, None, _512_UNVERIFIED),
                "1K": SizeOffer("1K", None, None),
            },
            price_source="not found in Google's pages we could read (set GEMINI_IMAGE_PRICE_USD)",
            released=date(2026, 6, 30),
            lifecycle_source="changelog 2026-06-30: GA",
            note="Nano Banana 2 Lite",
        ),
        ModelEntry(
            "gemini-2.5-flash-image",
            "image",
            {
                "512": _priced(None, "0.039", "fixed ~1024px output, downscaled"),
                "1K": _priced(None, "0.039", "fixed ~1024px output, resized"),
            },
            output_usd_per_million=Decimal("30"),
            price_source="unverified: 1290 tokens/image (image-generation page) x $30/1M (not confirmed)",
            released=date(2025, 10, 2),
            shutdown=date(2026, 10, 2),
            replacement="gemini-3.1-flash-image",
            lifecycle_source=f"{_DEPRECATIONS}; replacement from firebase.google.com/docs/ai-logic (2026-08-02)",
        ),
        # --- vision models (likeness descriptions) ------------------------------------------------------
        ModelEntry(
            "gemini-3.8-flash",
            "vision",
            input_usd_per_million=Decimal("0.75"),
            output_usd_per_million=Decimal("3.75"),
            price_source="pricing page transcription read 2026-10-07: through 2026-12-31; $1.50/$7.50 from 2027",
            released=date(2026, 9, 2),
            lifecycle_source=f"{_DEPRECATIONS}: GA, no shutdown date announced",
        ),
        ModelEntry(
            "gemini-3.7-flash",
            "vision",
            price_source="not found",
            released=date(2026, 8, 13),
            deprecated=date(2026, 10, 8),
            replacement="gemini-3.8-flash",
            lifecycle_source="changelog 2026-10-08: deprecated, answered by gemini-3.8-flash at its price",
        ),
        ModelEntry(
            "gemini-3.6-flash",
            "vision",
            input_usd_per_million=Decimal("1.50"),
            output_usd_per_million=Decimal("7.50"),
            price_source="ai.google.dev/gemini-api/docs/whats-new-gemini-3.6",
            released=date(2026, 7, 21),
            lifecycle_source="changelog 2026-07-21: GA",
        ),
        ModelEntry(
            "gemini-3.5-flash",
            "vision",
            input_usd_per_million=Decimal("1.50"),
            output_usd_per_million=Decimal("9.00"),
            price_source="pricing page transcription read 2026-10-07",
            released=date(2026, 5, 19),
            deprecated=date(2026, 10, 8),
            replacement="gemini-3.6-flash",
            lifecycle_source="changelog 2026-10-08: deprecated, answered by gemini-3.6-flash at its price",
        ),
        ModelEntry(
            "gemini-3.5-flash-lite",
            "vision",
            input_usd_per_million=Decimal("0.30"),
            output_usd_per_million=Decimal("2.50"),
            price_source="pricing page transcription read 2026-10-07",
            released=date(2026, 7, 21),
            lifecycle_source="changelog 2026-07-21: GA",
        ),
        ModelEntry(
            "gemini-2.5-flash",
            "vision",
            input_usd_per_million=Decimal("0.30"),
            output_usd_per_million=Decimal("2.50"),
            price_source="input: pricing page transcription read 2026-10-07; output unverified",
            released=date(2025, 6, 17),
            shutdown=date(2026, 12, 1),
            replacement="gemini-3.5-flash-lite",
            lifecycle_source=(
                f"{_DEPRECATIONS} moved the date (2026-06-17, then 2026-10-16); 2026-12-01 and the routing to "
                "gemini-3.5-flash-lite are a third party's reading of that page on 2026-11-10"
            ),
        ),
        # --- no API ---------------------------------------------------------------------------------------
        ModelEntry(
            OFFLINE_MODEL,
            "image",
            {size: SizeOffer(None, Decimal("0"), Decimal("0")) for size in IMAGE_SIZES},
            output_usd_per_million=Decimal("0"),
            price_source="no API call: placeholder posters drawn locally",
        ),
    )
}
# Portraits: gemini-3-pro-image, GA since 2026-05-28 with no shutdown date announced, the seed's Nano Banana Pro
# (the same sizes and prices as the preview it replaces). Likeness: gemini-3.8-flash, the newest GA Flash
# (2026-09-02) with no shutdown date, image input (docs.cloud.google.com/gemini-enterprise-agent-platform/models/
# guides/gemini-3-8-flash) and the lowest Flash token price through 2026-12-31; its siblings 3.5 and 3.7 were
# deprecated within months, 3.6 is the previous generation. Flash-lite is cheaper, but the description is what
# carries the likeness. We set no temperature or thinking level (deprecated / "minimal" refused on 3.x).
DEFAULT_IMAGE_MODEL = "gemini-3-pro-image"
DEFAULT_VISION_MODEL = "gemini-3.8-flash"
# The quality judge looks at images too: the same current Flash, priced by its tokens ($0.75 / $3.75 per 1M through
# 2026-12-31: pricing page transcription read 2026-10-07; the same figures on LiteLLM discussion #39357, read
# 2026-11-29). Thinking tokens are billed as output tokens (the pricing page's output price "including thinking").
DEFAULT_JUDGE_MODEL = DEFAULT_VISION_MODEL

# A model the registry does not know is asked for the sizes the API reference's ImageConfig lists
# ("1K, 2K, 4K"; ai.google.dev/api/generate-content), 512 made at 1K.
_UNREGISTERED_SIZES: dict[ImageSize, SizeOffer] = {
    "512": SizeOffer("1K", None, None, _AT_1K),
    "1K": SizeOffer("1K", None, None),
    "2K": SizeOffer("2K", None, None),
    "4K": SizeOffer("4K", None, None),
}


def entry(model: str) -> ModelEntry | None:
    return MODELS.get(model)


def current_models(kind: ModelKind | None = None, today: date | None = None) -> list[ModelEntry]:
    """The API models not shut down on `today`: what the real catalogue serves, as far as we know."""
    today = today or date.today()
    return [
        model
        for model in MODELS.values()
        if model.id != OFFLINE_MODEL and not model.is_retired(today) and kind in (None, model.kind)
    ]


def final_replacement(model: str) -> str | None:
    """Follow the replacement chain to its end: a retired model's replacement may itself be deprecated."""
    seen = {model}
    current = MODELS[model].replacement if model in MODELS else None
    while current is not None and current in MODELS and MODELS[current].replacement not in (None, *seen):
        seen.add(current)
        current = MODELS[current].replacement
    return current


def replacement_text(model: str) -> str:
    """ "use X instead" (naming the end of the chain too), or where to look when none is known."""
    direct = MODELS[model].replacement if model in MODELS else None
    if direct is None:
        return "no replacement known: see ai.google.dev/gemini-api/docs/models"
    last = final_replacement(model)
    return f"use {direct} instead" + (f" (itself replaced by {last})" if last not in (None, direct) else "")


@dataclass(frozen=True)
class ImagePricing:
    """How one image model is asked for and what its images cost: the registry first, then the configured price.

    `configured_usd` (GEMINI_IMAGE_PRICE_USD) fills only the gaps: a model the registry does not know, or a
    size whose price it does not have. A run must know its price (the audit and the budget need it); a dry run
    may show "unknown".
    """

    model: str
    configured_usd: Decimal | None = None
    lane: Lane = "standard"  # which price `usd_per_image` records: a batch run's rows carry the batch price

    @property
    def entry(self) -> ModelEntry | None:
        return MODELS.get(self.model)

    @property
    def registered(self) -> bool:
        return self.entry is not None

    def _sizes(self) -> Mapping[ImageSize, SizeOffer]:
        model = self.entry
        return model.sizes if model is not None and model.kind == "image" else _UNREGISTERED_SIZES

    def sizes(self) -> tuple[ImageSize, ...]:
        return tuple(self._sizes())

    def offer(self, size: ImageSize) -> SizeOffer:
        offers = self._sizes()
        if size not in offers:
            raise InvalidInput(f"--size {size}: {self.model} offers {', '.join(offers)}")
        return offers[size]

    def api_size(self, size: ImageSize) -> str | None:
        return self.offer(size).api_size

    def standard_usd(self, size: ImageSize) -> Decimal | None:
        """USD per image on the standard lane; None when neither the registry nor the setting has a price."""
        listed = self.offer(size).standard_usd
        return listed if listed is not None else self.configured_usd

    def batch_usd(self, size: ImageSize) -> Decimal | None:
        """USD per image on the batch lane: the registry's only (a configured price says nothing about batch)."""
        return self.offer(size).batch_usd

    def usd_per_image(self, size: ImageSize) -> Decimal:
        """The price a run records and budgets with, on its lane; refuses an unknown price rather than a silent $0."""
        if self.lane == "batch":
            per_image, which, fix = self.batch_usd(size), "batch price", "run it without --batch"
        else:
            per_image, which, fix = self.standard_usd(size), "price", "set GEMINI_IMAGE_PRICE_USD (USD per image)"
        if per_image is None:
            raise ConfigurationError(
                f"image model {self.model} has no {size} {which} in portrait_pipeline/model_registry.py: "
                f"{fix} to run it"
            )
        return per_image

    def estimate(self, size: ImageSize, images: int, lane: Lane = "standard") -> Decimal | None:
        per_image = self.standard_usd(size) if lane == "standard" else self.batch_usd(size)
        return None if per_image is None else per_image * images

    def token_cost(self, output_tokens: int) -> Decimal | None:
        """What the answers' token counts say was spent; None without a token price (a model we do not know)."""
        model = self.entry
        if model is None or model.output_usd_per_million is None:
            return None
        return model.output_usd_per_million * output_tokens / 1_000_000


def token_cost_usd(model: str, prompt_tokens: int | None, output_tokens: int | None) -> Decimal | None:
    """What a text answer cost by its token counts at the registry's token prices; None when a price is unknown."""
    known = MODELS.get(model)
    if known is None or known.input_usd_per_million is None or known.output_usd_per_million is None:
        return None
    spent = known.input_usd_per_million * (prompt_tokens or 0) + known.output_usd_per_million * (output_tokens or 0)
    return spent / 1_000_000


def pricing(model: str, configured_usd: Decimal | None = None, lane: Lane = "standard") -> ImagePricing:
    return ImagePricing(model, configured_usd, lane)


def parse_image_size(value: str, model: str = DEFAULT_IMAGE_MODEL) -> ImageSize:
    """The size if the model offers it, else an error that lists the choices."""
    choices = pricing(model).sizes()
    for size in choices:
        if value == size:
            return size
    raise InvalidInput(f"--size {value}: choose {', '.join(choices)}")


def lifecycle_problems(model: str, kind: ModelKind, today: date) -> tuple[str | None, list[str]]:
    """What the registry alone says about using `model` as the `kind` model on `today`: (refusal, warnings).

    Each is a predicate for the model ("was shut down on ..."), so a caller can say which setting named it.
    """
    known = MODELS.get(model)
    if known is None:
        return None, []
    if known.kind != kind:
        return f"is a {known.kind} model: it cannot be the {kind} model", []
    if known.shutdown is not None and known.is_retired(today):
        return f"was shut down on {known.shutdown}; {replacement_text(model)}", []
    warnings = []
    if known.shutdown is not None and known.shutdown - today <= timedelta(days=WARN_DAYS):
        days = (known.shutdown - today).days
        when = "in 1 day" if days == 1 else f"in {days} days"
        warnings.append(f"shuts down on {known.shutdown} ({when}); {replacement_text(model)}")
    elif known.deprecated is not None:
        warnings.append(f"is deprecated since {known.deprecated} ({known.lifecycle_source}); {replacement_text(model)}")
    return None, warnings


def markdown_tables() -> str:
    """The README's cost tables, rendered from the registry: the README's copy must equal this.

    A cell is "standard / batch" USD per image; "made at 1K" is a size the model is asked for at 1K and downscaled.
    """
    lifecycle = "released | deprecated | shutdown | replacement"
    lines = [
        f"| image model | 512 | 1K | 2K | 4K | price source | {lifecycle} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS.values():
        if model.kind == "image" and model.id != OFFLINE_MODEL:
            cells = [_size_cell(size, model.sizes.get(size)) for size in IMAGE_SIZES]
            lines.append(f"| `{model.id}` | {' | '.join(cells)} | {model.price_source} | {_lifecycle(model)} |")
    lines += [
        "",
        f"| vision model | input $/1M tokens | output $/1M tokens | price source | {lifecycle} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS.values():
        if model.kind == "vision":
            lines.append(
                f"| `{model.id}` | {usd(model.input_usd_per_million)} | {usd(model.output_usd_per_million)} | "
                f"{model.price_source} | {_lifecycle(model)} |"
            )
    return "\n".join(lines)


def usd(value: Decimal | None, places: int | None = None) -> str:
    """$0.134, $0.0336, $1.50 (every digit the source gave, at least cents; or `places` digits), or "unknown":
    an unknown price is never shown as $0."""
    if value is None:
        return "unknown"
    if places is not None:
        return f"${value:.{places}f}"
    exact, exponent = value.normalize(), value.normalize().as_tuple().exponent
    return f"${exact if isinstance(exponent, int) and exponent < -2 else value.quantize(Decimal('0.01'))}"


def _size_cell(size: ImageSize, offer: SizeOffer | None) -> str:
    if offer is None:
        return "—"
    how = (
        "" if offer.api_size == size else " (fixed size)" if offer.api_size is None else f" (made at {offer.api_size})"
    )
    return f"{usd(offer.standard_usd)} / {usd(offer.batch_usd)}{how}"


def _lifecycle(model: ModelEntry) -> str:
    return " | ".join(
        str(value or "—") for value in (model.released, model.deprecated, model.shutdown, model.replacement)
    )
