"""Image names and storage keys, and the seed's lookup order: new format, legacy, default style, placeholder."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.storage import ImageStorage

SLUG_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
PLAYERS_PREFIX = "players/"
_NEW_FORMAT = re.compile(r"(?P<id>[0-9]+)_(?P<slug>[a-z0-9-]+)_(?P<style>[a-z]+)\.png")
_LEGACY_FORMAT = re.compile(r"(?P<id>[0-9]+)_(?P<style>[a-z]+)\.jpg")


def slugify(name: str) -> str:
    """`Luka Dončić` → `luka-doncic`, `De'Aaron Fox` → `deaaron-fox`, `Jr.` → `jr`."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r"['’`]", "", ascii_name.lower())
    return re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")


def check_slug(slug: str) -> str:
    """Slugs become file names and S3 keys: only `[a-z0-9-]`, never `..` or `/`."""
    if not SLUG_PATTERN.fullmatch(slug) or len(slug) > 120:
        raise InvalidInput(f"slug {slug!r}: use lowercase letters, digits and single hyphens")
    return slug


def image_filename(player_id: int, slug: str, style: str) -> str:
    return f"{player_id}_{check_slug(slug)}_{style}.png"


def legacy_filename(player_id: int, style: str) -> str:
    return f"{player_id}_{style}.jpg"


def current_key(player_id: int, slug: str, style: str) -> str:
    """The seed's serving name: always the player's current image for the style."""
    return PLAYERS_PREFIX + image_filename(player_id, slug, style)


def legacy_key(player_id: int, style: str) -> str:
    return PLAYERS_PREFIX + legacy_filename(player_id, style)


def history_key(player_id: int, slug: str, style: str, sha256: str) -> str:
    """Every generation kept forever, content-addressed, for the audit trail and rollback."""
    stem = image_filename(player_id, slug, style).removesuffix(".png")
    return f"portraits/{style}/{stem}/{sha256[:16]}.png"


def partition_label(draft_year_key: str, style: str) -> str:
    """A partition as the audit and run keys write it; the same string as Dagster's key (`2025|default`)."""
    return f"{draft_year_key}|{style}"


def contact_sheet_key(draft_year_key: str, style: str) -> str:
    """The partition's contact sheet, rewritten by each run of the partition."""
    return f"contact-sheets/{style}/{draft_year_key}.png"


def partition_index_key(draft_year_key: str, style: str) -> str:
    """The JSON index of a partition's current portraits, written by the image IO manager."""
    return f"portraits/{style}/_partitions/{draft_year_key}.json"


MANIFEST_KEY = "manifests/portraits.json"


def placeholder_url(display_name: str) -> str:
    return f"https://placehold.co/800x1000/4A7FB8/FFFFFF?text={quote(display_name)}"


def photo_url(storage: ImageStorage, player_id: int, slug: str, display_name: str, style: str = "default") -> str:
    """The first image that exists: new then legacy name, requested style then `default`, else a placeholder."""
    styles = [style] if style == "default" else [style, "default"]
    for candidate_style in styles:
        for key in (current_key(player_id, slug, candidate_style), legacy_key(player_id, candidate_style)):
            if storage.exists(key):
                return storage.public_url(key)
    return placeholder_url(display_name)


def available_styles(storage: ImageStorage, player_id: int) -> list[str]:
    """Styles that have an image for the player, in either naming format."""
    found: set[str] = set()
    for key in storage.list_keys(f"{PLAYERS_PREFIX}{player_id}_"):
        name = key.removeprefix(PLAYERS_PREFIX)
        match = _NEW_FORMAT.fullmatch(name) or _LEGACY_FORMAT.fullmatch(name)
        if match and int(match["id"]) == player_id:
            found.add(match["style"])
    return sorted(found)
