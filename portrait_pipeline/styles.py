"""The portrait styles: one name each, shared by partitions, prompts, the renderer and the CLI."""

from typing import Literal, get_args

from portrait_pipeline.errors import InvalidInput

Style = Literal["default", "vector", "comic", "retro"]
STYLES: tuple[Style, ...] = get_args(Style)


def parse_style(value: str) -> Style:
    """Return `value` as a Style, or raise with the choices a person can pick from."""
    for style in STYLES:
        if value == style:
            return style
    raise InvalidInput(f"style {value!r}: choose {', '.join(STYLES)}")
