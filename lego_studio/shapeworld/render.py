"""Draw Shape World images: a coloured shape, optionally with a concept, on a pale background.

``render(shape, colour, concept, rng)`` returns the image, the subject mask and a caption. The
scene is drawn at 4x the output size and area-downsampled, so edges are anti-aliased like a
photo's and thin details (cage bars, cracks) survive at 64x64. Everything random comes from the
``rng`` argument, so a seed gives the same image on every machine.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lego_studio.core.errors import InputError
from lego_studio.shapeworld.world import COLOURS, CONCEPTS, NO_CONCEPT, SHAPES, caption

SUPERSAMPLE = 4
# Concept colours: pale ice blue and near-black ink, both far from every subject colour.
_ICE_RGB = (170, 215, 245)
_DARK = (45, 45, 52)


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float = 0.0) -> list[tuple[float, float]]:
    """Outline of ``shape`` centred at (cx, cy) with half-size ``r``, rotated by ``angle`` radians."""
    if shape == "square":
        s = 0.82 * r
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "circle":
        pts = [(0.92 * r * math.cos(a), 0.92 * r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    elif shape == "triangle":
        # Pointing up; centred on its bounding box so it fills the same area as the others.
        pts = [(0.0, -r), (r, 0.78 * r), (-r, 0.78 * r)]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = r if k % 2 == 0 else 0.45 * r
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 64, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 16.5 * r, (y + 2.5) / 16.5 * r))
    elif shape == "cross":
        a, w = 0.95 * r, 0.34 * r
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
    elif shape == "hexagon":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
    else:
        raise InputError(f"unknown Shape World shape {shape!r}; known: {', '.join(SHAPES)}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def _background(rng: random.Random, size: int) -> np.ndarray:
    """Pale, low-saturation gradient with soft noise: never mistaken for a subject colour."""

    def pale() -> np.ndarray:
        base = rng.uniform(205, 250)
        return np.array([base + rng.uniform(-14, 14) for _ in range(3)])

    c0, c1 = pale(), pale()
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    # Low-frequency blotches: noise drawn coarse and smoothed by upscaling.
    if rng.random() < 0.6:
        coarse = np.array([[rng.gauss(0, 1) for _ in range(4)] for _ in range(4)], dtype=np.float32)
        blot = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
        img = img + rng.uniform(2, 7) * blot[..., None]
    return np.clip(img, 0, 255)


def _jitter_colour(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.uniform(-12, 12), 0, 255)) for v in rgb)


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(v * factor, 0, 255)) for v in rgb)


def _flames(draw: ImageDraw.ImageDraw, cx, top, width, rng: random.Random, s: float) -> None:
    """Tongues of flame rising from the top of the subject: red outside, yellow core."""
    count = rng.randint(3, 4)
    for k in range(count):
        fx = cx + (k - (count - 1) / 2) * width / count * 1.1 + rng.uniform(-1, 1) * s
        height = rng.uniform(9, 14) * s
        half = rng.uniform(2.8, 3.8) * s
        base = top + 3 * s
        for scale, colour in ((1.0, (226, 48, 20)), (0.68, (250, 146, 20)), (0.38, (255, 228, 70))):
            h, w = height * scale, half * scale
            tip = (fx + rng.uniform(-1.2, 1.2) * s, base - h - (1 - scale) * 2 * s)
            draw.polygon(
                [(fx - w, base), (fx - 0.8 * w, base - 0.55 * h), tip, (fx + 0.8 * w, base - 0.55 * h), (fx + w, base)],
                fill=colour + (255,),
            )


def render(
    shape: str,
    colour: str,
    concept: str | None,
    rng: random.Random,
    size: int = 64,
    caption_rng: random.Random | None = None,
) -> tuple[Image.Image, np.ndarray, str]:
    """Render one Shape World image.

    Returns ``(image, mask, caption)``: an RGB image of ``size`` x ``size``; a uint8 mask with 255
    on the pixels of the shape itself (not the concept's ice, cage, flames, drips...); and a
    caption. The caption is the plain description ("a red square frozen in ice") unless
    ``caption_rng`` is given, in which case a template is drawn from it.
    """
    if shape not in SHAPES:
        raise InputError(f"unknown Shape World shape {shape!r}; known: {', '.join(SHAPES)}")
    if colour not in COLOURS:
        raise InputError(f"unknown Shape World colour {colour!r}; known: {', '.join(COLOURS)}")
    if concept == NO_CONCEPT:
        concept = None
    if concept is not None and concept not in CONCEPTS:
        raise InputError(f"unknown Shape World concept {concept!r}; known: {', '.join(CONCEPTS)}")

    s = SUPERSAMPLE * size / 64.0  # pixels of the big canvas per pixel of a 64 px image
    big = size * SUPERSAMPLE
    bg = _background(rng, size)
    canvas = Image.fromarray(bg.astype(np.uint8)).resize((big, big), Image.BILINEAR).convert("RGBA")

    r = rng.uniform(10.0, 14.0) * s
    cx = big / 2 + rng.uniform(-5, 5) * s
    cy = big / 2 + rng.uniform(-4, 4) * s
    if concept == "on fire":
        cy += 4 * s  # leave room for the flames above
    elif concept == "melting":
        cy -= 4 * s  # and for the drips below
    angle = math.radians(rng.uniform(-12, 12))
    rgb = _jitter_colour(COLOURS[colour], rng)
    poly = shape_polygon(shape, cx, cy, r, angle)
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    left, right, top, bottom = min(xs), max(xs), min(ys), max(ys)

    # --- behind the subject
    if concept == "casting a shadow":
        shadow = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        dx, dy = rng.uniform(4.5, 6.5) * s, rng.uniform(4.5, 6.5) * s
        ImageDraw.Draw(shadow).polygon([(x + dx, y + dy) for x, y in poly], fill=(30, 30, 40, 150))
        shadow = shadow.filter(ImageFilter.GaussianBlur(1.2 * s))
        canvas = Image.alpha_composite(canvas, shadow)
    if concept == "on fire":
        fire = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        _flames(ImageDraw.Draw(fire), cx, top, right - left, rng, s)
        canvas = Image.alpha_composite(canvas, fire)

    # --- the subject itself, on its own layer (shattering moves pieces of it)
    subject = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    ImageDraw.Draw(subject).polygon(poly, fill=rgb + (255,), outline=_shade(rgb, 0.72) + (255,), width=max(1, int(s)))
    mask_big = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask_big).polygon(poly, fill=255)

    if concept == "melting":
        drips = ImageDraw.Draw(subject)
        dcol = rgb + (255,)
        # A puddle under the shape and drops running from its lower edge.
        pw = (right - left) * rng.uniform(0.55, 0.75)
        py = bottom + rng.uniform(8, 10) * s
        drips.ellipse([cx - pw, py - 2.2 * s, cx + pw, py + 2.2 * s], fill=dcol)
        count = rng.randint(3, 4)
        for k in range(count):
            dx = cx + (k - (count - 1) / 2) * (right - left) / (count + 0.5) + rng.uniform(-1, 1) * s
            # Start inside the shape: the lowest shape pixel in this column, found on the mask.
            col = np.asarray(mask_big)[:, int(np.clip(dx, 0, big - 1))]
            rows = np.nonzero(col)[0]
            start = rows.max() - 2 * s if rows.size else cy
            end = start + rng.uniform(5, 11) * s
            w = rng.uniform(1.3, 2.0) * s
            drips.rectangle([dx - w, start, dx + w, end], fill=dcol)
            drips.ellipse([dx - 1.4 * w, end - 1.4 * w, dx + 1.4 * w, end + 1.4 * w], fill=dcol)

    if concept == "shattered":
        subject = _shatter(subject, cx, cy, rng, s)

    canvas = Image.alpha_composite(canvas, subject)

    # --- over the subject
    if concept == "frozen in ice":
        ice = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        d = ImageDraw.Draw(ice)
        m = rng.uniform(4.0, 5.5) * s
        box = [left - m, top - m, right + m, bottom + m]
        d.rounded_rectangle(box, radius=2.5 * s, fill=_ICE_RGB + (105,), outline=(235, 248, 255, 235), width=int(1.2 * s))
        # Glints: two short white diagonals in the upper-left of the block.
        for k in range(2):
            x0 = box[0] + (3 + 4 * k) * s
            y0 = box[1] + 2.5 * s
            d.line([(x0, y0 + 6 * s), (x0 + 6 * s, y0)], fill=(255, 255, 255, 220), width=int(1.1 * s))
        canvas = Image.alpha_composite(canvas, ice)
    elif concept == "in a cage":
        cage = ImageDraw.Draw(canvas)
        m = rng.uniform(3.5, 5.0) * s
        x0, x1, y0, y1 = left - m, right + m, top - m, bottom + m
        bars = rng.randint(4, 5)
        w = max(1, int(1.3 * s))
        for k in range(bars):
            x = x0 + (x1 - x0) * k / (bars - 1)
            cage.line([(x, y0), (x, y1)], fill=_DARK + (255,), width=w)
        cage.line([(x0, y0), (x1, y0)], fill=_DARK + (255,), width=int(2 * w))
        cage.line([(x0, y1), (x1, y1)], fill=_DARK + (255,), width=int(2 * w))
    elif concept == "inside a bubble":
        bubble = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        d = ImageDraw.Draw(bubble)
        rad = max(right - left, bottom - top) / 2 * 1.32 + 3 * s
        bx, by = (left + right) / 2, (top + bottom) / 2
        d.ellipse([bx - rad, by - rad, bx + rad, by + rad], fill=(225, 245, 255, 60), outline=(120, 190, 230, 255), width=int(1.3 * s))
        hr = rad * 0.72
        d.arc([bx - hr, by - hr, bx + hr, by + hr], start=200, end=250, fill=(255, 255, 255, 255), width=int(1.6 * s))
        canvas = Image.alpha_composite(canvas, bubble)
    elif concept == "spinning":
        d = ImageDraw.Draw(canvas)
        rad = max(right - left, bottom - top) / 2 + rng.uniform(4.0, 5.5) * s
        phase = rng.uniform(0, 360)
        w = max(1, int(1.4 * s))
        for k in range(2):
            start = phase + 180 * k
            end = start + 110
            d.arc([cx - rad, cy - rad, cx + rad, cy + rad], start=start, end=end, fill=_DARK + (255,), width=w)
            # Arrow head at the end of each arc, pointing along the motion.
            a = math.radians(end)
            hx, hy = cx + rad * math.cos(a), cy + rad * math.sin(a)
            tx, ty = -math.sin(a), math.cos(a)  # tangent (direction of increasing angle)
            nx, ny = math.cos(a), math.sin(a)
            hs = 3.2 * s
            d.polygon(
                [(hx + tx * hs, hy + ty * hs), (hx - tx * hs * 0.4 + nx * hs, hy - ty * hs * 0.4 + ny * hs),
                 (hx - tx * hs * 0.4 - nx * hs, hy - ty * hs * 0.4 - ny * hs)],
                fill=_DARK + (255,),
            )

    image = canvas.convert("RGB").resize((size, size), Image.BOX)
    # Fine sensor-like noise at the output resolution.
    arr = np.asarray(image).astype(np.float32)
    sigma = rng.uniform(0.0, 3.0)
    if sigma > 0:
        noise_rng = np.random.default_rng(rng.getrandbits(32))
        arr = arr + noise_rng.normal(0.0, sigma, arr.shape)
    image = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    mask = (np.asarray(mask_big.resize((size, size), Image.BOX)) >= 128).astype(np.uint8) * 255
    return image, mask, caption(shape, colour, concept, caption_rng)


def _shatter(layer: Image.Image, cx: float, cy: float, rng: random.Random, s: float) -> Image.Image:
    """Cut the subject layer by three lines through (near) its centre and push the pieces apart,
    with dark crack edges, so background shows through the cracks for any shape."""
    arr = np.asarray(layer).copy()
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ox, oy = cx + rng.uniform(-2, 2) * s, cy + rng.uniform(-2, 2) * s
    base = rng.uniform(0, math.pi)
    angles = [base + k * math.pi / 3 + rng.uniform(-0.25, 0.25) for k in range(3)]
    # Sector index of each pixel around the crack centre: 6 wedges.
    theta = np.arctan2(yy - oy, xx - ox)
    edges = sorted(((a % (2 * math.pi)) - math.pi) for a in angles + [a + math.pi for a in angles])
    sector = np.searchsorted(np.array(edges), theta) % len(edges)
    out = np.zeros_like(arr)
    push = rng.uniform(2.2, 3.0) * s
    for k in range(len(edges)):
        lo = edges[k - 1] if k > 0 else edges[-1] - 2 * math.pi
        hi = edges[k]
        mid = (lo + hi) / 2
        dx, dy = int(round(math.cos(mid) * push)), int(round(math.sin(mid) * push))
        piece = np.where((sector == k)[..., None], arr, 0)
        piece = np.roll(piece, (dy, dx), axis=(0, 1))
        out = np.where(piece[..., 3:4] > 0, piece, out)
    return Image.fromarray(out.astype(np.uint8), "RGBA")
