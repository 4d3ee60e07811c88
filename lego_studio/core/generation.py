"""Making images with concepts, reproducibly.

Every image carries its full recipe: ``image.info`` (and the PNG written by
:func:`save_generated`) holds an AUTOMATIC1111-style ``parameters`` text chunk that other tools
understand, and a ``lego_studio`` JSON chunk with the whole :class:`GenerationRequest`, so
:func:`regenerate` can make the same image again.

Determinism: the initial latents come from a CPU ``torch.Generator`` seeded with the request's
seed, whatever the device, so a seed means the same starting noise everywhere; on the same
device and dtype the result is bit-for-bit identical.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from lego_studio.core.errors import Cancelled, InputError

DEFAULT_TEMPLATE = "a photo of {subject} {concept}"
METADATA_KEY = "lego_studio"
PARAMETERS_KEY = "parameters"
METADATA_VERSION = 1
MAX_SIDE = 4096
MAX_STEPS = 1000
# AUTOMATIC1111's names for our schedulers, so its PNG-info tab reads our images.
SAMPLER_NAMES = {"ddim": "DDIM", "euler": "Euler", "dpm": "DPM++ 2M", "pndm": "PLMS", "ddpm": "DDPM"}

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass
class GenerationRequest:
    """Everything needed to make (and remake) one image. ``seed=None`` picks a random seed,
    which is recorded in the result; ``width``/``height`` ``None`` mean the model's resolution."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = 0
    steps: int = 30
    guidance: float = 7.5
    scheduler: str = "ddim"
    width: int | None = None
    height: int | None = None
    model: str = ""
    concepts: list[dict] = field(default_factory=list)  # [{name, placeholder, file, sha256}]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "generation settings") -> "GenerationRequest":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}  # newer versions may add keys
        if not isinstance(values.get("prompt"), str):
            raise InputError(f"{where}: no prompt in it")
        try:
            request = cls(**values)
            request.seed = None if request.seed is None else int(request.seed)
            request.steps = int(request.steps)
            request.guidance = float(request.guidance)
            request.width = None if request.width is None else int(request.width)
            request.height = None if request.height is None else int(request.height)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: invalid value ({exc})") from None
        if not isinstance(request.concepts, list) or not all(isinstance(c, dict) for c in request.concepts):
            raise InputError(f"{where}: 'concepts' must be a list of objects")
        return request


# ----------------------------------------------------------------------------- one image


def concept_record(concept) -> dict:
    """What a generated image remembers about a concept: enough to find and verify the file."""
    from lego_studio.core.paths import file_sha256

    source = getattr(concept, "source_file", None)
    record = {"name": concept.name, "placeholder": concept.placeholder, "file": None, "sha256": None}
    if source is not None and Path(source).is_file():
        record["file"] = str(Path(source).resolve())
        record["sha256"] = file_sha256(source)
    return record


def _size_multiple(model) -> int:
    # diffusers' pipeline wants multiples of 8 pixels; the VAE needs whole latent pixels.
    return math.lcm(8, int(model.vae_scale_factor))


def resolve_request(model, request: GenerationRequest, concepts: Sequence = ()) -> GenerationRequest:
    """A copy of ``request`` with every default filled in (seed, size) and the model and
    concepts actually used recorded, validated; this is what gets stored in the image."""
    resolved = GenerationRequest.from_dict(request.to_dict())
    if resolved.seed is None:
        resolved.seed = secrets.randbelow(2**32)
    if not 0 <= resolved.seed < 2**63:
        raise InputError(f"seed {resolved.seed} is out of range (use 0 to {2**63 - 1})")
    if not 1 <= resolved.steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, not {resolved.steps}")
    if not math.isfinite(resolved.guidance) or resolved.guidance < 0:
        raise InputError(f"guidance must be a number of 0 or more, not {resolved.guidance}")
    native = int(model.family.resolution)
    resolved.width = resolved.width or native
    resolved.height = resolved.height or native
    multiple = _size_multiple(model)
    for side_name, side in (("width", resolved.width), ("height", resolved.height)):
        if side <= 0 or side > MAX_SIDE or side % multiple:
            raise InputError(f"image {side_name} {side} must be a multiple of {multiple} between {multiple} and {MAX_SIDE}")
    resolved.scheduler = (resolved.scheduler or "ddim").lower()
    # Record what was actually used, even when the request came from another image.
    resolved.model = str(model.source)
    resolved.concepts = [concept_record(c) for c in concepts]
    return resolved


