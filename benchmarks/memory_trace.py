"""Peak memory of a training step, traced without running it: the exact Trainer step code on a
model whose tensors live on PyTorch's ``meta`` device (shapes and dtypes, no data, no compute).

Why: the GPU figures for real-size models (SDXL at 1024 px) need a GPU this project does not
always have. A traced step allocates the same tensors as a real one — the same UNet, text encoders,
splice hooks, loss terms, gradient checkpointing and attention kernel choice — so the bytes of
tensors alive at the step's peak are counted exactly. What a trace cannot see is the device's own
overhead (the CUDA context, cuBLAS/cuDNN workspaces, the caching allocator's rounding and
fragmentation); ``--validate`` compares traced figures with the measured H100 run of the
SD-1.5-shaped model (``results/speed_sd15_h100.json``) to size that gap.

    python benchmarks/memory_trace.py --sdxl-shaped --json benchmarks/results/memory_sdxl_traced.json
    python benchmarks/memory_trace.py --sd15-shaped --validate benchmarks/results/speed_sd15_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 1024**3


def run_matrix(model, resolution: int, checkpointing=(False, True), vectors: int = 4) -> dict:
    from speed_lego_vs_ti import method_matrix

    from lego_studio.core.memory_trace import trace_step

    configs = method_matrix(checkpointing, vectors, steps=10, batch_size=1, checkpoint_every=0, preview_every=0,
                            subject="a red square", resolution=resolution)
    results = {}
    for name, config in configs.items():
        results[name] = {"step_peak_bytes": trace_step(model, config)}
        print(f"traced {name}: step {results[name]['step_peak_bytes'] / GIB:.2f} GiB", file=sys.stderr)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sd15-shaped", action="store_true", help="random SD-1.5-shaped model at 512 px")
    which.add_argument("--sdxl-shaped", action="store_true", help="random SDXL-shaped model (the real configs) at 1024 px")
    which.add_argument("--tiny-sdxl", action="store_true", help="the tiny SDXL test model")
    parser.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--resolution", type=int, default=0)
    parser.add_argument("--validate", metavar="MEASURED_JSON",
                        help="compare with a measured run of speed_lego_vs_ti.py on the same model")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)

    import torch

    from speed_lego_vs_ti import build_sd15_shaped, build_sdxl_shaped

    from lego_studio.core.memory_trace import DEVICE_OVERHEAD_BYTES, trace_latent_encoding, weight_bytes

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    if args.sd15_shaped:
        model = build_sd15_shaped("meta", dtype)
    else:
        model = build_sdxl_shaped("meta", dtype, tiny=args.tiny_sdxl)
    resolution = args.resolution or model.family.resolution
    weights = weight_bytes(model)
    results = run_matrix(model, resolution)
    encoding = trace_latent_encoding(model, resolution)
    total_weights = sum(weights.values())
    for figures in results.values():
        # What the device holds at the step's peak: every weight (the VAE stays loaded for previews) plus the step.
        figures["peak_with_weights_bytes"] = total_weights + figures["step_peak_bytes"]
        # A run's peak: the larger of encoding the images and a step, plus the allocator's own overhead.
        figures["run_peak_bytes"] = total_weights + max(encoding, figures["step_peak_bytes"]) + DEVICE_OVERHEAD_BYTES
    payload = {"model": model.source, "resolution": resolution, "dtype": args.precision, "device": "meta (traced)",
               "weights_bytes": weights, "latent_encoding_peak_bytes": encoding, "results": results}
    print(f"\n**Traced training-step memory** — {model.source} at {resolution} px, {args.precision}, batch 1; "
          f"weights {total_weights / GIB:.2f} GiB; encoding latents peaks at {encoding / GIB:.2f} GiB above the weights\n")
    header = "| method | step (GiB) | with weights (GiB) | run peak (GiB) | fits 16 GB |"
    rule = "|---|---:|---:|---:|:---:|"
    measured = None
    if args.validate:
        measured = json.loads(Path(args.validate).read_text())["results"]
        header += " measured peak (GiB) | traced / measured |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for name, figures in results.items():
        fits = "yes" if figures["run_peak_bytes"] <= 16e9 else "no"
        row = (f"| {name} | {figures['step_peak_bytes'] / GIB:.2f} | {figures['peak_with_weights_bytes'] / GIB:.2f} | "
               f"{figures['run_peak_bytes'] / GIB:.2f} | {fits} |")
        if measured is not None and name in measured:
            real = measured[name]["peak_memory_bytes"]
            figures["measured_peak_bytes"] = real
            row += f" {real / GIB:.2f} | {figures['peak_with_weights_bytes'] / real:.3f} |"
        elif measured is not None:
            row += " | |"
        print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
