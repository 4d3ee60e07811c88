"""SDXL end to end on the tiny SDXL model (text widths 32 = clip_l and 48 = clip_g, so a swapped
pair is caught): loading and family detection, two-encoder training, concept files in every
layout, diffusers round trip, generation and family checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lego_studio.core.concepts import (
    Concept,
    detect_concept_format,
    expand_prompt,
    export_concept,
    install_concepts,
    load_concept,
    save_concept,
)
from lego_studio.core.errors import InputError, ModelError
from lego_studio.core.prompts import slots, split_fields
from lego_studio.core.losses import unpack_sdxl
from lego_studio.core.train_config import TrainConfig
from lego_studio.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH_L, WIDTH_G = 32, 48


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory, make_exemplars):
    return make_exemplars(tmp_path_factory.mktemp("sdxl-exemplars"))


def lego(**overrides):
    values = dict(steps=4, subject="a red square", checkpoint_every=2, seed=3, num_vectors=2,
                  positive_words=["frozen", "ice"], w_subj=1.0, rec_region="concept")
    values.update(overrides)
    return TrainConfig.preset("lego", **values)


def weights(model) -> dict:
    return {f"{i}.{key}": value.clone() for i, module in enumerate(model.modules)
            for key, value in module.state_dict().items()}


def sdxl_concept(placeholder="<frost>", n=2, seed=0) -> Concept:
    generator = torch.Generator().manual_seed(seed)
    return Concept(placeholder.strip("<>"), placeholder, torch.randn(n, WIDTH_L, generator=generator) * 0.5,
                   vectors_2=torch.randn(n, WIDTH_G, generator=generator) * 0.5)


@pytest.fixture(scope="module")
def reference(tiny_sdxl, exemplars, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sdxl-reference")
    before = weights(tiny_sdxl)
    events = []
    concept = Trainer(tiny_sdxl, lego(preview_every=4, preview_steps=2), *exemplars, run_dir,
                      on_event=events.append).run()
    return {"run_dir": run_dir, "concept": concept, "before": before, "events": events}


# ------------------------------------------------------------------------------ models


def test_tiny_sdxl_is_detected_with_both_widths(tiny_sdxl, tiny_sdxl_dir, capsys):
    family = tiny_sdxl.family
    assert family.name == "sdxl" and (family.text_width, family.text_width_2) == (WIDTH_L, WIDTH_G)
    assert tiny_sdxl.is_sdxl and type(tiny_sdxl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert tiny_sdxl.unet.config.addition_embed_type == "text_time"
    assert tiny_sdxl.tokenizer_2.pad_token == "!"

    from lego_studio.cli import main

    assert main(["models", "inspect", str(tiny_sdxl_dir)]) == 0
    out = capsys.readouterr().out
    assert "family:           sdxl" in out
    assert f"clip_l {WIDTH_L} (text_encoder), clip_g {WIDTH_G} (text_encoder_2" in out


def test_make_tiny_model_cli_writes_sdxl(tmp_path, capsys):
    from lego_studio.cli import main

    assert main(["make-tiny-model", str(tmp_path / "xl"), "--family", "sdxl"]) == 0
    assert "tiny SDXL model" in capsys.readouterr().out
    assert json.loads((tmp_path / "xl" / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"


def _config_only_copy(source, target):
    """A copy of a model folder's configs only (refusals happen before any weight is read)."""
    for path in source.rglob("*.json"):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    return target


def test_refiner_and_inpainting_models_are_refused_in_one_line(tiny_sdxl_dir, tmp_path):
    from lego_studio.core.models import load_model

    refiner = _config_only_copy(tiny_sdxl_dir, tmp_path / "refiner")
    shutil.rmtree(refiner / "text_encoder")
    index = json.loads((refiner / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None], requires_aesthetics_score=True)
    (refiner / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="SDXL refiner") as info:
        load_model(refiner, device="cpu")
    assert "\n" not in str(info.value)

    inpaint = _config_only_copy(tiny_sdxl_dir, tmp_path / "inpaint")
    unet = json.loads((inpaint / "unet" / "config.json").read_text())
    (inpaint / "unet" / "config.json").write_text(json.dumps(dict(unet, in_channels=9)))
    with pytest.raises(ModelError, match="inpainting model \\(9 UNet input channels\\)"):
        load_model(inpaint, device="cpu")


