"""Image names and the seed's lookup order (the seed's `tests/unit/test_images.py` table, on a real folder)."""

from pathlib import Path

import pytest

from portrait_pipeline import naming
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.storage import LocalImageStorage

PLAYER_ID = 1661
SLUG = "cooper-flagg"
NAME = "Cooper Flagg"


@pytest.fixture
def storage(tmp_path: Path) -> LocalImageStorage:
    return LocalImageStorage(tmp_path)


def _place(storage: LocalImageStorage, *names: str) -> None:
    """Put (empty) image files under `players/`, as a previous run or the legacy app left them."""
    for name in names:
        path = storage.root / "players" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"image")


def _url(storage: LocalImageStorage, name: str) -> str:
    return storage.public_url(f"players/{name}")


# --- the seed's unit-test table ---------------------------------------------------------------------------------


def test_returns_placeholder_when_no_image_exists(storage: LocalImageStorage) -> None:
    url = naming.photo_url(storage, PLAYER_ID, SLUG, NAME)
    assert url.startswith("https://placehold.co/")


def test_placeholder_uses_display_name(storage: LocalImageStorage) -> None:
    url = naming.photo_url(storage, PLAYER_ID, SLUG, "Luka Dončić", "vector")
    assert url == naming.placeholder_url("Luka Dončić")
    assert url.endswith("?text=Luka%20Don%C4%8Di%C4%87")


def test_returns_new_format_png_when_exists(storage: LocalImageStorage) -> None:
    _place(storage, "1661_cooper-flagg_default.png")
    assert naming.photo_url(storage, PLAYER_ID, SLUG, NAME) == _url(storage, "1661_cooper-flagg_default.png")


def test_returns_legacy_format_jpg_when_no_new_format(storage: LocalImageStorage) -> None:
    _place(storage, "1661_default.jpg")
    assert naming.photo_url(storage, PLAYER_ID, SLUG, NAME) == _url(storage, "1661_default.jpg")


def test_prefers_new_format_over_legacy(storage: LocalImageStorage) -> None:
    _place(storage, "1661_default.jpg", "1661_cooper-flagg_default.png")
    assert naming.photo_url(storage, PLAYER_ID, SLUG, NAME) == _url(storage, "1661_cooper-flagg_default.png")


def test_returns_requested_style_when_exists(storage: LocalImageStorage) -> None:
    _place(storage, "1661_cooper-flagg_default.png", "1661_cooper-flagg_vector.png")
    url = naming.photo_url(storage, PLAYER_ID, SLUG, NAME, "vector")
    assert url == _url(storage, "1661_cooper-flagg_vector.png")


def test_falls_back_to_default_when_requested_style_missing(storage: LocalImageStorage) -> None:
    _place(storage, "1661_cooper-flagg_default.png")
    url = naming.photo_url(storage, PLAYER_ID, SLUG, NAME, "comic")
    assert url == _url(storage, "1661_cooper-flagg_default.png")


def test_falls_back_to_legacy_default_when_style_missing(storage: LocalImageStorage) -> None:
    _place(storage, "1661_default.jpg")
    url = naming.photo_url(storage, PLAYER_ID, SLUG, NAME, "comic")
    assert url == _url(storage, "1661_default.jpg")


def test_returns_available_styles_new_format(storage: LocalImageStorage) -> None:
    _place(storage, "1661_cooper-flagg_default.png", "1661_cooper-flagg_vector.png")
    assert naming.available_styles(storage, PLAYER_ID) == ["default", "vector"]


def test_returns_available_styles_legacy_format(storage: LocalImageStorage) -> None:
    _place(storage, "1661_default.jpg", "1661_retro.jpg")
    assert naming.available_styles(storage, PLAYER_ID) == ["default", "retro"]


def test_returns_mixed_format_styles(storage: LocalImageStorage) -> None:
    _place(storage, "1661_cooper-flagg_default.png", "1661_comic.jpg", "1661_default.jpg")
    assert naming.available_styles(storage, PLAYER_ID) == ["comic", "default"]


# --- beyond the seed's table ------------------------------------------------------------------------------------


