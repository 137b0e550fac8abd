"""Prompts: the seed's system prompt, a block per style, and the per-player user prompt."""

from __future__ import annotations

import re
import unicodedata

from portrait_pipeline.styles import Style

SYSTEM_PROMPT_VERSION = "v2.1"
LIKENESS_PROMPT_VERSION = "l1.0"

SYSTEM_PROMPT = """\
You create player portraits for DraftGuru, a basketball draft app.

Output: one 800x1000 PNG, 4:5 portrait aspect ratio, head and shoulders, centered, facing the viewer.
Style: a flat vector poster illustration. NOT photorealistic, no photographic textures.
Palette: DraftGuru brand colors: primary blue #4A7FB8, peach #E8B4A8, cyan accent #06b6d4, with darker and
lighter shades of them for depth.
Skin: a 3-tone warm ramp (base, shadow, highlight) that matches the player's complexion as described.
Clothing: a generic basketball jersey with no team logos, no numbers, no names, no sponsor marks.
Background: simple and flat, at most two geometric shapes in the palette.
Hard exclusions: no text of any kind, no letters or numbers, no watermarks, no signatures, no team logos,
no busy or photographic backgrounds, no other people."""

STYLE_BLOCKS: dict[Style, str] = {
    "default": "Style variant DEFAULT: clean flat shapes, soft two-step shading, calm blue background.",
    "vector": "Style variant VECTOR: bold geometric planes, thick uniform outlines, diagonal color bands.",
    "comic": "Style variant COMIC: heavy black ink outlines, halftone dot shading, punchy saturated colors.",
    "retro": "Style variant RETRO: 1970s sports-card look, muted warm palette, sunburst stripes behind.",
}

LIKENESS_PROMPT = """\
Describe the visible physical features of the person in this photo so that an illustrator could draw a
likeness: face shape, skin tone, hair (color, length, texture, style), facial hair, eyebrows, build.
Be neutral and factual, 2 to 4 sentences. Do not guess who the person is, do not name anyone, and say
nothing about identity, ethnicity, nationality or age beyond what a drawing needs."""

_FIELD_LIMITS = {"name": 80, "position": 30, "school": 80, "likeness": 800}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Text that tries to steer the model rather than describe a player.
_INSTRUCTION_LIKE = re.compile(
    r"(ignore|disregard|forget)\b.{0,40}\b(instruction|prompt|rule|above|previous)s?"
    r"|\bsystem prompt\b|\byou are now\b|\bnew instructions?\b|\b(add|include|write)\b.{0,30}\b(text|logo|watermark)\b",
    re.IGNORECASE,
)


def sanitize_field(value: str | None, field: str) -> str:
    """Make a player field safe to put in a prompt: one line, capped, without instructions."""
    if not value:
        return ""
    text = unicodedata.normalize("NFC", value)
    # Invisible format characters (zero-width space, bidi overrides) could hide an instruction from the filter.
    text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    text = _CONTROL.sub(" ", text)
    text = _INSTRUCTION_LIKE.sub(" ", text)
    text = " ".join(text.replace("`", "'").split())
    return text[: _FIELD_LIMITS[field]].strip()


def system_prompt(style: Style) -> str:
    """The full instruction sent as the system prompt, stored on the snapshot."""
    return f"{SYSTEM_PROMPT}\n\n{STYLE_BLOCKS[style]}"


def user_prompt(name: str, position: str | None, school: str | None, likeness: str | None) -> str:
    """The per-player prompt, stored on the asset row."""
    lines = [f"Portrait of a basketball player: {sanitize_field(name, 'name')}."]
    if position and (clean := sanitize_field(position, "position")):
        lines.append(f"Position: {clean}.")
    if school and (clean := sanitize_field(school, "school")):
        lines.append(f"School or club: {clean}.")
    if likeness and (clean := sanitize_field(likeness, "likeness")):
        lines.append(f"Appearance (from a reference photo description): {clean}")
    else:
        lines.append("Appearance: an athletic young basketball player; choose a natural, plausible look.")
    return "\n".join(lines)
