"""The files a training run keeps in its folder: checkpoints (vectors, Adam moments, step),
the per-step log and the clean-up of an earlier run. A mixin of the Trainer (core/training.py),
kept apart so the training loop reads on its own; and the events a run reports (TrainEvent)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lego_studio.core.errors import TrainingError
from lego_studio.core.paths import atomic_save, atomic_write_json, atomic_write_text
from lego_studio.core.train_config import CHECKPOINT_FORMAT, KEEP_CHECKPOINTS, lr_at

# ----------------------------------------------------------------------------------- events


@dataclass
class TrainEvent:
    """What the trainer reports. ``kind``: start | words (``message``: the subject words the run
    trains with, settled: after Colour and Shape from masks, before the first step) | step | preview |
    checkpoint | skipped | log | closest (the finished concept's closest words, core/separation.py) | done
    (the app adds ``plan``, how the run was set up, and ``estimate``, its expected duration)."""

    kind: str
    step: int = 0
    total: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    eta_s: float | None = None
    steps_per_s: float | None = None
    images: list = field(default_factory=list)
    message: str = ""
    path: str | None = None
    stage: int = 1
    words: list[str] = field(default_factory=list)  # "closest": the closest words, closest first
    trained_with: str = ""  # "closest": what the run added to the subject words from the masks ("" none)


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for step ``step``: independent streams per (seed, step)."""
    digest = hashlib.sha256(f"lego-studio:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RunFiles:
    """Checkpoints and the log of :class:`~lego_studio.core.training.Trainer` (uses its
    ``config``, ``run_dir``, ``concept_vectors`` and ``subject_vector``)."""

    # -- checkpoints and log

    def _save_checkpoint(self, step: int, optimizer, streak: int) -> Path:
        from safetensors.torch import save_file

        tensors = {"concept": self.concept_vectors.detach().float().cpu().contiguous()}
        if self.subject_vector is not None:
            tensors["subject"] = self.subject_vector.detach().float().cpu().contiguous()
        # The moments belong to the stage that continues from this step: at the end of stage 0 the
        # optimizer still holds the subject vector's, which stage 1 does not use.
        expected = self.subject_vector if step < self.config.subject_token_steps else self.concept_vectors
        if optimizer is not None and optimizer.param_groups[0]["params"][0] is expected:
            moments = optimizer.state.get(expected)
            if moments:
                tensors["adam.step"] = moments["step"].detach().cpu().reshape(()).clone()
                tensors["adam.exp_avg"] = moments["exp_avg"].detach().cpu().contiguous()
                tensors["adam.exp_avg_sq"] = moments["exp_avg_sq"].detach().cpu().contiguous()
        stage = 0 if step < self.config.subject_token_steps else 1
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "stage": stage,
            "total": self.config.total_steps,
            "nonfinite_streak": streak,
            "subject_words": self._training_subject(),  # with the masks' colour and the subject's name, if added
            "subject_name": self.subject_name,  # the word Shape from masks added (None: none)
            "lr_schedule": self.config.lr_schedule,
            "lr": lr_at(self.config, min(step, self.config.total_steps - 1) - (self.config.subject_token_steps if stage else 0),
                        self.config.steps if stage else self.config.subject_token_steps),
        }
        path = self.checkpoint_dir / f"{step_name(step)}.safetensors"
        atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"lego_studio": json.dumps(meta)}))
        atomic_write_json(path.with_suffix(".json"), meta)
        for old in self._checkpoint_files()[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        return path

    def _checkpoint_files(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.glob("step-*.safetensors") if re.fullmatch(r"step-\d{6,}", p.stem))

    def _latest_checkpoint(self) -> dict | None:
        from safetensors import safe_open

        for path in reversed(self._checkpoint_files()):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    meta = json.loads(handle.metadata()["lego_studio"])
                    tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            except Exception:  # noqa: BLE001 - a damaged checkpoint: fall back to the one before
                self._emit(TrainEvent("log", message=f"{path}: unreadable checkpoint skipped"))
                continue
            if meta.get("format") != CHECKPOINT_FORMAT:
                continue
            if tensors["concept"].shape[0] != self.config.num_vectors:
                raise TrainingError(f"{path}: checkpoint has {tensors['concept'].shape[0]} vectors, the config asks for {self.config.num_vectors}")
            return {"step": int(meta["step"]), "meta": meta, "tensors": tensors, "path": path}
        return None

    def _clear_previous_run(self) -> None:
        """A fresh run in a used folder: drop the old log, checkpoints and previews so they cannot
        be mistaken for this run's (the latent cache is keyed by content and stays)."""
        self.log_path.unlink(missing_ok=True)
        for path in self._checkpoint_files():
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
        if self.preview_dir.is_dir():
            for path in self.preview_dir.glob("step-*.png"):
                path.unlink(missing_ok=True)

    def _append_log(self, record: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def _truncate_log(self, step: int) -> None:
        """Drop log lines of steps after the checkpoint we resume from (they will be redone)."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():  # garbage lines dropped
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))

