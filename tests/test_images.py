"""images.py on its own: fitting a model's answer to 4:5 and the contact sheet's kept thumbnails."""

from __future__ import annotations

import pytest
from PIL import Image

from portrait_pipeline import images
from portrait_pipeline.storage import sha256_hex
from tests.servers.gemini import make_png


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((896, 1152), (0, 16, 896, 1136)),  # a little too tall: trim top and bottom
        ((1000, 1000), (100, 0, 900, 1000)),  # square: trim the sides
        ((400, 500), (0, 0, 400, 500)),  # already 4:5
    ],
)
def test_center_box_is_the_largest_centered_4_5_box(size: tuple[int, int], box: tuple[int, ...]) -> None:
    assert images.center_box(size, (800, 1000)) == box


def test_fit_turns_any_answer_into_the_target_size() -> None:
    fitted = images.fit(make_png((896, 1152)), (800, 1000))
    assert (fitted.size, fitted.mode) == ((800, 1000), "RGB")
    png = images.to_png(fitted, {"portrait:player_id": "7"})
    assert images.png_text(png) == {"portrait:player_id": "7"}
    assert images.inspect(png).width == 800


def test_contact_sheet_uses_kept_thumbnails_and_loads_only_the_others() -> None:
    made_now = images.fit(make_png((400, 500)), (400, 500))
    made_now_png = images.to_png(made_now, {})
    earlier_png = make_png((320, 400))
    loaded: list[str] = []

    def load(name: str, data: bytes) -> bytes:
        loaded.append(name)
        return data

    sheet = images.ContactSheet(capacity=2)
    sheet.keep(sha256_hex(made_now_png), made_now)
    composed = sheet.compose(
        [
            images.Tile("Made Now", sha256_hex(made_now_png), lambda: load("now", made_now_png)),
            images.Tile("Made Earlier", sha256_hex(earlier_png), lambda: load("earlier", earlier_png)),
        ]
    )
    assert loaded == ["earlier"]
    assert composed.size == (2 * 160, 220)
    # Both tiles hold a picture, not the sheet's background.
    background = Image.new("RGB", (160, 200), "#f4f6fa")
    for left in (0, 160):
        tile = composed.crop((left, 0, left + 160, 200))
        assert tile.tobytes() != background.tobytes()


def test_contact_sheet_tiles_shrink_for_big_partitions_to_stay_near_8_megapixels() -> None:
    sheet = images.ContactSheet(capacity=5000)
    tile_w, tile_h = sheet.tile_size
    assert tile_w < 160 and tile_h < 200
    assert 5000 * tile_w * tile_h <= images.MAX_SHEET_PIXELS


def test_contact_sheet_labels_keep_accents_when_a_font_has_them() -> None:
    font, accents = images.label_font(20)
    if not accents:
        pytest.skip(f"no font with accents at {images.LABEL_FONTS} (apt-get install fonts-dejavu-core)")
    accented, plain = (font.getmask("Ibáñez Dončić"), font.getmask("Ibanez Doncic"))
    assert bytes(accented) != bytes(plain)  # the marks are drawn, not dropped
    assert images.ascii_label("Tomás Ibáñez") == "Tomas Ibanez"
