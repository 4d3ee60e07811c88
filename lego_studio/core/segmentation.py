"""Click-to-mask assistance for the mask canvas: Segment Anything, or OpenCV GrabCut without it.

Both segmenters share one interface (:class:`SubjectSegmenter`)::

    segmenter.set_image(rgb_uint8_array, key="images/a.png")   # SAM: SLOW (seconds on CPU)
    candidates = segmenter.predict(points=[(x, y, 1), (x2, y2, 0)], box=(x0, y0, x1, y1))
    best_mask, score = candidates[0]                             # bool HxW, best first

Points are ``(x, y, label)`` in image pixels, label 1 = subject (left click), 0 = not subject
(right click); ``box`` is a dragged rectangle. ``predict`` is fast for both (well under a second).

SAM checkpoints are user files and are read with ``torch.load(weights_only=True)`` only: a
checkpoint that would run code when unpickled is refused. The model is built from
``segment_anything``'s own modules with ``checkpoint=None`` (its builders call ``torch.load``
without ``weights_only``) and the checked state dict is then loaded into it. The architecture is
read from the tensor shapes, so ``vit_b`` / ``vit_l`` / ``vit_h`` need no user choice.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lego_studio.core.errors import InputError, LegoError

Point = tuple[float, float, int]
Box = tuple[float, float, float, float]
Candidate = tuple[np.ndarray, float]

_SAM_PIXEL_MEAN = [123.675, 116.28, 103.53]
_SAM_PIXEL_STD = [58.395, 57.12, 57.375]
# The decoder's head count is not visible in any tensor shape; every published SAM uses 8.
_SAM_DECODER_HEADS = 8


# ----------------------------------------------------------------- shared helpers


def _as_rgb_array(image) -> np.ndarray:
    """Accept a PIL image or an HxW / HxWx3 / HxWx4 uint8 array; return contiguous HxWx3 uint8."""
    if hasattr(image, "convert") and not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InputError(f"segmentation needs an 8-bit image, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"segmentation needs an RGB image, got an array of shape {array.shape}")
    return np.ascontiguousarray(array)


def _image_key(rgb: np.ndarray) -> str:
    digest = hashlib.sha1(rgb.tobytes())
    digest.update(str(rgb.shape).encode())
    return digest.hexdigest()


def _check_prompts(points: Sequence[Point] | None, box: Box | None, size: tuple[int, int]):
    """Validate clicks and box against the image ``size`` = (height, width); normalise them."""
    height, width = size
    clean_points = []
    for point in points or ():
        if len(point) != 3:
            raise InputError(f"a click must be (x, y, label), got {point!r}")
        x, y, label = float(point[0]), float(point[1]), int(point[2])
        if label not in (0, 1):
            raise InputError(f"click label must be 1 (subject) or 0 (not subject), got {label}")
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"click at ({x:.0f}, {y:.0f}) is outside the {width}x{height} image")
        clean_points.append((x, y, label))
    clean_box = None
    if box is not None:
        if len(box) != 4:
            raise InputError(f"a box must be (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = sorted((max(0.0, min(x0, width - 1)), max(0.0, min(x1, width - 1))))
        y0, y1 = sorted((max(0.0, min(y0, height - 1)), max(0.0, min(y1, height - 1))))
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise InputError("the box is too small: drag a rectangle around the subject")
        clean_box = (x0, y0, x1, y1)
    if not clean_points and clean_box is None:
        raise InputError("click on the subject or drag a box around it first")
    return clean_points, clean_box


class SubjectSegmenter(abc.ABC):
    """Interface of the mask-canvas assistant. ``set_image`` may be slow (see ``slow_set_image``)."""

    name: str = "segmenter"
    #: True when set_image takes seconds: the UI must call it from a worker thread.
    slow_set_image: bool = False

    @abc.abstractmethod
    def set_image(self, image, key: str | None = None) -> None:
        """Prepare ``image`` (HxWx3 uint8 RGB or PIL) for ``predict``."""

    @abc.abstractmethod
    def predict(
        self, points: Sequence[Point] | None = None, box: Box | None = None, multimask: bool = True
    ) -> list[Candidate]:
        """Candidate masks ``(bool HxW, score)`` for the clicks/box, best first."""


# ----------------------------------------------------------------- Segment Anything


@dataclass
class SamArchitecture:
    """Hyper-parameters of a SAM model, read from its state-dict tensor shapes."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int
    patch_size: int
    image_size: int
    mlp_ratio: float
    prompt_embed_dim: int
    mask_in_chans: int
    num_multimask_outputs: int
    decoder_depth: int
    decoder_mlp_dim: int
    iou_head_depth: int
    iou_head_hidden_dim: int
    use_rel_pos: bool = True
    model_type: str = field(default="custom")


