"""Shape World: renderer, vocabulary, judge, model training smoke run and evaluation scoring."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lego_studio.core.errors import InputError, ModelError
from lego_studio.core.paths import resource
from lego_studio.shapeworld import world
from lego_studio.shapeworld.render import render
from lego_studio.shapeworld.world import COLOURS, COLOUR_NAMES, CONCEPTS, SHAPES

SHIPPED_JUDGE = resource("judge")


def _colour_distance(image: np.ndarray, rgb) -> np.ndarray:
    return np.abs(image.astype(np.int32) - np.array(rgb, dtype=np.int32)).max(axis=-1)


# ---------------------------------------------------------------- renderer


def test_render_is_deterministic_for_a_seed():
    a = render("star", "blue", "on fire", random.Random(7))
    b = render("star", "blue", "on fire", random.Random(7))
    c = render("star", "blue", "on fire", random.Random(8))
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert np.array_equal(a[1], b[1])
    assert a[2] == b[2] == "a blue star on fire"
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


@pytest.mark.parametrize("shape", SHAPES)
def test_mask_covers_exactly_the_drawn_shape(shape):
    for k, colour in enumerate(COLOUR_NAMES):
        image, mask, _ = render(shape, colour, None, random.Random(100 + k))
        img = np.asarray(image)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        inside = mask == 255
        assert 80 < inside.sum() < 1200, "subject should be a clearly visible part of the picture"
        near_subject = _colour_distance(img, COLOURS[colour]) < 60
        import cv2

        # Inside the mask (less its one-pixel anti-aliased, outlined rim) the pixels are the subject colour.
        interior = cv2.erode(mask, np.ones((3, 3), np.uint8)) == 255
        assert near_subject[interior].mean() > 0.95
        assert near_subject[inside].mean() > 0.6
        # Outside the mask (one pixel of slack for the outline) nothing looks like the subject.
        grown = cv2.dilate(mask, np.ones((3, 3), np.uint8)) == 255
        assert near_subject[~grown].sum() <= 3


def test_masks_differ_between_shapes():
    masks = {shape: render(shape, "red", None, random.Random(3))[1] for shape in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] != masks[b]).sum() > 20, f"{a} and {b} have nearly the same silhouette"


@pytest.mark.parametrize("concept", CONCEPTS)
def test_every_concept_visibly_changes_every_shape(concept):
    for k, shape in enumerate(SHAPES):
        plain = np.asarray(render(shape, COLOUR_NAMES[k % 6], None, random.Random(k))[0]).astype(np.int32)
        with_concept = np.asarray(render(shape, COLOUR_NAMES[k % 6], concept, random.Random(k))[0]).astype(np.int32)
        changed = (np.abs(plain - with_concept).max(axis=-1) > 40).sum()
        assert changed >= 25, f"{concept!r} barely changes a {shape} ({changed} pixels)"


def test_concept_leaves_subject_mask_as_the_shape_itself():
    # Same seed, same position: the cage or ice around the subject is not part of its mask.
    _, plain_mask, _ = render("hexagon", "green", None, random.Random(5))
    _, caged_mask, _ = render("hexagon", "green", "in a cage", random.Random(5))
    assert np.array_equal(plain_mask, caged_mask)


def test_unknown_names_raise_one_line_input_errors():
    with pytest.raises(InputError, match="pentagon"):
        render("pentagon", "red", None, random.Random(0))
    with pytest.raises(InputError, match="teal"):
        render("square", "teal", None, random.Random(0))
    with pytest.raises(InputError, match="dancing"):
        render("square", "red", "dancing", random.Random(0))


# ---------------------------------------------------------------- captions and vocabulary


def test_captions_plain_and_templated():
    assert world.caption("square", "red", "frozen in ice") == "a red square frozen in ice"
    assert world.caption("circle", "orange", None) == "an orange circle"
    rng = random.Random(0)
    captions = {world.caption("square", "red", "frozen in ice", rng) for _ in range(200)}
    assert "a photo of a red square frozen in ice" in captions
    assert "a red square, frozen in ice" in captions
    assert all("red square" in c and "frozen in ice" in c for c in captions)


def test_concept_phrases_are_ordinary_clip_tokens():
    from lego_studio.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    eos = tokenizer.eos_token_id
    for phrase in CONCEPTS + tuple(SHAPES) + COLOUR_NAMES:
        ids = tokenizer(phrase, add_special_tokens=False).input_ids
        assert ids and eos not in ids, f"{phrase!r} has unknown tokens"
        assert tokenizer.decode(ids).strip() == phrase


def test_held_out_triples_cover_every_shape_colour_and_concept():
    held = world.held_out_triples()
    assert len(held) == len(SHAPES) * len(CONCEPTS)
    assert {t.shape for t in held} == set(SHAPES)
    assert {t.colour for t in held} == set(COLOUR_NAMES)
    assert {t.concept for t in held} == set(CONCEPTS)
    trained = set(world.trained_triples())
    assert not trained & set(held)
    # Every concept is still trained with every shape and with every colour.
    for concept in CONCEPTS:
        assert {t.shape for t in trained if t.concept == concept} == set(SHAPES)
        assert {t.colour for t in trained if t.concept == concept} == set(COLOUR_NAMES)


def test_training_batches_never_contain_held_out_triples_and_are_reproducible():
    from lego_studio.shapeworld.data import RenderedBatches

    data = RenderedBatches(0, "unet", 24, 3, tokenizer_dir=str(resource("tokenizer")))
    held = {(SHAPES.index(t.shape), COLOUR_NAMES.index(t.colour), world.CONCEPT_LABELS.index(t.concept))
            for t in world.held_out_triples()}
    seen_plain = 0
    for i in range(len(data)):
        batch = data[i]
        assert batch["images"].shape == (24, 64, 64, 3)
        assert batch["input_ids"].shape == (24, 77)
        for label in batch["labels"].tolist():
            assert tuple(label) not in held
            seen_plain += label[2] == world.CONCEPT_LABELS.index("none")
    assert 0 < seen_plain < 3 * 24 // 2, "plain-subject captions should be a minority, but present"
    again = RenderedBatches(0, "unet", 24, 3)[2]
    assert np.array_equal(again["images"].numpy(), data[2]["images"].numpy())
    assert again["captions"] == data[2]["captions"]


# ---------------------------------------------------------------- judge


needs_shipped_judge = pytest.mark.skipif(not (SHIPPED_JUDGE / "judge.safetensors").is_file(),
                                         reason="resources/judge not trained yet")


@needs_shipped_judge
def test_shipped_judge_reads_fresh_renders():
    from lego_studio.shapeworld.judge import judge_accuracy, load_judge

    accuracy = judge_accuracy(load_judge(), seed=424242, n=200, batch_size=100)
    assert min(accuracy.values()) >= 0.98, accuracy


@needs_shipped_judge
def test_judge_predictions_for_pil_images():
    from lego_studio.shapeworld.judge import judge, load_judge

    model = load_judge()
    image, _, _ = render("heart", "purple", "melting", random.Random(11))
    plain, _, _ = render("cross", "yellow", None, random.Random(12))
    big = image.resize((128, 128))  # other sizes are resized
    first, second, third = judge([image, plain, big], model)
    assert (first.shape, first.colour, first.concept) == ("heart", "purple", "melting")
    assert (second.shape, second.colour, second.concept) == ("cross", "yellow", "none")
    assert third.concept == "melting"
    assert 0.5 < first.concept_prob <= 1.0
    assert abs(sum(first.probabilities["concept"].values()) - 1.0) < 1e-4


def test_missing_judge_folder_is_a_model_error(tmp_path):
    from lego_studio.shapeworld.judge import load_judge

    with pytest.raises(ModelError, match=str(tmp_path.name)):
        load_judge(tmp_path)


# ---------------------------------------------------------------- evaluation scoring


def test_score_counts_concept_and_subject_separately():
    from lego_studio.shapeworld.evaluate import contact_sheet, score
    from lego_studio.shapeworld.judge import JudgePrediction

    triples = [world.Triple("square", "red", "on fire"), world.Triple("star", "blue", "melting")]
    preds = [JudgePrediction("square", "red", "on fire", 1, 1, 1), JudgePrediction("heart", "blue", "melting", 1, 1, 1)]
    result = score(triples, preds)
    assert result["concept_accuracy"] == 1.0
    assert result["subject_accuracy"] == 0.5
    assert result["shape_accuracy"] == 0.5 and result["colour_accuracy"] == 1.0
    sheet = contact_sheet(np.zeros((2, 64, 64, 3), np.uint8), triples, preds, columns=2)
    assert sheet.size == (2 * 132, 132 + 24)
    # Green border for the right one, red for the wrong one.
    assert sheet.getpixel((0, 0)) == (40, 170, 60)
    assert sheet.getpixel((132, 0)) == (210, 40, 40)


# ---------------------------------------------------------------- model training smoke run


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    from lego_studio.shapeworld import model_training

    root = tmp_path_factory.mktemp("shapeworld")
    out = root / "model"
    judge_out = root / "judge"
    model_training.main([
        "--out", str(out), "--judge-out", str(judge_out), "--judge", "train", "--device", "cpu", "--seed", "0",
        "--minutes", "1", "--vae-steps", "2", "--judge-steps", "2", "--unet-steps", "3",
        "--batch", "4", "--vae-batch", "4", "--judge-batch", "8", "--workers", "0",
        "--eval-n", "2", "--eval-steps", "2", "--judge-eval-n", "16",
    ])
    return out, judge_out


def test_smoke_training_writes_a_loadable_diffusers_folder(smoke_model):
    out, judge_out = smoke_model
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / part).is_dir(), part
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    meta = json.loads((out / "lego_studio.json").read_text())
    assert meta["family"] == "shapeworld" and meta["resolution"] == 64
    assert meta["training"]["steps"] == {"vae": 2, "judge": 2, "unet": 3}
    assert meta["training"]["device"] == "cpu" and meta["training"]["seed"] == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["unet"]["steps"] == 3 and log["eval"]["n"] == 2
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    assert size_mb < 30
    # The tokenizer is the shipped CLIP one, byte for byte.
    assert (out / "tokenizer" / "vocab.json").read_bytes() == (resource("tokenizer") / "vocab.json").read_bytes()
    assert (judge_out / "judge.safetensors").is_file() and (judge_out / "judge.json").is_file()
    # No temp folders left behind by the atomic swap.
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_smoke_model_generates_through_stable_diffusion_pipeline(smoke_model):
    import torch

    from lego_studio.shapeworld.evaluate import load_pipeline

    out, _ = smoke_model
    pipe = load_pipeline(out, "cpu")
    assert pipe.unet.dtype == torch.float32  # stored fp16, upcast on load
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    assert pipe.text_encoder.config.vocab_size == 49408
    images = pipe(["a red square frozen in ice"], num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_model_loader_resolves_the_smoke_folder(smoke_model):
    models = pytest.importorskip("lego_studio.core.models")
    out, _ = smoke_model
    model = models.load_model(out, device="cpu", precision="fp32")
    assert model.family.name == "shapeworld"
    assert model.family.resolution == 64
    assert model.encode_prompts(["a red square"]).shape == (1, 77, 96)


def test_missing_tokenizer_is_reported(tmp_path):
    from lego_studio.shapeworld import model_training

    with pytest.raises(SystemExit, match="tokenizer"):
        model_training.main(["--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "nowhere"), "--device", "cpu",
                             "--minutes", "0.01"])


# ---------------------------------------------------------------- command line


def test_cli_render_writes_image_and_mask(tmp_path, capsys):
    from PIL import Image

    from lego_studio.cli import main

    out, mask_out = tmp_path / "s.png", tmp_path / "m.png"
    code = main(["shapeworld", "render", "--shape", "heart", "--colour", "blue", "--concept", "in a cage",
                 "--seed", "3", "--out", str(out), "--mask-out", str(mask_out)])
    assert code == 0
    assert "a blue heart in a cage" in capsys.readouterr().out
    expected_image, expected_mask, _ = render("heart", "blue", "in a cage", random.Random(3))
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected_image))
    assert np.array_equal(np.asarray(Image.open(mask_out)), expected_mask)


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    from lego_studio.cli import main

    assert main(["shapeworld", "render", "--shape", "pentagon", "--colour", "red", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pentagon" in err
    assert main(["shapeworld", "judge", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


@needs_shipped_judge
def test_cli_judge_reads_a_render(tmp_path, capsys):
    from lego_studio.cli import main

    path = tmp_path / "fire.png"
    render("triangle", "green", "on fire", random.Random(9))[0].save(path)
    assert main(["shapeworld", "judge", str(path), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out.strip())
    assert (verdict["shape"], verdict["colour"], verdict["concept"]) == ("triangle", "green", "on fire")


def test_vae_stage_is_deterministic_for_a_seed():
    import argparse

    import torch

    from lego_studio.shapeworld import model_training

    def weights(seed):
        args = argparse.Namespace(seed=seed, device="cpu", vae_batch=4, workers=0, reuse=2, slots=2)
        vae, info = model_training.train_vae(args, seconds=None, steps=2)
        assert info["steps"] == 2
        return torch.cat([p.detach().flatten() for p in vae.parameters()]), vae.config.scaling_factor

    (a, scale_a), (b, scale_b), (c, _) = weights(0), weights(0), weights(1)
    assert torch.equal(a, b) and scale_a == scale_b
    assert not torch.equal(a, c)


def test_the_grown_xl_unet_reads_both_encoders_as_the_sd_unet_read_the_mix():
    # Shape World XL starts from the SD model: its UNet, given clip_l and clip_g states side by
    # side, must predict what the SD UNet predicts from the mixed context 0.5 A_l h_l + 0.5 A_g h_g
    # (the value maps' biases folded into the output projection, the pooled path at zero).
    import torch
    from diffusers import UNet2DConditionModel

    from lego_studio.core.model_specs import shapeworld_model_dir
    from lego_studio.shapeworld.xl_model import CLIP_G_WIDTH, make_xl_unet

    folder = shapeworld_model_dir() / "unet"
    if not folder.is_dir():
        pytest.skip("the Shape World model is not installed")
    base = UNet2DConditionModel.from_pretrained(str(folder), torch_dtype=torch.float32, local_files_only=True).eval()
    width = base.config.cross_attention_dim
    torch.manual_seed(0)
    map_l, map_g = torch.nn.Linear(width, width), torch.nn.Linear(CLIP_G_WIDTH, width)
    grown = make_xl_unet(base, map_l, map_g, pooled_width=CLIP_G_WIDTH).eval()
    h_l, h_g = torch.randn(2, 77, width), torch.randn(2, 77, CLIP_G_WIDTH)
    latents, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    added = {"text_embeds": torch.randn(2, CLIP_G_WIDTH), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        expected = base(latents, t, 0.5 * map_l(h_l) + 0.5 * map_g(h_g)).sample
        got = grown(latents, t, torch.cat([h_l, h_g], dim=-1), added_cond_kwargs=added).sample
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
