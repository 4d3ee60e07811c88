"""The Shape World judge: a small CNN that says which shape, colour and concept an image shows.

Trained on renders (inside ``model_training`` or standalone with
``python -m lego_studio.shapeworld.judge train --out resources/judge --minutes 10``), saved as
``judge.safetensors`` + ``judge.json``. ``load_judge()`` loads the shipped one;
``judge(images)`` returns one :class:`JudgePrediction` per image.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lego_studio.core.errors import InputError, ModelError
from lego_studio.core.paths import atomic_save, atomic_write_json, resource
from lego_studio.shapeworld.world import COLOUR_NAMES, CONCEPT_LABELS, SHAPES

JUDGE_SIZE = 64
HEADS = {"shape": SHAPES, "colour": COLOUR_NAMES, "concept": CONCEPT_LABELS}


def default_judge_dir() -> Path:
    return resource("judge")


def build_judge_net():
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    class JudgeNet(nn.Module):
        """64 -> 4x4x128 features; flattened (not pooled) so the heads know where things are:
        flames above and drips below the subject differ mostly by position."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128))
            self.trunk = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(128 * 16, 256), nn.ReLU(inplace=True))
            self.heads = nn.ModuleDict({name: nn.Linear(256, len(labels)) for name, labels in HEADS.items()})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.trunk(self.features(x))
            return {name: head(h) for name, head in self.heads.items()}

    return JudgeNet()


@dataclass
class JudgePrediction:
    shape: str
    colour: str
    concept: str  # a concept phrase, or "none"
    shape_prob: float
    colour_prob: float
    concept_prob: float
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "concept": self.concept, "shape_prob": self.shape_prob,
                "colour_prob": self.colour_prob, "concept_prob": self.concept_prob, "probabilities": self.probabilities}


class Judge:
    def __init__(self, net, device="cpu", metadata: dict | None = None):
        self.net = net.eval()
        self.device = device
        self.metadata = metadata or {}

    def __call__(self, images, batch_size: int = 256) -> list[JudgePrediction]:
        return judge(images, self, batch_size=batch_size)


def _as_batch(images) -> "torch.Tensor":
    """PIL images / uint8 HxWx3 arrays / a uint8 [N,H,W,3] array -> float [N,3,64,64] in [-1,1]."""
    import torch
    from PIL import Image

    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"judge: expected an image tensor [N,3,H,W] in [-1,1], got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-1] != JUDGE_SIZE or x.shape[-2] != JUDGE_SIZE:
            x = torch.nn.functional.interpolate(x, size=(JUDGE_SIZE, JUDGE_SIZE), mode="area")
        return x
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    arrays = []
    for item in images:
        if isinstance(item, Image.Image):
            item = item.convert("RGB")
            if item.size != (JUDGE_SIZE, JUDGE_SIZE):
                item = item.resize((JUDGE_SIZE, JUDGE_SIZE), Image.BOX)
            arr = np.asarray(item)
        else:
            arr = np.asarray(item)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise InputError(f"judge: expected RGB images, got an array of shape {arr.shape}")
            if arr.dtype != np.uint8:
                arr = np.clip(arr * 255.0 + 0.5 if arr.max() <= 1.0 else arr, 0, 255).astype(np.uint8)
            if arr.shape[:2] != (JUDGE_SIZE, JUDGE_SIZE):
                arr = np.asarray(Image.fromarray(arr).resize((JUDGE_SIZE, JUDGE_SIZE), Image.BOX))
        arrays.append(arr)
    if not arrays:
        return torch.empty(0, 3, JUDGE_SIZE, JUDGE_SIZE)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def judge(images, model: Judge | None = None, batch_size: int = 256) -> list[JudgePrediction]:
    """Predict shape, colour and concept for each image (PIL images, uint8 arrays or a [-1,1] tensor)."""
    import torch

    model = model or load_judge()
    x = _as_batch(images)
    results: list[JudgePrediction] = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = model.net(x[start : start + batch_size].to(model.device))
            probs = {name: torch.softmax(value.float(), dim=1).cpu().numpy() for name, value in logits.items()}
            for i in range(next(iter(probs.values())).shape[0]):
                best = {name: int(np.argmax(p[i])) for name, p in probs.items()}
                results.append(JudgePrediction(
                    shape=SHAPES[best["shape"]], colour=COLOUR_NAMES[best["colour"]],
                    concept=CONCEPT_LABELS[best["concept"]],
                    shape_prob=float(probs["shape"][i, best["shape"]]),
                    colour_prob=float(probs["colour"][i, best["colour"]]),
                    concept_prob=float(probs["concept"][i, best["concept"]]),
                    probabilities={name: {label: float(p[i, k]) for k, label in enumerate(HEADS[name])} for name, p in probs.items()},
                ))
    return results


def save_judge(net, out_dir, metadata: dict) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_save(out / "judge.safetensors", lambda tmp: save_file(state, tmp))
    meta = dict(metadata)
    meta.update({"format": "lego-studio-shapeworld-judge", "version": 1, "size": JUDGE_SIZE,
                 "labels": {name: list(labels) for name, labels in HEADS.items()}})
    atomic_write_json(out / "judge.json", meta)
    return out


