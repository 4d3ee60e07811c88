"""Subject emphasis at drawing time, the pilot: can the new subject's own words, given more say
while drawing, keep a leaked shape out (no retraining)?

    python benchmarks/subject_emphasis_pilot.py --concepts tuning --tracks no-shape-object --seeds 0 \
        --variants base and=1 and=3 mix=0.3 delay=0.2 --out /tmp/pilot

Each run trains the Lego defaults (Shape from masks off), then draws the benchmark's held-out
subjects x seeds with the benchmark's DDIM steps and guidance G, combining the noise predictions
u (empty prompt), xc ("a blue circle <concept>") and x ("a blue circle"):
base u + G(xc - u); and=h u + G(xc - u) + h(x - u) (composable diffusion); mix=a u + G((1-a)(xc - u)
+ a(x - u)); delay=f x alone for the first fraction f of the steps, then xc. Judged as the benchmark
judges. Log: benchmarks/results/tuning/pilots/subject_emphasis_generation.log.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld import benchmark as bm  # noqa: E402


def sample(model, concept, xc_prompts, x_prompts, seeds, variant):
    import torch

    from lego_studio.core.concepts import expand_prompt, install_concepts

    kind, _, value = variant.partition("=")
    value = float(value) if value else 0.0
    g = bm.DEFAULT_GUIDANCE
    install_concepts(model, [concept])
    with torch.no_grad():
        e_xc, e_x, e_u = (model.encode_prompts([expand_prompt(p, [concept]) for p in ps])
                          for ps in (xc_prompts, x_prompts, [""] * len(xc_prompts)))
        sched = model.make_scheduler("ddim")
        sched.set_timesteps(bm.DEFAULT_GEN_STEPS)
        size, scale = int(model.family.resolution), int(model.vae_scale_factor)
        shape = (1, int(model.unet.config.in_channels), size // scale, size // scale)
        lat = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
        n = len(sched.timesteps)
        for i, t in enumerate(sched.timesteps):
            u, xc, x = model.unet(torch.cat([lat] * 3), t, encoder_hidden_states=torch.cat([e_u, e_xc, e_x])).sample.chunk(3)
            e = {"base": lambda: u + g * (xc - u), "and": lambda: u + g * (xc - u) + value * (x - u),
                 "mix": lambda: u + g * ((1 - value) * (xc - u) + value * (x - u)),
                 "delay": lambda: u + g * ((x if i < value * n else xc) - u)}[kind]()
            lat = sched.step(e, t, lat).prev_sample
        img = model.vae.decode(lat / model.vae.config.scaling_factor).sample
    return list(((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())


def main(argv=None) -> int:
    p = bm.tuning_parser(__doc__.splitlines()[0])
    p.add_argument("--tracks", nargs="+", default=["no-shape-object"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--variants", nargs="+", default=["base", "and=1", "and=3", "mix=0.3", "delay=0.2"])

    from lego_studio.core.training import Trainer
    from lego_studio.shapeworld import benchmark_runner as br
    from lego_studio.shapeworld.judge import judge, load_judge

    args, concepts, config, model, out = bm.tuning_setup(p, argv)
    judge_model = load_judge(None)
    for concept in concepts:
        exemplar, evaluation, images, masks = bm.concept_inputs(concept, config)
        requested = [pair for pair in evaluation for _ in config.gen_seeds]
        seeds = [s for _ in evaluation for s in config.gen_seeds]
        for track in args.tracks:
            for seed in args.seeds:
                spec = bm.MethodSpec("lego", "lego", {}, True, "lego")
                cfg = dataclasses.replace(bm.train_config(spec, exemplar, evaluation, bm.DEFAULT_STEPS, seed, track=track),
                                          mask_shape=False)
                with tempfile.TemporaryDirectory() as tmp:
                    learned = Trainer(model, cfg, images, masks, Path(tmp) / "run").run()
                xc = [bm.benchmark_prompt(s, c, learned.placeholder) for s, c in requested]
                x = [bm.subject_phrase(s, c) for s, c in requested]
                for variant in args.variants:
                    sc = br.score_predictions(judge(sample(model, learned, xc, x, seeds, variant), judge_model), requested,
                                              exemplar, concept)
                    print(f"{concept} {track} s{seed} {variant:10s} concept {sc['concept_fidelity']:.2f} success "
                          f"{sc['success']:.2f} leak c{sc['colour_leakage']:.2f} s{sc['shape_leakage']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