# The published checkpoints: (embed_dim, depth, global attention blocks).
_KNOWN_SAM_TYPES = {
    "vit_b": (768, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, (5, 11, 17, 23)),
    "vit_h": (1280, 32, (7, 15, 23, 31)),
}


def _strip_prefix(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Drop a ``module.`` / ``model.`` prefix some fine-tuning scripts add."""
    out = {}
    for key, shape in shapes.items():
        for prefix in ("module.", "model.", "sam."):
            if key.startswith(prefix) and not key.startswith(("image_encoder", "prompt_encoder", "mask_decoder")):
                key = key[len(prefix):]
        out[key] = tuple(int(s) for s in shape)
    return out


def _count_indexed(shapes: Mapping[str, tuple], prefix: str) -> int:
    indexes = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
    return max(indexes) + 1 if indexes else 0


def detect_sam_architecture(shapes: Mapping[str, Sequence[int]], source: str = "checkpoint") -> SamArchitecture:
    """Read SAM's architecture from ``{tensor name: shape}``; ``model_type`` is ``vit_b`` /
    ``vit_l`` / ``vit_h`` for the published variants and ``custom`` otherwise.

    Raises :class:`InputError` naming ``source`` when the tensors are not a SAM model.
    """
    shapes = _strip_prefix(shapes)
    try:
        embed_dim, _, patch, _ = shapes["image_encoder.patch_embed.proj.weight"]
        depth = _count_indexed(shapes, "image_encoder.blocks.")
        if "image_encoder.pos_embed" in shapes:
            grid = shapes["image_encoder.pos_embed"][1]
        else:
            grid = 1024 // patch
        mlp_hidden = shapes["image_encoder.blocks.0.mlp.lin1.weight"][0]
        use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h" in shapes
        global_indexes: list[int] = []
        window = 0
        head_dim = None
        if use_rel_pos:
            for block in range(depth):
                length, head_dim = shapes[f"image_encoder.blocks.{block}.attn.rel_pos_h"]
                span = (length + 1) // 2  # rel_pos has 2*span-1 rows
                if span == grid:
                    global_indexes.append(block)
                else:
                    window = span
        num_heads = embed_dim // head_dim if head_dim else _SAM_DECODER_HEADS
        prompt_dim = shapes["image_encoder.neck.0.weight"][0]
        mask_in_chans = shapes["prompt_encoder.mask_downscaling.3.weight"][0]
        num_mask_tokens = shapes["mask_decoder.mask_tokens.weight"][0]
        decoder_depth = _count_indexed(shapes, "mask_decoder.transformer.layers.")
        decoder_mlp = shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"][0]
        iou_depth = _count_indexed(shapes, "mask_decoder.iou_prediction_head.layers.")
        iou_hidden = shapes["mask_decoder.iou_prediction_head.layers.0.weight"][0]
    except (KeyError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise InputError(f"{source}: not a Segment Anything checkpoint (missing or odd tensor {exc})") from None
    if depth == 0 or decoder_depth == 0:
        raise InputError(f"{source}: not a Segment Anything checkpoint (no encoder or decoder layers)")
    arch = SamArchitecture(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=tuple(global_indexes),
        window_size=window,
        patch_size=patch,
        image_size=grid * patch,
        mlp_ratio=mlp_hidden / embed_dim,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=mask_in_chans,
        num_multimask_outputs=num_mask_tokens - 1,
        decoder_depth=decoder_depth,
        decoder_mlp_dim=decoder_mlp,
        iou_head_depth=iou_depth,
        iou_head_hidden_dim=iou_hidden,
        use_rel_pos=use_rel_pos,
    )
    for model_type, (known_dim, known_depth, known_global) in _KNOWN_SAM_TYPES.items():
        if (
            (embed_dim, depth, tuple(global_indexes)) == (known_dim, known_depth, known_global)
            and (arch.image_size, patch, window, prompt_dim, decoder_mlp) == (1024, 16, 14, 256, 2048)
        ):
            arch.model_type = model_type
    return arch


def build_sam(arch: SamArchitecture):
    """An untrained ``segment_anything.modeling.Sam`` with ``arch``'s shapes (no file access).

    Published variants go through ``segment_anything``'s own registry with ``checkpoint=None``.
    """
    from segment_anything import sam_model_registry

    if arch.model_type in _KNOWN_SAM_TYPES:
        return sam_model_registry[arch.model_type](checkpoint=None)

    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=arch.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=arch.use_rel_pos,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=_SAM_DECODER_HEADS,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=_SAM_PIXEL_MEAN,
        pixel_std=_SAM_PIXEL_STD,
    )
    sam.eval()
    return sam


def _read_sam_state_dict(path: Path) -> dict:
    """The checkpoint's tensors, read without running any pickled code."""
    import torch

    if not path.is_file():
        raise InputError(f"{path}: no such SAM checkpoint file")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable SAM checkpoint ({exc})") from None
    else:
        from lego_studio.core.models import safe_torch_load

        data = safe_torch_load(path)
    # Some training scripts wrap the weights: {"model": state_dict} / {"state_dict": ...}.
    for wrapper in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path}: not a Segment Anything checkpoint (no tensor state dict inside)")
    return _strip_prefix_tensors(data)


