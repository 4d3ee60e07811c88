"""Choose Lego's defaults on the Shape World TUNING concepts (never the held-out ones).

    python benchmarks/tune_lego_defaults.py --concepts tuning --seeds 0 --steps 150 --out /tmp/tune

Runs TI-1 (reference) and a set of Lego variants — the Subject-Separation region and weight are
the open choices — through exactly the benchmark's protocol (same exemplars, held-out subjects,
prompts, judge; lego_studio.shapeworld.benchmark_runner.run_one), and writes one CSV row per run plus a
Markdown table of means per variant. Several processes (one per concept, ``--threads 1`` each)
can share a machine: pass ``--concepts`` to split the work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld import benchmark as bm  # noqa: E402
from lego_studio.shapeworld import benchmark_report, benchmark_runner  # noqa: E402

N = bm.DEFAULT_VECTORS
# name -> (preset, overrides, uses_masks)
VARIANTS: dict[str, tuple[str, dict, bool]] = {
    "ti-1": ("ti", {"num_vectors": 1}, False),
    "lego": ("lego", {"num_vectors": N}, True),  # the current defaults, masks given
    "lego[concept-region,subj=1]": ("lego", {"num_vectors": N, "rec_region": "concept", "w_subj": 1.0}, True),
    "lego[full,subj=1]": ("lego", {"num_vectors": N, "rec_region": "full", "w_subj": 1.0}, True),
    "lego[full,subj=0.3]": ("lego", {"num_vectors": N, "rec_region": "full", "w_subj": 0.3}, True),
    "lego[full,subj=0.1]": ("lego", {"num_vectors": N, "rec_region": "full", "w_subj": 0.1}, True),
    "lego[full,subj=0]": ("lego", {"num_vectors": N, "rec_region": "full", "w_subj": 0.0}, False),
    "lego[concept-region,subj=0]": ("lego", {"num_vectors": N, "rec_region": "concept", "w_subj": 0.0}, True),
    "lego[full,subj=0,ctx=0]": ("lego", {"num_vectors": N, "rec_region": "full", "w_subj": 0.0, "w_ctx": 0.0}, False),
    "lego[full,subj=0,ctx=1]": ("lego", {"num_vectors": N, "rec_region": "full", "w_subj": 0.0, "w_ctx": 1.0}, False),
    "lego[no subject in prompt]": ("lego", {"num_vectors": N, "rec_region": "full", "w_subj": 0.0,
                                           "subject_in_prompt": False}, False),
    # Partial subject words (issue 9): where the subject's unexplained appearance goes.
    "lego[ctx-out]": ("lego", {"num_vectors": N, "ctx_region": "outside"}, True),
    "lego[in=0.1]": ("lego", {"num_vectors": N, "concept_inside_weight": 0.1}, True),
    "lego[in=0.1,ctx-out]": ("lego", {"num_vectors": N, "concept_inside_weight": 0.1, "ctx_region": "outside"}, True),
    "lego[ctx=0]": ("lego", {"num_vectors": N, "w_ctx": 0.0}, True),
    "lego[ctx=0.1,ctx-out]": ("lego", {"num_vectors": N, "w_ctx": 0.1, "ctx_region": "outside"}, True),
    "lego[ctx=0.2]": ("lego", {"num_vectors": N, "w_ctx": 0.2}, True),
    "lego[ctx=0.1]": ("lego", {"num_vectors": N, "w_ctx": 0.1}, True),
    "lego[ctx=0.1,ctx-out,in=0.3]": ("lego", {"num_vectors": N, "w_ctx": 0.1, "ctx_region": "outside",
                                              "concept_inside_weight": 0.3}, True),
    "lego[ctx=0.1,ctx-out,in=0.1]": ("lego", {"num_vectors": N, "w_ctx": 0.1, "ctx_region": "outside",
                                              "concept_inside_weight": 0.1}, True),
    "lego[ctx=0.2,ctx-out]": ("lego", {"num_vectors": N, "w_ctx": 0.2, "ctx_region": "outside"}, True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concepts", nargs="+", default=["tuning"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--tracks", nargs="+", default=["full"], choices=bm.TRACKS,
                   help="subject-word tracks: full, no-colour, no-shape (default: full)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=bm.DEFAULT_LR)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import torch

    from lego_studio.core.models import load_model
    from lego_studio.shapeworld.judge import load_judge

    concepts = bm.resolve_concepts(args.concepts)
    held = [c for c in concepts if bm.concept_split(c) == "held-out"]
    if held:
        raise SystemExit(f"error: {held} are held-out concepts; tune on the tuning ones")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = bm.BenchmarkConfig(concepts=concepts, seeds=args.seeds, steps=args.steps, lr=args.lr, device="cpu",
                                threads=args.threads)
    model = load_model("shapeworld", device="cpu", precision="fp32")
    judge_model = load_judge(None)
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lego-tune-") as tmp:
        for concept in concepts:
            renders = bm.render_exemplars(concept, bm.exemplar_subject(concept), config.n_exemplars)
            for track in args.tracks:
                for seed in args.seeds:
                    for name in args.variants:
                        preset, overrides, masks = VARIANTS[name]
                        spec = bm.MethodSpec(name, preset, overrides, masks, name)
                        result = benchmark_runner.run_one(model, judge_model, spec, concept, seed, args.steps, config, Path(tmp), renders,
                                            track=track)
                        row = result.row
                        benchmark_report._save_run_sheet(out / track, concept, name, seed, result, config)
                        rows.append(row)
                        benchmark_report.write_csv(out / "tuning.csv", rows)
                        print(f"{track} | {concept} | {name} | seed {seed}: concept {row['concept_fidelity']:.2f} subject "
                              f"{row['subject_fidelity']:.2f} success {row['success']:.2f} leakage {row['leakage']:.2f} "
                              f"(colour {row['colour_leakage']:.2f}, shape {row['shape_leakage']:.2f}) "
                              f"({row['train_s']:.0f}+{row['generate_s']:.0f} s; {(time.time() - started) / 60:.1f} min)",
                              flush=True)
    lines = ["| track | variant | " + " | ".join(bm.METRICS) + " |", "|---|---|" + "---:|" * len(bm.METRICS)]
    for track in args.tracks:
        for name in args.variants:
            mine = [r for r in rows if r["method"] == name and r["track"] == track]
            lines.append(f"| {track} | {name} | " + " | ".join(f"{sum(r[m] for r in mine) / len(mine):.2f}" for m in bm.METRICS) + " |")
    (out / "tuning.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
