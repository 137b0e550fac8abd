"""The model registry: sizes and prices per model and lane, lifecycle verdicts, and the README table it renders."""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from portrait_pipeline import model_registry as registry
from portrait_pipeline.defs.resources import GeminiResource, resources_from_env
from portrait_pipeline.errors import ConfigurationError, InvalidInput
from portrait_pipeline.model_registry import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_VISION_MODEL,
    IMAGE_SIZES,
    MODELS,
    OFFLINE_MODEL,
    ImagePricing,
    ImageSize,
)

README = Path(__file__).resolve().parents[1] / "README.md"
NEW_MODEL = "gemini-9-image"  # an id the registry does not know


@pytest.mark.parametrize(
    ("model", "size", "standard", "batch"),
    [
        (DEFAULT_IMAGE_MODEL, "512", "0.134", "0.067"),
        (DEFAULT_IMAGE_MODEL, "1K", "0.134", "0.067"),
        (DEFAULT_IMAGE_MODEL, "2K", "0.134", "0.067"),
        (DEFAULT_IMAGE_MODEL, "4K", "0.24", "0.12"),
        ("gemini-2.5-flash-image", "512", "0.039", "0.0195"),
        ("gemini-2.5-flash-image", "1K", "0.039", "0.0195"),
    ],
)
def test_estimates_per_size_on_both_lanes(model: str, size: ImageSize, standard: str, batch: str) -> None:
    pricing = ImagePricing(model)
    assert pricing.estimate(size, 40) == Decimal(standard) * 40
    assert pricing.estimate(size, 40, lane="batch") == Decimal(batch) * 40
    assert pricing.usd_per_image(size) == Decimal(standard)
    assert pricing.estimate(size, 0) == 0


def test_the_default_image_model_is_asked_for_sizes_it_has() -> None:
    """Pro has no 512: it is made at 1K and downscaled; 2.5 flash image takes no size at all."""
    pro = ImagePricing(DEFAULT_IMAGE_MODEL)
    assert [pro.api_size(size) for size in IMAGE_SIZES] == ["1K", "1K", "2K", "4K"]
    assert ImagePricing("gemini-2.5-flash-image").api_size("1K") is None


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_offline_model_costs_nothing(size: ImageSize) -> None:
    assert ImagePricing(OFFLINE_MODEL).estimate(size, 1000) == Decimal("0")
    assert registry.parse_image_size(size, OFFLINE_MODEL) == size


@pytest.mark.parametrize("size", ["512", "1K", "2K", "4K"])
def test_parse_image_size_accepts_the_default_models_sizes(size: str) -> None:
    assert registry.parse_image_size(size) == size