def _strip_prefix_tensors(state: dict) -> dict:
    renamed = _strip_prefix({k: () for k in state})
    return {new: state[old] for new, old in zip(renamed, state)}


def load_sam_model(checkpoint_path: str | os.PathLike, model_type: str = "auto", device: str = "auto"):
    """Load a SAM checkpoint safely; returns ``(sam_module, architecture)``. SLOW for real sizes."""
    import torch

    from lego_studio.core.devices import pick_device

    path = Path(checkpoint_path).expanduser()
    state = _read_sam_state_dict(path)
    arch = detect_sam_architecture({k: tuple(v.shape) for k, v in state.items()}, source=str(path))
    if model_type not in ("auto", arch.model_type):
        raise InputError(f"{path}: checkpoint is a {arch.model_type} model, not {model_type}")
    from lego_studio.core.model_stack import MODEL_LOAD_LOCK

    with MODEL_LOAD_LOCK:  # a model loading in another thread meanwhile would build it on meta
        sam = build_sam(arch)
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise InputError(f"{path}: SAM checkpoint does not match its architecture ({first})") from None
    sam.to(device=pick_device(device), dtype=torch.float32)
    sam.eval()
    return sam, arch


class SamSegmenter(SubjectSegmenter):
    """Segment Anything through ``segment_anything.SamPredictor``.

    ``set_image`` runs the image encoder: seconds on a CPU for real checkpoints, so call it from a
    worker thread. The embeddings of the last ``cache_size`` images are kept, so switching back to
    an image is instant.
    """

    name = "Segment Anything"
    slow_set_image = True

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        model_type: str = "auto",
        device: str = "auto",
        cache_size: int = 4,
    ):
        from segment_anything import SamPredictor

        self.checkpoint_path = Path(checkpoint_path).expanduser()
        self.model, self.architecture = load_sam_model(self.checkpoint_path, model_type, device)
        self.model_type = self.architecture.model_type
        self.predictor = SamPredictor(self.model)
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._size: tuple[int, int] | None = None
        self.current_key: str | None = None

    def set_image(self, image, key: str | None = None) -> None:
        """Embed ``image`` (HxWx3 uint8 RGB). SLOW on a cache miss. ``key`` names the image for the
        cache (e.g. its project path); without it a hash of the pixels is used."""
        rgb = _as_rgb_array(image)
        key = key or _image_key(rgb)
        cached = self._cache.get(key)
        if cached is not None and cached[1] == rgb.shape[:2]:
            self._cache.move_to_end(key)
            features, original_size, input_size = cached
            self.predictor.reset_image()
            self.predictor.features = features
            self.predictor.original_size = original_size
            self.predictor.input_size = input_size
            self.predictor.is_image_set = True
        else:
            self.predictor.set_image(rgb, image_format="RGB")
            self._cache[key] = (self.predictor.features, self.predictor.original_size, self.predictor.input_size)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._size = rgb.shape[:2]
        self.current_key = key

    def is_cached(self, key: str) -> bool:
        """True when ``set_image(..., key)`` will be instant."""
        return key in self._cache

    def predict(
        self, points: Sequence[Point] | None = None, box: Box | None = None, multimask: bool = True
    ) -> list[Candidate]:
        if self._size is None:
            raise InputError("no image is set for Segment Anything yet")
        clean_points, clean_box = _check_prompts(points, box, self._size)
        coords = labels = None
        if clean_points:
            coords = np.array([[x, y] for x, y, _ in clean_points], dtype=np.float32)
            labels = np.array([label for _, _, label in clean_points], dtype=np.int32)
        box_array = np.array(clean_box, dtype=np.float32) if clean_box is not None else None
        masks, scores, _ = self.predictor.predict(
            point_coords=coords, point_labels=labels, box=box_array, multimask_output=multimask
        )
        candidates = [(np.asarray(m, dtype=bool), float(s)) for m, s in zip(masks, scores)]
        candidates.sort(key=lambda c: c[1], reverse=True)
        return candidates


