"""The offline renderer: the poster the pipeline ships when no Gemini API key is set."""

import io
import itertools

import pytest
from PIL import Image, ImageChops, ImageStat

from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.generation.offline import BACKGROUNDS, render_portrait
from portrait_pipeline.styles import STYLE_TABLE, STYLES, Style

SEED = "17:cooper-flagg"
SMALL = (400, 500)  # the "512" size: fast enough to render many times per test


def _image(seed: str, style: Style, size: tuple[int, int] = SMALL) -> Image.Image:
    image = Image.open(io.BytesIO(render_portrait(seed, style, *size)))
    image.load()
    return image


def _mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute per-channel difference, 0 (identical) to 255."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


@pytest.mark.parametrize("size", [(400, 500), (800, 1000), (1600, 2000)])
@pytest.mark.parametrize("style", STYLES)
def test_png_has_requested_size_and_4_5_ratio(style: Style, size: tuple[int, int]) -> None:
    data = render_portrait(SEED, style, *size)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == size
    assert image.width * 5 == image.height * 4


def test_default_size_is_800_by_1000() -> None:
    assert Image.open(io.BytesIO(render_portrait(SEED, "default"))).size == (800, 1000)


def test_large_4k_size_renders() -> None:
    assert Image.open(io.BytesIO(render_portrait(SEED, "comic", 3200, 4000))).size == (3200, 4000)


@pytest.mark.parametrize("style", STYLES)
def test_same_inputs_give_identical_bytes(style: Style) -> None:
    assert render_portrait(SEED, style, *SMALL) == render_portrait(SEED, style, *SMALL)


@pytest.mark.parametrize("seed", [SEED, "3:dylan-harper", "5:ace-bailey"])
def test_styles_look_different(seed: str) -> None:
    images = {style: _image(seed, style) for style in STYLES}
    for a, b in itertools.combinations(STYLES, 2):
        assert _mean_abs_diff(images[a], images[b]) > 20, f"{a} and {b} look alike for {seed}"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("other", ["3:dylan-harper", "5:ace-bailey", "10:vj-edgecombe"])
def test_different_seeds_give_different_images(style: Style, other: str) -> None:
    assert _mean_abs_diff(_image(SEED, style), _image(other, style)) > 3


def test_skin_tone_varies_across_a_roster() -> None:
    # The centre of the chest just above the neckline is bare skin (base tone) in every portrait.
    tones = {_image(f"{n}:player-{n}", "default").getpixel((200, 370)) for n in range(12)}
    assert len(tones) >= 3


@pytest.mark.parametrize("seed", [SEED, "3:dylan-harper", "x"])
@pytest.mark.parametrize("style", STYLES)
def test_not_near_uniform(style: Style, seed: str) -> None:
    assert ImageStat.Stat(_image(seed, style).convert("L")).stddev[0] > 10


def test_default_style_uses_brand_blue() -> None:
    image = _image(SEED, "default")
    red, green, blue = ImageChops.difference(image, Image.new("RGB", image.size, "#4A7FB8")).split()
    worst_channel = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    near_brand_blue = sum(worst_channel.histogram()[:13])  # every channel within 12 of #4A7FB8
    assert near_brand_blue > 0.1 * image.width * image.height


def test_an_unknown_style_is_an_error_not_another_styles_look() -> None:
    with pytest.raises(InvalidInput, match=r"style 'neon': choose default, vector, comic, retro"):
        render_portrait(SEED, "neon", *SMALL)  # type: ignore[arg-type]


def test_every_style_has_one_table_entry_with_a_background_the_renderer_draws() -> None:
    assert set(STYLE_TABLE) == set(STYLES)
    assert {spec.look.background for spec in STYLE_TABLE.values()} <= set(BACKGROUNDS)
    assert len({spec.prompt_block for spec in STYLE_TABLE.values()}) == len(STYLES)
