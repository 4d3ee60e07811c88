"""Train the Shape World text-to-image model (and its judge) from scratch, within a time budget.

    python -m lego_studio.shapeworld.model_training --out resources/models/shapeworld \
        --judge-out resources/judge --minutes 8 --device cuda --seed 0

Stages, each given a share of ``--minutes``: (a) an AutoencoderKL 64x64x3 -> 16x16x4, (b) the
judge CNN, (c) a CLIPTextModel trained from scratch jointly with a UNet2DConditionModel on the DDPM
epsilon objective with the real CLIP tokenizer, (d) a short evaluation that draws prompts through
diffusers' StableDiffusionPipeline and asks the judge. The result is a diffusers folder that
StableDiffusionPipeline.from_pretrained and lego_studio's load_model read, weights in fp16
safetensors (loaders upcast), plus ``lego_studio.json`` and ``train_log.json``.

With ``--minutes`` the step counts are planned from the speed measured during each stage, so they
vary with the machine; the counts reached are recorded, and ``--vae-steps/--judge-steps/--unet-steps``
replay them exactly (same seed + same device = same weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Budget shares of --minutes; the rest (about 5%) is evaluation and saving.
SHARES = {"vae": 0.12, "judge": 0.05, "unet": 0.78}
TEXT_WIDTH = 96
RESOLUTION = 64
LATENT_SIZE = 16
CAPTION_DROPOUT = 0.10
JUDGE_TARGET = 0.98
BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def log(message: str) -> None:
    print(message, flush=True)


def repo_tokenizer_dir() -> Path:
    from lego_studio.core.paths import resource

    return resource("tokenizer")


# ---------------------------------------------------------------- model definitions


# Two sizes of the same architecture. "base" is for a GPU run; "small" (a quarter of the
# convolution cost) is what a 2-core CPU can train to a usable model within the 3-hour budget:
# measured here, a "base" VAE step at batch 32 takes ~3 s and a UNet step ~1 s on 2 cores.
ARCHS = {
    "base": {"vae_channels": (32, 64, 64), "vae_groups": 32, "unet_channels": (64, 128, 128)},
    "small": {"vae_channels": (16, 32, 32), "vae_groups": 8, "unet_channels": (32, 64, 64)},
}
ARCH = dict(ARCHS["base"])


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=RESOLUTION,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=ARCH["vae_channels"], layers_per_block=1, norm_num_groups=ARCH["vae_groups"],
    )


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=ARCH["unet_channels"], layers_per_block=1, cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=32,
    )


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(config)


def make_schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(BETAS, prediction_type="epsilon", clip_sample=False)
    train = DDPMScheduler(**common)
    sample = DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)
    return train, sample


# ---------------------------------------------------------------- helpers


class Budget:
    """Steps for one stage: a fixed count, or as many as fit before a deadline. The LR schedule
    needs a total, so with a deadline the total is planned from the speed measured after the
    first steps (start-up, buffer filling and autotuning excluded) during the first 30% of the
    stage, and then held fixed."""

    WARM_STEPS = 20

    def __init__(self, seconds: float | None, steps: int | None):
        self.fixed = steps
        self.seconds = seconds
        self.start = time.time()
        self.planned = steps if steps is not None else 1000
        self._warm_time: float | None = None

    def done(self, step: int) -> bool:
        if self.fixed is not None:
            return step >= self.fixed
        now = time.time()
        elapsed = now - self.start
        if step == self.WARM_STEPS:
            self._warm_time = now
        if elapsed < 0.3 * self.seconds:
            if self._warm_time is not None and step >= 2 * self.WARM_STEPS:
                rate = (step - self.WARM_STEPS) / max(now - self._warm_time, 1e-6)
            elif step >= 5:
                rate = step / elapsed
            else:
                rate = None
            if rate is not None:
                self.planned = max(step + 1, int(step + rate * (self.seconds - elapsed)))
        return elapsed >= self.seconds

    def lr_factor(self, step: int, warmup: int) -> float:
        # Short (CPU) runs warm up over at most a tenth of the run, once the run's length is known.
        if self.fixed is not None or step >= 2 * self.WARM_STEPS:
            warmup = max(1, min(warmup, self.planned // 10))
        if self.fixed is None and self.seconds:
            # Deadline runs decay by elapsed time: on a shared CPU the speed changes during the run,
            # and a step-planned cosine would hit its floor early (or never) when it does.
            frac = min((time.time() - self.start) / self.seconds, 1.0)
        else:
            frac = min(step / max(self.planned, 1), 1.0)
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


class Progress:
    def __init__(self, name: str, every: float = 10.0):
        self.name, self.every = name, every
        self.start = self.last = time.time()

    def maybe(self, step: int, total: int, **values) -> None:
        now = time.time()
        if now - self.last < self.every:
            return
        self.last = now
        parts = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        log(f"[{self.name}] step {step}/{total} {parts} {step / (now - self.start):.2f} it/s elapsed {now - self.start:.0f}s")


class EMA:
    """Exponential moving average of parameters; warm-up decay so short runs still benefit."""

    def __init__(self, modules, decay: float = 0.999):
        import torch

        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.decay = decay
        self.updates = 0
        self._torch = torch

    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with self._torch.no_grad():
            self._torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - decay)

    def copy_to_params(self) -> None:
        with self._torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))


def apply_update(opt, loss, params, ema: EMA) -> float:
    """One optimiser step (gradients clipped to norm 1), then the EMA; returns the loss value."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema.update()
    return loss.item()


