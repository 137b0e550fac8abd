"""The portrait styles: each is one entry here — its prompt block and its offline look — and nothing else.

Partitions, prompts, the offline renderer and the CLI all read this table, so adding a style is one entry
(plus its name in `Style`, which keeps type checkers able to see the choices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from portrait_pipeline.errors import InvalidInput

# The brand palette (also named in the system prompt) and the shades the offline renderer draws with.
BLUE, PEACH, CYAN = "#4A7FB8", "#E8B4A8", "#06b6d4"
NAVY, LIGHT_BLUE, PALE_PEACH, DARK_CYAN = "#24466F", "#7FA7D4", "#F6DCD3", "#0E7490"

Background = Literal["rings", "bands", "halftone", "sunburst"]


@dataclass(frozen=True)
class OfflineLook:
    """How the offline renderer draws a style: its backdrop, jerseys, outline ink and background painter."""

    backdrop: str
    jerseys: tuple[tuple[str, str], ...]  # (jersey, trim) pairs, one picked per player
    background: Background
    ink: str | None = None  # outline colour; None draws no outlines
    ink_width: float = 0
    sepia_frame: bool = False  # an aged-print finish with a cream border


@dataclass(frozen=True)
class StyleSpec:
    prompt_block: str  # appended to the system prompt; part of the prompt version (see prompts.py)
    look: OfflineLook


Style = Literal["default", "vector", "comic", "retro"]

STYLE_TABLE: dict[Style, StyleSpec] = {
    "default": StyleSpec(
        "Style variant DEFAULT: clean flat shapes, soft two-step shading, calm blue background.",
        OfflineLook(BLUE, ((NAVY, CYAN), ("#F4F7FB", BLUE), (DARK_CYAN, PALE_PEACH)), "rings"),
    ),
    "vector": StyleSpec(
        "Style variant VECTOR: bold geometric planes, thick uniform outlines, diagonal color bands.",
        OfflineLook(BLUE, ((NAVY, CYAN), ("#F4F7FB", BLUE), (PEACH, NAVY)), "bands", ink="#13243A", ink_width=9),
    ),
    "comic": StyleSpec(
        "Style variant COMIC: heavy black ink outlines, halftone dot shading, punchy saturated colors.",
        OfflineLook(PALE_PEACH, ((BLUE, "#FFFFFF"), ("#FFFFFF", BLUE), (CYAN, NAVY)), "halftone", "#000000", 12),
    ),
    "retro": StyleSpec(
        "Style variant RETRO: 1970s sports-card look, muted warm palette, sunburst stripes behind.",
        OfflineLook(
            "#EADBC0",
            (("#5D7A96", "#EADBC0"), ("#EADBC0", "#A4553A"), ("#4E8A8A", "#EADBC0")),
            "sunburst",
            sepia_frame=True,
        ),
    ),
}
STYLES: tuple[Style, ...] = get_args(Style)
if set(STYLES) != set(STYLE_TABLE):  # a style named in one place only would half-exist
    raise AssertionError(f"Style {STYLES} and STYLE_TABLE {tuple(STYLE_TABLE)} must name the same styles")


def parse_style(value: str) -> Style:
    """Return `value` as a Style, or raise with the choices a person can pick from."""
    for style in STYLES:
        if value == style:
            return style
    raise InvalidInput(f"style {value!r}: choose {', '.join(STYLES)}")


def style_spec(style: str) -> StyleSpec:
    """The table entry of a style; an unknown style is an error, never a fallback to another look."""
    return STYLE_TABLE[parse_style(style)]