def test_plain_diffusers_sdxl_pipeline_matches_ours(tiny_sdxl, tiny_sdxl_dir):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    plain = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, clip_sample=False)
    plain.set_progress_bar_config(disable=True)
    prompt = ["a photo of a cat"]
    theirs, _, pooled, _ = plain.encode_prompt(prompt, do_classifier_free_guidance=False)
    ours, our_pooled = tiny_sdxl.encode_prompts_pooled(prompt)
    assert ours.shape == (1, 77, WIDTH_L + WIDTH_G) and our_pooled.shape == (1, WIDTH_G)
    assert torch.equal(ours, theirs) and torch.equal(our_pooled, pooled)


def test_single_file_sdxl_round_trip_with_shipped_configs(tiny_sdxl, tmp_path):
    from safetensors import safe_open

    from ldm_export import write_single_file_checkpoint
    from lego_studio.core.models import load_model

    path = write_single_file_checkpoint(tiny_sdxl, tmp_path / "tiny-xl.safetensors")
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys and "model.diffusion_model.label_emb.0.0.weight" in keys
    loaded = load_model(path, device="cpu")  # configs from resources/configs/tiny-sdxl, nothing fetched
    assert loaded.family == tiny_sdxl.family
    for ours, theirs in zip(tiny_sdxl.modules, loaded.modules):
        a, b = ours.state_dict(), theirs.state_dict()
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert torch.equal(loaded.encode_prompts_pooled(["a cat"])[1], tiny_sdxl.encode_prompts_pooled(["a cat"])[1])


def test_real_sdxl_shapes_are_detected_and_map_onto_the_shipped_configs():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    import ldm_export
    from lego_studio.core.model_specs import detect_checkpoint_family
    from lego_studio.core.paths import resource

    folder = resource("configs", "sdxl")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
        clip_l = CLIPTextModel(CLIPTextConfig.from_json_file(str(folder / "text_encoder" / "config.json")))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(str(folder / "text_encoder_2" / "config.json")))
    state = {}
    state.update(ldm_export._unet_to_ldm(unet.state_dict(), unet.config))
    state.update(ldm_export._vae_to_ldm(vae.state_dict(), vae.config))
    state.update(ldm_export._clip_to_ldm(clip_l.state_dict(), ldm_export.SDXL_CLIP_PREFIX))
    state.update(ldm_export._open_clip_to_ldm(clip_g.state_dict(), 1280, ldm_export.SDXL_OPEN_CLIP_PREFIX))
    assert infer_diffusers_model_type(state) == "xl_base"  # diffusers itself calls this layout SDXL base
    shapes = {key: tuple(t.shape) for key, t in state.items()}
    layout, family = detect_checkpoint_family(shapes, "sd_xl_base_1.0.safetensors")
    assert layout == "sdxl" and family.widths == (768, 1280) and family.name == "sdxl"
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SDXL base UNet
    converted = convert_ldm_unet_checkpoint(state, unet.config)
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items() if k in expected} == expected

    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in shapes.items()
               if not k.startswith("conditioner.embedders.0.")}
    with pytest.raises(ModelError, match="refiner.safetensors: this is an SDXL refiner"):
        detect_checkpoint_family(refiner, "refiner.safetensors")


# ------------------------------------------------------------------------------ training


def test_lego_training_learns_both_encoders_and_keeps_every_weight(tiny_sdxl, reference):
    after = weights(tiny_sdxl)
    assert [k for k in reference["before"] if not torch.equal(reference["before"][k], after[k])] == []
    assert all(not p.requires_grad for module in tiny_sdxl.modules for p in module.parameters())
    concept = reference["concept"]
    assert concept.vectors.shape == (2, WIDTH_L) and concept.vectors_2.shape == (2, WIDTH_G)
    assert concept.metadata["family"] == "sdxl" and concept.metadata["text_width_2"] == WIDTH_G
    start = Trainer(tiny_sdxl, lego(), [], None, reference["run_dir"])
    start._table = start._embedding_table()
    start._vocab_limit = start._regular_vocab_limit()
    initial = start._initial_concept_vectors()
    assert not torch.equal(concept.vectors, initial[:, :WIDTH_L])  # clip_l learned
    assert not torch.equal(concept.vectors_2, initial[:, WIDTH_L:])  # clip_g learned too

    saved = load_concept(reference["run_dir"] / "concept.safetensors")
    assert torch.equal(saved.vectors, concept.vectors) and torch.equal(saved.vectors_2, concept.vectors_2)
    log = [json.loads(line) for line in (reference["run_dir"] / "log.jsonl").read_text().splitlines()]
    assert all(r["losses"]["subj"] > 0 and r["losses"]["ctx"] > 0 and r["losses"]["words"] > 0 for r in log)
    assert Image.open(reference["run_dir"] / "previews" / "step-000004.png").size == (32 * 3, 32)


