"""Reading the user's exemplar images and subject masks, whatever shape they come in.

Policy (documented for users in docs/CLI.md; the README names the 64 MP limit):

* Every image comes back as an 8-bit RGB ``PIL.Image`` with its EXIF orientation applied, so what
  the user sees in a photo viewer is what the trainer sees.
* Transparency is composited on white (a cut-out subject on a white card, not on black).
* 16-bit and 32-bit grey images are scaled to 8 bit by their real range, not clipped.
* Images larger than ``MAX_PIXELS`` (64 megapixels, i.e. 8192 x 8192) are **refused** before they
  are decoded: decoding such a file costs gigabytes of memory and the trainer works at 512 px or
  less anyway. The message tells the user to downscale the file.
* Masks: 255 = subject, 0 = concept region. Any mode is accepted; a mask with real transparency
  uses its alpha channel (opaque = subject), otherwise its brightness, thresholded at 128.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lego_studio.core.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff"}
)
MAX_PIXELS = 8192 * 8192  # 64 MP
# Megapixels as this module counts them (2**20 pixels), so that the limit reads "64 MP" in the
# message, in MAX_PIXELS' comment and in the README alike (8192 x 8192 / 1e6 would say 67).
MEGAPIXEL = 1 << 20
# Decoders we let PIL use. Others (EPS/PS run Ghostscript, SVG-like or exotic formats) are refused:
# exemplar photos never need them and some start external programs.
_ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "TGA", "ICO", "AVIF")


def _pil_formats() -> list[str]:
    Image.init()
    return [name for name in _ALLOWED_FORMATS if name in Image.OPEN]

# Suffixes people give mask files next to "a.jpg": "a.png", "a_mask.png", "a-mask.png", "a.mask.png".
_MASK_STEM_SUFFIXES = ("", "_mask", "-mask", ".mask", " mask")


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such {what} file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an {what} file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: not a readable {what} (empty file)")


def _open_decoded(path: Path, max_pixels: int, what: str) -> Image.Image:
    """Open and fully decode ``path`` (so truncation shows up here, not later), EXIF-rotated."""
    _check_file(path, what)
    try:
        with warnings.catch_warnings():
            # Our own limit below is stricter than PIL's warning threshold; PIL's hard
            # DecompressionBombError (2x its limit) is still caught and explained.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=_pil_formats()) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InputError(
                        f"{path}: image is {width}x{height} ({width * height / MEGAPIXEL:.0f} MP), more than "
                        f"the {max_pixels / MEGAPIXEL:.0f} MP limit; downscale it first"
                    )
                if width == 0 or height == 0:
                    raise InputError(f"{path}: not a readable {what} (it has no pixels)")
                image.load()
                try:
                    oriented = ImageOps.exif_transpose(image)
                except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose the picture
                    oriented = None
                if oriented is None or oriented is image:
                    oriented = image.copy()
                return oriented
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image is too large to open safely ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable {what} (unknown or unsupported file format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise InputError(f"{path}: not a readable {what} ({reason})") from None


def _scale_high_bit_depth(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float grey images -> 8-bit 'L', scaled by their real range."""
    mode = image.mode
    array = np.asarray(image)
    array = array.astype(np.float64)
    if mode.startswith("I;16"):
        scaled = array / 257.0
    elif mode == "F" and array.size and np.nanmax(array) <= 1.0 and np.nanmin(array) >= 0.0:
        scaled = array * 255.0  # float images in [0, 1]
    else:
        low = float(np.nanmin(array)) if array.size else 0.0
        high = float(np.nanmax(array)) if array.size else 0.0
        if low >= 0 and high <= 255:
            scaled = array
        elif low >= 0 and high <= 65535:
            scaled = array / 257.0  # a 16-bit file stored as 32-bit 'I' (e.g. 16-bit PNG, TIFF)
        elif high > low:
            scaled = (array - low) * (255.0 / (high - low))
        else:
            scaled = np.zeros_like(array)
    scaled = np.nan_to_num(scaled, nan=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scale_high_bit_depth(image).convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(image, transform)
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load any image file as 8-bit RGB with EXIF orientation applied.

    Raises :class:`InputError` naming the file when it is missing, empty, truncated, not an
    image, or larger than ``max_pixels`` (see the module docstring for the policy).
    """
    path = Path(path)
    image = _open_decoded(path, max_pixels, "image")
    try:
        return _to_rgb(image)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image (cannot convert mode {image.mode}: {exc})") from None


LABEL_MAP_MIN_FRACTION = 0.001  # of the pixels, for a dark mask to be read as a label map


def load_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """Load a subject mask as a ``uint8`` array ``[height, width]`` with 255 = subject, 0 = concept.

    ``size`` is the ``(width, height)`` of the (EXIF-rotated) image the mask belongs to, i.e.
    ``load_image(image_path).size``. An all-zero mask is fine ("no subject marked"); a mask that
    covers the whole image leaves nothing for the concept and is refused.
    """
    path = Path(path)
    image = _open_decoded(path, MAX_PIXELS, "mask")
    width, height = int(size[0]), int(size[1])
    if image.size != (width, height):
        raise InputError(
            f"{path}: mask is {image.size[0]}x{image.size[1]} but its image is {width}x{height}"
        )
    subject = _mask_values(image) >= 128
    if not subject.any():
        # Nothing bright, yet something marked: a label map (values 0/1, class indices such as a
        # VOC palette PNG, a 16-bit label image) or a dim paint. Every non-zero pixel is the subject;
        # a few stray ones (compression noise) do not count.
        marked = _marked_pixels(image)
        if marked.mean() >= LABEL_MAP_MIN_FRACTION:
            subject = marked
    mask = np.where(subject, 255, 0).astype(np.uint8)
    if mask.size and mask.min() == 255:
        raise InputError(
            f"{path}: mask marks the whole image as subject, leaving nothing for the concept"
        )
    return mask


def _mask_values(image: Image.Image) -> np.ndarray:
    """Brightness (or alpha, when the mask is painted on transparency) as 0..255 values."""
    if _has_transparency(image):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return np.asarray(_scale_high_bit_depth(image))
    if mode == "1":
        return np.asarray(image.convert("L"))
    return np.asarray(_to_rgb(image).convert("L"))


def _marked_pixels(image: Image.Image) -> np.ndarray:
    """Pixels whose raw value is not zero (alpha for a mask painted on transparency)."""
    if _has_transparency(image):
        return np.asarray(image.convert("RGBA"))[..., 3] > 0
    if image.mode in ("L", "I", "F") or image.mode.startswith("I;16"):
        return np.nan_to_num(np.asarray(image, dtype=np.float64)) > 0
    return np.asarray(_to_rgb(image).convert("L")) > 0


SMALL_IMAGE_FACTOR = 2.0  # an image whose shorter side is upscaled more than this is "small"
LONG_IMAGE_RATIO = 2.0  # longer side over shorter side beyond which the centre square drops most of it


def image_size_note(images, resolution: int) -> str:
    """One line about training images that will train poorly at ``resolution`` (px), or "".

    Training takes each image's centre square and resizes it to the training size, so a picture
    much smaller than that is blown up (the concept then has to explain its blur), and a very wide
    or tall one loses most of itself. Only the headers are read; unreadable files are left to the
    checks that name them."""
    small, long = [], []
    for path in images:
        try:
            with Image.open(path, formats=_pil_formats()) as image:  # the formats load_image accepts
                width, height = image.size
        except Exception:  # noqa: BLE001 - reported by check_inputs / load_image, not here
            continue
        short_side, long_side = min(width, height), max(width, height)
        if short_side <= 0:
            continue
        name = Path(path).name
        if resolution / short_side > SMALL_IMAGE_FACTOR:
            small.append((short_side, name, width, height))
        if long_side / short_side > LONG_IMAGE_RATIO:
            long.append((short_side / long_side, name, width, height))
    def how_many(found: list) -> str:
        if len(images) == 1:
            return "the image is"
        return f"{len(found)} of {len(images)} images {'is' if len(found) == 1 else 'are'}"

    parts = []
    if small:
        side, name, width, height = min(small)
        parts.append(f"{how_many(small)} much smaller than the {resolution} px training size (smallest: {name}, "
                     f"{width}x{height}, enlarged {resolution / side:.1f}x), so the concept may learn their blur; "
                     f"larger pictures train better")
    if long:
        share, name, width, height = min(long)
        parts.append(f"{how_many(long)} far from square (e.g. {name}, {width}x{height}): training uses only the centre "
                     f"square, {share:.0%} of it; crop them around what shows the concept")
    return "; ".join(parts)


def _natural_key(path: Path) -> list:
    # "img2" before "img10", case-insensitive, ties broken by the exact name.
    parts = re.split(r"(\d+)", path.name.casefold())
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts] + [(2, 0, path.name)]


def is_image_file(path: str | os.PathLike) -> bool:
    """An image by extension, skipping hidden files (macOS ``._x.jpg`` resource forks)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), in natural name order."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: is a file, not a folder of images")
    images = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError(f"{folder}: no images found (looked for {extensions})")
    return sorted(images, key=_natural_key)


