"""Roster import: a CSV of real-world names becomes `players` rows, all or nothing.

Names, positions and schools end up in the image model's prompt, so each field is held to what it can
legitimately contain (a position from a fixed list, a name of letters and name punctuation): text that
could read as an instruction ("SYSTEM:", "</player_data>", invisible characters) is refused here, with its
row, before it is stored.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from portrait_pipeline.audit.models import Player
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.naming import check_slug, slugify

COLUMNS = ("name", "draft_year", "position", "school", "nba_active", "reference_image_url", "slug")
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n", ""}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Canonical short forms, each with the ways rosters write it (matched after upper-casing, "/" read as "-").
_POSITION_NAMES: dict[str, tuple[str, ...]] = {
    "PG": ("POINT GUARD",),
    "SG": ("SHOOTING GUARD",),
    "SF": ("SMALL FORWARD",),
    "PF": ("POWER FORWARD",),
    "C": ("CENTER", "CENTRE"),
    "G": ("GUARD",),
    "F": ("FORWARD",),
    "G-F": ("GUARD-FORWARD",),
    "F-G": ("FORWARD-GUARD",),
    "F-C": ("FORWARD-CENTER", "FORWARD-CENTRE"),
    "C-F": ("CENTER-FORWARD", "CENTRE-FORWARD"),
}
POSITIONS: dict[str, str] = {
    spelling: short for short, long_names in _POSITION_NAMES.items() for spelling in (short, *long_names)
}
_ALLOWED_POSITIONS = (
    f"{', '.join(_POSITION_NAMES)} or written out ({', '.join(names[0].title() for names in _POSITION_NAMES.values())})"
)
NAME_MAX = 80  # what the prompt carries (prompts._FIELD_LIMITS): a longer name would be cut there
SCHOOL_MAX = 80
# Besides letters and combining marks (any script, so Dončić, Ibáñez and Nakamura in kanji all pass).
_NAME_PUNCTUATION = frozenset(" '’-.")
_NAME_ALLOWED = "letters, accents, spaces, apostrophes, hyphens and periods"
# Besides letters, marks and digits: enough for "St. John's", "Texas A&M", "Saint Mary's (CA)", "UC/Davis".
_SCHOOL_PUNCTUATION = frozenset(" '’-.,&()/")
_SCHOOL_ALLOWED = "letters, digits, spaces and . , ' ’ - & ( ) /"


class UndraftedByOmission(UserWarning):
    """A roster without a draft_year column: its players land in the `undrafted` partition, which may not be meant."""


@dataclass(frozen=True)
class RosterRow:
    line: int
    slug: str
    display_name: str
    first_name: str
    last_name: str
    position: str | None
    school: str | None
    draft_year: int | None
    nba_active: bool
    reference_image_url: str | None


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    draft_years: list[int | None]


def read_roster(path: Path) -> list[RosterRow]:
    """Parse and validate every row; raise one error listing each bad row by line number."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput(f"roster file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"roster file {path} cannot be read as UTF-8 text: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [column.strip() for column in next(reader, [])]
    if "name" not in header:
        raise InvalidInput(f"{path}: the header has no `name` column (found: {', '.join(header) or 'nothing'})")
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise InvalidInput(f"{path}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(COLUMNS)}")

    if "draft_year" not in header:
        warnings.warn(
            f"{path} has no draft_year column: every player in it is imported as undrafted "
            "(add the column; leave a cell empty for a player who really is undrafted)",
            UndraftedByOmission,
            stacklevel=2,
        )
    rows: list[RosterRow] = []
    errors: list[str] = []
    end_of_previous = reader.line_num
    for fields in reader:
        # A quoted value may span lines: a row is numbered by the line it starts on.
        line, end_of_previous = end_of_previous + 1, reader.line_num
        if not fields:
            continue
        values = {column: value.strip() for column, value in zip(header, fields, strict=False)}
        try:
            if len(fields) > len(header):
                raise InvalidInput(f"{len(fields)} values for {len(header)} columns")
            rows.append(_parse_row(line, values))
        except InvalidInput as exc:
            errors.append(f"{path.name} row {line}: {exc}")
    if errors:
        raise InvalidInput("roster not imported, nothing written:\n  " + "\n  ".join(errors))
    return _disambiguate(rows)


def _parse_row(line: int, values: dict[str, str]) -> RosterRow:
    name = check_name(values.get("name", ""))
    first, _, last = name.partition(" ")
    slug = values.get("slug") or slugify(name)
    if not slug:
        raise InvalidInput(f"name {name!r} has no letters or digits to make a slug from; add a `slug`")
    return RosterRow(
        line=line,
        slug=check_slug(slug),
        display_name=name,
        first_name=first,
        last_name=last or first,
        position=check_position(_optional_text(values.get("position"), "position", 40)),
        school=check_school(_optional_text(values.get("school"), "school", SCHOOL_MAX)),
        draft_year=parse_draft_year(values.get("draft_year", "")),
        nba_active=_parse_bool(values.get("nba_active", "")),
        reference_image_url=check_reference_url(values.get("reference_image_url") or None),
    )


