"""Shape World in the SDXL architecture, built from the shipped Shape World model on a CPU.

    python -m lego_studio.shapeworld.xl_model --out resources/models/shapeworld-xl --minutes 45 --threads 1

The SDXL architecture differs from SD 1.x in its conditioning: two text encoders whose
*penultimate* hidden states sit side by side (``clip_l`` then ``clip_g``), a pooled embedding of the
second encoder, and micro-conditioning time ids (original size, crop, target size), both fed to
the UNet through ``add_embedding``. Training that from scratch took a GPU for the SD model; a
2-core CPU cannot. So this script *grows* the trained SD Shape World model into that architecture
and then fine-tunes it, and says so in the model's ``lego_studio.json``:

1. ``clip_l`` (width 96): the shipped text encoder with one more layer, so that its penultimate
   hidden state is the output of the layer the SD UNet was trained on (before the final norm).
2. ``clip_g`` (width 32, with a projection for the pooled embedding): a new encoder, *distilled*
   from the shipped one on Shape World captions: an affine map of its penultimate states is
   trained to reproduce what the SD UNet read (the shipped encoder's normalised last states).
3. UNet: the shipped one; each cross-attention key/value map takes both encoders (half from each,
   through the fitted maps, so the grown model starts close to the SD one); ``add_embedding``
   starts at zero (no effect) and learns during fine-tuning.
4. Fine-tuning of everything on the DDPM objective, with caption dropout (for guidance) and
   *stream dropout*: each encoder's half is now and then replaced by its encoding of "", so the
   UNet learns to read each encoder alone and a concept's ``clip_l`` and ``clip_g`` vectors both
   matter.
5. The judge scores the result (trained prompts), as for the SD model.

The VAE is the shipped one, unchanged. Weights are saved fp16 (loaders upcast).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

CLIP_G_WIDTH = 32
CLIP_G_LAYERS = 4
CLIP_G_HEADS = 4
ADD_TIME_EMBED_DIM = 8  # per micro-conditioning number; 6 numbers
RESOLUTION = 64
CAPTION_DROPOUT = 0.10
STREAM_DROPOUT = 0.15  # each encoder's half, independently
RANDOM_TEXT_SHARE = 0.2  # distillation prompts made of random vocabulary, so clip_g generalises


def log(message: str) -> None:
    print(message, flush=True)


def caption_stream(seed: int):
    """Endless Shape World training captions (held-out triples never drawn), "" now and then."""
    from lego_studio.shapeworld.data import sample_triple
    from lego_studio.shapeworld.world import NO_CONCEPT, caption, trained_triples

    rng = random.Random(f"xl-captions/{seed}")
    concept_triples = [t for t in trained_triples() if t.concept != NO_CONCEPT]
    while True:
        if rng.random() < 0.05:
            yield ""
            continue
        triple = sample_triple(rng, False, concept_triples)
        yield caption(triple.shape, triple.colour, None if triple.concept == NO_CONCEPT else triple.concept, rng)


def make_clip_l(base_encoder):
    """The shipped encoder plus one layer (a copy of its last), so ``hidden_states[-2]`` is the
    output of the shipped encoder's last layer — what its UNet learned to read, before the norm."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**{**base_encoder.config.to_dict(), "num_hidden_layers": base_encoder.config.num_hidden_layers + 1})
    encoder = CLIPTextModel(config)
    state = base_encoder.state_dict()
    last = base_encoder.config.num_hidden_layers - 1
    for key, value in list(state.items()):
        infix = f"encoder.layers.{last}."
        if infix in key:
            state[key.replace(infix, f"encoder.layers.{last + 1}.")] = value.clone()
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return encoder