def load_source(source, what: str) -> tuple[Image.Image, str]:
    """An image given as a path or a PIL image, as RGB, and the name errors use for it."""
    if isinstance(source, Image.Image):
        return source.convert("RGB"), f"<{what} in memory>"
    if isinstance(source, (str, os.PathLike)):
        return load_image(source), str(source)
    raise InputError(f"{what} must be a file path or an image, not {type(source).__name__}")


def mask_array(mask_source, image: Image.Image, image_name: str) -> np.ndarray | None:
    """A mask given as a path or a uint8 array for ``image``, as :func:`load_mask` gives it (255 =
    subject); None for None (not marked). A wrong size or an all-subject mask is an InputError."""
    if mask_source is None:
        return None
    if isinstance(mask_source, (str, os.PathLike)):
        return load_mask(mask_source, image.size)
    array = np.asarray(mask_source)
    if array.ndim != 2 or (array.shape[1], array.shape[0]) != image.size:
        raise InputError(
            f"{image_name}: mask is {array.shape[1] if array.ndim == 2 else '?'}x{array.shape[0]} "
            f"but its image is {image.size[0]}x{image.size[1]}"
        )
    binary = np.where(array >= 128, 255, 0).astype(np.uint8)
    if binary.size and binary.min() == 255:
        raise InputError(f"{image_name}: mask marks the whole image as subject, leaving nothing for the concept")
    return binary


