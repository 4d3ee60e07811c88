"""What a run has done so far, read back from its folder: the loss log and the previews.

A resumed run shows its whole history (the loss curves from step 1, the previews already made),
not only the steps after the resume. Qt-free; call it off the UI thread (it reads files).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

_STEP_FILE = re.compile(r"step-(\d+)\.(safetensors|png)")


@dataclass
class RunHistory:
    kind: str = "history"  # read like a TrainEvent by the views
    step: int = 0  # the last step logged
    points: list = field(default_factory=list)  # [(step, {term: loss})], in step order
    previews: list = field(default_factory=list)  # [(step, [PIL images])], in step order


def last_checkpoint_step(run_dir: str | os.PathLike) -> int:
    """The step of the newest checkpoint in ``run_dir`` (what a resume continues from); 0 if none."""
    steps = [int(m.group(1)) for path in (Path(run_dir) / "checkpoints").glob("step-*.safetensors")
             if (m := _STEP_FILE.fullmatch(path.name))]
    return max(steps, default=0)


def read_history(run_dir: str | os.PathLike, upto: int | None = None, with_previews: bool = True) -> RunHistory:
    """The run's logged losses and its previews, up to step ``upto`` (all when None). Damaged
    lines and unreadable previews are skipped: this is for showing, not for training."""
    run_dir = Path(run_dir)
    history = RunHistory()
    try:
        lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        step = record.get("step") if isinstance(record, dict) else None
        losses = record.get("losses")
        if not isinstance(step, int) or (upto is not None and step > upto) or not isinstance(losses, dict):
            continue
        if record.get("skipped"):
            continue
        history.points.append((step, {k: float(v) for k, v in losses.items() if isinstance(v, (int, float))}))
    history.points.sort(key=lambda point: point[0])
    history.step = history.points[-1][0] if history.points else 0
    if with_previews:
        history.previews = _previews(run_dir / "previews", upto)
    return history


def _previews(folder: Path, upto: int | None) -> list:
    from PIL import Image, UnidentifiedImageError

    found = []
    for path in folder.glob("step-*.png"):
        match = _STEP_FILE.fullmatch(path.name)
        if match is None or (upto is not None and int(match.group(1)) > upto):
            continue
        try:
            with Image.open(path) as sheet:
                sheet = sheet.convert("RGB")
        except (OSError, UnidentifiedImageError):
            continue
        side = sheet.height
        count = max(1, sheet.width // side) if side else 1
        # A preview sheet is its prompts' images side by side (core/training.py).
        images = [sheet.crop((i * side, 0, (i + 1) * side, side)) for i in range(count)] if side else [sheet]
        found.append((int(match.group(1)), images))
    return sorted(found, key=lambda item: item[0])