@pytest.mark.parametrize("size", ["3K", "1k", "1024", "", " 1K"])
def test_parse_image_size_refuses_other_sizes_listing_the_choices(size: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        registry.parse_image_size(size)
    assert str(caught.value) == f"--size {size}: choose 512, 1K, 2K, 4K"


def test_parse_image_size_offers_only_what_the_model_makes() -> None:
    assert registry.parse_image_size("1K", "gemini-2.5-flash-image") == "1K"
    with pytest.raises(InvalidInput, match=r"^--size 2K: choose 512, 1K$"):
        registry.parse_image_size("2K", "gemini-2.5-flash-image")
    with pytest.raises(InvalidInput, match=r"--size 4K: gemini-2\.5-flash-image offers 512, 1K$"):
        ImagePricing("gemini-2.5-flash-image").estimate("4K", 1)


def test_every_size_is_4_by_5() -> None:
    assert set(registry.TARGET_DIMENSIONS) == set(IMAGE_SIZES)
    for width, height in registry.TARGET_DIMENSIONS.values():
        assert width * 5 == height * 4
    assert registry.TARGET_DIMENSIONS["1K"] == (800, 1000)


# --- a model the registry does not know ----------------------------------------------------------------


def test_a_new_model_without_a_configured_price_is_unknown_never_zero() -> None:
    pricing = ImagePricing(NEW_MODEL)
    assert pricing.sizes() == IMAGE_SIZES and pricing.api_size("2K") == "2K"
    assert pricing.estimate("1K", 10) is None and pricing.estimate("1K", 10, lane="batch") is None
    assert pricing.token_cost(1290) is None
    with pytest.raises(ConfigurationError, match=rf"{NEW_MODEL} has no 1K price .*set GEMINI_IMAGE_PRICE_USD"):
        pricing.usd_per_image("1K")


def test_a_new_model_takes_the_configured_price_on_the_standard_lane_only() -> None:
    pricing = ImagePricing(NEW_MODEL, Decimal("0.05"))
    assert pricing.usd_per_image("4K") == Decimal("0.05") and pricing.estimate("1K", 10) == Decimal("0.50")
    assert pricing.batch_usd("1K") is None  # the setting says nothing about the Batch API


def test_a_configured_price_does_not_override_the_registry() -> None:
    assert ImagePricing(DEFAULT_IMAGE_MODEL, Decimal("9")).usd_per_image("1K") == Decimal("0.134")
    flash_lite = ImagePricing("gemini-3.1-flash-lite-image", Decimal("0.03"))  # no published price: the gap
    assert flash_lite.usd_per_image("1K") == Decimal("0.03")


def test_gemini_image_price_usd_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_IMAGE_PRICE_USD", "0.05")
    gemini = resources_from_env()["gemini"]
    assert isinstance(gemini, GeminiResource) and gemini.image_price_usd == 0.05
    monkeypatch.setenv("GEMINI_IMAGE_PRICE_USD", "0")  # a $0 price is what this setting must never mean
    with pytest.raises(ConfigurationError, match=r"^GEMINI_IMAGE_PRICE_USD='0': "):
        resources_from_env()


# --- lifecycle -------------------------------------------------------------------------------------------


def test_the_defaults_are_current_ga_models() -> None:
    today = date.today()
    for model, kind in ((DEFAULT_IMAGE_MODEL, "image"), (DEFAULT_VISION_MODEL, "vision")):
        entry = MODELS[model]
        assert entry.kind == kind and "preview" not in model
        assert entry.shutdown is None and entry.deprecated is None and entry.released is not None
        assert entry.released <= today
        assert registry.lifecycle_problems(model, kind, today) == (None, [])


def test_every_replacement_is_in_the_registry_and_every_shut_down_model_has_one() -> None:
    for entry in MODELS.values():
        assert entry.replacement is None or entry.replacement in MODELS, entry.id
        assert entry.shutdown is None or entry.replacement is not None, entry.id
        last = registry.final_replacement(entry.id)
        assert last is None or MODELS[last].shutdown is None, entry.id  # the chain ends at a live model


def test_a_shut_down_model_is_refused_naming_its_replacement() -> None:
    refusal, _ = registry.lifecycle_problems("gemini-3-pro-image-preview", "image", date(2026, 6, 25))
    assert refusal == "was shut down on 2026-06-25; use gemini-3-pro-image instead"
    before, warnings = registry.lifecycle_problems("gemini-3-pro-image-preview", "image", date(2026, 6, 24))
    assert before is None and warnings == ["shuts down on 2026-06-25 (in 1 day); use gemini-3-pro-image instead"]


def test_a_replacement_chain_names_where_it_ends() -> None:
    refusal, _ = registry.lifecycle_problems("gemini-2.5-flash-image", "image", date(2026, 11, 29))
    assert refusal is not None and refusal.endswith(
        "use gemini-3.1-flash-image instead (itself replaced by gemini-nano-banana-2.1)"
    )


def test_a_shutdown_within_30_days_warns_and_further_away_does_not() -> None:
    shutdown = MODELS["gemini-2.5-flash"].shutdown
    assert shutdown is not None
    _, soon = registry.lifecycle_problems("gemini-2.5-flash", "vision", shutdown - timedelta(days=30))
    assert soon == [f"shuts down on {shutdown} (in 30 days); use gemini-3.5-flash-lite instead"]
    assert registry.lifecycle_problems("gemini-2.5-flash", "vision", shutdown - timedelta(days=31)) == (None, [])


def test_a_deprecated_model_without_a_shutdown_date_warns() -> None:
    refusal, warnings = registry.lifecycle_problems("gemini-3.1-flash-image", "image", date(2026, 11, 29))
    assert refusal is None
    assert len(warnings) == 1 and "deprecated since 2026-10-06" in warnings[0]
    assert warnings[0].endswith("use gemini-nano-banana-2.1 instead")


def test_a_model_of_the_wrong_kind_is_refused() -> None:
    refusal, _ = registry.lifecycle_problems(DEFAULT_VISION_MODEL, "image", date(2026, 11, 29))
    assert refusal == "is a vision model: it cannot be the image model"


def test_current_models_leave_out_shut_down_ones_and_the_offline_renderer() -> None:
    current = {entry.id for entry in registry.current_models(today=date(2026, 11, 29))}
    assert {DEFAULT_IMAGE_MODEL, DEFAULT_VISION_MODEL, "gemini-2.5-flash"} <= current
    assert not current & {"gemini-3-pro-image-preview", "gemini-2.5-flash-image", OFFLINE_MODEL}
    assert "gemini-2.5-flash" not in {entry.id for entry in registry.current_models(today=date(2026, 12, 1))}


# --- the README's table ----------------------------------------------------------------------------------


def test_the_table_shows_both_lanes_and_unknown_prices_as_unknown() -> None:
    table = registry.markdown_tables()
    row = next(line for line in table.splitlines() if line.startswith(f"| `{DEFAULT_IMAGE_MODEL}` |"))
    assert row.split(" | ")[1:5] == [
        "$0.134 / $0.067 (made at 1K)",
        "$0.134 / $0.067",
        "$0.134 / $0.067",
        "$0.24 / $0.12",
    ]
    lite = next(line for line in table.splitlines() if "`gemini-3.1-flash-lite-image`" in line)
    assert "unknown / unknown" in lite and "$0.00" not in table
    assert OFFLINE_MODEL not in table


def test_the_readme_table_is_the_registrys() -> None:
    """The README's copy between the markers must be `markdown_tables()` (regenerate it when the registry changes)."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- model-registry:start -->\n(.*?)\n<!-- model-registry:end -->", text, re.DOTALL)
    if found is None:
        pytest.skip("README.md has no model-registry table yet (the lead merges /tmp/readme/models.md)")
    assert found.group(1) == registry.markdown_tables()
