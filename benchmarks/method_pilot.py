"""Method pilots on Shape World: one training run, judged at several step counts.

    python benchmarks/method_pilot.py --concepts tuning --tracks no-colour no-shape \
        --seeds 0 1 --variants lego lego-dir --snapshots 150 300 500 --out /tmp/pilot

Each run trains a variant (a TrainConfig preset plus overrides, see VARIANTS) for the largest
snapshot step count, keeps the concept vectors at every snapshot, and judges each snapshot with the
benchmark's own protocol (held-out subjects x generation seeds, the Shape World judge). One run
thus shows whether a concept collapses or leaks more the longer it trains. It writes one JSON line
per (run, snapshot) to ``pilot.jsonl`` and prints a line each. Tuning concepts only unless
``--allow-held-out`` (the decision run on held-out concepts uses the benchmark itself).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld import benchmark as bm  # noqa: E402
from lego_studio.shapeworld import benchmark_runner as br  # noqa: E402

import oracle_landscape  # noqa: E402  (benchmarks/, beside this file)

# variant -> weight of a term keeping the concept away from the words of the subjects
# (_away_from_subject_words): the context subjects' and the subject's own appearance words, as
# negatives without positives (ReVersion steers its relation token away from object words so).
AWAY: dict[str, float] = {"away0.01": 0.01, "away0.03": 0.03, "away0.1": 0.1}
# variant -> weight of Break-A-Scene's cross-attention idea turned around (_attention_off_subject):
# the concept token's attention inside the subject mask penalised; "tail" counts every token after
# the concept too (the end-of-text and padding tokens, which CLIP's causal attention lets read it).
ATTN: dict[str, float] = {"attn0.01": 0.01, "attn0.05": 0.05, "attn0.2": 0.2, "tail0.01": 0.01, "tail0.05": 0.05}
# variant -> (weight, outside the mask only) of a scale-invariant context term (_cosine_context):
# 1 - cos(effect on R, effect on the exemplar), which no zero effect meets
# (benchmarks/oracle_landscape.py --context-forms scores it before training).
COS: dict[str, tuple[float, bool]] = {"cos-out0.1": (0.1, True), "cos-out0.5": (0.5, True), "cos-out1": (1.0, True),
                                      "cos0.5": (0.5, False)}

# name -> (preset, overrides, uses_masks)
VARIANTS: dict[str, tuple[str, dict, bool]] = {
    "ti-1": ("ti", {"num_vectors": 1}, False),
    "lego": ("lego", {}, True),
    "lego-ctx0": ("lego", {"w_ctx": 0.0}, True),
    "lego-out": ("lego", {"ctx_region": "outside"}, True),
    "in0.1": ("lego", {"w_ctx": 0.0, "concept_inside_weight": 0.1}, True),
    "in0.3": ("lego", {"w_ctx": 0.0, "concept_inside_weight": 0.3}, True),
    "in0": ("lego", {"w_ctx": 0.0, "rec_region": "concept"}, True),
    "ctx0.05": ("lego", {"w_ctx": 0.05}, True),
    "ctx0.1": ("lego", {"w_ctx": 0.1}, True),
    # Subject Separation by the mask: L_subj on and L_rec outside the subject (oracle landscape:
    # the first form whose minimum is at the true words for concepts drawn around the subject).
    "around": ("lego", {"w_subj": 0.25, "rec_region": "concept"}, True),
    "around0.05": ("lego", {"w_subj": 0.05, "rec_region": "concept"}, True),
    "subj0.05": ("lego", {"w_subj": 0.05}, True),
    "rec-out": ("lego", {"rec_region": "concept"}, True),
    # L_subj switched on only once the concept has formed (LATE below): from step 150.
    "around-late": ("lego", {"rec_region": "concept"}, True),
    "subj-late": ("lego", {}, True),
    # The subject's colour randomised inside its mask (hue rotations of each exemplar, HUE below):
    # a colour the words leave out is then no longer shared by the exemplars.
    "hue": ("lego", {}, True),
    "hue-ctx0": ("lego", {"w_ctx": 0.0}, True),
    "hue-ctx0.1": ("lego", {"w_ctx": 0.1}, True),
    # Mirrored exemplars (TrainConfig.flip): Lego with them (its default until "casting a shadow"
    # showed a mirrored shadow to be another concept), and the TI baseline without them.
    "lego-flip": ("lego", {"flip": True}, True),
    "ti-noflip": ("ti", {"num_vectors": 1, "flip": False}, False),
    # ReVersion's relation-focal timestep sampling (TrainConfig.timestep_focus).
    "focal0": ("lego", {"timestep_focus": 0.0}, True),
    "focal0.5": ("lego", {"timestep_focus": 0.5}, True),
    "focal1": ("lego", {"timestep_focus": 1.0}, True),
    # Variants that are the Lego defaults plus a pilot-only change, each described at its table
    # above (AWAY, ATTN, COS), and the closest-words fix as a user makes it ("clicked": the word the
    # track's subject words left out, clicked into the subject words by _clicked_subject below; the
    # user knows their subject, and docs/METHOD.md shows it among the 3 closest words in every run).
    **{name: ("lego", {}, True) for name in ["clicked", *AWAY, *ATTN, *COS]},
}


def _clicked_subject(subject: str, exemplar: tuple[str, str], track: str) -> str:
    from lego_studio.core.separation import add_subject_word

    shape, colour = exemplar
    left_out = {"no-colour": [colour], "no-words": [shape, colour]}.get(track, [shape] if track.startswith("no-shape") else [])
    for word in left_out:
        subject = add_subject_word(subject, word)
    return subject


# variant -> number of hue rotations (evenly spaced, the original included) per exemplar.
HUE: dict[str, int] = {"hue": 6, "hue-ctx0": 6, "hue-ctx0.1": 6}


def _hue_rotate(image, mask, degrees):
    """The subject (mask >= 128) with its hue rotated by ``degrees`` around the grey axis (greys
    stay grey, luminance is kept); the rest of the image as it is."""
    import numpy as np
    from PIL import Image

    a = np.deg2rad(degrees)
    c, s, k = np.cos(a), np.sin(a), 1.0 / 3.0
    r = np.sqrt(k) * s
    m = np.array([[c + (1 - c) * k, k * (1 - c) - r, k * (1 - c) + r],
                  [k * (1 - c) + r, c + k * (1 - c), k * (1 - c) - r],
                  [k * (1 - c) - r, k * (1 - c) + r, c + k * (1 - c)]])
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    rotated = np.clip(pixels @ m.T, 0, 255)
    subject = (np.asarray(mask) >= 128)[..., None]
    return Image.fromarray(np.where(subject, rotated, pixels).astype(np.uint8))


def _hue_rotations(images, masks, n):
    """Each exemplar ``n`` times, its subject's hue rotated by 360/n steps (the original first)."""
    pairs = [(_hue_rotate(image, mask, 360.0 * k / n), mask) for image, mask in zip(images, masks) for k in range(n)]
    return [image for image, _ in pairs], [mask for _, mask in pairs]