def make_clip_g(seed: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=CLIP_G_WIDTH, intermediate_size=4 * CLIP_G_WIDTH,
        num_hidden_layers=CLIP_G_LAYERS, num_attention_heads=CLIP_G_HEADS, max_position_embeddings=77,
        hidden_act="gelu", projection_dim=CLIP_G_WIDTH, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(config)


def tokenize(tokenizer, texts):
    return tokenizer(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def random_text_ids(rng: random.Random, batch: int, tokenizer):
    """Token rows of random vocabulary words (BOS ... EOS, EOS padding), for distillation breadth."""
    import torch

    rows = []
    for _ in range(batch):
        n = rng.randint(1, 12)
        ids = [tokenizer.bos_token_id] + [rng.randrange(0, 49406) for _ in range(n)] + [tokenizer.eos_token_id]
        rows.append(ids + [tokenizer.pad_token_id] * (77 - len(ids)))
    return torch.tensor(rows)


def distill(base_encoder, clip_l, clip_g, tokenizer, seconds: float, steps: int | None, seed: int, batch: int = 64):
    """Train ``clip_g`` and two affine maps so that both encoders' penultimate states reproduce
    what the SD UNet reads (the base encoder's normalised last states). Returns the maps."""
    import torch

    from lego_studio.shapeworld.model_training import Budget, Progress

    torch.manual_seed(seed)
    width = base_encoder.config.hidden_size
    map_l = torch.nn.Linear(width, width)
    map_g = torch.nn.Linear(CLIP_G_WIDTH, width)
    with torch.no_grad():
        map_l.weight.copy_(torch.eye(width))
        map_l.bias.zero_()
    clip_l.requires_grad_(False)
    base_encoder.requires_grad_(False)
    params = list(clip_g.parameters()) + list(map_g.parameters()) + list(map_l.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    captions = caption_stream(seed)
    rng = random.Random(f"xl-distill/{seed}")
    budget = Budget(seconds, steps)
    progress = Progress("distill")
    step, losses = 0, []
    while not budget.done(step):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * budget.lr_factor(step, warmup=50)
        n_random = int(batch * RANDOM_TEXT_SHARE)
        ids = torch.cat([tokenize(tokenizer, [next(captions) for _ in range(batch - n_random)]),
                         random_text_ids(rng, n_random, tokenizer)])
        with torch.no_grad():
            target = base_encoder(ids).last_hidden_state
            penult_l = clip_l(ids, output_hidden_states=True).hidden_states[-2]
        penult_g = clip_g(ids, output_hidden_states=True).hidden_states[-2]
        loss = (torch.nn.functional.mse_loss(map_g(penult_g), target)
                + torch.nn.functional.mse_loss(map_l(penult_l), target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        progress.maybe(step, budget.planned, loss=sum(losses[-50:]) / len(losses[-50:]))
    clip_l.requires_grad_(True)
    info = {"steps": step, "seconds": round(time.time() - budget.start, 1),
            "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 5),
            "target_variance": round(float(target.var()), 5)}
    log(f"[distill] done: {info}")
    return map_l, map_g, info


def make_xl_unet(base_unet, map_l, map_g, pooled_width: int):
    """The SD UNet with two-encoder cross-attention and an SDXL ``add_embedding`` (zero at start)."""
    import torch
    from diffusers import UNet2DConditionModel

    width_l = map_l.in_features
    config = dict(base_unet.config)
    for key in [k for k in config if k.startswith("_")]:
        config.pop(key)
    config.update(cross_attention_dim=width_l + CLIP_G_WIDTH, addition_embed_type="text_time",
                  addition_time_embed_dim=ADD_TIME_EMBED_DIM,
                  projection_class_embeddings_input_dim=pooled_width + 6 * ADD_TIME_EMBED_DIM)
    unet = UNet2DConditionModel(**config)
    state = base_unet.state_dict()
    new_state = unet.state_dict()
    with torch.no_grad():
        for key, value in new_state.items():
            if key.startswith("add_embedding."):
                if key.startswith("add_embedding.linear_2."):
                    value.zero_()  # the pooled/time path starts with no effect
                continue
            old = state[key]
            if ".attn2.to_k.weight" in key or ".attn2.to_v.weight" in key:
                # Half from each encoder, through the distilled maps: k = W (0.5 A_l h_l + 0.5 A_g h_g).
                value.copy_(torch.cat([0.5 * old @ map_l.weight, 0.5 * old @ map_g.weight], dim=1))
                if ".to_v." in key:
                    # The maps' biases shift every value by one vector, which the output projection
                    # turns into a constant: fold it into that projection's bias. (A constant shift of
                    # the keys changes no attention weight, so the key maps' biases are dropped.)
                    out_key = key.replace("to_v.weight", "to_out.0")
                    shift = old @ (0.5 * map_l.bias + 0.5 * map_g.bias)
                    new_state[out_key + ".bias"].copy_(state[out_key + ".bias"] + state[out_key + ".weight"] @ shift)
                continue
            if key.endswith("to_out.0.bias") and ".attn2." in key:
                continue  # written with its to_v above
            value.copy_(old)
    unet.load_state_dict(new_state)
    return unet


def build_pipeline(unet, vae, clip_l, clip_g, tokenizer, scheduler):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=clip_l, text_encoder_2=clip_g, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=False, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode(clip_l, clip_g, ids_l, ids_g):
    """SDXL conditioning: penultimate states side by side, and clip_g's pooled projection."""
    import torch

    out_l = clip_l(ids_l, output_hidden_states=True)
    out_g = clip_g(ids_g, output_hidden_states=True)
    return torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1), out_g.text_embeds


def fine_tune(args, unet, vae, clip_l, clip_g, tokenizer, seconds: float, steps: int | None):
    import torch

    from lego_studio.shapeworld.data import RenderedBatches, ReplayBuffer, images_to_tensor, loader
    from lego_studio.shapeworld.model_training import EMA, Budget, Progress, apply_update, loss_curve, make_schedulers

    torch.manual_seed(args.seed + 1)
    noise_scheduler, _ = make_schedulers()
    alphas = noise_scheduler.alphas_cumprod
    params = list(unet.parameters()) + list(clip_l.parameters()) + list(clip_g.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2, betas=(0.9, 0.99))
    ema = EMA([unet, clip_l, clip_g], decay=0.995)
    budget = Budget(seconds, steps)
    progress = Progress("fine-tune")
    data = loader(RenderedBatches(args.seed, "xl-unet", args.batch, steps or 10_000_000,
                                  tokenizer_dir=str(args.tokenizer_dir)), args.workers)
    replay = ReplayBuffer(data, ("images", "input_ids"), 1, 1, "cpu", args.seed + 1)
    empty = tokenize(tokenizer, [""])[0]
    time_ids = torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]], dtype=torch.float32)
    scale = vae.config.scaling_factor
    vae.requires_grad_(False)
    unet.train(), clip_l.train(), clip_g.train()
    step, losses = 0, []
    while not budget.done(step):
        batch = replay.get(step)
        for group in opt.param_groups:
            group["lr"] = args.lr * budget.lr_factor(step, warmup=50)
        x = images_to_tensor(batch["images"], "cpu")
        ids = batch["input_ids"]
        b = ids.shape[0]
        caption_drop = torch.rand(b) < CAPTION_DROPOUT
        ids_l = torch.where((caption_drop | (torch.rand(b) < STREAM_DROPOUT))[:, None], empty[None], ids)
        ids_g = torch.where((caption_drop | (torch.rand(b) < STREAM_DROPOUT))[:, None], empty[None], ids)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * scale
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,))
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        context, pooled = encode(clip_l, clip_g, ids_l, ids_g)
        pred = unet(noisy, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.repeat(b, 1)}).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        losses.append(apply_update(opt, loss, params, ema))
        step += 1
        progress.maybe(step, budget.planned, loss=sum(losses[-50:]) / len(losses[-50:]), lr=opt.param_groups[0]["lr"])
    ema.copy_to_params()
    unet.eval(), clip_l.eval(), clip_g.eval()
    curve = loss_curve(losses)
    info = {"steps": step, "seconds": round(time.time() - budget.start, 1), "lr": args.lr, "batch": args.batch,
            "ema_decay": ema.decay, "caption_dropout": CAPTION_DROPOUT, "stream_dropout": STREAM_DROPOUT,
            "loss_curve_per_100_steps": curve}
    log(f"[fine-tune] done: steps {step}, final loss {curve[-1] if curve else None}")
    return info