def test_requested_style_in_legacy_format_beats_default_in_new_format(storage: LocalImageStorage) -> None:
    _place(storage, "1661_cooper-flagg_default.png", "1661_retro.jpg")
    assert naming.photo_url(storage, PLAYER_ID, SLUG, NAME, "retro") == _url(storage, "1661_retro.jpg")


def test_available_styles_is_empty_without_players_folder(storage: LocalImageStorage) -> None:
    assert naming.available_styles(storage, PLAYER_ID) == []


def test_available_styles_ignores_files_that_are_not_images_of_the_player(storage: LocalImageStorage) -> None:
    _place(
        storage,
        "1661_cooper-flagg_default.png",
        ".1661_cooper-flagg_vector.png.abc.tmp",  # a write in progress
        "1661_cooper-flagg_comic.png.bak",
        "1661_notes.txt",
        "1661_retro.png",  # legacy names are .jpg
    )
    assert naming.available_styles(storage, PLAYER_ID) == ["default"]


def test_player_id_prefix_does_not_match_another_player(storage: LocalImageStorage) -> None:
    _place(storage, "12_jalen-brooks_default.png", "12_vector.jpg", "123_comic.jpg")
    assert naming.available_styles(storage, 1) == []
    assert naming.photo_url(storage, 1, "jalen-brooks", "Jalen Brooks") == naming.placeholder_url("Jalen Brooks")
    assert naming.available_styles(storage, 12) == ["default", "vector"]


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Luka Dončić", "luka-doncic"),
        ("Nikola Jokić", "nikola-jokic"),
        ("Tomás Ibáñez", "tomas-ibanez"),
        ("De'Aaron Fox", "deaaron-fox"),
        ("De’Andre Hunter", "deandre-hunter"),  # typographic apostrophe
        ("Shaquille O'Neal", "shaquille-oneal"),
        ("Karl-Anthony Towns", "karl-anthony-towns"),
        ("Jalen Brooks Jr.", "jalen-brooks-jr"),
        ("Gary Trent Jr", "gary-trent-jr"),
        ("Elijah Turner III", "elijah-turner-iii"),
        ("Bryce Holloway II", "bryce-holloway-ii"),
        ("  Cooper   Flagg  ", "cooper-flagg"),
        ("P.J. Washington", "p-j-washington"),
    ],
)
def test_slugify_makes_ascii_hyphenated_slugs(name: str, slug: str) -> None:
    assert naming.slugify(name) == slug
    assert naming.check_slug(slug) == slug


@pytest.mark.parametrize(
    "slug",
    ["", "..", "../etc", "a/b", "players/1", "Cooper-Flagg", "cooper_flagg", "cooper--flagg", "-cooper", "a b"],
)
def test_check_slug_refuses_unsafe_slugs(slug: str) -> None:
    with pytest.raises(InvalidInput, match="lowercase letters, digits and single hyphens"):
        naming.check_slug(slug)


def test_check_slug_refuses_slugs_over_120_characters() -> None:
    assert naming.check_slug("a" * 120) == "a" * 120
    with pytest.raises(InvalidInput):
        naming.check_slug("a" * 121)


def test_check_slug_refuses_trailing_newline() -> None:
    with pytest.raises(InvalidInput):
        naming.check_slug("cooper-flagg\n")


def test_current_key_is_the_seeds_new_format_under_players() -> None:
    assert naming.current_key(1661, "cooper-flagg", "default") == "players/1661_cooper-flagg_default.png"


def test_legacy_key_is_the_seeds_legacy_format_under_players() -> None:
    assert naming.legacy_key(1661, "vector") == "players/1661_vector.jpg"


def test_history_key_is_content_addressed_per_style_and_player() -> None:
    sha256 = "0123456789abcdef" + "f" * 48
    key = naming.history_key(1661, "cooper-flagg", "comic", sha256)
    assert key == "portraits/comic/1661_cooper-flagg_comic/0123456789abcdef.png"


@pytest.mark.parametrize("slug", ["../escape", "a/b", "Upper"])
def test_keys_refuse_unsafe_slugs(slug: str) -> None:
    with pytest.raises(InvalidInput):
        naming.current_key(1, slug, "default")
    with pytest.raises(InvalidInput):
        naming.history_key(1, slug, "default", "0" * 64)