# variant -> (setting, value, from step): a weight that starts at the preset's value and changes
# to ``value`` at ``from step`` (a pilot-only schedule; the engine has none).
LATE: dict[str, tuple[str, float, int]] = {
    "around-late": ("w_subj", 0.25, 150),
    "subj-late": ("w_subj", 0.25, 150),
}


def _schedule(trainer, setting: str, value: float, start: int) -> None:
    original = trainer._step

    def step(step_index, optimizer):
        if step_index >= start:
            setattr(trainer.config, setting, value)
        return original(step_index, optimizer)

    trainer._step = step


def _away_from_subject_words(trainer, weight: float, temperature: float = 0.05) -> None:
    """Add ``weight`` x the smooth maximum (temperature ``temperature``) of the cosine between each
    concept vector and the token embeddings of every appearance word of the subject phrase and the
    context subjects: near zero at a concept's own words, large when a subject's colour or shape word
    is in the vector (docs/METHOD.md, "What a leaking concept is made of")."""
    import torch
    import torch.nn.functional as F

    from lego_studio.core.prompts import appearance_words

    original = trainer._concept_loss
    words = sorted({w for phrase in [trainer.config.subject, *trainer.config.context_subjects]
                    for w in appearance_words(phrase)})
    state = {}

    def concept_loss(generator):
        losses = original(generator)
        if "negatives" not in state:
            state["negatives"] = F.normalize(torch.stack([trainer._word_embedding(w) for w in words]).float(), dim=-1)
        v = F.normalize(trainer.concept_vectors.float(), dim=-1)
        cos = v @ state["negatives"].to(v.device).T
        away = (temperature * torch.logsumexp(cos / temperature, dim=1)).mean()
        losses = dict(losses)
        losses["words"] = away.detach()
        losses["total"] = losses["total"] + weight * away
        return losses

    trainer._concept_loss = concept_loss