def find_mask_for(image_path: str | os.PathLike, mask_dir: str | os.PathLike) -> Path | None:
    """The mask in ``mask_dir`` that belongs to ``image_path``, paired by file stem.

    ``a.jpg`` pairs with ``a.png`` (preferred), any other image extension, or ``a_mask.png`` /
    ``a-mask.png`` / ``a.mask.png``; an exact-case stem beats a case-insensitive one. Returns
    ``None`` when there is no mask (or no mask folder): that image simply has no subject marked.
    """
    image_path = Path(image_path)
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        return None
    stem = image_path.stem
    wanted = {stem + suffix: rank for rank, suffix in enumerate(_MASK_STEM_SUFFIXES)}
    wanted_folded = {name.casefold(): rank for name, rank in wanted.items()}
    try:
        image_resolved = image_path.resolve()
    except OSError:
        image_resolved = image_path
    best: tuple | None = None
    for candidate in mask_dir.iterdir():
        if not candidate.is_file() or not is_image_file(candidate):
            continue
        if candidate.resolve() == image_resolved:
            continue  # masks kept next to their images: never pair an image with itself
        if candidate.stem in wanted:
            key = (0, wanted[candidate.stem])
        elif candidate.stem.casefold() in wanted_folded:
            key = (1, wanted_folded[candidate.stem.casefold()])
        else:
            continue
        key = key + (candidate.suffix.lower() != ".png", candidate.name)
        if best is None or key < best[0]:
            best = (key, candidate)
    return best[1] if best else None


# Basic colour names by hue (degrees, HSV), for the colour of a marked subject; pixels of low
# saturation are black, grey or white by their brightness.
_HUE_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (170, "green"), (255, "blue"), (300, "purple"),
              (345, "pink"), (360, "red"))
