import numpy as np
import pytest
import torch

from lego_studio.core.errors import InputError
from lego_studio.core.segmentation import (
    GrabCutSegmenter,
    SamArchitecture,
    SamSegmenter,
    build_sam,
    detect_sam_architecture,
    make_segmenter,
)
from lego_studio.core.settings import Settings

TINY_SAM = SamArchitecture(
    encoder_embed_dim=16,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=4,
    patch_size=128,  # 1024 px input (fixed by SamPredictor) -> an 8x8 embedding grid
    image_size=1024,
    mlp_ratio=2.0,
    prompt_embed_dim=32,
    mask_in_chans=8,
    num_multimask_outputs=3,
    decoder_depth=1,
    decoder_mlp_dim=32,
    iou_head_depth=2,
    iou_head_hidden_dim=16,
)


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    sam = build_sam(TINY_SAM)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def _picture(height=48, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_tiny_sam_checkpoint_loads_and_predicts_through_sam_predictor(tiny_sam_checkpoint):
    segmenter = SamSegmenter(tiny_sam_checkpoint, device="cpu")
    assert segmenter.model_type == "custom"
    assert segmenter.architecture.encoder_global_attn_indexes == (1,)
    assert segmenter.slow_set_image is True

    segmenter.set_image(_picture(), key="images/a.png")
    candidates = segmenter.predict(points=[(10, 12, 1), (50, 40, 0)], box=(5, 5, 40, 30))
    assert len(candidates) == 3
    for mask, score in candidates:
        assert mask.shape == (48, 64) and mask.dtype == bool
        assert isinstance(score, float)
    scores = [score for _, score in candidates]
    assert scores == sorted(scores, reverse=True)

    single = segmenter.predict(points=[(10, 12, 1)], multimask=False)
    assert len(single) == 1 and single[0][0].shape == (48, 64)


def test_sam_embedding_cache_restores_the_image(tiny_sam_checkpoint):
    segmenter = SamSegmenter(tiny_sam_checkpoint, device="cpu", cache_size=2)
    first, second = _picture(seed=1), _picture(40, 30, seed=2)
    segmenter.set_image(first, key="a")
    before = segmenter.predict(points=[(20, 20, 1)])
    segmenter.set_image(second, key="b")
    assert segmenter.predict(points=[(5, 5, 1)])[0][0].shape == (40, 30)
    assert segmenter.is_cached("a") and segmenter.is_cached("b")

    segmenter.set_image(first, key="a")  # from the cache: masks identical to the first time
    after = segmenter.predict(points=[(20, 20, 1)])
    for (mask_before, score_before), (mask_after, score_after) in zip(before, after):
        assert np.array_equal(mask_before, mask_after) and score_before == score_after

    segmenter.set_image(_picture(seed=3), key="c")  # LRU of 2: "b" (least recent) goes
    assert not segmenter.is_cached("b") and segmenter.is_cached("a")


def test_sam_prompts_are_checked():
    segmenter = GrabCutSegmenter()
    segmenter.set_image(_picture())
    with pytest.raises(InputError, match="click on the subject"):
        segmenter.predict()
    with pytest.raises(InputError, match="outside the 64x48 image"):
        segmenter.predict(points=[(100, 5, 1)])


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_detects_published_sam_variants_from_shapes(model_type):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # real shapes, no memory, no weights
        sam = sam_model_registry[model_type](checkpoint=None)
    shapes = {name: tuple(tensor.shape) for name, tensor in sam.state_dict().items()}
    arch = detect_sam_architecture(shapes)
    assert arch.model_type == model_type
    assert (arch.image_size, arch.patch_size, arch.window_size) == (1024, 16, 14)
    assert arch.encoder_num_heads == {"vit_b": 12, "vit_l": 16, "vit_h": 16}[model_type]


def test_missing_corrupt_and_wrong_checkpoints_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such SAM checkpoint"):
        SamSegmenter(tmp_path / "nope.pth")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file at all" * 10)
    with pytest.raises(InputError) as info:
        SamSegmenter(garbage)
    assert "garbage.pth" in str(info.value) and "\n" not in str(info.value)

    not_sam = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, not_sam)
    with pytest.raises(InputError, match="not a Segment Anything checkpoint"):
        SamSegmenter(not_sam)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickle_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"image_encoder.pos_embed": _RunsCodeWhenUnpickled(marker)}, evil)
    with pytest.raises(InputError) as info:
        SamSegmenter(evil)
    assert "sam_vit_b_01ec64.pth" in str(info.value)
    assert not marker.exists()


def _object_scene(size=128, seed=0):
    """A noisy, shaded background with a bright ellipse: returns (image, true mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    background = np.stack([40 + xx * 0.5, 90 + yy * 0.3, 60 + 0 * xx], axis=-1)
    image = background + rng.normal(0, 12, size=(size, size, 3))
    truth = ((xx - 70) / 30.0) ** 2 + ((yy - 60) / 22.0) ** 2 <= 1.0
    image[truth] = [220, 60, 40] + rng.normal(0, 12, size=(int(truth.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_grabcut_box_finds_the_object():
    image, truth = _object_scene()
    segmenter = GrabCutSegmenter()
    assert segmenter.slow_set_image is False
    segmenter.set_image(image)
    candidates = segmenter.predict(box=(30, 28, 110, 92))
    assert candidates
    mask, _ = candidates[0]
    assert mask.dtype == bool and mask.shape == truth.shape
    assert _iou(mask, truth) > 0.8


def test_grabcut_clicks_only_and_large_images_are_scaled_back():
    image, truth = _object_scene(size=128)
    big = np.repeat(np.repeat(image, 6, axis=0), 6, axis=1)  # 768 px > work size 512
    big_truth = np.repeat(np.repeat(truth, 6, axis=0), 6, axis=1)
    segmenter = GrabCutSegmenter()
    segmenter.set_image(big)
    candidates = segmenter.predict(points=[(70 * 6, 60 * 6, 1), (5 * 6, 120 * 6, 0)])
    mask, score = candidates[0]
    assert mask.shape == big_truth.shape
    assert score == 1.0  # honours both clicks
    assert _iou(mask, big_truth) > 0.7


def test_make_segmenter_falls_back_to_grabcut_and_says_why(tmp_path, tiny_sam_checkpoint):
    segmenter, note = make_segmenter(Settings())
    assert isinstance(segmenter, GrabCutSegmenter) and "no Segment Anything checkpoint" in note

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\0" * 100)
    segmenter, note = make_segmenter(Settings(sam_checkpoint=str(broken)))
    assert isinstance(segmenter, GrabCutSegmenter) and "broken.pth" in note

    segmenter, note = make_segmenter(Settings(sam_checkpoint=str(tiny_sam_checkpoint)), device="cpu")
    assert isinstance(segmenter, SamSegmenter) and note is None
