"""Speed of a Lego training step (all terms on) against a Textual Inversion step.

Same model, same device, same process, same images; Lego is measured in both UNet batchings
("stacked": one UNet call on [SC; S; RC; R]; "split": a call with gradient and one without).

    python benchmarks/speed_lego_vs_ti.py                      # CPU, tiny model
    python benchmarks/speed_lego_vs_ti.py --sd15-shaped        # random SD-1.5-shaped model (GPU)
    python benchmarks/speed_lego_vs_ti.py --sdxl-shaped --checkpointing both --json sdxl.json   # SDXL, 1024 px (GPU)
    python benchmarks/speed_lego_vs_ti.py --tiny-sdxl --checkpointing both   # the same run on a tiny SDXL (CPU check)
    python benchmarks/speed_lego_vs_ti.py --json figures.json

``--sdxl-shaped`` builds a random model from the shipped real SDXL configs
(``resources/configs/sdxl``: 2.57 B UNet, CLIP ViT-L + OpenCLIP bigG, the SDXL VAE) directly on the
device, trained at 1024 px: the figures say which settings fit Lego on real SDXL into a given
memory (e.g. 16 GB). ``--checkpointing both`` measures every method with and without gradient
checkpointing.

Prints a Markdown table: steps/s, seconds/step, peak memory, and the ratio to TI. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA, and the peak resident set size above the level
before the run (sampled every 10 ms) on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_sd15_shaped(device, dtype):
    """A random-weight model with the shapes of Stable Diffusion 1.5 (860M UNet, CLIP ViT-L/14
    text encoder, the SD VAE at 512 px). Built directly on ``device``: nothing is downloaded."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lego_studio.core.model_specs import ModelFamily
    from lego_studio.core.models import SDModel
    from lego_studio.core.tokenizer import load_tokenizer

    scheduler_config = dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon",
    )
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8,
        )
        vae = AutoencoderKL(
            sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ))
    for module in (unet, vae, text_encoder):
        module.to(device=device, dtype=dtype).eval()
    return SDModel(
        tokenizer=load_tokenizer("sd1"), text_encoder=text_encoder, unet=unet, vae=vae,
        noise_scheduler=DDPMScheduler.from_config(scheduler_config),
        family=ModelFamily(name="sd1", text_width=768, prediction_type="epsilon", resolution=512),
        source="random SD-1.5-shaped", device=torch.device(device), dtype=dtype, scheduler_config=scheduler_config,
    )


def build_sdxl_shaped(device, dtype, tiny: bool = False):
    """A random-weight SDXL-architecture model: the real SDXL shapes (from the shipped configs) or,
    with ``tiny``, the tiny SDXL test shapes. Built on ``device``; nothing is downloaded."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lego_studio.core.model_specs import ModelFamily
    from lego_studio.core.models import SDModel
    from lego_studio.core.tiny_models import tiny_sdxl_configs
    from lego_studio.core.paths import resource
    from lego_studio.core.tokenizer import load_tokenizer

    if tiny:
        configs = tiny_sdxl_configs(32)
    else:
        folder = resource("configs", "sdxl")
        configs = {part: json.loads((folder / part / "config.json").read_text()) for part in
                   ("unet", "vae", "text_encoder", "text_encoder_2")}
        configs["scheduler"] = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    clean = {k: {key: v for key, v in c.items() if not key.startswith("_")} for k, c in configs.items()}
    with torch.device(device):
        unet = UNet2DConditionModel(**clean["unet"])
        vae = AutoencoderKL(**clean["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**clean["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clean["text_encoder_2"]))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.to(device=device, dtype=dtype).eval()
    scheduler_config = dict(clean["scheduler"], clip_sample=False)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    width_l, width_g = text_encoder.config.hidden_size, text_encoder_2.config.hidden_size
    model = SDModel(
        tokenizer=load_tokenizer("sd1"), text_encoder=text_encoder, unet=unet, vae=vae,
        noise_scheduler=DDPMScheduler.from_config(scheduler_config),
        family=ModelFamily(name="sdxl", text_width=width_l, prediction_type="epsilon",
                           resolution=int(unet.config.sample_size) * vae_scale, text_width_2=width_g),
        source="random tiny SDXL" if tiny else "random SDXL-shaped", device=torch.device(device), dtype=dtype,
        scheduler_config=scheduler_config,
    )
    model.text_encoder_2 = text_encoder_2
    model.tokenizer_2 = load_tokenizer("sd2")
    return model


def method_matrix(checkpointing, vectors: int, **common) -> dict:
    """The configurations every speed and memory figure is given for: TI, Lego stacked and split,
    each with and without gradient checkpointing (as ``checkpointing`` lists)."""
    from lego_studio.core.train_config import TrainConfig

    runs = {}
    for ckpt in checkpointing:
        tag = " + checkpointing" if ckpt else ""
        runs["ti" + tag] = TrainConfig.preset("ti", gradient_checkpointing=ckpt, **common)
        for batching in ("stacked", "split"):
            runs[f"lego ({batching}){tag}"] = TrainConfig.preset(
                "lego", num_vectors=vectors, positive_words=["frozen", "icy"], unet_batching=batching,
                gradient_checkpointing=ckpt, **common)
    return runs


def build_tiny(device, precision):
    from lego_studio.core.models import load_model
    from lego_studio.core.tiny_models import make_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="lego-bench-")) / "tiny"
    make_tiny_model(folder, seed=0)
    return load_model(folder, device=device, precision=precision)


def make_exemplars(folder: Path, resolution: int, count: int = 4):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(count):
        pixels = (rng.random((resolution, resolution, 3)) * 255).astype(np.uint8)
        mask = np.zeros((resolution, resolution), np.uint8)
        mask[resolution // 4 : 3 * resolution // 4, resolution // 4 : 3 * resolution // 4] = 255
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        Image.fromarray(mask).save(folder / f"mask{i}.png")
        images.append(folder / f"img{i}.png")
        masks.append(folder / f"mask{i}.png")
    return images, masks


class PeakRSS:
    """Peak resident memory above the starting level, sampled in a thread."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def bytes(self) -> int:
        return self.peak - self.start


