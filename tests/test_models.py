import filecmp
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from lego_studio.core import model_specs
from lego_studio.core.errors import InputError, ModelError
from lego_studio.core.model_specs import ModelFamily, detect_checkpoint_family
from lego_studio.core.models import load_model, safe_torch_load
from lego_studio.core.tiny_models import make_tiny_model
from lego_studio.core.paths import resource
from lego_studio.core.tokenizer import build, load_tokenizer

import ldm_export
from ldm_export import write_single_file_checkpoint

# ------------------------------------------------------------------ tokenizer


def test_shipped_tokenizer_gives_clip_ids():
    tokenizer = load_tokenizer("sd1")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == 49407


def test_sd2_tokenizer_pads_with_exclamation_mark():
    tokenizer = load_tokenizer("sd2")
    ids = tokenizer("a cat", padding="max_length", max_length=6).input_ids
    assert ids == [49406, 320, 2368, 49407, 0, 0]
    assert tokenizer.convert_ids_to_tokens(0) == "!"


def test_tokenizer_build_reproduces_committed_files(tmp_path):
    build(tmp_path)
    shipped = resource("tokenizer")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                 "sd2/tokenizer_config.json", "sd2/special_tokens_map.json"):
        assert filecmp.cmp(tmp_path / name, shipped / name, shallow=False), name
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894


# ------------------------------------------------------------------ tiny model


def test_tiny_model_loads_with_family_and_fp32(tiny_model, tiny_model_dir):
    assert tiny_model.family == ModelFamily("tiny", 32, "epsilon", 32)
    assert tiny_model.dtype == torch.float32 and tiny_model.device.type == "cpu"
    assert tiny_model.vae_scale_factor == 2
    assert tiny_model.unet.config.cross_attention_dim == 32
    assert tiny_model.noise_scheduler.config.prediction_type == "epsilon"
    assert type(tiny_model.noise_scheduler).__name__ == "DDPMScheduler"
    assert tiny_model.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    size_mb = sum(f.stat().st_size for f in Path(tiny_model_dir).rglob("*") if f.is_file()) / 1e6
    assert size_mb < 20
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())


def test_tiny_model_is_deterministic_per_seed(tmp_path, tiny_model_dir):
    weights = "unet/diffusion_pytorch_model.safetensors"
    again = make_tiny_model(tmp_path / "again", seed=0)
    assert filecmp.cmp(again / weights, Path(tiny_model_dir) / weights, shallow=False)
    # Re-making into an existing model folder replaces it; another seed gives other weights.
    make_tiny_model(again, seed=1)
    assert not filecmp.cmp(again / weights, Path(tiny_model_dir) / weights, shallow=False)
    assert not list(tmp_path.glob(".again*"))  # no staging leftovers


def test_make_tiny_model_refuses_a_non_model_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an \\(empty\\) model folder"):
        make_tiny_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_plain_diffusers_pipeline_loads_tiny_model_and_matches_ours(tiny_model, tiny_model_dir):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    ours = tiny_model.pipeline("ddim")
    assert ours.unet is tiny_model.unet and ours.safety_checker is None

    def render(pipe):
        return pipe("a photo of a cat", num_inference_steps=4, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(7)).images

    render(ours)  # warm-up: first call pays one-off kernel setup
    # Cost in CPU-seconds on one thread, best of 3: wall time (and multi-thread spin-waiting)
    # says little while other jobs share the cores.
    timings = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            start = time.process_time()
            mine = render(ours)
            timings.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    elapsed = min(timings)
    theirs = render(plain)
    assert mine.shape == (1, 32, 32, 3)
    assert float(abs(mine - theirs).max()) < 1e-5
    assert mine.std() > 0  # random weights still draw something, not a flat image
    assert elapsed < 1.0, timings  # ~0.16 CPU-seconds


def test_encode_prompts_matches_pipeline(tiny_model):
    pipe = tiny_model.pipeline()
    prompts = ["a photo of a cat", "a teapot frozen in ice, " * 30]  # second is truncated at 77
    mine = tiny_model.encode_prompts(prompts)
    theirs, _ = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
    assert mine.shape == (2, 77, 32)
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize(
    "name,cls", [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"),
                 ("dpm", "DPMSolverMultistepScheduler"), ("pndm", "PNDMScheduler"), ("ddpm", "DDPMScheduler")]
)
def test_pipeline_schedulers(tiny_model, name, cls):
    scheduler = tiny_model.pipeline(name).scheduler
    assert type(scheduler).__name__ == cls
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.steps_offset == 1  # SD's own schedule, not the class default
    assert scheduler.config.beta_schedule == "scaled_linear"