def evaluate(pipe, judge_model, n: int, seed: int, steps: int) -> dict:
    from lego_studio.shapeworld.evaluate import score_prompts

    t0 = time.time()
    result = score_prompts(pipe, judge_model, n=n, seed=seed, device="cpu", steps=steps, which="trained", batch_size=32)
    result.pop("samples", None)
    result["seconds"] = round(time.time() - t0, 1)
    return result


def evaluate_streams(model_dir, judge_dir=None, n: int = 96, seed: int = 1000, steps: int = 30,
                     guidance: float = 5.0, which: str = "trained") -> dict:
    """Judge images drawn with both encoders, and with each alone (the other one given ""), so
    the report shows how much each encoder carries on its own."""
    import numpy as np
    import torch

    from lego_studio.core.models import load_model
    from lego_studio.shapeworld.evaluate import pick_triples, score
    from lego_studio.shapeworld.judge import judge, load_judge

    model = load_model(str(model_dir), device="cpu", precision="fp32")
    judge_model = load_judge(judge_dir, device="cpu")
    pipe = model.pipeline("ddim")
    triples = pick_triples(n, seed, which)
    prompts = [t.prompt for t in triples]
    results = {}
    with torch.no_grad():
        empty_hidden, empty_pooled = model.encode_prompts_pooled([""])
        width_l = model.family.text_width
        for label in ("both", "clip_l only", "clip_g only"):
            images = []
            for start in range(0, n, 32):
                chunk = prompts[start : start + 32]
                hidden, pooled = model.encode_prompts_pooled(chunk)
                blank = empty_hidden.expand(len(chunk), -1, -1)
                if label == "clip_l only":
                    hidden = torch.cat([hidden[..., :width_l], blank[..., width_l:]], dim=-1)
                    pooled = empty_pooled.expand(len(chunk), -1)
                elif label == "clip_g only":
                    hidden = torch.cat([blank[..., :width_l], hidden[..., width_l:]], dim=-1)
                generators = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
                out = pipe(prompt_embeds=hidden, pooled_prompt_embeds=pooled, negative_prompt_embeds=blank,
                           negative_pooled_prompt_embeds=empty_pooled.expand(len(chunk), -1), num_inference_steps=steps,
                           guidance_scale=guidance, generator=generators, output_type="np").images
                images.append((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
            result = score(triples, judge(np.concatenate(images), judge_model))
            results[label] = {k: result[k] for k in ("n", "concept_accuracy", "subject_accuracy", "shape_accuracy", "colour_accuracy")}
    return {"which": which, "seed": seed, "steps": steps, "guidance": guidance, "results": results}


def run(args) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from lego_studio.core.paths import resource
    from lego_studio.shapeworld.judge import load_judge
    from lego_studio.shapeworld.model_training import folder_size_mb, save_model_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    base = Path(args.base) if args.base else resource("models", "shapeworld")
    args.tokenizer_dir = base / "tokenizer"
    total = args.minutes * 60.0
    log(f"shapeworld-xl: from {base}, {args.minutes} min, threads {torch.get_num_threads()}, seed {args.seed}")
    load = dict(local_files_only=True, torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(str(base / "vae"), **load)
    base_unet = UNet2DConditionModel.from_pretrained(str(base / "unet"), **load)
    base_encoder = CLIPTextModel.from_pretrained(str(base / "text_encoder"), **load).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(args.tokenizer_dir), local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained(str(base / "scheduler"), local_files_only=True)
    judge_model = load_judge(args.judge, device="cpu")

    clip_l = make_clip_l(base_encoder)
    clip_g = make_clip_g(args.seed)
    map_l, map_g, distill_info = distill(base_encoder, clip_l, clip_g, tokenizer, args.distill_share * total,
                                         args.distill_steps, args.seed)
    unet = make_xl_unet(base_unet, map_l, map_g, pooled_width=clip_g.config.projection_dim)
    pipe = build_pipeline(unet, vae, clip_l, clip_g, tokenizer, scheduler)
    with torch.no_grad():
        grown_eval = evaluate(pipe, judge_model, args.eval_n, args.seed + 7, args.eval_steps) if args.eval_n else {}
    log(f"[eval] grown, before fine-tuning: {json.dumps(grown_eval)}")

    eval_reserve = 0.06 * total if args.eval_n else 0.0
    tune_seconds = max(1.0, total - (time.time() - started) - eval_reserve)
    tune_info = fine_tune(args, unet, vae, clip_l, clip_g, tokenizer, tune_seconds, args.tune_steps)
    with torch.no_grad():
        final_eval = evaluate(pipe, judge_model, args.eval_n, args.seed + 7, args.eval_steps) if args.eval_n else {}
    log(f"[eval] fine-tuned: {json.dumps(final_eval)}")

    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("unet", unet), ("text_encoder", clip_l), ("text_encoder_2", clip_g), ("vae", vae))}
    metadata = {
        "family": "sdxl", "resolution": RESOLUTION, "prediction_type": "epsilon", "shapeworld": True,
        "text_width": clip_l.config.hidden_size, "text_width_2": CLIP_G_WIDTH,
        "training": {
            "how": "grown from the SD Shape World model (clip_l = its encoder + 1 layer, clip_g distilled "
                   "from it, UNet cross-attention widened), then fine-tuned on CPU; see xl_model.py",
            "base": str(base), "seed": args.seed, "minutes": args.minutes, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "params": params,
            "steps": {"distill": distill_info["steps"], "fine_tune": tune_info["steps"]},
            "replay": f"--distill-steps {distill_info['steps']} --tune-steps {tune_info['steps']}",
            "wall_seconds": round(time.time() - started, 1),
        },
        "evaluation": {"grown": grown_eval, "fine_tuned": final_eval},
    }
    out = Path(args.out)
    save_model_folder(pipe, out, args.tokenizer_dir, metadata,
                      {"distill": distill_info, "fine_tune": tune_info, "eval": metadata["evaluation"]})
    log(f"saved {out} ({folder_size_mb(out):.1f} MB)")
    return metadata


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lego_studio.shapeworld.xl_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="model folder to write (diffusers SDXL layout)")
    p.add_argument("--evaluate", metavar="MODEL", help="only judge MODEL: both encoders, and each alone")
    p.add_argument("--base", default=None, help="the SD Shape World model to grow (default: the shipped one)")
    p.add_argument("--judge", default=None, help="judge folder (default: the shipped one)")
    p.add_argument("--minutes", type=float, default=45.0, help="total wall-clock budget")
    p.add_argument("--distill-share", type=float, default=0.12, help="share of --minutes for distilling clip_g")
    p.add_argument("--distill-steps", type=int, default=None, help="fixed distillation steps (replay)")
    p.add_argument("--tune-steps", type=int, default=None, help="fixed fine-tuning steps (replay)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--workers", type=int, default=0, help="render workers")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-n", type=int, default=96, help="trained prompts judged before and after fine-tuning")
    p.add_argument("--eval-steps", type=int, default=30)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.evaluate:
        report = {which: evaluate_streams(args.evaluate, args.judge, n=args.eval_n, steps=args.eval_steps, which=which)
                  for which in ("trained", "held_out")}
        print(json.dumps(report, indent=1))
        return 0
    if not args.out:
        parser.error("--out (or --evaluate MODEL) is required")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
