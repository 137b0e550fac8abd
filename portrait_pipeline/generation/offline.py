"""Offline portrait renderer: the embedded default when no Gemini API key is set.

It draws a flat vector poster with Pillow (geometric background, head-and-shoulders bust,
plain jersey) in the brand palette, so the pipeline, its storage and its quality checks run
end to end without a network or a model. Everything is drawn in a fixed 800x1000 design
space and scaled to the requested size. Identity features (skin ramp, hair, jersey) come
from the seed alone, so a player looks the same in every style; background decoration comes
from (seed, style). No text, numbers or logos are ever drawn.
"""

import asyncio
import hashlib
import io
import math
import random
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw, ImageOps

from portrait_pipeline.generation.renderer import RenderedImage, RenderRequest
from portrait_pipeline.model_registry import OFFLINE_MODEL, TARGET_DIMENSIONS, ImagePricing
from portrait_pipeline.styles import (
    BLUE,
    CYAN,
    LIGHT_BLUE,
    NAVY,
    PALE_PEACH,
    PEACH,
    Background,
    Style,
    style_spec,
)

DESIGN_W, DESIGN_H = 800, 1000

Point = tuple[float, float]
Box = tuple[float, float, float, float]

# (base, shadow, highlight), light to deep complexions, all warm.
SKIN_RAMPS: tuple[tuple[str, str, str], ...] = (
    ("#F3D3BD", "#DDB198", "#FBE6D6"),
    ("#E8B4A8", "#CF9385", "#F4CCC2"),
    ("#D29A72", "#B07A55", "#E4B590"),
    ("#B57A50", "#925C38", "#CC9670"),
    ("#8D5A3B", "#6E4229", "#A8724F"),
    ("#5E3A26", "#452818", "#7A5038"),
)
HAIR_COLORS = ("#1B1410", "#2E1F16", "#4A3020", "#6B4226", "#B08850")
HAIRCUTS = ("buzz", "flattop", "afro", "curls", "bald", "fade")


class _Pen:
    """ImageDraw in design coordinates, scaled to the real canvas; optional outline ink."""

    def __init__(self, image: Image.Image, ink: str | None, ink_width: float) -> None:
        self.draw = ImageDraw.Draw(image)
        self.kx, self.ky = image.width / DESIGN_W, image.height / DESIGN_H
        self.ink, self.ink_w = ink, max(1, round(ink_width * self.kx))

    def _pts(self, pts: Sequence[Point]) -> list[Point]:
        return [(x * self.kx, y * self.ky) for x, y in pts]

    def _box(self, box: Box) -> Box:
        return (box[0] * self.kx, box[1] * self.ky, box[2] * self.kx, box[3] * self.ky)

    def _ink(self, outlined: bool) -> tuple[str | None, int]:
        return (self.ink, self.ink_w) if outlined and self.ink else (None, 0)

    def ellipse(self, box: Box, fill: str, outlined: bool = False) -> None:
        ink, width = self._ink(outlined)
        self.draw.ellipse(self._box(box), fill=fill, outline=ink, width=width)

    def polygon(self, pts: Sequence[Point], fill: str, outlined: bool = False) -> None:
        ink, width = self._ink(outlined)
        self.draw.polygon(self._pts(pts), fill=fill, outline=ink, width=width)

    def chord(self, box: Box, start: float, end: float, fill: str, outlined: bool = False) -> None:
        ink, width = self._ink(outlined)
        self.draw.chord(self._box(box), start, end, fill=fill, outline=ink, width=width)

    def line(self, pts: Sequence[Point], fill: str, width: float) -> None:
        self.draw.line(self._pts(pts), fill=fill, width=max(1, round(width * self.kx)), joint="curve")


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list[Point]:
    """Points along an ellipse from angle a0 to a1 (degrees, clockwise from 3 o'clock, y down)."""
    angles = (math.radians(a0 + (a1 - a0) * i / n) for i in range(n + 1))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _rings(pen: _Pen, rng: random.Random) -> None:
    pen.ellipse((90, 140, 710, 760), LIGHT_BLUE)
    for _ in range(5):
        x, y, r = rng.uniform(40, 760), rng.uniform(40, 640), rng.uniform(18, 60)
        pen.ellipse((x - r, y - r, x + r, y + r), rng.choice((CYAN, PALE_PEACH)))
    x0 = rng.uniform(-200, 200)
    pen.polygon([(x0, 1000), (x0 + 120, 1000), (x0 + 720, 0), (x0 + 600, 0)], CYAN)