def loss_curve(losses: list[float], every: int = 100) -> list[float]:
    """Mean loss per ``every`` steps, for the training log."""
    return [round(sum(losses[i : i + every]) / len(losses[i : i + every]), 5) for i in range(0, len(losses), every)]


def autocast(device: str):
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))


# ---------------------------------------------------------------- stages


def train_vae(args, seconds, steps):
    import torch

    from lego_studio.shapeworld.data import RenderedBatches, ReplayBuffer, images_to_tensor, loader

    torch.manual_seed(args.seed)
    vae = make_vae().to(args.device)
    lr = 1e-3
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    budget = Budget(seconds, steps)
    progress = Progress("vae")
    data = loader(RenderedBatches(args.seed, "vae", args.vae_batch, steps or 10_000_000), args.workers)
    replay = ReplayBuffer(data, ("images",), args.reuse, args.slots, args.device, args.seed)
    step = 0
    vae.train()
    while not budget.done(step):
        batch = replay.get(step)
        for group in opt.param_groups:
            group["lr"] = lr * budget.lr_factor(step, warmup=100)
        x = images_to_tensor(batch["images"], args.device)
        with autocast(args.device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        rec_l1 = (recon - x).abs().mean()
        rec_mse = torch.nn.functional.mse_loss(recon, x)
        # Edge term: errors in image gradients, so thin bars and cracks stay sharp.
        edge = ((recon[..., 1:, :] - recon[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean() + (
            (recon[..., 1:] - recon[..., :-1]) - (x[..., 1:] - x[..., :-1])).abs().mean()
        kl = posterior.kl().mean() / (LATENT_SIZE * LATENT_SIZE * 4)
        loss = rec_l1 + rec_mse + 0.5 * edge + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        progress.maybe(step, budget.planned, loss=loss.item(), l1=rec_l1.item(), kl=kl.item())
    vae.eval()
    # Latents scaled to unit variance, as SD does with its scaling_factor.
    with torch.no_grad():
        sample = RenderedBatches(args.seed, "vae-scale", min(256, max(16, 2 * args.vae_batch)), 1)[0]
        z = vae.encode(images_to_tensor(sample["images"], args.device)).latent_dist.mean
        scale = float(1.0 / z.float().std().clamp_min(1e-3))
        recon = vae.decode(z).sample
        psnr = float(-10 * torch.log10(((recon.clamp(-1, 1) - images_to_tensor(sample["images"], args.device)) / 2).pow(2).mean()))
    vae.register_to_config(scaling_factor=scale)
    info = {"steps": step, "seconds": round(time.time() - budget.start, 1), "final_loss": float(loss.item()) if step else None,
            "scaling_factor": scale, "psnr_db": round(psnr, 2)}
    log(f"[vae] done: {info}")
    return vae, info


def train_unet(args, vae, seconds, steps, tokenizer_dir):
    import torch

    from lego_studio.shapeworld.data import RenderedBatches, ReplayBuffer, images_to_tensor, loader

    torch.manual_seed(args.seed + 1)
    unet = make_unet().to(args.device)
    text_encoder = make_text_encoder().to(args.device)
    noise_scheduler, _ = make_schedulers()
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(args.device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    lr = args.lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, betas=(0.9, 0.99))
    ema = EMA([unet, text_encoder], decay=0.999)
    budget = Budget(seconds, steps)
    progress = Progress("unet")
    data = loader(RenderedBatches(args.seed, "unet", args.batch, steps or 10_000_000, tokenizer_dir=str(tokenizer_dir)),
                  args.workers)
    # The empty caption, tokenized as the pipeline does for classifier-free guidance.
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    empty_ids = torch.tensor(tokenizer("", padding="max_length", max_length=77).input_ids, device=args.device)
    scale = vae.config.scaling_factor
    vae.requires_grad_(False)
    unet.train()
    text_encoder.train()
    replay = ReplayBuffer(data, ("images", "input_ids"), args.reuse, args.slots, args.device, args.seed + 1)
    step = 0
    losses = []
    while not budget.done(step):
        batch = replay.get(step)
        for group in opt.param_groups:
            group["lr"] = lr * budget.lr_factor(step, warmup=200)
        x = images_to_tensor(batch["images"], args.device)
        ids = batch["input_ids"].to(args.device)
        drop = torch.rand(ids.shape[0], device=args.device) < CAPTION_DROPOUT
        ids = torch.where(drop[:, None], empty_ids[None, :], ids)
        with torch.no_grad(), autocast(args.device):
            latents = vae.encode(x).latent_dist.sample().float() * scale
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=args.device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        with autocast(args.device):
            context = text_encoder(ids).last_hidden_state
            pred = unet(noisy, t, context).sample.float()
        loss = torch.nn.functional.mse_loss(pred, noise)
        losses.append(apply_update(opt, loss, params, ema))
        step += 1
        progress.maybe(step, budget.planned, loss=sum(losses[-50:]) / len(losses[-50:]), lr=opt.param_groups[0]["lr"])
    ema.copy_to_params()
    unet.eval()
    text_encoder.eval()
    curve = loss_curve(losses)
    info = {"steps": step, "seconds": round(time.time() - budget.start, 1), "lr": lr, "ema_decay": ema.decay,
            "loss_curve_per_100_steps": curve, "caption_dropout": CAPTION_DROPOUT}
    log(f"[unet] done: steps {step}, final loss {curve[-1] if curve else None}")
    return unet, text_encoder, tokenizer, info


def obtain_judge(args):
    """Train the judge, or (``--judge auto`` with a judge already in ``--judge-out`` that scores
    at least JUDGE_TARGET on fresh renders) keep that one and give its time to the UNet."""
    from lego_studio.core.errors import LegoError
    from lego_studio.shapeworld.judge import Judge, judge_accuracy, load_judge, save_judge, train_judge

    if args.judge in ("auto", "reuse") and args.judge_out:
        try:
            existing = load_judge(args.judge_out, device=args.device)
        except LegoError as exc:
            if args.judge == "reuse":
                raise SystemExit(f"error: {exc}")
            existing = None
        if existing is not None:
            accuracy = judge_accuracy(existing, seed=args.seed + 1000, n=args.judge_eval_n)
            if args.judge == "reuse" or min(accuracy.values()) >= JUDGE_TARGET:
                log(f"[judge] keeping the judge in {args.judge_out}: accuracy on fresh renders {accuracy}")
                return existing, {"steps": 0, "reused": str(args.judge_out), "heldout_accuracy": accuracy}
            log(f"[judge] judge in {args.judge_out} scores {accuracy}, below {JUDGE_TARGET}: retraining")
    seconds = SHARES["judge"] * args.minutes * 60.0
    judge_net, info = train_judge(seconds, args.device, seed=args.seed + 2, batch_size=args.judge_batch,
                                  workers=args.workers, steps=args.judge_steps, log=log,
                                  reuse=args.reuse, slots=args.slots)
    model = Judge(judge_net, args.device)
    info["heldout_accuracy"] = judge_accuracy(model, seed=args.seed + 1000, n=args.judge_eval_n)
    info["device"] = args.device
    log(f"[judge] accuracy on fresh renders: {info['heldout_accuracy']}")
    if args.judge_out:
        save_judge(judge_net, args.judge_out, {"training": info})
        log(f"[judge] saved to {args.judge_out}")
    return model, info


def build_pipeline(unet, vae, text_encoder, tokenizer):
    from diffusers import StableDiffusionPipeline

    _, sample_scheduler = make_schedulers()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sample_scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quick_eval(pipe, judge_model, n: int, seed: int, device: str, steps: int = 30, guidance: float = 5.0) -> dict:
    """Draw ``n`` trained-triple prompts with the pipeline and score them with the judge."""
    from lego_studio.shapeworld.evaluate import score_prompts

    return score_prompts(pipe, judge_model, n=n, seed=seed, device=device, steps=steps, guidance=guidance,
                         which="trained", batch_size=64)


def save_model_folder(pipe, out: Path, tokenizer_dir: Path, metadata: dict, log_data: dict) -> None:
    """Write the diffusers folder next to ``out`` and swap it in, so a crash never leaves half a model."""
    import torch

    from lego_studio.core.paths import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.to("cpu")
        # Every weight-holding part (unet, vae, the text encoder or both of SDXL's) in fp16.
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        for module in modules:
            module.to(torch.float16)
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        for module in modules:
            module.to(torch.float32)
        # The tokenizer(s): the shipped CLIP one, byte for byte.
        for name in [n for n in ("tokenizer", "tokenizer_2") if getattr(pipe, n, None) is not None]:
            shutil.rmtree(tmp / name, ignore_errors=True)
            (tmp / name).mkdir()
            for item in tokenizer_dir.iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / name / item.name)
        # diffusers' loader also wants the training scheduler config next to the sampling one.
        atomic_write_json(tmp / "lego_studio.json", metadata)
        atomic_write_json(tmp / "train_log.json", log_data)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available here")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else repo_tokenizer_dir()
    if not (tokenizer_dir / "vocab.json").is_file():
        raise SystemExit(f"error: {tokenizer_dir}: CLIP tokenizer files missing (python -m lego_studio.core.tokenizer build)")
    total = args.minutes * 60.0
    started = time.time()
    log(f"shapeworld training: {args.minutes} min on {args.device}, batch {args.batch}, workers {args.workers}, "
        f"threads {torch.get_num_threads()}, seed {args.seed}")

    vae, vae_info = train_vae(args, SHARES["vae"] * total, args.vae_steps)

    judge_model, judge_info = obtain_judge(args)

    # Whatever is left after the other stages (a reused judge gives its share to the UNet), minus
    # a 5% reserve for evaluation and saving.
    unet_seconds = max(1.0, 0.95 * total - (time.time() - started))
    unet, text_encoder, tokenizer, unet_info = train_unet(args, vae, unet_seconds, args.unet_steps, tokenizer_dir)

    pipe = build_pipeline(unet, vae, text_encoder, tokenizer)
    eval_info = {}
    if args.eval_n > 0:
        t0 = time.time()
        eval_info = quick_eval(pipe, judge_model, args.eval_n, args.seed + 7, args.device, steps=args.eval_steps)
        eval_info["seconds"] = round(time.time() - t0, 1)
        log(f"[eval] {json.dumps({k: v for k, v in eval_info.items() if k != 'samples'})}")

    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("unet", unet), ("text_encoder", text_encoder), ("vae", vae))}
    config = {"arch": args.arch, **{k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()}, "text_width": TEXT_WIDTH, "resolution": RESOLUTION, "latent_size": LATENT_SIZE, "batch": args.batch, "vae_batch": args.vae_batch,
              "reuse": args.reuse, "slots": args.slots, "workers": args.workers,
              "lr": args.lr, "betas": BETAS, "params": params, "shares": SHARES}
    metadata = {
        "family": "shapeworld", "resolution": RESOLUTION, "text_width": TEXT_WIDTH, "prediction_type": "epsilon",
        "training": {"config": config, "seed": args.seed, "minutes": args.minutes, "device": args.device,
                     "torch": torch.__version__, "steps": {"vae": vae_info["steps"], "judge": judge_info["steps"], "unet": unet_info["steps"]},
                     "wall_seconds": round(time.time() - started, 1),
                     "replay": f"--vae-steps {vae_info['steps']} --judge-steps {judge_info['steps']} --unet-steps {unet_info['steps']}"},
        "evaluation": {k: v for k, v in eval_info.items() if k != "samples"},
    }
    log_data = {"vae": vae_info, "judge": judge_info, "unet": unet_info, "eval": eval_info}
    out = Path(args.out)
    save_model_folder(pipe, out, tokenizer_dir, metadata, log_data)
    size = folder_size_mb(out)
    log(f"saved {out} ({size:.1f} MB) in {time.time() - started:.0f}s total")
    return metadata


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lego_studio.shapeworld.model_training",
                                description=__doc__.split("\n\n")[0], add_help=add_help)
    p.add_argument("--out", required=True, help="model folder to write (diffusers layout)")
    p.add_argument("--judge-out", default=None, help="folder for judge.safetensors + judge.json")
    p.add_argument("--minutes", type=float, default=8.0, help="total wall-clock budget")
    p.add_argument("--device", default="cpu", help="cuda | cpu")
    p.add_argument("--arch", choices=sorted(ARCHS), default=None,
                   help="model size: base (default on cuda) or small (default on cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="UNet batch (default 1024 on cuda, 32 on cpu)")
    p.add_argument("--vae-batch", type=int, default=None, help="VAE batch (default 256 on cuda, 32 on cpu)")
    p.add_argument("--judge-batch", type=int, default=None, help="judge batch (default 256 on cuda, 64 on cpu)")
    p.add_argument("--lr", type=float, default=None, help="UNet + text encoder LR (default 5e-4 cuda, 3e-4 cpu)")
    p.add_argument("--workers", type=int, default=None, help="render workers (default: cores - 2, at least 0)")
    p.add_argument("--reuse", type=int, default=None, help="steps per rendered batch (default 8 on cuda, 1 on cpu)")
    p.add_argument("--slots", type=int, default=None, help="rendered batches kept for reuse (default 16 on cuda, 1 on cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--judge", choices=["auto", "train", "reuse"], default="auto",
                   help="auto: keep the judge in --judge-out if it already scores >= 98%% per head, else train one")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--judge-steps", type=int, default=None)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--eval-n", type=int, default=None, help="prompts in the final evaluation (default 192 cuda, 16 cpu)")
    p.add_argument("--eval-steps", type=int, default=30, help="DDIM steps in the final evaluation")
    p.add_argument("--judge-eval-n", type=int, default=2000)
    p.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (default resources/tokenizer)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(apply_defaults(args))
    return 0


def apply_defaults(args):
    """Device-dependent defaults for the options left unset."""
    cuda = args.device.startswith("cuda")
    # A 6 M-parameter UNet on 16x16 latents is kernel-launch bound on a big GPU: a larger batch
    # costs almost no extra time per step.
    args.batch = args.batch or (1024 if cuda else 32)
    args.vae_batch = args.vae_batch or (256 if cuda else 32)
    args.arch = args.arch or ("base" if cuda else "small")
    ARCH.update(ARCHS[args.arch])
    args.judge_batch = args.judge_batch or (256 if cuda else 64)
    args.lr = args.lr or (8e-4 if cuda else 3e-4)
    args.reuse = args.reuse or (8 if cuda else 1)
    args.slots = args.slots or (16 if cuda else 1)
    if args.workers is None:
        args.workers = max(0, min(12, (os.cpu_count() or 2) - 2))
    if args.eval_n is None:
        args.eval_n = 192 if cuda else 16
    return args


if __name__ == "__main__":
    sys.exit(main())