def test_same_seed_same_vectors_and_kill_resume_identical(tiny_sdxl, exemplars, reference, tmp_path):
    again = Trainer(tiny_sdxl, lego(), *exemplars, tmp_path / "again").run()
    assert torch.equal(again.vectors, reference["concept"].vectors)
    assert torch.equal(again.vectors_2, reference["concept"].vectors_2)

    class Killed(Exception):
        pass

    def kill(event):
        if event.kind == "step" and event.step == 3:
            raise Killed()

    with pytest.raises(Killed):
        Trainer(tiny_sdxl, lego(), *exemplars, tmp_path / "killed", on_event=kill).run()
    resumed = Trainer(tiny_sdxl, lego(), *exemplars, tmp_path / "killed").run(resume=True)
    assert torch.equal(resumed.vectors, reference["concept"].vectors)
    assert torch.equal(resumed.vectors_2, reference["concept"].vectors_2)


def test_ti_training_and_split_batching_on_sdxl(tiny_sdxl, exemplars, tmp_path):
    concept = Trainer(tiny_sdxl, TrainConfig.preset("ti", steps=2, checkpoint_every=0), exemplars[0], None,
                      tmp_path / "ti").run()
    assert concept.vectors.shape == (1, WIDTH_L) and concept.vectors_2.shape == (1, WIDTH_G)
    stacked = Trainer(tiny_sdxl, lego(steps=2, unet_batching="stacked"), *exemplars, tmp_path / "a").run()
    split = Trainer(tiny_sdxl, lego(steps=2, unet_batching="split"), *exemplars, tmp_path / "b").run()
    assert torch.allclose(stacked.vectors_2, split.vectors_2, atol=1e-5)


def test_micro_conditioning_gives_each_image_its_original_size_and_crop(fresh_tiny_sdxl, tmp_path):
    # SDXL is told the size and crop of every training image (as its paper and diffusers' training
    # scripts do), so a small or cut photo does not teach the concept its blur or its edges.
    from lego_studio.core.data import size_conditioning

    rng = np.random.default_rng(1)
    wide = tmp_path / "wide.png"  # 48 x 36: the centre square is cut 6 px from the left
    Image.fromarray((rng.random((36, 48, 3)) * 255).astype(np.uint8)).save(wide)
    square = tmp_path / "square.png"  # already the training size: what the pipeline assumes
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(square)
    assert size_conditioning((48, 36), 32) == [[36, 48, 0, 5], [36, 48, 0, 5]]
    assert size_conditioning((32, 32), 32) == [[32, 32, 0, 0], [32, 32, 0, 0]]
    assert size_conditioning((100, 401), 50) == [[401, 100, 75, 0], [401, 100, 75, 0]]

    seen = []
    hook = fresh_tiny_sdxl.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].tolist()), with_kwargs=True)
    try:
        for image in (wide, square):
            Trainer(fresh_tiny_sdxl, TrainConfig.preset("ti", steps=1, checkpoint_every=0, resolution=32), [image], None,
                    tmp_path / image.stem).run()
    finally:
        hook.remove()
    assert seen[0] == [[36, 48, 0, 5, 32, 32]]
    assert seen[-1] == [[32, 32, 0, 0, 32, 32]] == fresh_tiny_sdxl.sdxl_time_ids(32, 32).tolist()


def test_training_conditioning_equals_the_installed_concept(fresh_tiny_sdxl, tmp_path):
    model = fresh_tiny_sdxl
    concept = sdxl_concept("<par>", n=3)
    trainer = Trainer(model, TrainConfig.preset("ti", name="par"), [], None, tmp_path)
    trainer._table = trainer._embedding_table()
    trainer.concept_vectors = torch.nn.Parameter(concept.joined_vectors.clone())
    packed = trainer.encode([split_fields("a photo of a dog {concept} at dusk", {"concept": slots(3)})], grad=False)
    ours, our_pooled = unpack_sdxl(packed, model)
    install_concepts(model, concept)
    theirs, pooled = model.encode_prompts_pooled([expand_prompt("a photo of a dog <par> at dusk", concept)])
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(our_pooled, pooled, atol=1e-6)