def _bands(pen: _Pen, rng: random.Random) -> None:
    colors, x, i = (BLUE, NAVY, CYAN, PEACH, LIGHT_BLUE), -1000.0, rng.randrange(5)
    while x < DESIGN_W + 200:
        w = rng.uniform(90, 170)
        pen.polygon([(x, 1000), (x + w, 1000), (x + w + 1000, 0), (x + 1000, 0)], colors[i % 5], True)
        x, i = x + w, i + 1


def _halftone(pen: _Pen, rng: random.Random) -> None:
    cx, cy = rng.uniform(150, 650), rng.uniform(100, 400)
    for gy in range(0, DESIGN_H + 40, 40):
        for gx in range(-20 * (gy // 40 % 2), DESIGN_W + 40, 40):
            r = 3 + 14 * min(1.0, math.hypot(gx - cx, gy - cy) / 700)
            pen.ellipse((gx - r, gy - r, gx + r, gy + r), BLUE)
    spikes = rng.randint(11, 16)
    star = [
        (400 + r * math.cos(math.pi * k / spikes), 450 + r * math.sin(math.pi * k / spikes))
        for k, r in enumerate((210, 330) * spikes)
    ]
    pen.polygon(star, CYAN, True)


def _sunburst(pen: _Pen, rng: random.Random) -> None:
    """Cream paper with a sunburst from behind the head."""
    rays, turn = 18, rng.uniform(0, 20)
    for k in range(0, rays, 2):
        a0, a1 = turn + 360 * k / rays, turn + 360 * (k + 1) / rays
        pen.polygon([(400, 470), *_arc(400, 470, 1400, 1400, a0, a1, 2)], "#D9A56A")
    pen.ellipse((170, 222, 630, 682), "#C8714F")


# The geometric backdrops a style's look can name (styles.OfflineLook.background).
BACKGROUNDS: dict[Background, Callable[[_Pen, random.Random], None]] = {
    "rings": _rings,
    "bands": _bands,
    "halftone": _halftone,
    "sunburst": _sunburst,
}


def _bust(pen: _Pen, skin: tuple[str, str, str], jersey: tuple[str, str], rng: random.Random) -> None:
    """Neck, shoulders, tank-top jersey, head, simple face and a seed-picked haircut."""
    base, shadow, light = skin
    hair, cut = rng.choice(HAIR_COLORS), rng.choice(HAIRCUTS)
    hw = rng.uniform(110, 126)
    x0, x1 = 400 - hw, 400 + hw
    head: Box = (x0, 285, x1, 620)
    face: Box = (x0 + 16, 285 + rng.uniform(40, 60), x1 - 16, 620)
    # Neck with the chin's shadow, shoulders with arm shadows, then a tank-top jersey.
    pen.polygon([(335, 540), (465, 540), (465, 780), (335, 780)], base, True)
    pen.ellipse((330, 540, 470, 660), shadow)
    pen.polygon([*_arc(400, 890, 320, 190, 180, 360), (720, 1010), (80, 1010)], base, True)
    pen.ellipse((125, 780, 240, 1060), shadow)
    pen.ellipse((560, 780, 675, 1060), shadow)
    neck = _arc(400, 705, 70, 110, 180, 0)
    left, right = _arc(165, 722, 85, 190, 90, 0), _arc(635, 722, 85, 190, 180, 90)
    pen.polygon([(170, 1010), *left, *neck, *right, (630, 1010)], jersey[0], True)
    for trim in (neck, left, right):
        pen.line(trim, jersey[1], 14)
    # Head: hair behind, ears, skull, hair cap, then the face oval gives an arched hairline.
    if cut == "afro":
        pen.ellipse((x0 - 50, 200, x1 + 50, 520), hair, True)
    for ex, tone in ((x0 + 4, base), (x1 - 4, shadow)):
        pen.ellipse((ex - 22, 430, ex + 22, 510), tone, True)
    pen.ellipse(head, base, True)
    pen.chord(head, -62, 62, shadow)
    if cut != "bald":
        cap = shadow if cut == "fade" else hair
        ry, crown = (220, 215) if cut == "flattop" else (135, 0)  # a flattop is a tall cap cut flat
        pen.polygon([(x, max(y, crown)) for x, y in _arc(400, 405, hw + 3, ry, 180, 360)], cap, True)
        if cut == "fade":
            pen.chord((x0 + 22, 262, x1 - 22, 420), 180, 360, hair)
        pen.ellipse(face, base)
        pen.chord(face, -62, 62, shadow)
    if cut == "curls":
        for x, y in _arc(400, 395, hw + 4, 112, 180, 360, 8):
            pen.ellipse((x - 28, y - 28, x + 28, y + 28), hair)
    pen.ellipse((400 - 0.45 * hw, face[1] + 30, 400 - 0.05 * hw, face[1] + 54), light)
    brow = hair if cut != "bald" else shadow
    for side in (-1, 1):
        ex = 400 + side * 0.42 * hw
        pen.line([(ex - 20, 432 - side * 2), (ex + 20, 432 + side * 2)], brow, 9)
        pen.ellipse((ex - 9, 448, ex + 9, 462), "#24160E")
    pen.polygon([(402, 455), (424, 512), (398, 518)], shadow)
    if rng.random() < 0.35:
        pen.chord(face, 20, 160, hair)
    pen.line([(380, 560), (420, 560)], shadow, 7)
    if rng.random() < 0.3:
        pen.polygon([(x0, 350), (x1, 350), (x1, 378), (x0, 378)], jersey[1], True)


def render_portrait(seed: str, style: Style, width: int = 800, height: int = 1000) -> bytes:
    """PNG bytes of a flat vector poster for one player; deterministic for (seed, style, size).

    Used instead of Gemini when no API key is set, so every run still produces a real,
    distinct, on-brand image. Small sizes are drawn at 2x and downscaled for smooth edges.
    """
    identity = random.Random(hashlib.sha256(seed.encode()).digest())
    decor = random.Random(hashlib.sha256(f"{seed}|{style}".encode()).digest())
    scale = 2 if width < 1600 else 1
    look = style_spec(style).look
    image = Image.new("RGB", (width * scale, height * scale), look.backdrop)
    pen = _Pen(image, look.ink, look.ink_width)
    skin = identity.choice(SKIN_RAMPS)
    jersey = look.jerseys[identity.randrange(len(look.jerseys))]
    BACKGROUNDS[look.background](pen, decor)
    _bust(pen, skin, jersey, identity)
    if look.sepia_frame:
        sepia = ImageOps.colorize(ImageOps.grayscale(image), black="#3B2A1A", white="#F3E6C8")
        image = Image.blend(image, sepia, 0.45)
        frame, edge = round(22 * image.width / DESIGN_W), (image.width - 1, image.height - 1)
        ImageDraw.Draw(image).rectangle((0, 0, *edge), outline="#F3E6C8", width=frame)
    if scale != 1:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


class OfflineRenderer:
    """The embedded default: Pillow placeholder posters, free, recorded as `offline-renderer`."""

    model = OFFLINE_MODEL
    pricing = ImagePricing(OFFLINE_MODEL)  # $0: the registry's offline entry

    async def render(self, request: RenderRequest) -> RenderedImage:
        width, height = TARGET_DIMENSIONS[request.size]
        data = await asyncio.to_thread(render_portrait, request.seed, request.style, width, height)
        return RenderedImage(data=data)