def load_judge(path=None, device: str = "cpu") -> Judge:
    """Load the judge from a folder (default: the shipped ``resources/judge``)."""
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else default_judge_dir()
    weights, meta_path = folder / "judge.safetensors", folder / "judge.json"
    if not weights.is_file() or not meta_path.is_file():
        raise ModelError(f"{folder}: no Shape World judge here (needs judge.safetensors and judge.json); "
                         "train one with 'python -m lego_studio.shapeworld.judge train'")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path}: unreadable judge metadata ({exc})") from exc
    if meta.get("labels") != {name: list(labels) for name, labels in HEADS.items()}:
        raise ModelError(f"{meta_path}: judge was trained for another Shape World vocabulary; retrain it")
    from lego_studio.core.model_stack import MODEL_LOAD_LOCK

    # Built under the model-load lock: a model loading in another thread (diffusers' empty-weights
    # context patches torch's module construction process-wide) would put this net on ``meta``.
    with MODEL_LOAD_LOCK:
        net = build_judge_net()
        try:
            net.load_state_dict(load_file(str(weights)))
        except Exception as exc:  # safetensors/torch raise several types for a damaged file
            raise ModelError(f"{weights}: cannot load judge weights ({exc})") from exc
    net.to(device).eval()
    return Judge(net, device=device, metadata=meta)


# ---------------------------------------------------------------- training


def train_judge(seconds: float | None, device: str, seed: int = 0, batch_size: int = 128, workers: int = 0,
                steps: int | None = None, lr: float = 2e-3, log=print, reuse: int = 1, slots: int = 1) -> tuple[object, dict]:
    """Train a judge for ``steps`` steps, or until ``seconds`` have passed. Returns (net, info)."""
    import torch

    from lego_studio.shapeworld.data import RenderedBatches, ReplayBuffer, images_to_tensor, loader

    if steps is None and seconds is None:
        raise ValueError("train_judge needs steps or seconds")
    torch.manual_seed(seed)
    net = build_judge_net().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    max_batches = steps if steps is not None else 10_000_000
    data = loader(RenderedBatches(seed, "judge", batch_size, max_batches, include_held_out=True), workers)
    use_bf16 = str(device).startswith("cuda")
    start = time.time()
    deadline = start + seconds if seconds is not None else math.inf
    planned = steps
    last_print = start
    step = 0
    replay = ReplayBuffer(data, ("images", "labels"), reuse, slots, device, seed)
    net.train()
    while True:
        now = time.time()
        if (steps is not None and step >= steps) or (steps is None and now >= deadline):
            break
        batch = replay.get(step)
        if steps is None and step >= 20 and now - start < 0.3 * seconds:
            # Plan the schedule from the measured speed; fixed after 30% of the budget.
            planned = max(step + 1, int(step / (now - start) * seconds))
        total = planned or 1000
        frac = min(step / max(total, 1), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        x = images_to_tensor(batch["images"], device)
        labels = batch["labels"].to(device)
        # Mild photometric jitter so generated images (slightly off in tone) are judged like renders.
        x = x * (1 + 0.1 * torch.randn(x.shape[0], 1, 1, 1, device=device)) + 0.05 * torch.randn(x.shape[0], 3, 1, 1, device=device)
        # Random softening: images decoded by the small VAE are blurrier than renders.
        soft = torch.rand(x.shape[0], 1, 1, 1, device=device) * 0.8
        x = torch.lerp(x, torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False), soft)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            out = net(x)
            loss = sum(torch.nn.functional.cross_entropy(out[name].float(), labels[:, k], label_smoothing=0.05)
                       for k, name in enumerate(HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if time.time() - last_print >= 10:
            last_print = time.time()
            log(f"[judge] step {step}/{total} loss {loss.item():.4f} {step / (last_print - start):.1f} it/s")
    net.eval()
    return net, {"steps": step, "seconds": round(time.time() - start, 1), "batch_size": batch_size, "seed": seed}


def judge_accuracy(model: Judge, seed: int, n: int = 1000, batch_size: int = 250) -> dict[str, float]:
    """Per-head accuracy of ``model`` on ``n`` fresh renders (every triple, held-out included)."""
    from lego_studio.shapeworld.data import RenderedBatches

    batch_size = max(1, min(batch_size, n))
    data = RenderedBatches(seed, "judge-eval", batch_size, math.ceil(n / batch_size), include_held_out=True)
    correct = {name: 0 for name in HEADS}
    count = 0
    for index in range(len(data)):
        batch = data[index]
        preds = judge(batch["images"].numpy(), model)
        for pred, label in zip(preds, batch["labels"].tolist()):
            correct["shape"] += pred.shape == SHAPES[label[0]]
            correct["colour"] += pred.colour == COLOUR_NAMES[label[1]]
            correct["concept"] += pred.concept == CONCEPT_LABELS[label[2]]
            count += 1
    return {name: value / max(count, 1) for name, value in correct.items()}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m lego_studio.shapeworld.judge")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the judge on renders")
    t.add_argument("--out", default=str(default_judge_dir()))
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--steps", type=int, default=None, help="fixed step count (reproducible); overrides --minutes")
    t.add_argument("--device", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    t.add_argument("--reuse", type=int, default=1, help="steps per rendered batch (4 suits a GPU)")
    t.add_argument("--slots", type=int, default=1, help="rendered batches kept for reuse (32 suits a GPU)")
    e = sub.add_parser("eval", help="accuracy of a judge on fresh renders")
    e.add_argument("--judge", default=str(default_judge_dir()))
    e.add_argument("--n", type=int, default=2000)
    e.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args(argv)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    if args.cmd == "train":
        net, info = train_judge(args.minutes * 60, args.device, seed=args.seed, batch_size=args.batch,
                                workers=args.workers, steps=args.steps, log=lambda m: print(m, flush=True),
                                reuse=args.reuse, slots=args.slots)
        model = Judge(net.cpu(), "cpu")
        info["heldout_accuracy"] = judge_accuracy(model, seed=args.seed + 1000, n=2000)
        info["device"] = args.device
        save_judge(net, args.out, {"training": info})
        print(json.dumps(info), flush=True)
    else:
        acc = judge_accuracy(load_judge(args.judge), seed=args.seed, n=args.n)
        print(json.dumps(acc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