def a1111_parameters(request: GenerationRequest) -> str:
    """The ``parameters`` text AUTOMATIC1111 writes, so its PNG-info tab and other tools read it."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    sampler = SAMPLER_NAMES.get(request.scheduler, request.scheduler)
    settings = [
        f"Steps: {request.steps}",
        f"Sampler: {sampler}",
        f"CFG scale: {request.guidance:g}",
        f"Seed: {request.seed}",
        f"Size: {request.width}x{request.height}",
        f"Model: {_quote(request.model)}",
    ]
    if request.concepts:
        described = "; ".join(
            f"{c.get('placeholder') or c.get('name')}: {Path(c['file']).name if c.get('file') else 'unsaved'}"
            + (f" [{c['sha256'][:12]}]" if c.get("sha256") else "")
            for c in request.concepts
        )
        settings.append(f"Lego concepts: {_quote(described)}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def _quote(value: str) -> str:
    # A1111 quotes values that contain its separators.
    value = str(value)
    return json.dumps(value, ensure_ascii=False) if any(ch in value for ch in ',:"\n') else value


def generate(
    model,
    request: GenerationRequest,
    concepts: Iterable = (),
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Image.Image:
    """Make one image. ``concepts`` are installed into the model (idempotent) and their
    placeholders expanded in both prompts. ``progress(step, total)`` is called after every
    denoising step; when ``cancel()`` returns True the job stops with :class:`Cancelled`.

    The returned image's ``info`` holds ``parameters`` (A1111 text) and ``lego_studio`` (JSON of
    the resolved request)."""
    import torch

    from lego_studio.core.concepts import expand_prompt, install_concepts

    concepts = list(concepts or ())
    resolved = resolve_request(model, request, concepts)
    if cancel is not None and cancel():
        raise Cancelled("generation cancelled")
    install_concepts(model, concepts)
    pipe = model.pipeline(resolved.scheduler)

    scale = int(model.vae_scale_factor)
    generator = torch.Generator(device="cpu").manual_seed(int(resolved.seed))
    latent_shape = (1, int(model.unet.config.in_channels), resolved.height // scale, resolved.width // scale)
    # Drawn on the CPU in float32 so a seed gives the same noise on every device and dtype.
    latents = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
    latents = latents.to(device=model.device, dtype=model.unet.dtype)

    total = resolved.steps

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        if progress is not None:
            progress(step + 1, total)
        if cancel is not None and cancel():
            raise Cancelled("generation cancelled")
        return callback_kwargs

    with torch.no_grad():
        # SDXL: both encoders' hidden states plus the pooled embeddings; the pipeline adds the
        # micro-conditioning (original = target = the image size, no crop).
        prompt_kwargs = model.pipeline_prompt_kwargs([expand_prompt(resolved.prompt, concepts)],
                                                     [expand_prompt(resolved.negative_prompt, concepts)])
        result = pipe(
            **prompt_kwargs,
            height=resolved.height,
            width=resolved.width,
            num_inference_steps=resolved.steps,
            guidance_scale=resolved.guidance,
            latents=latents,
            generator=generator,
            output_type="pil",
            callback_on_step_end=on_step_end,
        )
    image = result.images[0]
    image.info[PARAMETERS_KEY] = a1111_parameters(resolved)
    image.info[METADATA_KEY] = json.dumps({"version": METADATA_VERSION, "request": resolved.to_dict()}, sort_keys=True)
    return image


GENERATION_BATCH = 32


def generate_batch(model, concepts: Sequence, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float,
                   negative_prompt: str = "", scheduler: str = "ddim", size: int | None = None,
                   batch_size: int = GENERATION_BATCH) -> list[tuple[GenerationRequest, Image.Image]]:
    """One image per (prompt, seed) pair, in batches: [(resolved request, PIL image)]. ``size``:
    square side in pixels (None: the model's resolution). For the benchmark, the demo and Shape
    from masks' drawings (core/subject_name.py).

    The starting noise of each image is drawn exactly as :func:`generate` draws it (CPU generator
    seeded with the seed), so ``lego-studio generate`` with the same prompt, seed, steps and
    guidance redraws the same picture; batching only changes float rounding."""
    import torch

    from lego_studio.core.concepts import expand_prompt, install_concepts

    if len(prompts) != len(seeds):
        raise ValueError("generate_batch needs one seed per prompt")
    concepts = list(concepts or ())
    install_concepts(model, concepts)
    pipe = model.pipeline(scheduler)
    scale = int(model.vae_scale_factor)
    requests = [
        resolve_request(model, GenerationRequest(prompt=p, negative_prompt=negative_prompt, seed=int(s), steps=int(steps),
                                                 guidance=float(guidance), scheduler=scheduler, width=size,
                                                 height=size), concepts)
        for p, s in zip(prompts, seeds)
    ]
    results = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        height, width = chunk[0].height, chunk[0].width
        shape = (1, int(model.unet.config.in_channels), height // scale, width // scale)
        latents = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(r.seed), dtype=torch.float32)
                             for r in chunk]).to(device=model.device, dtype=model.unet.dtype)
        with torch.no_grad():
            prompt_kwargs = model.pipeline_prompt_kwargs([expand_prompt(r.prompt, concepts) for r in chunk],
                                                         [expand_prompt(r.negative_prompt, concepts) for r in chunk])
            images = pipe(**prompt_kwargs, height=height, width=width, num_inference_steps=int(steps),
                          guidance_scale=float(guidance), latents=latents, output_type="pil").images
        results += list(zip(chunk, images))
    return results


def request_of(image: Image.Image) -> GenerationRequest | None:
    """The request stored in an image made by :func:`generate` (None for other images)."""
    raw = image.info.get(METADATA_KEY)
    if not raw:
        return None
    data = json.loads(raw)
    return GenerationRequest.from_dict(data.get("request", data))


# ----------------------------------------------------------------------------- PNG files


def save_generated(image: Image.Image, path: str | os.PathLike, request: GenerationRequest | None = None) -> Path:
    """Write ``image`` as PNG with the ``parameters`` and ``lego_studio`` text chunks, atomically.
    ``request`` defaults to the one :func:`generate` stored in ``image.info``."""
    from PIL.PngImagePlugin import PngInfo

    from lego_studio.core.paths import atomic_save

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: generated images are saved as .png (their settings live in PNG text chunks)")
    if request is None:
        request = request_of(image)
        if request is None:
            raise InputError(f"{path}: the image has no generation settings to save with it")
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(request))
    info.add_text(METADATA_KEY, json.dumps({"version": METADATA_VERSION, "request": request.to_dict()}, sort_keys=True))
    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_generation_metadata(path: str | os.PathLike) -> GenerationRequest:
    """The request stored in a PNG: Lego Studio's JSON chunk, or else an AUTOMATIC1111
    ``parameters`` chunk (prompt, negative prompt, steps, sampler, CFG, seed, size, model)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        with Image.open(path, formats=["PNG"]) as image:
            image.load()
            text = dict(getattr(image, "text", {}) or {})
            text.update({k: v for k, v in image.info.items() if isinstance(v, str)})
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable PNG image (generation settings are stored in PNGs)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({str(exc).strip() or type(exc).__name__})") from None
    if text.get(METADATA_KEY):
        try:
            data = json.loads(text[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: its Lego Studio settings are not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: its Lego Studio settings are not a JSON object")
        return GenerationRequest.from_dict(data.get("request", data), where=str(path))
    if text.get(PARAMETERS_KEY):
        return parse_a1111_parameters(text[PARAMETERS_KEY], where=str(path))
    raise InputError(f"{path}: the image carries no generation settings")


_A1111_FIELD = re.compile(r'\s*([\w ()/+-]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111_parameters(text: str, where: str = "parameters") -> GenerationRequest:
    lines = text.strip().split("\n")
    settings_line = lines.pop() if lines and re.match(r"\s*Steps:\s*\d", lines[-1]) else ""
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    values = {}
    for key, value in _A1111_FIELD.findall(settings_line):
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value.strip('"')
        values[key.strip()] = value.strip()
    samplers = {name.lower(): key for key, name in SAMPLER_NAMES.items()}
    data: dict = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    try:
        if "Steps" in values:
            data["steps"] = int(values["Steps"])
        if "Seed" in values:
            data["seed"] = int(values["Seed"])
        if "CFG scale" in values:
            data["guidance"] = float(values["CFG scale"])
        if "Size" in values:
            width, height = values["Size"].lower().split("x")
            data["width"], data["height"] = int(width), int(height)
    except ValueError:
        raise InputError(f"{where}: unreadable generation settings line {settings_line!r}") from None
    if "Sampler" in values:
        data["scheduler"] = samplers.get(values["Sampler"].lower(), values["Sampler"].lower())
    if "Model" in values:
        data["model"] = values["Model"]
    return GenerationRequest.from_dict(data, where=where)


def load_recorded_concepts(request: GenerationRequest, where: str = "image") -> list:
    """Load the concept files an image was made with, refusing missing or changed files
    (they would silently give a different image)."""
    from lego_studio.core.concepts import load_concept
    from lego_studio.core.paths import file_sha256

    loaded = []
    for record in request.concepts:
        label = record.get("placeholder") or record.get("name") or "?"
        file = record.get("file")
        if not file:
            raise InputError(f"{where}: made with concept {label}, which was never saved to a file; pass it explicitly")
        if not Path(file).is_file():
            raise InputError(f"{where}: made with concept {label} from {file}, which is missing; pass the concept file")
        if record.get("sha256") and file_sha256(file) != record["sha256"]:
            raise InputError(f"{where}: concept file {file} has changed since the image was made; pass the concept explicitly to use it anyway")
        concept = load_concept(file)
        if record.get("placeholder") and concept.placeholder != record["placeholder"]:
            concept = type(concept)(concept.name, record["placeholder"], concept.vectors, concept.metadata, concept.source_file)
        loaded.append(concept)
    return loaded


def regenerate(
    model,
    path: str | os.PathLike,
    concepts: Iterable | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Image.Image:
    """Make the image stored at ``path`` again from its recorded settings. Without ``concepts``
    the recorded concept files are loaded (and verified by their SHA-256)."""
    request = read_generation_metadata(path)
    if concepts is None:
        concepts = load_recorded_concepts(request, where=str(path))
    return generate(model, request, concepts, progress=progress, cancel=cancel)


# ----------------------------------------------------------------------------- grids


def fill_template(template: str, subject: str, concept_text: str) -> str:
    try:
        return template.format(subject=subject, concept=concept_text)
    except KeyError as exc:
        raise InputError(f"template {template!r} uses {{{exc.args[0]}}}; only {{subject}} and {{concept}} are available") from None
    except (IndexError, ValueError) as exc:
        raise InputError(f"template {template!r} is not valid ({exc}); use {{subject}} and {{concept}}") from None


# A concept placeholder typed into a prompt: ``<melting>``, ``<on-fire>`` (no spaces, no braces).
PLACEHOLDER_IN_TEXT = re.compile(r"<[^<>\s{}]+>")


def typed_placeholders(text: str) -> list[str]:
    """The concept placeholders written into ``text`` (``"a teapot <melting> <on-fire>"`` ->
    ``["<melting>", "<on-fire>"]``), each once, in order."""
    return list(dict.fromkeys(PLACEHOLDER_IN_TEXT.findall(text or "")))


def check_typed_placeholders(text: str, known: Iterable[str]) -> list[str]:
    """The placeholders typed into ``text``, all of which must be in ``known``; one line
    (:class:`InputError`) naming those that are not, instead of drawing them as plain words."""
    known = list(dict.fromkeys(known))
    typed = typed_placeholders(text)
    unknown = [p for p in typed if p not in known]
    if unknown:
        which = ", ".join(unknown)
        choices = ", ".join(known[:8]) + (", …" if len(known) > 8 else "") if known else "none yet"
        raise InputError(f"{which} {'is' if len(unknown) == 1 else 'are'} not in your concept library, so "
                         f"{'it' if len(unknown) == 1 else 'they'} would be drawn as plain words (concepts: {choices})")
    return typed


def generate_grid(
    model,
    concepts,
    subjects: Sequence[str],
    seeds: Sequence[int],
    template: str = DEFAULT_TEMPLATE,
    negative_prompt: str = "",
    steps: int = 30,
    guidance: float = 7.5,
    scheduler: str = "ddim",
    width: int | None = None,
    height: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    on_image: Callable[[GenerationRequest, Image.Image], None] | None = None,
) -> list[tuple[GenerationRequest, Image.Image]]:
    """One image per subject x seed (subject-major order), prompts from ``template`` with
    ``{subject}`` and ``{concept}`` (the concepts' placeholders, all of them together: several
    concepts compose in one image). A placeholder already written in the template is not repeated
    by ``{concept}``. ``progress`` counts steps over the whole grid; ``on_image(request, image)``
    sees each image as soon as it is made."""
    from lego_studio.core.concepts import Concept

    concepts = [concepts] if isinstance(concepts, Concept) else list(concepts or ())
    subjects = list(subjects)
    seeds = [int(s) for s in seeds]
    if not subjects:
        raise InputError("give at least one subject for the grid")
    if not seeds:
        raise InputError("give at least one seed for the grid")
    typed = set(typed_placeholders(template))
    concept_text = " ".join(c.placeholder for c in concepts if c.placeholder not in typed)
    prompts = [fill_template(template, subject, concept_text) for subject in subjects]
    total = len(prompts) * len(seeds) * int(steps)
    results = []
    done = 0
    for prompt in prompts:
        for seed in seeds:
            request = GenerationRequest(
                prompt=" ".join(prompt.split()),
                negative_prompt=negative_prompt,
                seed=seed,
                steps=steps,
                guidance=guidance,
                scheduler=scheduler,
                width=width,
                height=height,
            )

            def step_progress(step, _total, offset=done):
                if progress is not None:
                    progress(offset + step, total)

            image = generate(model, request, concepts, progress=step_progress, cancel=cancel)
            results.append((request_of(image), image))
            if on_image is not None:
                on_image(*results[-1])
            done += int(steps)
    return results


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def make_grid(
    images: Sequence[Image.Image],
    rows: int,
    columns: int,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    min_cell: int = 128,
) -> Image.Image:
    """Tile ``images`` (row-major) into one labelled picture. Cells are enlarged to at least
    ``min_cell`` px (nearest neighbour, so tiny test images stay sharp)."""
    images = list(images)
    if len(images) != rows * columns:
        raise InputError(f"a {rows}x{columns} grid needs {rows * columns} images, got {len(images)}")
    cell_w = max(max(im.width for im in images), min_cell)
    cell_h = max(max(im.height for im in images), min_cell)
    font = _font(max(10, min(cell_h // 8, 24)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    pad = 6
    label_w = max((text_size(t)[0] for t in row_labels or ()), default=0)
    left = label_w + 2 * pad if row_labels else 0
    label_h = max((text_size(t)[1] for t in column_labels or ()), default=0)
    top = label_h + 2 * pad if column_labels else 0
    grid = Image.new("RGB", (left + columns * cell_w, top + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        cell = image.convert("RGB")
        if cell.size != (cell_w, cell_h):
            scale = min(cell_w / cell.width, cell_h / cell.height)
            cell = cell.resize((max(1, round(cell.width * scale)), max(1, round(cell.height * scale))), Image.Resampling.NEAREST)
        grid.paste(cell, (left + column * cell_w, top + row * cell_h))
    for row, label in enumerate(row_labels or ()):
        height = text_size(label)[1]
        draw.text((pad, top + row * cell_h + (cell_h - height) // 2), label, fill=(0, 0, 0), font=font)
    for column, label in enumerate(column_labels or ()):
        width = text_size(label)[0]
        draw.text((left + column * cell_w + (cell_w - width) // 2, pad), label, fill=(0, 0, 0), font=font)
    return grid


def grid_image(results: Sequence[tuple[GenerationRequest, Image.Image]], subjects: Sequence[str], seeds: Sequence[int]) -> Image.Image:
    """The labelled subjects x seeds picture of :func:`generate_grid`'s results."""
    return make_grid(
        [image for _, image in results],
        rows=len(subjects),
        columns=len(seeds),
        row_labels=list(subjects),
        column_labels=[f"seed {seed}" for seed in seeds],
    )