def test_init_from_an_sd_concept_is_refused_naming_widths(tiny_sdxl, exemplars, tmp_path):
    sd = save_concept(Concept("flat", "<flat>", torch.zeros(1, WIDTH_L)), tmp_path / "flat.safetensors")
    with pytest.raises(InputError, match=f"width {WIDTH_L} but .* width {WIDTH_L} \\+ {WIDTH_G}"):
        Trainer(tiny_sdxl, TrainConfig.preset("ti", steps=1, init_from=str(sd)), exemplars[0], None, tmp_path / "r").run()


# ------------------------------------------------------------------------------ concept files


def test_lego_file_holds_both_tensors_and_the_family(tmp_path):
    concept = sdxl_concept()
    path = save_concept(concept, tmp_path / "frost.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"lego.vectors", "lego.vectors_2"}
        info = json.loads(handle.metadata()["lego"])
    assert info["family"] == "sdxl" and info["text_width"] == WIDTH_L and info["text_width_2"] == WIDTH_G
    back = load_concept(path)
    assert torch.equal(back.vectors, concept.vectors) and torch.equal(back.vectors_2, concept.vectors_2)


@pytest.mark.parametrize("fmt", ["a1111", "comfyui", "kohya", "diffusers"])
def test_a1111_comfyui_kohya_file_is_clip_l_and_clip_g_both_ways(tmp_path, fmt):
    from safetensors.torch import load_file, save_file

    concept = sdxl_concept()
    path = export_concept(concept, tmp_path / f"frost-{fmt}.safetensors", fmt)
    tensors = load_file(str(path))
    assert set(tensors) == {"clip_l", "clip_g"}
    assert tensors["clip_l"].shape == (2, WIDTH_L) and tensors["clip_g"].shape == (2, WIDTH_G)
    back = load_concept(path)
    assert detect_concept_format(path) == "sdxl" and back.family == "sdxl"
    assert torch.equal(back.vectors, concept.vectors) and torch.equal(back.vectors_2, concept.vectors_2)

    # A file written by another tool (fp16, its own key order) reads the same way.
    other = tmp_path / "theirs.safetensors"
    save_file({"clip_g": concept.vectors_2.half(), "clip_l": concept.vectors.half()}, str(other))
    assert load_concept(other).vectors_2.shape == (2, WIDTH_G)


def test_one_tensor_or_wrong_widths_are_refused_naming_them(tiny_sdxl, tiny_model, tmp_path):
    from safetensors.torch import save_file

    only_g = tmp_path / "only_g.safetensors"
    save_file({"clip_g": torch.zeros(2, WIDTH_G)}, str(only_g))
    with pytest.raises(InputError, match="without its clip_l tensor"):
        load_concept(only_g)
    only_l = tmp_path / "only_l.safetensors"
    save_file({"clip_l": torch.zeros(2, WIDTH_L)}, str(only_l))
    with pytest.raises(InputError, match="without its clip_g tensor"):
        load_concept(only_l)
    uneven = tmp_path / "uneven.safetensors"
    save_file({"clip_l": torch.zeros(2, WIDTH_L), "clip_g": torch.zeros(3, WIDTH_G)}, str(uneven))
    with pytest.raises(InputError, match="clip_l has 2 vectors but clip_g has 3"):
        load_concept(uneven)

    swapped = tmp_path / "swapped.safetensors"
    save_file({"clip_l": torch.zeros(2, WIDTH_G), "clip_g": torch.zeros(2, WIDTH_L)}, str(swapped))
    with pytest.raises(InputError, match=f"clip_l {WIDTH_G} / clip_g {WIDTH_L} wide .* clip_l {WIDTH_L} / clip_g {WIDTH_G}"):
        install_concepts(tiny_sdxl, load_concept(swapped))


def test_concepts_of_another_family_are_refused_naming_both(tiny_sdxl, tiny_model):
    sd_concept = Concept("flat", "<flat>", torch.zeros(1, WIDTH_L), {"family": "sd1"})
    with pytest.raises(InputError, match="made for SD 1.x but the model is SDXL"):
        install_concepts(tiny_sdxl, sd_concept)
    untagged = Concept("flat", "<flat>", torch.zeros(1, WIDTH_L))
    with pytest.raises(InputError, match="one-encoder model .* the model is SDXL"):
        install_concepts(tiny_sdxl, untagged)
    with pytest.raises(InputError, match="made for SDXL but the model is tiny test model"):
        install_concepts(tiny_model, sdxl_concept())
    assert "<frost>" not in tiny_model.tokenizer.get_vocab()


def test_exported_file_in_plain_diffusers_gives_the_apps_prompt_embeddings(fresh_tiny_sdxl, tiny_sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    concept = sdxl_concept("<frost>", n=3)
    path = export_concept(concept, tmp_path / "frost.safetensors", "a1111")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    state = load_file(str(path))
    pipe.load_textual_inversion(state["clip_l"], token="<frost>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="<frost>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    prompt = "a teapot <frost> on a table"
    theirs, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)

    install_concepts(fresh_tiny_sdxl, load_concept(path))
    ours, our_pooled = fresh_tiny_sdxl.encode_prompts_pooled([expand_prompt(prompt, [concept])])
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(our_pooled, pooled, atol=1e-6)


def test_library_badge_and_compatibility(tiny_sdxl, tiny_model, tmp_path):
    from lego_studio.core.library import ConceptLibrary, family_badge

    library = ConceptLibrary(tmp_path / "library")
    library.add(sdxl_concept())
    library.add(Concept("flat", "<flat>", torch.zeros(1, WIDTH_L), {"family": "tiny"}))
    entry = library.entry("frost")
    assert entry.badge == "SDXL" and entry.widths == (WIDTH_L, WIDTH_G) and family_badge("sdxl", 768) == "SDXL"
    assert [e.name for e in library.compatible_with(tiny_sdxl)] == ["frost"]
    assert [e.name for e in library.compatible_with(tiny_model)] == ["flat"]


# ------------------------------------------------------------------------------ generation


def test_generation_metadata_and_bit_exact_regeneration(fresh_tiny_sdxl, tmp_path):
    from lego_studio.core.generation import GenerationRequest, generate, regenerate, save_generated

    model = fresh_tiny_sdxl
    concept = load_concept(save_concept(sdxl_concept(), tmp_path / "frost.safetensors"))
    request = GenerationRequest(prompt="a teapot <frost>", negative_prompt="blurry", seed=5, steps=2, scheduler="euler")
    image = generate(model, request, [concept])
    plain = generate(model, GenerationRequest(prompt="a teapot", negative_prompt="blurry", seed=5, steps=2,
                                              scheduler="euler"))
    assert image.size == (32, 32) and not np.array_equal(np.asarray(image), np.asarray(plain))
    path = save_generated(image, tmp_path / "out.png")
    with Image.open(path) as png:
        assert "Lego concepts: " in png.text["parameters"]
    again = regenerate(model, path)
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(path)))