# The subject's colours are those at least OUTSIDE_RATIO times as common inside the marks as outside
# them (so the background a rough mask takes in is not one); they must make up at least
# COLOUR_SHARE of the marked pixels, and one of them names the subject when it holds at least half
# of them and twice as many as the next (a subject of many colours gets no name).
COLOUR_SHARE = 0.3
OUTSIDE_RATIO = 2.0


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """A basic colour name per pixel of ``rgb`` (uint8 ``[..., 3]``): red, orange, brown, yellow,
    green, blue, purple, pink, black, grey or white."""
    x = rgb.astype(np.float64) / 255.0
    top, low = x.max(-1), x.min(-1)
    chroma = top - low
    saturation = np.where(top > 0, chroma / np.maximum(top, 1e-9), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-9)
    hue = np.where(top == r, ((g - b) / safe) % 6, np.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    names = np.full(x.shape[:-1], "red", dtype=object)
    lower = 0
    for upper, name in _HUE_NAMES:
        names[(hue >= lower) & (hue < upper)] = name
        lower = upper
    names[(names == "orange") & (top < 0.6)] = "brown"
    grey = saturation < 0.2
    names[grey] = np.where(top[grey] < 0.25, "black", np.where(top[grey] > 0.8, "white", "grey"))
    names[(~grey) & (top < 0.15)] = "black"
    return names


def subject_colour(images, masks, max_side: int = 128) -> str | None:
    """The basic colour name (:func:`colour_names`) of the marked subject, read from the marked
    pixels of every image with a mask; None when there are no masks, when the marks hold mostly
    colours as common outside them (a mask far looser than the subject), or when no one colour
    leads (see COLOUR_SHARE). ``images``: paths or PIL images; ``masks``: paths or uint8 arrays at
    the image's size (None: not marked). Images are read at most ``max_side`` px on a side."""
    inside: dict[str, int] = {}
    outside: dict[str, int] = {}
    for image_source, mask_source in zip(images, masks):
        if mask_source is None:
            continue
        image, name = load_source(image_source, "training image")
        mask = mask_array(mask_source, image, name)
        scale = max_side / max(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        names = colour_names(np.asarray(image)).astype(str)
        for counts, chosen in ((inside, names[mask >= 128]), (outside, names[mask < 128])):
            for name, count in zip(*np.unique(chosen, return_counts=True)):
                counts[str(name)] = counts.get(str(name), 0) + int(count)
    total_in, total_out = sum(inside.values()), sum(outside.values())
    if not total_in:
        return None
    own = sorted(((count, name) for name, count in inside.items()
                  if count / total_in >= OUTSIDE_RATIO * (outside.get(name, 0) / total_out if total_out else 0.0)),
                 reverse=True)
    own_total = sum(count for count, _ in own)
    if not own or own_total < COLOUR_SHARE * total_in:
        return None
    count, name = own[0]
    runner_up = own[1][0] if len(own) > 1 else 0
    return name if count >= 0.5 * own_total and count >= 2 * runner_up else None


# Shape from masks (core/subject_name.py): how well pictures the model drew of a phrase have the
# outline the user's masks give their subject. A pixel is foreground when its colour is this far
# (RGB, 0-255) from the picture's border colour (the median of its edge pixels).
FOREGROUND_DISTANCE = 60.0
OUTLINE_SIZE = 32  # outlines are compared cropped to their box, centred in a square, at this size


def foreground(image) -> np.ndarray:
    """A bool array: the pixels of ``image`` (PIL or uint8 array) that differ from its border's
    colour by FOREGROUND_DISTANCE or more: the drawn subject, on a plain background."""
    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.float32)[..., :3]
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.linalg.norm(a - np.median(border, axis=0), axis=-1) >= FOREGROUND_DISTANCE


def outline(marked: np.ndarray, size: int = OUTLINE_SIZE) -> np.ndarray:
    """A bool outline normalised for place and size: cropped to its box, centred in a square,
    resized to ``size``. Empty (all False) when fewer than 5 pixels are marked."""
    ys, xs = np.nonzero(marked)
    if len(ys) < 5:
        return np.zeros((size, size), bool)
    crop = marked[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = crop.astype(np.uint8) * 255
    return np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR)) >= 128


def outline_match(drawings, masks) -> float:
    """How well ``drawings`` (pictures of a subject alone, PIL or arrays) have the outline of the
    subject ``masks`` mark (uint8 arrays, 255 = subject; None skipped): for each drawing the best
    overlap (intersection over union) of its :func:`outline` with a mask's, averaged; 0.0 without
    drawings or masks."""
    references = [outline(np.asarray(m) >= 128) for m in masks if m is not None]
    if not references or not drawings:
        return 0.0
    scores = []
    for drawing in drawings:
        shape = outline(foreground(drawing))
        scores.append(max(float((shape & r).sum()) / max(float((shape | r).sum()), 1.0) for r in references))
    return float(np.mean(scores))