def test_unknown_scheduler(tiny_model):
    with pytest.raises(InputError, match="unknown scheduler 'heun'"):
        tiny_model.pipeline("heun")


def test_cpu_ignores_half_precision(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", precision="fp16")
    assert model.dtype == torch.float32 and model.unet.dtype == torch.float32


# ------------------------------------------------------------------ folder variants


def _copy_model(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def test_family_file_and_inference(tmp_path, tiny_model_dir):
    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    (folder / "lego_studio.json").write_text(json.dumps({"family": "shapeworld", "resolution": 64}))
    assert load_model(folder, device="cpu").family == ModelFamily("shapeworld", 32, "epsilon", 64)
    (folder / "lego_studio.json").unlink()
    assert load_model(folder, device="cpu").family == ModelFamily("custom", 32, "epsilon", 32)
    model = load_model(folder, device="cpu", prediction_type="v_prediction")
    assert model.family.prediction_type == "v_prediction"
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    assert model.pipeline("euler").scheduler.config.prediction_type == "v_prediction"


def test_missing_tokenizer_folder_uses_shipped_tokenizer(tmp_path, tiny_model_dir):
    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    shutil.rmtree(folder / "tokenizer")
    (folder / "model_index.json").unlink()
    model = load_model(folder, device="cpu")
    assert model.tokenizer("a photo of a cat").input_ids[:3] == [49406, 320, 1125]


def test_shapeworld_alias(tmp_path, tiny_model_dir, monkeypatch):
    target = tmp_path / "shapeworld"
    monkeypatch.setattr(model_specs, "shapeworld_model_dir", lambda name="shapeworld": target)
    with pytest.raises(ModelError, match="Shape World model is not installed"):
        load_model("shapeworld", device="cpu")
    _copy_model(tiny_model_dir, target)
    assert load_model("shapeworld", device="cpu").unet.config.cross_attention_dim == 32


# ------------------------------------------------------------------ Hugging Face cache


def _fake_hf_cache(root: Path, model_id: str, model_dir: Path) -> Path:
    repo = root / ("models--" + model_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_model_id_resolves_in_local_hf_cache(tmp_path, tiny_model_dir, monkeypatch):
    snapshot = _fake_hf_cache(tmp_path / "hub", "acme/tiny-sd", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_model("acme/tiny-sd", device="cpu")
    assert model.source == "acme/tiny-sd"
    assert model.family.name == "tiny"
    assert model_specs.find_in_hf_cache("acme/tiny-sd") == snapshot


def test_model_id_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelError) as info:
        load_model("runwayml/stable-diffusion-v1-5", device="cpu")
    assert str(info.value).startswith(
        "model id runwayml/stable-diffusion-v1-5 not found in the local Hugging Face cache (offline)"
    )


# ------------------------------------------------------------------ single files


def _assert_same_weights(a, b):
    for module_a, module_b in ((a.unet, b.unet), (a.vae, b.vae), (a.text_encoder, b.text_encoder)):
        state_a, state_b = module_a.state_dict(), module_b.state_dict()
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key


def test_single_safetensors_sd1_layout_roundtrip(tmp_path, tiny_model):
    path = write_single_file_checkpoint(tiny_model, tmp_path / "tiny.safetensors", "clip")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    loaded = load_model(path, device="cpu")
    assert loaded.family == ModelFamily("tiny", 32, "epsilon", 32)
    _assert_same_weights(tiny_model, loaded)
    assert torch.equal(loaded.encode_prompts(["a cat"]), tiny_model.encode_prompts(["a cat"]))


def test_single_ckpt_sd2_openclip_layout_roundtrip(tmp_path, tiny_model):
    path = write_single_file_checkpoint(tiny_model, tmp_path / "tiny.ckpt", "open_clip")
    raw = safe_torch_load(path)
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in raw["state_dict"]
    loaded = load_model(path, device="cpu")
    _assert_same_weights(tiny_model, loaded)
    assert loaded.tokenizer.pad_token == "!"  # SD2-style text encoder -> SD2 tokenizer
    # CLIP attention is causal: positions up to the end token do not see the padding.
    assert torch.equal(loaded.encode_prompts(["a cat"])[:, :4], tiny_model.encode_prompts(["a cat"])[:, :4])


def test_single_file_with_explicit_config_folder(tmp_path, tiny_model):
    path = write_single_file_checkpoint(tiny_model, tmp_path / "tiny.safetensors", "clip")
    custom = tmp_path / "configs"
    shutil.copytree(resource("configs", "tiny"), custom)
    (custom / "lego_studio.json").write_text(json.dumps({"family": "shapeworld", "resolution": 32}))
    assert load_model(path, device="cpu", config=custom).family.name == "shapeworld"
    (custom / "vae" / "config.json").unlink()
    with pytest.raises(ModelError, match="config folder lacks vae/config.json"):
        load_model(path, device="cpu", config=custom)


def _meta_ldm_state(config_name: str, text_layout: str) -> tuple[dict, object, object, object]:
    """An LDM-layout state dict of meta tensors with the shapes of the real SD1/SD2 models."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = resource("configs", config_name)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
        text = CLIPTextModel(CLIPTextConfig.from_json_file(str(folder / "text_encoder" / "config.json")))
    state = {}
    state.update(ldm_export._unet_to_ldm(unet.state_dict(), unet.config))
    state.update(ldm_export._vae_to_ldm(vae.state_dict(), vae.config))
    text_state = text.state_dict()
    if text_layout == "clip":
        state.update(ldm_export._clip_to_ldm(text_state))
    else:
        state.update(ldm_export._open_clip_to_ldm(text_state, text.config.hidden_size))
    return state, unet, vae, text


@pytest.mark.parametrize("config_name,layout,width", [("sd1", "clip", 768), ("sd2", "open_clip", 1024)])
def test_real_sd_shapes_key_layout_and_detection(config_name, layout, width):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    state, unet, vae, _ = _meta_ldm_state(config_name, layout)
    shapes = {key: tuple(t.shape) for key, t in state.items()}
    # The reverse mapping produces the names diffusers itself recognises as SD1 / SD2 ...
    assert infer_diffusers_model_type(state) == ("v1" if width == 768 else "v2")
    detected_layout, family = detect_checkpoint_family(shapes, "model.safetensors")
    assert detected_layout == layout and family.text_width == width
    assert family.name == ("sd1" if width == 768 else "sd2")
    # ... and diffusers' forward conversion maps them back onto every weight of the shipped configs.
    for module, converted in ((unet, convert_ldm_unet_checkpoint(state, unet.config)),
                              (vae, convert_ldm_vae_checkpoint(state, vae.config))):
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items() if k in expected} == expected


def test_folder_family_from_shipped_sd_configs():
    from lego_studio.core.model_specs import family_from_configs

    def configs(name):
        folder = resource("configs", name)
        return [json.loads((folder / part).read_text()) for part in
                ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")]

    unet, vae, scheduler = configs("sd1")
    assert family_from_configs(768, unet, vae, scheduler) == ModelFamily("sd1", 768, "epsilon", 512)
    unet, vae, scheduler = configs("sd2")
    assert family_from_configs(1024, unet, vae, scheduler) == ModelFamily("sd2", 1024, "v_prediction", 768)
    base_unet = dict(unet, sample_size=64)
    assert family_from_configs(1024, base_unet, vae, dict(scheduler, prediction_type="epsilon")).name == "sd2-base"
    no_prediction = {k: v for k, v in scheduler.items() if k != "prediction_type"}
    assert family_from_configs(1024, base_unet, vae, no_prediction) == ModelFamily("sd2-base", 1024, "epsilon", 512)
    assert family_from_configs(1024, unet, vae, no_prediction).name == "sd2"


def test_sd2_prediction_type_rules():
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
    }
    assert detect_checkpoint_family(shapes, "v2-1_768-ema-pruned.safetensors")[1] == ModelFamily(
        "sd2", 1024, "v_prediction", 768)
    assert detect_checkpoint_family(shapes, "v2-1_512-ema-pruned.safetensors")[1] == ModelFamily(
        "sd2-base", 1024, "epsilon", 512)
    assert detect_checkpoint_family(shapes, "anything.ckpt", global_step=875000)[1].name == "sd2-base"
    assert detect_checkpoint_family(shapes, "mystery.safetensors")[1].prediction_type == "v_prediction"
    assert detect_checkpoint_family(shapes, "v2-1_512.ckpt", prediction_type="v_prediction")[1].name == "sd2"


def test_checkpoint_detection_errors():
    unet_only = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    with pytest.raises(ModelError, match="x.safetensors: the VAE weights"):
        detect_checkpoint_family(unet_only, "x.safetensors")
    with_vae = dict(unet_only, **{"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)})
    with pytest.raises(ModelError, match="text-encoder weights"):
        detect_checkpoint_family(with_vae, "x.safetensors")
    with pytest.raises(ModelError, match="SDXL"):
        detect_checkpoint_family(dict(with_vae, **{"conditioner.embedders.0.transformer.x": (1,)}), "x.safetensors")
    with pytest.raises(ModelError, match="not a Stable Diffusion checkpoint"):
        detect_checkpoint_family({"foo.weight": (3, 3)}, "lora.safetensors")
    inpaint = dict(with_vae, **{"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)})
    with pytest.raises(ModelError, match="9 input channels"):
        detect_checkpoint_family(inpaint, "inpaint.ckpt")


# ------------------------------------------------------------------ failures


def _one_line_naming(exc_info, needle: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and needle in message
    return message


def test_unknown_path(tmp_path):
    with pytest.raises(ModelError) as info:
        load_model(tmp_path / "nope", device="cpu")
    _one_line_naming(info, str(tmp_path / "nope"))


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        load_model(tmp_path / "photos", device="cpu")
    assert "not a diffusers model folder" in _one_line_naming(info, str(tmp_path / "photos"))


def test_folder_missing_a_component(tmp_path, tiny_model_dir):
    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError) as info:
        load_model(folder, device="cpu")
    assert "vae weights are missing" in _one_line_naming(info, str(folder))


def test_corrupt_component_weights(tmp_path, tiny_model_dir):
    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError) as info:
        load_model(folder, device="cpu")
    _one_line_naming(info, "unet")


@pytest.mark.parametrize("suffix,layout", [(".safetensors", "clip"), (".ckpt", "clip")])
def test_truncated_single_file(tmp_path, tiny_model, suffix, layout):
    path = write_single_file_checkpoint(tiny_model, tmp_path / f"model{suffix}", layout)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError) as info:
        load_model(path, device="cpu")
    assert "corrupt or truncated" in _one_line_naming(info, str(path))


def test_wrong_file_type(tmp_path):
    path = tmp_path / "readme.txt"
    path.write_text("hello")
    with pytest.raises(ModelError) as info:
        load_model(path, device="cpu")
    assert "not a model file" in _one_line_naming(info, str(path))


class _Exploit:
    """Unpickling this would create a marker file (stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_unsafe_pickle_is_refused_and_no_code_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    assert not marker.exists()
    with pytest.raises(InputError) as info:
        safe_torch_load(path)
    message = _one_line_naming(info, str(path))
    assert "refused to load: the file contains Python code (unsafe pickle)" in message
    with pytest.raises(ModelError, match="unsafe pickle"):
        load_model(path, device="cpu")
    assert not marker.exists()


def test_safe_torch_load_reads_plain_tensors(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"emb": torch.arange(3.0), "step": 5}, path)
    data = safe_torch_load(path)
    assert torch.equal(data["emb"], torch.arange(3.0)) and data["step"] == 5


def test_every_kind_loads_with_network_unreachable(tmp_path, tiny_model, tiny_model_dir, monkeypatch):
    """Sockets are blocked (conftest). Offline env switches are removed here, so a loader that
    tried to reach the hub would hit the blocked socket instead of quietly skipping."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    _fake_hf_cache(tmp_path / "hub", "acme/tiny-sd", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    specs = [
        tiny_model_dir,
        "acme/tiny-sd",
        write_single_file_checkpoint(tiny_model, tmp_path / "a.safetensors", "clip"),
        write_single_file_checkpoint(tiny_model, tmp_path / "b.ckpt", "open_clip"),
    ]
    for spec in specs:
        model = load_model(spec, device="cpu")
        assert model.unet.config.cross_attention_dim == 32, spec


# ------------------------------------------------------------------ CLI


def _run_cli(argv):
    """Parse with only this module's commands, so the test does not depend on other commands."""
    import argparse

    from lego_studio.commands import models as models_command

    parser = argparse.ArgumentParser(prog="lego-studio")
    models_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_make_tiny_model_and_inspect(tmp_path, capsys):
    out = tmp_path / "cli-tiny"
    assert _run_cli(["make-tiny-model", str(out), "--seed", "2"]) == 0
    assert (out / "model_index.json").is_file()
    assert _run_cli(["models", "inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "family:           tiny" in printed
    assert "text width:       32" in printed
    assert "prediction type:  epsilon" in printed
    assert "resolution:       32 px" in printed
    assert "text_encoder 1,600,672" in printed
    with pytest.raises(ModelError, match="missing: no such model folder or file"):
        _run_cli(["models", "inspect", str(tmp_path / "missing")])
