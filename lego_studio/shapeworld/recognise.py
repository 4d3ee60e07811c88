"""Are these Shape World pictures? The built-in model knows nothing else.

The test uses the Shape World judge's confidence (resources/judge): an image counts as a Shape
World render when the judge is at least ``MIN_CONFIDENCE`` sure of both its shape and its colour.
Measured on 55 renders (64, 256 and 512 px, every concept) against 49 other pictures (photos,
screenshots, diagrams, blurred noise): renders scored 0.944-0.964 (the judge was trained with
label smoothing, so ~0.96 is its ceiling), the others 0.22-0.83 (median 0.33). A project counts as
Shape World when at least half of its images pass.
"""

from __future__ import annotations

MIN_CONFIDENCE = 0.9
MAX_IMAGES = 16  # enough to decide; a big project is not read whole

WARNING_UI = ("The built-in Shape World model only knows Shape World pictures, and this project's images are not "
              "Shape World renders: add a Stable Diffusion model in Settings (Ctrl+,) to learn from them.")
WARNING_CLI = ("the built-in Shape World model only knows Shape World pictures, and these images are not Shape World "
               "renders: pass --model with a Stable Diffusion model (a diffusers folder or a .safetensors file)")


def shapeworld_confidence(images, judge_model=None) -> list[float]:
    """min(shape probability, colour probability) per image (paths or PIL images)."""
    from PIL import Image

    from lego_studio.core.images import load_image
    from lego_studio.shapeworld.judge import JUDGE_SIZE, judge, load_judge

    pictures = []
    for item in list(images)[:MAX_IMAGES]:
        picture = item if isinstance(item, Image.Image) else load_image(item)
        pictures.append(picture.convert("RGB").resize((JUDGE_SIZE, JUDGE_SIZE), Image.BICUBIC))
    if not pictures:
        return []
    model = judge_model if judge_model is not None else load_judge()
    return [min(p.shape_prob, p.colour_prob) for p in judge(pictures, model)]


def looks_like_shapeworld(images, judge_model=None) -> bool:
    scores = shapeworld_confidence(images, judge_model)
    if not scores:
        return True  # nothing to judge: nothing to warn about
    return sum(score >= MIN_CONFIDENCE for score in scores) * 2 >= len(scores)


def foreign_images_warning(images, cli: bool = False, judge_model=None) -> str | None:
    """One line when ``images`` are not Shape World renders, else None. Never raises for a
    missing judge or an unreadable image (training reports those itself)."""
    from lego_studio.core.errors import LegoError

    try:
        if looks_like_shapeworld(images, judge_model):
            return None
    except LegoError:
        return None
    return WARNING_CLI if cli else WARNING_UI