def measure(model, config, images, masks, run_dir, warmup: int) -> dict:
    import torch

    from lego_studio.core.training import Trainer

    stamps, skipped = [], []

    def on_event(event):
        if event.kind == "step":
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
        elif event.kind == "skipped":
            skipped.append(event.step)

    trainer = Trainer(model, config, images, masks, run_dir, on_event=on_event)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer.run()
        peak = torch.cuda.max_memory_allocated()
    else:
        with PeakRSS() as rss:
            trainer.run()
        peak = rss.bytes
    timed = stamps[warmup:]
    seconds_per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    return {"seconds_per_step": seconds_per_step, "steps_per_s": 1.0 / seconds_per_step,
            "peak_memory_bytes": int(peak), "skipped_steps": len(skipped), "timed_steps": len(timed) - 1}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15-shaped", action="store_true", help="random SD-1.5-shaped model instead of the tiny one")
    parser.add_argument("--sdxl-shaped", action="store_true", help="random SDXL-shaped model (the real configs, 1024 px)")
    parser.add_argument("--tiny-sdxl", action="store_true", help="random tiny SDXL model (a CPU check of the SDXL run)")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="off",
                        help="gradient checkpointing for every method: off, on, or both (each method twice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=0, help="training resolution (0 = the model's own)")
    parser.add_argument("--vectors", type=int, default=4, help="Lego vectors (TI uses 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    import torch

    from lego_studio.core.devices import pick_device, pick_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.precision)
    if args.sd15_shaped:
        model = build_sd15_shaped(device, dtype)
        model_name = "random SD-1.5-shaped"
    elif args.sdxl_shaped or args.tiny_sdxl:
        model = build_sdxl_shaped(device, dtype, tiny=args.tiny_sdxl)
        model_name = model.source
    else:
        model = build_tiny(str(device), args.precision)
        model_name = "tiny"
    work = Path(tempfile.mkdtemp(prefix="lego-bench-run-"))
    resolution = args.resolution or model.family.resolution
    images, masks = make_exemplars(work, resolution)
    total = args.warmup + args.steps + 1
    common = dict(steps=total, batch_size=args.batch_size, checkpoint_every=0, preview_every=0,
                  subject="a red square", max_nonfinite_in_a_row=total + 1, resolution=resolution)
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    runs = method_matrix(checkpointing, args.vectors, **common)
    results = {}
    for name, config in runs.items():
        results[name] = measure(model, config, images, masks, work / name.replace(" ", "_"), args.warmup)
        print(f"measured {name}: {results[name]['seconds_per_step']:.4f} s/step", file=sys.stderr)
    base = results[next(iter(results))]["seconds_per_step"]  # TI, as given (without checkpointing if measured)
    for figures in results.values():
        figures["cost_vs_ti"] = figures["seconds_per_step"] / base

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n**Lego vs Textual Inversion** — model: {model_name} at {resolution} px, device: {device_name}, dtype: {str(dtype).replace('torch.', '')}, "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up\n")
    print("| method | steps/s | s/step | cost vs TI | peak memory (MiB) | skipped |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, f in results.items():
        print(f"| {name} | {f['steps_per_s']:.3f} | {f['seconds_per_step']:.4f} | {f['cost_vs_ti']:.2f}x | "
              f"{f['peak_memory_bytes'] / 2**20:.0f} | {f['skipped_steps']} |")
    if args.json:
        payload = {"model": model_name, "resolution": resolution, "device": device_name, "dtype": str(dtype), "batch_size": args.batch_size,
                   "steps": args.steps, "warmup": args.warmup, "results": results}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
