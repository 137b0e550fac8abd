"""Image bytes in and out: decode and check what a model returned, normalize to 4:5 PNG, judge quality."""

from __future__ import annotations

import io
import unicodedata
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageStat, PngImagePlugin, UnidentifiedImageError

from portrait_pipeline.errors import GenerationFailed

MIN_SIDE = 64
MAX_SIDE = 8192
# Below this grayscale standard deviation an image is blank or near-uniform.
MIN_STDDEV = 8.0
MAX_SHEET_PIXELS = 8_000_000
Image.MAX_IMAGE_PIXELS = 50_000_000  # Pillow's decompression-bomb guard, explicit


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    stddev: float


def decode(data: bytes, what: str = "image") -> Image.Image:
    """Open and fully load image bytes, turning every Pillow failure into one clear error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise GenerationFailed(f"{what} is not a readable image ({exc.__class__.__name__})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise GenerationFailed(f"{what} is too large to decode safely (decompression-bomb guard)") from None
    width, height = image.size
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise GenerationFailed(f"{what} has implausible dimensions {width}x{height}")
    return image


def inspect(data: bytes) -> ImageInfo:
    image = decode(data)
    stddev = ImageStat.Stat(image.convert("L")).stddev[0]
    return ImageInfo(width=image.width, height=image.height, format=image.format or "?", stddev=stddev)


def fit(data: bytes, target: tuple[int, int]) -> Image.Image:
    """Decode a model's answer, center-crop it to the target's aspect ratio and resize it to the target."""
    image = decode(data, "model output").convert("RGB")
    if image.size != target:
        # One resampling pass over the centered crop box: no intermediate cropped copy.
        image = image.resize(target, Image.Resampling.BICUBIC, box=center_box(image.size, target))
    return image


def center_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centered box of `size` with the aspect ratio of `target`."""
    (width, height), (target_w, target_h) = size, target
    if width * target_h > height * target_w:  # too wide: trim the sides
        new_w = round(height * target_w / target_h)
        left = (width - new_w) // 2
        return (left, 0, left + new_w, height)
    if width * target_h < height * target_w:  # too tall: trim top and bottom
        new_h = round(width * target_h / target_w)
        top = (height - new_h) // 2
        return (0, top, width, top + new_h)
    return (0, 0, width, height)


def to_png(image: Image.Image, provenance: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in provenance.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    # Level 1 with the run-length strategy: on portraits as fast as plain level 1 and ~20% smaller (about the
    # size of the default level 6, at a fifth of its CPU). Encoding is most of the engine's CPU per image.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def png_text(data: bytes) -> dict[str, str]:
    """The PNG's text chunks (prompt version, model, player id)."""
    image = decode(data)
    return dict(getattr(image, "text", {}))


@dataclass(frozen=True)
class Tile:
    """One portrait of a contact sheet: its label, its content hash, and how to load it if it was not kept."""

    name: str
    sha256: str
    load: Callable[[], bytes]


class ContactSheet:
    """One grid of portraits with their names underneath, for review at a glance.

    Tiles are sized up front for at most `capacity` portraits, so the sheet stays bounded at about 8 megapixels
    however big the partition. The engine hands over each image it makes while it is still decoded (`keep`):
    composing then decodes only the images of earlier runs, a few at a time, instead of every image again.
    """

    def __init__(self, capacity: int, tile_size: tuple[int, int] = (160, 200), columns: int = 6) -> None:
        scale = min(1.0, (MAX_SHEET_PIXELS / (max(1, capacity) * tile_size[0] * tile_size[1] * 1.1)) ** 0.5)
        self.tile_size = (max(24, int(tile_size[0] * scale)), max(30, int(tile_size[1] * scale)))
        self.columns = columns
        self._kept: dict[str, Image.Image] = {}

    def keep(self, sha256: str, image: Image.Image) -> None:
        """Remember a thumbnail of an image just made (called from worker threads)."""
        self._kept[sha256] = self._thumbnail(image)

    def compose(self, tiles: Sequence[Tile]) -> Image.Image:
        """The sheet of these tiles, in order; kept thumbnails are used up (compose once)."""
        tile_w, tile_h = self.tile_size
        label_h = max(14, tile_h // 10)
        rows = max(1, -(-len(tiles) // self.columns))
        columns = max(1, min(self.columns, len(tiles)))
        sheet = Image.new("RGB", (columns * tile_w, rows * (tile_h + label_h)), "#f4f6fa")
        draw = ImageDraw.Draw(sheet)
        font, accents = label_font(max(10, label_h - 4))

        def thumbnail(tile: Tile) -> Image.Image:
            kept = self._kept.pop(tile.sha256, None)  # pasted once: let it go
            return kept if kept is not None else self._thumbnail(decode(tile.load()))

        # Pillow decodes outside the GIL: a few threads read and shrink the tiles that were not kept.
        with ThreadPoolExecutor(max_workers=4) as pool:
            for index, (tile, thumb) in enumerate(zip(tiles, pool.map(thumbnail, tiles), strict=True)):
                x, y = (index % columns) * tile_w, (index // columns) * (tile_h + label_h)
                sheet.paste(thumb, (x, y))
                label = tile.name if accents else ascii_label(tile.name)
                draw.text((x + 4, y + tile_h + 1), label[:28], fill="#1f2a37", font=font)
        return sheet

    def _thumbnail(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB").resize(self.tile_size, Image.Resampling.BILINEAR, reducing_gap=2.0)


# Fonts with every Latin accent ("Tomás Ibáñez", "Dončić"): Debian's fonts-dejavu-core, then Liberation.
LABEL_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)


def label_font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """A font for contact-sheet labels, and whether it draws accents.

    Pillow's built-in font has no accented letters; without a system font, labels fall back to ASCII.
    """
    for path in LABEL_FONTS:
        try:
            return ImageFont.truetype(path, size), True
        except OSError:
            continue
    return ImageFont.load_default(size=size), False


def ascii_label(name: str) -> str:
    """ "Tomás Ibáñez" as "Tomas Ibanez", for a font that has no accents."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")


def thumbnail_png(image: Image.Image, max_width: int) -> bytes:
    scale = min(1.0, max_width / image.width)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return to_png(image.resize(size, Image.Resampling.LANCZOS), {})