def _record_batches(trainer, last: dict) -> None:
    """Keep the target, subject mask and has-mask flags of the trainer's latest batch in ``last``."""
    original = trainer._noisy_batch

    def noisy_batch(exemplars, generator):
        batch = original(exemplars, generator)
        last["target"], last["mask"], last["has_mask"] = batch[2], batch[3], batch[4]
        return batch

    trainer._noisy_batch = noisy_batch


def _attention_off_subject(trainer, weight: float, tail: bool = False):
    """Add ``weight`` x the concept token's cross-attention inside the subject mask (Break-A-Scene's
    attention loss turned into "keep off the subject"): for each sample with a mask, the head-mean
    attention of the concept slots, divided by its maximum over the image, averaged over the mask,
    on the 16x16 and 8x8 cross-attention layers; with ``tail`` every token after the concept's
    first slot counts as the concept's too. Returns a function that restores the UNet."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import AttnProcessor

    from lego_studio.core.prompts import tokenize_segments

    unet = trainer.model.unet
    store = {"on": False, "maps": []}
    saved = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            saved[name] = (module, module.processor)
            module.set_processor(AttnProcessor())
            original = module.get_attention_scores

            def scores(query, key, attention_mask=None, original=original):
                probs = original(query, key, attention_mask)
                if store["on"]:
                    store["maps"].append(probs)
                return probs

            module.get_attention_scores = scores
    heads = next(iter(saved.values()))[0].heads
    original_loss, original_encode = trainer._concept_loss, trainer.encode
    last = {}
    _record_batches(trainer, last)

    def encode(prompts, grad=True):
        if grad and "prompts" not in last:
            last["prompts"] = prompts  # the first conditioning with gradient: "S C" on the exemplar
        return original_encode(prompts, grad)

    def concept_loss(generator):
        last.clear()
        store["on"], store["maps"] = True, []
        try:
            losses = original_loss(generator)
        finally:
            store["on"] = False
        maps, store["maps"] = store["maps"], []
        mask, has_mask = last["mask"], last["has_mask"].to(last["mask"].device)
        b = mask.shape[0]
        slots = tokenize_segments(trainer.model.tokenizer, last["prompts"]).slot_mask.to(mask.device).float()  # [b, 77]
        if tail:
            slots = (slots.cumsum(dim=1) > 0).float()
        terms = []
        for probs in maps:
            hw = probs.shape[1]
            side = int(round(hw ** 0.5))
            if side not in (8, 16):
                continue
            a = probs[: b * heads].reshape(b, heads, hw, -1).mean(1)  # [b, hw, 77]; SC is the first block
            a = (a * slots[:, None, :]).sum(-1)  # attention on the concept slots, [b, hw]
            a = a / a.amax(dim=1, keepdim=True).clamp_min(1e-8)
            m = F.adaptive_avg_pool2d(mask.float(), side).reshape(b, hw)
            inside = (a * m).sum(1) / m.sum(1).clamp_min(1e-6)
            terms.append((inside * has_mask.float()).sum() / has_mask.float().sum().clamp_min(1.0))
        attn = torch.stack(terms).mean() if terms else losses["total"].detach() * 0.0
        losses = dict(losses)
        losses["subj"] = attn.detach()
        losses["total"] = losses["total"] + weight * attn
        return losses

    trainer._concept_loss, trainer.encode = concept_loss, encode

    def restore():
        for module, processor in saved.values():
            module.set_processor(processor)
            del module.get_attention_scores

    return restore


def _cosine_context(trainer, weight: float, outside: bool) -> None:
    """Add ``weight`` x (1 - cos(effect on the other subject, sg effect on the exemplar)), per
    sample, over the whole latent or outside the subject mask: a context term that a concept with
    no effect cannot meet (the defaults' L_ctx stays as it is)."""
    import torch.nn.functional as F

    original_loss, original_predict = trainer._concept_loss, trainer._predict
    last = {}
    _record_batches(trainer, last)

    def predict(*args, **kwargs):
        out = original_predict(*args, **kwargs)
        last["predictions"] = out
        return out

    def concept_loss(generator):
        losses = original_loss(generator)
        p = last.pop("predictions")
        if "RC" not in p:
            return losses
        region = 1.0 - last["mask"] * last["has_mask"].to(last["mask"].device).float().view(-1, 1, 1, 1) if outside else 1.0
        effect_r = ((p["RC"] - p["R"]) * region).flatten(1)
        effect_s = ((p["SC"].detach() - p["S"]) * region).flatten(1)
        term = (1.0 - F.cosine_similarity(effect_r, effect_s, dim=1)).mean()
        losses = dict(losses)
        losses["words"] = term.detach()
        losses["total"] = losses["total"] + weight * term
        return losses

    trainer._concept_loss, trainer._predict = concept_loss, predict


def _trace_effects(trainer, trace: list) -> None:
    """Record, every step, how big the concept's effect is on the exemplar (S C vs S) and on the
    other subjects (R C vs R), inside and outside the subject mask: shrinking = collapse."""
    original = trainer._predict
    last = {}
    _record_batches(trainer, last)

    def predict(z_t, t, grad_parts, plain_parts, sizes=None):
        out = original(z_t, t, grad_parts, plain_parts, sizes)
        if "S" in out and "R" in out:
            e_s = (out["SC"].detach() - out["S"]).abs().mean().item()
            e_r = (out["RC"].detach() - out["R"]).abs().mean().item()
            target = last.get("target")
            rec_s = float(((out["S"] - target) ** 2).mean()) if target is not None else 0.0
            rec_sc = float(((out["SC"].detach() - target) ** 2).mean()) if target is not None else 0.0
            trace.append([int(t[0]), round(e_s, 5), round(e_r, 5), round(float(trainer.concept_vectors.detach().norm()), 4),
                          round(rec_s, 5), round(rec_sc, 5)])
        elif "SC" in out:
            trace.append([int(t[0]), 0.0, 0.0, round(float(trainer.concept_vectors.detach().norm()), 4)])
        return out

    trainer._predict = predict


def main(argv=None) -> int:
    p = bm.tuning_parser(__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["lego"])
    p.add_argument("--tracks", nargs="+", default=["no-colour"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--snapshots", nargs="+", type=int, default=[150, 300, 500])
    p.add_argument("--lr", type=float, default=bm.DEFAULT_LR)
    p.add_argument("--average-from", nargs="*", type=int, default=[],
                   help="also judge the mean of the concept vectors from each of these steps to the end")
    p.add_argument("--trace", action="store_true", help="record the concept's effect sizes every step (trace.jsonl)")
    p.add_argument("--losses", action="store_true",
                   help="also score every loss term at each snapshot on oracle_landscape.py's fixed batches, and "
                        "count the judge's concept labels: a snapshot drawn as another concept whose loss is below "
                        "the true words' (oracle_landscape.py) shows the training data at fault, not the optimiser")

    from lego_studio.core.concepts import closest_words
    from lego_studio.core.training import Trainer
    from lego_studio.shapeworld.judge import judge, load_judge

    args, concepts, config, model, out = bm.tuning_setup(p, argv)
    judge_model = load_judge(None)
    snapshots = sorted(set(args.snapshots))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lego-pilot-") as tmp:
        for concept in concepts:
            exemplar, evaluation, images, masks = bm.concept_inputs(concept, config)
            for track in args.tracks:
                for seed in args.seeds:
                    for name in args.variants:
                        preset, overrides, uses_masks = VARIANTS[name]
                        spec = bm.MethodSpec(name, preset, overrides, uses_masks, name)
                        cfg = bm.train_config(spec, exemplar, evaluation, snapshots[-1], seed, lr=args.lr, track=track)
                        if name == "clicked":
                            cfg = dataclasses.replace(cfg, subject=_clicked_subject(cfg.subject, exemplar, track))
                        kept = {}
                        sums = {start: [None, 0] for start in args.average_from}
                        trainer = None

                        def on_event(event, kept=kept, sums=sums):
                            if event.kind == "step" and event.step in snapshots:
                                kept[event.step] = trainer.concept()
                            if event.kind == "step":
                                for start, acc in sums.items():
                                    if event.step > start:
                                        v = trainer.concept_vectors.detach().float().cpu().clone()
                                        acc[0] = v if acc[0] is None else acc[0] + v
                                        acc[1] += 1

                        run_dir = Path(tmp) / f"{bm._slug(concept)}-{track}-{name}-{seed}"
                        t0 = time.time()
                        run_images, run_masks = images, masks
                        if name in HUE:
                            run_images, run_masks = _hue_rotations(images, masks, HUE[name])
                        trainer = Trainer(model, cfg, run_images, run_masks if uses_masks else None, run_dir,
                                          on_event=on_event)
                        if name in LATE:
                            _schedule(trainer, *LATE[name])
                        if name in AWAY:
                            _away_from_subject_words(trainer, AWAY[name])
                        if name in COS:
                            _cosine_context(trainer, *COS[name])
                        restore = _attention_off_subject(trainer, ATTN[name], name.startswith("tail")) if name in ATTN else None
                        trace = []
                        if args.trace:
                            _trace_effects(trainer, trace)
                        try:
                            final = trainer.run()
                        finally:
                            if restore is not None:
                                restore()
                        if trace:
                            with open(out / "trace.jsonl", "a", encoding="utf-8") as fh:
                                fh.write(json.dumps({"concept": concept, "track": track, "seed": seed, "variant": name,
                                                     "trace": trace}) + "\n")
                        kept[snapshots[-1]] = final
                        for start, (total, count) in sums.items():
                            kept[f"avg{start}"] = dataclasses.replace(final, vectors=total / count)
                        train_s = time.time() - t0
                        for step in [*snapshots, *(f"avg{start}" for start in args.average_from)]:
                            learned = kept[step]
                            requested = [pair for pair in evaluation for _ in config.gen_seeds]
                            prompts = [bm.benchmark_prompt(s, c, learned.placeholder) for s, c in requested]
                            seeds = [s for _ in evaluation for s in config.gen_seeds]
                            made = br.generate_images(model, learned, prompts, seeds, config.gen_steps, config.guidance)
                            predictions = judge([im for _, im in made], judge_model)
                            scores = br.score_predictions(predictions, requested, exemplar, concept)
                            extra = {}
                            if args.losses:
                                extra["labels"] = dict(Counter(pred.concept for pred in predictions))
                                extra["losses"] = {k: round(v, 5) for k, v in oracle_landscape.score(
                                    model, cfg, run_images, run_masks if uses_masks else None, None,
                                    oracle_landscape.DEFAULT_BATCHES, Path(tmp) / "cache", vectors=learned.vectors).items()}
                            closest = closest_words(learned.vectors, model.tokenizer,
                                                    model.text_encoder.get_input_embeddings().weight.detach())
                            row = {"concept": concept, "track": track, "seed": seed, "variant": name, "step": step,
                                   "subject_words": cfg.subject, **{k: round(v, 3) for k, v in scores.items()},
                                   "closest_words": closest, "train_s": round(train_s, 1), **extra}
                            with open(out / "pilot.jsonl", "a", encoding="utf-8") as fh:
                                fh.write(json.dumps(row) + "\n")
                            print(f"{concept:16s} {track:9s} s{seed} {name:14s} @{step!s:>6s}: concept {row['concept_fidelity']:.2f} "
                                  f"success {row['success']:.2f} leak c{row['colour_leakage']:.2f} s{row['shape_leakage']:.2f} "
                                  f"drift {row['colour_drift']:.2f} [{' '.join(closest[:3])}] "
                                  f"({train_s:.0f} s train; {(time.time() - started) / 60:.1f} min)"
                                  + (f" labels {extra['labels']} loss {extra['losses']}" if extra else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