def test_cli_generate_refuses_a_concept_of_another_family(tiny_sdxl_dir, tmp_path, capsys):
    from lego_studio.cli import main

    concept_file = save_concept(Concept("flat", "<flat>", torch.zeros(1, WIDTH_L), {"family": "sd1"}),
                                tmp_path / "flat.safetensors")
    code = main(["generate", "--model", str(tiny_sdxl_dir), "--concept", str(concept_file), "--subjects", "a dog",
                 "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "made for SD 1.x but the model is SDXL" in err and "Traceback" not in err


@pytest.mark.slow  # the speed benchmark script
def test_the_prepared_sdxl_speed_run_works_on_a_tiny_sdxl(tmp_path):
    # The GPU run for real SDXL shapes (benchmarks/speed_lego_vs_ti.py --sdxl-shaped) must not
    # waste a GPU session on a bug: the same matrix runs here on a tiny SDXL.
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, "benchmarks/speed_lego_vs_ti.py", "--tiny-sdxl", "--checkpointing", "both",
                             "--steps", "2", "--warmup", "1", "--threads", "1", "--json", str(out)],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert sorted(figures["results"]) == sorted([
        "ti", "lego (stacked)", "lego (split)",
        "ti + checkpointing", "lego (stacked) + checkpointing", "lego (split) + checkpointing"])
    assert all(row["skipped_steps"] == 0 and row["seconds_per_step"] > 0 for row in figures["results"].values())