def _disambiguate(rows: list[RosterRow]) -> list[RosterRow]:
    """Two players with one name get `-2`, `-3`… in file order, so every slug stays unique."""
    counts = Counter(row.slug for row in rows)
    seen: Counter[str] = Counter()
    result: list[RosterRow] = []
    for row in rows:
        seen[row.slug] += 1
        if counts[row.slug] > 1 and seen[row.slug] > 1:
            row = RosterRow(**{**row.__dict__, "slug": f"{row.slug}-{seen[row.slug]}"})
        result.append(row)
    duplicates = [slug for slug, n in Counter(row.slug for row in result).items() if n > 1]
    if duplicates:
        raise InvalidInput(f"roster not imported: slug(s) {', '.join(duplicates)} used twice; fix the `slug` column")
    return result


def check_name(value: str) -> str:
    """A person's name: letters and combining marks of any script, spaces and name punctuation, NFC.

    Runs of whitespace (line breaks from a spreadsheet cell included) become one space.
    """
    name = unicodedata.normalize("NFC", " ".join(value.split()))
    if not name:
        raise InvalidInput("name is empty")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"name {name[:40]!r}... is over {NAME_MAX} characters")
    if bad := _first_outside(name, _NAME_PUNCTUATION, digits=False):
        raise InvalidInput(f"name {name[:NAME_MAX]!r} has {_describe(bad)}; a name may have {_NAME_ALLOWED}")
    return name


def check_position(value: str | None) -> str | None:
    """One of the fixed positions, as its canonical short form: "Point Guard" and "pg" both become "PG"."""
    if value is None:
        return None
    key = re.sub(r"\s*-\s*", "-", " ".join(value.upper().replace("/", "-").split()))
    if key not in POSITIONS:
        raise InvalidInput(f"position {value!r} is not a basketball position; write {_ALLOWED_POSITIONS}")
    return POSITIONS[key]


def check_school(value: str | None) -> str | None:
    """A school or club name: letters, marks, digits, spaces and the punctuation institutions use."""
    if value is None:
        return None
    value = " ".join(value.split())  # a no-break space from a spreadsheet is a space
    if bad := _first_outside(value, _SCHOOL_PUNCTUATION, digits=True):
        raise InvalidInput(f"school {value!r} has {_describe(bad)}; a school or club may have {_SCHOOL_ALLOWED}")
    return value


def _first_outside(text: str, punctuation: frozenset[str], *, digits: bool) -> str | None:
    """The first character that is not a letter, a combining mark, an allowed digit or allowed punctuation."""
    for char in text:
        category = unicodedata.category(char)
        if category[0] in "LM" or char in punctuation or (digits and category == "Nd"):
            continue
        return char
    return None


def _describe(char: str) -> str:
    """A character as a reader can find it, even when it is invisible (U+200B) or a look-alike."""
    name = unicodedata.name(char, "unnamed character")
    shown = repr(char) if char.isprintable() and not char.isspace() else "an invisible character"
    return f"{shown} (U+{ord(char):04X} {name})"


def parse_draft_year(value: str) -> int | None:
    value = value.strip()
    if not value or value.lower() == "undrafted":
        return None
    if not re.fullmatch(r"\d{4}", value) or not 1947 <= int(value) <= 2100:
        raise InvalidInput(f"draft_year {value!r} is not a year like 2025 (leave it empty for undrafted)")
    return int(value)


def check_reference_url(url: str | None) -> str | None:
    """Reference photos are fetched over http(s) only."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"reference_image_url {url!r}: only http(s) URLs with a host")
    return url


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidInput(f"nba_active {value!r}: write true or false")


def _optional_text(value: str | None, column: str, limit: int) -> str | None:
    if not value:
        return None
    if _CONTROL.search(value) or len(value) > limit:
        raise InvalidInput(f"{column} has control characters or is over {limit} characters")
    return unicodedata.normalize("NFC", value)


def import_roster(session: Session, rows: list[RosterRow]) -> ImportResult:
    """Upsert by slug inside the caller's transaction."""
    existing = {
        player.slug: player
        for player in session.scalars(select(Player).where(Player.slug.in_([row.slug for row in rows])))
    }
    created = updated = 0
    for row in rows:
        fields = {key: value for key, value in row.__dict__.items() if key != "line"}
        player = existing.get(row.slug)
        if player is None:
            session.add(Player(**fields))
            created += 1
            continue
        changed = {key: value for key, value in fields.items() if getattr(player, key) != value}
        for key, value in changed.items():
            setattr(player, key, value)
        updated += bool(changed)
    session.flush()
    years = sorted({row.draft_year for row in rows}, key=lambda year: (year is None, year or 0))
    return ImportResult(created=created, updated=updated, draft_years=years)