# ----------------------------------------------------------------- GrabCut fallback


class GrabCutSegmenter(SubjectSegmenter):
    """OpenCV GrabCut from the same clicks and box, for when there is no SAM checkpoint.

    A box becomes GrabCut's rectangle; clicks become small sure-subject / sure-background discs.
    With clicks only, the rectangle is drawn around the positive clicks with a generous margin.
    Large images are segmented at ``work_size`` pixels on the long side (GrabCut is O(pixels)
    per iteration) and the mask is scaled back.
    """

    name = "GrabCut"
    slow_set_image = False

    def __init__(self, iterations: int = 5, work_size: int = 512):
        self.iterations = iterations
        self.work_size = work_size
        self._image: np.ndarray | None = None
        self.current_key: str | None = None

    def set_image(self, image, key: str | None = None) -> None:
        self._image = _as_rgb_array(image)
        self.current_key = key

    def predict(
        self, points: Sequence[Point] | None = None, box: Box | None = None, multimask: bool = True
    ) -> list[Candidate]:
        import cv2

        if self._image is None:
            raise InputError("no image is set for GrabCut yet")
        height, width = self._image.shape[:2]
        clean_points, clean_box = _check_prompts(points, box, (height, width))

        scale = min(1.0, self.work_size / max(height, width))
        work = self._image
        if scale < 1.0:
            work = cv2.resize(work, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        work_h, work_w = work.shape[:2]
        bgr = np.ascontiguousarray(work[..., ::-1])

        rect = self._rectangle(clean_points, clean_box, (height, width), scale, (work_h, work_w))
        radius = max(2, round(0.015 * max(work_h, work_w)))
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        mask = np.zeros((work_h, work_w), np.uint8)
        try:
            if clean_points:
                x, y, w, h = rect
                mask[:] = cv2.GC_BGD
                mask[y : y + h, x : x + w] = cv2.GC_PR_FGD
                for px, py, label in clean_points:
                    centre = (int(round(px * scale)), int(round(py * scale)))
                    cv2.circle(mask, centre, radius, int(cv2.GC_FGD if label == 1 else cv2.GC_BGD), -1)
                cv2.grabCut(bgr, mask, None, background_model, foreground_model, self.iterations, cv2.GC_INIT_WITH_MASK)
            else:
                cv2.grabCut(bgr, mask, rect, background_model, foreground_model, self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error as exc:
            raise InputError(f"GrabCut could not separate the subject here ({str(exc).strip().splitlines()[-1]})") from None
        subject = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        if scale < 1.0:
            subject = cv2.resize(subject.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)

        candidates = [subject]
        if multimask:
            cleaned = self._keep_clicked_components(subject, clean_points)
            if cleaned is not None and not np.array_equal(cleaned, subject):
                candidates.insert(0, cleaned)  # cleaner mask first when both agree with the clicks
        scored = [(m, self._click_agreement(m, clean_points)) for m in candidates]
        scored.sort(key=lambda c: c[1], reverse=True)  # stable: ties keep the cleaner one first
        return scored

    @staticmethod
    def _rectangle(points, box, size, scale, work_size) -> tuple[int, int, int, int]:
        """GrabCut's (x, y, w, h) in work pixels, kept one pixel inside the border so there is
        always some background to model."""
        height, width = size
        work_h, work_w = work_size
        if box is not None:
            x0, y0, x1, y1 = box
        else:
            positives = [(x, y) for x, y, label in points if label == 1]
            if positives:
                margin = 0.25 * max(height, width)
                xs, ys = [p[0] for p in positives], [p[1] for p in positives]
                x0, x1 = min(xs) - margin, max(xs) + margin
                y0, y1 = min(ys) - margin, max(ys) + margin
            else:  # only "not subject" clicks: the subject is somewhere else in the picture
                x0, y0, x1, y1 = 0.05 * width, 0.05 * height, 0.95 * width, 0.95 * height
        x0 = int(np.clip(round(x0 * scale), 1, work_w - 3))
        y0 = int(np.clip(round(y0 * scale), 1, work_h - 3))
        x1 = int(np.clip(round(x1 * scale), x0 + 2, work_w - 1))
        y1 = int(np.clip(round(y1 * scale), y0 + 2, work_h - 1))
        return x0, y0, x1 - x0, y1 - y0

    @staticmethod
    def _keep_clicked_components(subject: np.ndarray, points) -> np.ndarray | None:
        """Only the connected pieces under a positive click (or the largest piece): drops specks."""
        import cv2

        count, labels = cv2.connectedComponents(subject.astype(np.uint8), connectivity=8)
        if count <= 2:
            return None
        wanted = {int(labels[int(y), int(x)]) for x, y, label in points if label == 1} - {0}
        if not wanted:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            wanted = {int(np.argmax(sizes))}
        return np.isin(labels, list(wanted))

    @staticmethod
    def _click_agreement(mask: np.ndarray, points) -> float:
        """Fraction of clicks the mask honours (positive inside, negative outside); 1 with none."""
        if not points:
            return 1.0
        good = sum(bool(mask[int(y), int(x)]) == (label == 1) for x, y, label in points)
        return good / len(points)


# ----------------------------------------------------------------- choosing one


def make_segmenter(settings=None, device: str | None = None) -> tuple[SubjectSegmenter, str | None]:
    """SAM when ``settings.sam_checkpoint`` is set and loads, else GrabCut.

    Returns ``(segmenter, note)``; ``note`` is None for SAM, otherwise one line saying why the
    GrabCut fallback is used (show it next to the assist button). SLOW when SAM loads.
    """
    if settings is None:
        from lego_studio.core.settings import Settings

        settings = Settings.load()
    checkpoint = getattr(settings, "sam_checkpoint", None)
    if not checkpoint:
        return GrabCutSegmenter(), "no Segment Anything checkpoint configured; using GrabCut"
    try:
        segmenter = SamSegmenter(checkpoint, device=device or getattr(settings, "default_device", "auto"))
    except LegoError as exc:
        return GrabCutSegmenter(), f"Segment Anything unavailable ({exc}); using GrabCut"
    return segmenter, None
