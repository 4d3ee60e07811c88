"""Generating images with concepts: determinism, metadata, regeneration, grids, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lego_studio.core.concepts import Concept, save_concept
from lego_studio.core.errors import Cancelled, InputError
from lego_studio.core.generation import (
    GenerationRequest,
    generate,
    generate_grid,
    grid_image,
    parse_a1111_parameters,
    read_generation_metadata,
    regenerate,
    save_generated,
)

STEPS = 3
# Guidance 1 skips the unconditional pass: half the UNet work where CFG is not under test.
FAST = dict(steps=2, guidance=1.0)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _concept(model, placeholder="<x>", n=2, seed=0, scale=3.0) -> Concept:
    width = model.text_encoder.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    return Concept(placeholder.strip("<>"), placeholder, scale * torch.randn(n, width, generator=generator))


def test_same_seed_same_pixels_and_metadata_in_info(tiny_model):
    request = GenerationRequest(prompt="a photo of a dog", seed=1, steps=2)
    first = generate(tiny_model, request)
    second = generate(tiny_model, request)
    other = generate(tiny_model, GenerationRequest(prompt="a photo of a dog", seed=2, steps=2))
    assert first.size == (tiny_model.family.resolution,) * 2
    assert np.array_equal(_pixels(first), _pixels(second))
    assert not np.array_equal(_pixels(first), _pixels(other))
    parameters = first.info["parameters"]
    size = tiny_model.family.resolution
    assert parameters.startswith("a photo of a dog\n")
    assert f"Steps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: {size}x{size}, Model: " in parameters
    stored = json.loads(first.info["lego_studio"])["request"]
    assert stored["seed"] == 1 and stored["width"] == size and stored["model"] == str(tiny_model.source)


def test_random_seed_is_recorded(tiny_model):
    image = generate(tiny_model, GenerationRequest(prompt="a cat", seed=None, steps=1, guidance=1.0))
    seed = json.loads(image.info["lego_studio"])["request"]["seed"]
    assert isinstance(seed, int) and f"Seed: {seed}," in image.info["parameters"]


def test_concept_vectors_change_the_image(fresh_tiny_model):
    model = fresh_tiny_model
    request = GenerationRequest(prompt="a photo of a dog <x>", seed=0, **FAST)
    with_a = generate(model, request, [_concept(model, seed=1)])
    with_b = generate(model, request, [_concept(model, seed=2)])
    assert not np.array_equal(_pixels(with_a), _pixels(with_b))
    stored = json.loads(with_a.info["lego_studio"])["request"]
    assert stored["concepts"][0]["placeholder"] == "<x>"


def test_save_read_and_regenerate_bit_for_bit(fresh_tiny_model, tmp_path):
    model = fresh_tiny_model
    concept_file = save_concept(_concept(model, "<frozen>", n=3), tmp_path / "frozen.safetensors")
    from lego_studio.core.concepts import load_concept

    concept = load_concept(concept_file)
    request = GenerationRequest(
        prompt="a teapot <frozen>", negative_prompt="blurry, low quality", seed=7, steps=1, scheduler="euler"
    )
    image = generate(model, request, [concept])
    path = save_generated(image, tmp_path / "out.png")

    with Image.open(path) as png:
        assert "Negative prompt: blurry, low quality" in png.text["parameters"]
        assert "Sampler: Euler" in png.text["parameters"] and "Lego concepts: " in png.text["parameters"]
        assert "frozen.safetensors" in png.text["parameters"]
    recorded = read_generation_metadata(path)
    assert recorded.prompt == "a teapot <frozen>" and recorded.seed == 7 and recorded.scheduler == "euler"
    assert recorded.concepts[0]["file"] == str(concept_file.resolve())
    assert len(recorded.concepts[0]["sha256"]) == 64

    again = regenerate(model, path)  # loads the recorded concept file itself
    assert np.array_equal(_pixels(again), _pixels(Image.open(path)))

    # A changed concept file would silently give another image: refuse, naming the file.
    save_concept(_concept(model, "<frozen>", n=3, seed=9), concept_file)
    with pytest.raises(InputError, match=r"frozen\.safetensors has changed"):
        regenerate(model, path)
    concept_file.unlink()
    with pytest.raises(InputError, match="which is missing"):
        regenerate(model, path)
    assert np.array_equal(_pixels(regenerate(model, path, [concept])), _pixels(again))


def test_progress_and_cancel(tiny_model):
    calls = []
    generate(tiny_model, GenerationRequest(prompt="a dog", steps=STEPS, guidance=1.0), progress=lambda s, t: calls.append((s, t)))
    assert calls == [(1, STEPS), (2, STEPS), (3, STEPS)]

    seen = []
    with pytest.raises(Cancelled):
        generate(
            tiny_model,
            GenerationRequest(prompt="a dog", steps=10, guidance=1.0),
            progress=lambda s, t: seen.append(s),
            cancel=lambda: len(seen) >= 2,
        )
    assert seen == [1, 2]
    with pytest.raises(Cancelled):
        generate(tiny_model, GenerationRequest(prompt="a dog", steps=10, guidance=1.0), cancel=lambda: True)


def test_bad_requests_are_input_errors(tiny_model):
    with pytest.raises(InputError, match="multiple of 8"):
        generate(tiny_model, GenerationRequest(prompt="a dog", width=30, steps=1))
    with pytest.raises(InputError, match="steps must be between"):
        generate(tiny_model, GenerationRequest(prompt="a dog", steps=0))
    with pytest.raises(InputError, match="unknown scheduler"):
        generate(tiny_model, GenerationRequest(prompt="a dog", steps=1, scheduler="magic"))


def test_non_square_size(tiny_model):
    image = generate(tiny_model, GenerationRequest(prompt="a dog", steps=1, guidance=1.0, width=48, height=32))
    assert image.size == (48, 32)


def test_grid_of_subjects_and_seeds(fresh_tiny_model):
    model = fresh_tiny_model
    concept = _concept(model, "<x>")
    progress = []
    results = generate_grid(
        model, concept, ["a teapot", "a dog"], [0, 1], steps=1, guidance=1.0, progress=lambda s, t: progress.append((s, t))
    )
    assert [r.prompt for r, _ in results] == ["a photo of a teapot <x>"] * 2 + ["a photo of a dog <x>"] * 2
    assert [r.seed for r, _ in results] == [0, 1, 0, 1]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # Same seed, same subject alone gives the same picture as inside the grid.
    alone = generate(model, results[3][0], [concept])
    assert np.array_equal(_pixels(alone), _pixels(results[3][1]))

    grid = grid_image(results, ["a teapot", "a dog"], [0, 1])
    assert grid.width > 2 * 128 and grid.height > 2 * 128  # cells enlarged, plus label margins
    with pytest.raises(InputError, match=r"\{thing\}"):
        generate_grid(model, concept, ["a dog"], [0], template="a {thing} {concept}", steps=1)


def test_reads_automatic1111_parameters():
    text = (
        "masterpiece, a castle <frozen>\nwith two lines\nNegative prompt: ugly, blurry\n"
        'Steps: 20, Sampler: Euler, CFG scale: 6.5, Seed: 123, Size: 512x768, Model: "v1-5, pruned", Clip skip: 2'
    )
    request = parse_a1111_parameters(text)
    assert request.prompt == "masterpiece, a castle <frozen>\nwith two lines"
    assert request.negative_prompt == "ugly, blurry"
    assert (request.steps, request.scheduler, request.guidance, request.seed) == (20, "euler", 6.5, 123)
    assert (request.width, request.height, request.model) == (512, 768, "v1-5, pruned")


def test_reading_images_without_settings(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(InputError, match=r"plain\.png: the image carries no generation settings"):
        read_generation_metadata(tmp_path / "plain.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"junk\.png: not a readable PNG image"):
        read_generation_metadata(tmp_path / "junk.png")
    with pytest.raises(InputError, match=r"\.jpg: generated images are saved as \.png"):
        save_generated(Image.new("RGB", (8, 8)), tmp_path / "x.jpg", GenerationRequest(prompt="p"))


def test_cli_generate_writes_one_png_per_subject_and_seed_plus_grid(tiny_model_dir, tmp_path, capsys):
    from lego_studio.cli import main
    from lego_studio.core.models import load_model

    model = load_model(tiny_model_dir, device="cpu", precision="fp32")
    concept_file = save_concept(_concept(model, "<melting>"), tmp_path / "melting.safetensors")
    out = tmp_path / "out"
    code = main([
        "generate", "--model", str(tiny_model_dir), "--concept", str(concept_file),
        "--subjects", "a teapot", "a dog", "--seeds", "3", "4", "--steps", "1", "--guidance", "1",
        "--device", "cpu", "--out", str(out),
    ])
    assert code == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["01_a-teapot_seed3.png", "02_a-teapot_seed4.png", "03_a-dog_seed3.png", "04_a-dog_seed4.png", "grid.png"]
    request = read_generation_metadata(out / "04_a-dog_seed4.png")
    assert request.prompt == "a photo of a dog <melting>" and request.seed == 4 and request.steps == 1
    assert request.concepts[0]["file"] == str(concept_file.resolve())
    assert "[4/4]" in capsys.readouterr().out

    assert main(["generate", "--model", str(tiny_model_dir), "--concept", str(tmp_path / "nope.pt"),
                 "--subjects", "a dog", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.pt: no such concept file" in err and "Traceback" not in err
