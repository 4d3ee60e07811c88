"""The inversion engine: one trainer, two methods — Lego and the Textual Inversion baseline.

Notation (all losses live on the latent grid): cached VAE latent ``z0``, subject mask ``m`` at
latent size (1 = subject), timestep ``t``, noise ``eps``, ``z_t = add_noise(z0, eps, t)``, prompt
template ``T(.)``, concept tokens ``C``, subject phrase ``S`` (the subject words, or a subject token
learned in stage 0), random other subjects ``R``. ``U`` is the UNet, ``E`` the text encoder, ``sg``
stop-gradient, ``target`` is ``eps`` (or the velocity for v-prediction models).

* ``L_rec  = MSE(U(z_t, t, E(T(S C))), target)`` over the concept region ``1 - m`` when
  ``rec_region == "concept"`` and the image has a mask, else over the whole latent.
* ``L_subj = MSE(U(z_t, t, E(T(S C))), sg U(z_t, t, E(T(S))))`` over the subject region ``m``:
  inside the subject the concept may add nothing the subject words do not already say.
* ``L_ctx`` — formulation chosen: prediction deltas. The concept's *effect* on the prediction is
  ``delta_X = U(z_t, t, E(T(X C))) - U(z_t, t, E(T(X)))``. For a random subject ``R`` the effect is
  held to the exemplar's: ``L_ctx = MSE(U(.., T(R C)) - sg U(.., T(R)), sg delta_S)`` over the whole
  latent. Only ``U(.., T(R C))`` carries gradient, so the concept learns an effect that does not
  depend on which subject it is attached to.
* ``L_words`` — InfoNCE in the raw token-embedding space: each concept vector is pulled towards the
  positive words (mean of each word's token rows) and pushed from the negative words (the
  subject's appearance words by default, plus a few random vocabulary rows) with cosine
  similarity / temperature. Skipped (0) without positive words.

``L = L_rec + w_subj L_subj + w_ctx L_ctx + w_words L_words``; every term is reported each step.

Speed: by default the four predictions share one UNet call — the conditionings ``[SC; S; RC; R]``
are stacked into one batch with the latent repeated — so Lego costs one (larger) UNet forward and
backward per step instead of four calls. ``unet_batching="split"`` instead makes one call with
gradient ``[SC; RC]`` and one without ``[S; R]`` (less backward work); benchmarks/speed_lego_vs_ti.py
measures both against TI.

SDXL (two text encoders): each learned vector is one row of width ``d_l + d_g`` — its ``clip_l``
part spliced into ``text_encoder``, its ``clip_g`` part into ``text_encoder_2`` — so both parts are
learned together by one optimizer (Adam is element-wise: the same as two parameters). The
conditioning is both encoders' penultimate hidden states side by side, plus the pooled embedding
of ``text_encoder_2`` and the micro-conditioning time ids (original = target = training
resolution, no crop). :meth:`Trainer.encode` packs the pooled embedding as one extra row after the
77 token rows, so conditionings still stack and split along the batch; ``_unet`` unpacks it.

Only the N concept vectors (and, in stage 0, the subject vector) are trained. They are fp32
``nn.Parameter``s spliced into the text encoder's input embeddings by a forward hook on the token
embedding at the positions of their prompt slots (see core/prompts.py); the embedding table, the
tokenizer and every other weight are never written, so the model is bit-identical after training.

Reproducibility: every random choice of step ``s`` (images, flips, timesteps, noise, templates,
random subjects, random negative words) comes from a CPU ``torch.Generator`` seeded from
``(seed, s)``. A checkpoint holds the vectors, the Adam moments and the step, so a run resumed
from a checkpoint ends with exactly the vectors of an uninterrupted run.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lego_studio.core.errors import Cancelled, InputError, TrainingError
from lego_studio.core.losses import info_nce, pack_sdxl, region_mse, unpack_sdxl
from lego_studio.core.paths import atomic_save, atomic_write_json
from lego_studio.core.prompts import (
    appearance_words,
    fill_template,
    slots,
    split_fields,
    tokenize_segments,
    word_token_ids,
)
from lego_studio.core.run_files import RunFiles, TrainEvent, step_name, step_seed
from lego_studio.core.separation import training_subject_words
from lego_studio.core.subject_name import look_for_subject_name, marks_any, probe_steps_for
from lego_studio.core.train_config import RESUMABLE_CHANGES, TrainConfig, lr_at

# ----------------------------------------------------------------------------------- trainer


class Trainer(RunFiles):
    """Trains a concept on ``images`` (paths or PIL images) with optional ``masks`` (one per image:
    path, uint8 array, or None) into ``run_dir``. ``subject_images`` feed stage 0 (subject token).

    Controls, like :func:`~lego_studio.core.generation.generate`: ``cancel()`` -> True stops the run
    after the current step (a checkpoint is written, :class:`Cancelled` raised); ``paused()`` -> True
    holds it between steps; ``progress(step, total)`` is called after each step. ``on_event(TrainEvent)``
    streams everything else (losses, previews, checkpoints). All are called from the training
    thread. The methods ``cancel``/``pause``/``unpause`` do the same from any thread.

    The trainer owns the run's end state: it records the run as running in ``run.json`` when it
    starts and as finished, cancelled or failed (with the reason) when it stops (core/runs.py).
    """

    def __init__(self, model, config: TrainConfig, images, masks=None, run_dir=None, subject_images=None,
                 on_event: Callable | None = None, *, cancel: Callable[[], bool] | None = None,
                 paused: Callable[[], bool] | None = None, progress: Callable[[int, int], None] | None = None):
        if run_dir is None:
            raise InputError("a training run needs a run folder")
        self.model = model
        self.config = config
        self.images = list(images)
        self.masks = list(masks) if masks is not None else None
        self.run_dir = Path(run_dir)
        self.subject_images = list(subject_images) if subject_images else []
        self.on_event = on_event
        self._cancel_fn = cancel
        self._paused_fn = paused
        self._progress_fn = progress
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._splice = None  # (slot_mask, slot_index, table) during encode(); SDXL: {embedding: that}
        self._widths = None  # the text-encoder widths: [d] or SDXL's [d_l, d_g]
        self.concept_vectors = None
        self.subject_vector = None
        self.subject_words = None  # the subject words in the concept prompts (None: the config's as typed)
        self.subject_name = None  # the word Shape from masks put in them (None: none)
        # Settings the user chose (CLI flags, app form); an out-of-memory stop never suggests changing them.
        self.explicit_settings: set[str] = set()

    # -- control (thread-safe)

    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()  # a paused run must wake up to see the cancel

    def pause(self) -> None:
        self._running.clear()

    def unpause(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set() or bool(self._paused_fn and self._paused_fn())

    def _cancel_requested(self) -> bool:
        return self._cancel.is_set() or bool(self._cancel_fn and self._cancel_fn())

    # -- paths

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def preview_dir(self) -> Path:
        return self.run_dir / "previews"

    @property
    def concept_path(self) -> Path:
        return self.run_dir / "concept.safetensors"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    # -- one step outside a run (core/memory_trace.py runs the Trainer's own step this way)

    def prepare(self, exemplars, subject_set=None, start_vectors: str = "zeros") -> None:
        """Set up for :meth:`step_losses` as :meth:`run` does, but with ``exemplars`` (an
        ExemplarSet) given instead of read from the images; the run folder only gets cleared.
        ``start_vectors``: "zeros" (the memory trace: no table look-ups) or "run" (the init words,
        else the vocabulary mean, as a run starts; benchmarks/oracle_landscape.py)."""
        import torch

        self._prepare_model()
        width = self._table.shape[1]
        if start_vectors == "run":
            self._initial = self._initial_concept_vectors()
            self._initial_subject = self._initial_subject_vector() if self.config.subject_token_steps else None
        else:
            self._initial = torch.zeros(self.config.num_vectors, width)
            self._initial_subject = torch.zeros(1, width) if self.config.subject_token_steps else None
        self.exemplars = exemplars
        self.subject_set = subject_set
        self._start_or_resume(False, self.config.total_steps)

    def step_losses(self, generator) -> dict:
        """The loss terms of one concept step (stage 1) on a batch drawn with ``generator``:
        ``{"total": ..., "rec": ..., ...}``. Nothing is applied; the caller may call ``backward()``
        on the total."""
        return self._concept_loss(generator)

    # -- the run

    def run(self, resume: bool = False):
        """Train and return the :class:`~lego_studio.core.concepts.Concept`.

        ``resume=True`` continues from the newest checkpoint in ``run_dir`` (from scratch when there
        is none). Raises :class:`Cancelled` after writing a checkpoint when cancelled,
        :class:`TrainingError` after ``max_nonfinite_in_a_row`` non-finite steps. The end state
        (finished / cancelled / failed + reason) is written to the run record either way.
        """
        from lego_studio.core import runs

        with runs.hold_run(self.run_dir):  # one trainer per run folder; refuses naming the other one
            runs.begin_run(self.run_dir, self.config)
            try:
                concept = self._run(resume)
            except (Cancelled, KeyboardInterrupt) as exc:
                runs.record_end(self.run_dir, runs.RUN_CANCELLED, str(exc) or "cancelled (interrupted from the keyboard)")
                raise
            except BaseException as exc:
                runs.record_end(self.run_dir, runs.RUN_FAILED, exc)  # never raises over exc (a full disk)
                raise
            runs.end_run(self.run_dir, runs.RUN_FINISHED)
        return concept

    def _run(self, resume: bool):
        config = self.config.validate()
        model = self.model
        self._check_inputs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_or_check_config(resume)
        total = config.total_steps
        self._emit(TrainEvent("start", step=0, total=total, message=f"training {config.placeholder} with {config.method}"))

        from lego_studio.core.data import build_exemplars

        self._prepare_model()
        # Before the (slow) image encoding, so a bad --init-from or init word fails at once.
        self._initial = self._initial_concept_vectors()
        self._initial_subject = self._initial_subject_vector() if config.subject_token_steps else None
        if config.w_words and config.positive_words:
            for word in config.positive_words + config.effective_negative_words():
                self._word_embedding(word)

        resolution = int(config.resolution or model.family.resolution)
        cache = self.run_dir / "latents"
        masks = None if config.method == "ti" else self.masks
        self._emit(TrainEvent("log", total=total, message=f"encoding {len(self.images)} images at {resolution} px"))
        self.exemplars = build_exemplars(model, self.images, masks, resolution, cache)
        self.subject_set = (
            build_exemplars(model, self.subject_images, None, resolution, cache) if config.subject_token_steps else None
        )
        self.subject_words, added = training_subject_words(config, self.images, masks)
        if added:
            self._emit(TrainEvent("log", total=total, message=(
                f'subject words for training: "{self.subject_words}" ({added}, the colour your masks mark, added to '
                f'the words; Colour from masks off keeps your words as typed)')))
        checkpointing_before = bool(getattr(model.unet, "is_gradient_checkpointing", False))
        if config.gradient_checkpointing and not checkpointing_before:
            model.unet.enable_gradient_checkpointing()
        try:
            if (probe_steps_for(config, marks_any(masks))
                    and not (resume and self._latest_checkpoint() is not None)):  # a resumed run keeps its words
                look_for_subject_name(self, total, masks)  # with the run's memory settings
            return self._train(resume, total)
        finally:
            if config.gradient_checkpointing and not checkpointing_before:
                model.unet.disable_gradient_checkpointing()

    def _train(self, resume: bool, total: int):
        """The training loop: one step at a time until ``total``, with checkpoints and previews."""
        config = self.config
        start, optimizer, streak = self._start_or_resume(resume, total)
        self._emit(TrainEvent("words", step=start, total=total, message=self._training_subject()))  # settled
        rate = None
        step = start
        while step < total:
            self._wait_if_paused(step, total)
            if self._cancel_requested():
                path = self._save_checkpoint(step, optimizer, streak)
                self._emit(TrainEvent("checkpoint", step=step, total=total, path=str(path)))
                raise Cancelled(f"training cancelled at step {step} of {total}; resume continues from {path}")
            optimizer = self._optimizer_for_step(step, optimizer)
            out_of_memory = False
            try:
                report, finite, lr, stage, elapsed = self._step(step, optimizer)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
                from lego_studio.core.oom import is_out_of_memory

                if not is_out_of_memory(exc):
                    raise
                out_of_memory = True
            if out_of_memory:  # outside the except block, so the failed step's tensors can be freed
                self._out_of_memory(step, total, optimizer, streak)
            step += 1
            streak = 0 if finite else streak + 1
            if not finite:
                self._emit(TrainEvent("skipped", step=step, total=total, losses=report, lr=lr, stage=stage,
                                      message=f"step {step}: loss was not finite, step skipped"))
            rate = (1.0 / elapsed if rate is None else 0.8 * rate + 0.2 / elapsed) if elapsed > 0 else rate
            self._append_log({"step": step, "stage": stage, "losses": report, "lr": lr, "time": elapsed,
                              "skipped": not finite})
            eta = (total - step) / rate if rate else None
            self._emit(TrainEvent("step", step=step, total=total, losses=report, lr=lr, eta_s=eta, steps_per_s=rate, stage=stage))
            if self._progress_fn is not None:
                self._progress_fn(step, total)
            if streak >= config.max_nonfinite_in_a_row:
                raise TrainingError(
                    f"training stopped at step {step}: the loss was not finite for {streak} steps in a row "
                    f"(learning rate {config.lr:g} may be too high, or the model is broken)"
                )
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
                path = self._save_checkpoint(step, optimizer, streak)
                self._emit(TrainEvent("checkpoint", step=step, total=total, path=str(path)))
            if config.preview_every and stage == 1 and step % config.preview_every == 0:
                images, path = self._preview(step)
                self._emit(TrainEvent("preview", step=step, total=total, images=images, path=str(path)))
        return self._finish(total, optimizer, streak)

    def _start_or_resume(self, resume: bool, total: int):
        """Fresh vectors, or the newest checkpoint's vectors and Adam state: (start, optimizer, streak)."""
        import torch

        device = self.model.device
        state = self._latest_checkpoint() if resume else None
        self.concept_vectors = torch.nn.Parameter(self._initial.clone().to(device))
        if self.config.subject_token_steps:
            self.subject_vector = torch.nn.Parameter(self._initial_subject.clone().to(device))
        if state is None:
            self._clear_previous_run()
            return 0, None, 0
        start = state["step"]
        with torch.no_grad():
            self.concept_vectors.copy_(state["tensors"]["concept"].to(device))
            if self.subject_vector is not None:
                self.subject_vector.copy_(state["tensors"]["subject"].to(device))
        streak = int(state["meta"].get("nonfinite_streak", 0))
        # A checkpoint from before Colour from masks has no words: that version trained with them as typed.
        started_with = state["meta"].get("subject_words", self.config.subject.strip())
        if self.subject_words is not None and started_with != self.subject_words:
            # The masks changed since the run started: it goes on with the words it started with.
            # (and a run that found the subject's name keeps it without probing again).
            self.subject_words = started_with
            self._emit(TrainEvent("log", step=start, total=total,
                                  message=f'resumed with the subject words the run started with: "{started_with}"'))
        self.subject_name = state["meta"].get("subject_name")
        optimizer = self._optimizer_for(start)
        self._restore_moments(optimizer, state["tensors"])
        self._truncate_log(start)
        self._emit(TrainEvent("log", step=start, total=total, message=f"resumed from {step_name(start)}"))
        return start, optimizer, streak

    def _optimizer_for_step(self, step: int, optimizer):
        """The optimizer of the step's stage (a new one when stage 1 begins)."""
        config = self.config
        stage = 0 if step < config.subject_token_steps else 1
        if optimizer is None or (stage == 1 and step == config.subject_token_steps
                                 and optimizer.param_groups[0]["params"][0] is not self.concept_vectors):
            optimizer = self._optimizer_for(step)
        return optimizer

    def _step(self, step: int, optimizer):
        """One optimisation step: (loss report, finite, lr, stage, seconds)."""
        import torch

        config = self.config
        stage = 0 if step < config.subject_token_steps else 1
        stage_step = step if stage == 0 else step - config.subject_token_steps
        stage_steps = config.subject_token_steps if stage == 0 else config.steps
        lr = lr_at(config, stage_step, stage_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(step_seed(config.seed, step))
        optimizer.zero_grad(set_to_none=True)
        losses = self._subject_token_loss(generator) if stage == 0 else self._concept_loss(generator)
        loss = losses.pop("total")
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            finite = all(bool(torch.isfinite(g).all()) for g in grads)
        report = {"total": float(loss.detach())}
        report.update({k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in losses.items()})
        if finite:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
        return report, finite, lr, stage, time.perf_counter() - started

    def _finish(self, total: int, optimizer, streak: int):
        """Final checkpoint and concept file."""
        path = self._save_checkpoint(total, optimizer, streak)
        self._emit(TrainEvent("checkpoint", step=total, total=total, path=str(path)))
        concept = self.concept()
        from lego_studio.core.concepts import closest_words, save_concept
        from lego_studio.core.separation import closest_words_note

        try:
            words = closest_words(concept.vectors, self.model.tokenizer, self._split_widths(self._table)[0])
        except Exception as exc:  # noqa: BLE001 - a tokenizer it cannot read must not cost the trained concept
            words = []
            self._emit(TrainEvent("log", step=total, total=total, message=f"closest words not found: {exc}"))
        concept.metadata["closest_words"] = words
        save_concept(concept, self.concept_path)
        if words:
            from lego_studio.core.separation import trained_with_line

            self._emit(TrainEvent("closest", step=total, total=total, message=closest_words_note(words, self.config.method),
                                  words=list(words), trained_with=trained_with_line(concept.metadata)))
        self._emit(TrainEvent("done", step=total, total=total, path=str(self.concept_path)))
        return concept

    def _out_of_memory(self, step: int, total: int, optimizer, streak: int, save: bool = True):
        """Save what the run has (the failed step changed nothing; ``save`` False: nothing to save,
        as in Shape from masks' probe), note the setting that would fit next to the run, and stop
        with one line naming it."""
        import gc

        import torch

        from lego_studio.core.errors import OutOfMemory
        from lego_studio.core.oom import oom_advice, write_oom_hint

        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.model.device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()
        if save:
            path = self._save_checkpoint(step, optimizer, streak)
            self._emit(TrainEvent("checkpoint", step=step, total=total, path=str(path)))
        line, changed = oom_advice(self.config, step, self.model.device.type, self.explicit_settings)
        write_oom_hint(self.run_dir, step, changed, line)
        raise OutOfMemory(line, changed)

    def concept(self):
        """The concept as trained so far (CPU float32 vectors, metadata filled in)."""
        from lego_studio.core.concepts import Concept

        config = self.config
        family = self.model.family
        metadata = {
            "method": config.method,
            "config": config.to_dict(),
            "steps": config.steps,
            "family": family.name,
            "text_width": int((self._widths or [self._table.shape[1]])[0]),
            "subject": config.subject,
            "training_subject": self._training_subject(),
            "subject_name": self.subject_name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_model": str(self.model.source),
        }
        parts = self._split_widths(self.concept_vectors.detach().float().cpu().clone())
        if len(parts) == 2:
            metadata["text_width_2"] = int(self._widths[1])
        return Concept(name=config.name, placeholder=config.placeholder, vectors=parts[0], metadata=metadata,
                       vectors_2=parts[1] if len(parts) == 2 else None)

    # -- inputs, config, model

    def _check_inputs(self) -> None:
        config = self.config
        if not self.images:
            raise InputError("no training images given")
        if self.masks is not None and len(self.masks) != len(self.images):
            raise InputError(f"got {len(self.masks)} masks for {len(self.images)} images; give one per image (or None)")
        if config.subject_token_steps and not self.subject_images:
            raise InputError("subject_token_steps > 0 needs subject-only images (--subject-images)")

    def _write_or_check_config(self, resume: bool) -> None:
        path = self.run_dir / "config.json"
        if resume and path.exists():
            previous = TrainConfig.load(path).to_dict()
            current = self.config.to_dict()
            changed = sorted(k for k in current if current[k] != previous.get(k) and k not in RESUMABLE_CHANGES)
            if changed:
                raise TrainingError(
                    f"{path}: cannot resume, the run was trained with a different {changed[0]} "
                    f"({previous.get(changed[0])!r}, now {current[changed[0]]!r})"
                )
        atomic_write_json(path, self.config.to_dict())

    def _prepare_model(self) -> None:
        """Freeze the model and read the token-embedding table the learned rows live beside."""
        self._freeze_model()
        self._table = self._embedding_table()
        self._vocab_limit = self._regular_vocab_limit()

    def _freeze_model(self) -> None:
        for module in self.model.modules:
            module.requires_grad_(False)
            module.eval()

    def _embedding_table(self):
        """The token-embedding table the learned rows live beside: SDXL's two tables side by side
        ``[V, d_l + d_g]`` (self._widths says where they split)."""
        import torch

        tables = [encoder.get_input_embeddings().weight.detach() for _, encoder in self.model.text_encoders]
        self._widths = [int(t.shape[1]) for t in tables]
        if len(tables) == 1:
            return tables[0]
        if len({t.shape[0] for t in tables}) != 1:
            raise TrainingError(f"the two text encoders have different vocabularies ({tables[0].shape[0]} and "
                                f"{tables[1].shape[0]} tokens)")
        return torch.cat([t.to(tables[0].dtype) for t in tables], dim=1)

    def _split_widths(self, rows):
        """Rows of the joint width split per text encoder (one part for one encoder)."""
        return list(rows.split(self._widths or [int(rows.shape[-1])], dim=-1))

    def _regular_vocab_limit(self) -> int:
        """Ids below this are ordinary BPE tokens (CLIP puts its special tokens last)."""
        tokenizer = self.model.tokenizer
        specials = [i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None]
        limit = min(specials + [self._table.shape[0]])
        return int(limit)

    def _word_embedding(self, word: str):
        ids = word_token_ids(self.model.tokenizer, word)
        if max(ids) >= self._table.shape[0]:
            raise InputError(f"word {word!r} is not in the model's vocabulary")
        return self._table[ids].float().mean(dim=0)

    def _vocab_mean(self):
        import torch

        parts = []
        for rows in self._split_widths(self._table[: self._vocab_limit].float()):
            mean = rows.mean(dim=0)
            # The plain mean of thousands of embeddings is much shorter than any real token; scale
            # it to the average row norm so the vector starts where token embeddings live (per
            # text encoder for SDXL).
            parts.append(mean / mean.norm().clamp_min(1e-12) * rows.norm(dim=1).mean())
        return torch.cat(parts)

    def _initial_concept_vectors(self):
        import torch

        config = self.config
        n = config.num_vectors
        if config.init_from:
            from lego_studio.core.concepts import load_concept

            source = load_concept(config.init_from)
            widths = tuple(self._widths or [int(self._table.shape[1])])
            if tuple(source.widths) != widths:
                have = " + ".join(map(str, source.widths))
                want = " + ".join(map(str, widths))
                raise InputError(
                    f"{config.init_from}: concept has width {have} but the model's text encoder has width {want}"
                )
            rows = source.joined_vectors.float()
        elif config.init_words:
            tokenizer = self.model.tokenizer
            ids = [i for word in config.init_words for i in word_token_ids(tokenizer, word)]
            if max(ids) >= self._table.shape[0]:
                raise InputError(f"init words {config.init_words!r} are not in the model's vocabulary")
            rows = self._table[ids].float()
        else:
            rows = self._vocab_mean()[None]
        index = torch.arange(n) % rows.shape[0]
        return rows[index].detach().clone().cpu()

    def _initial_subject_vector(self):
        words = appearance_words(self.config.subject)
        if words:
            import torch

            return torch.stack([self._word_embedding(w) for w in words]).mean(dim=0, keepdim=True).cpu()
        return self._vocab_mean()[None].cpu()

    def _optimizer_for(self, step: int):
        import torch

        # No weight decay: it would shrink the vectors below the norm of real token embeddings,
        # where the text encoder has never seen inputs.
        if step < self.config.subject_token_steps:
            params = [self.subject_vector]
        else:
            params = [self.concept_vectors]
            if self.subject_vector is not None:
                self.subject_vector.requires_grad_(False)  # frozen in stage 1: no gradient to keep
        return torch.optim.AdamW(params, lr=self.config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    @staticmethod
    def _restore_moments(optimizer, tensors: dict) -> None:
        """Put a checkpoint's Adam moments back on the optimizer's parameters (see _save_checkpoint)."""
        if "adam.exp_avg" in tensors:
            param = optimizer.param_groups[0]["params"][0]
            optimizer.state[param] = {
                "step": tensors["adam.step"].clone(),
                "exp_avg": tensors["adam.exp_avg"].to(param.device).clone(),
                "exp_avg_sq": tensors["adam.exp_avg_sq"].to(param.device).clone(),
            }

    # -- prompt encoding with learned vectors

    def _splice_hook(self, module, inputs, output):
        if self._splice is None:
            return output
        import torch

        slot_mask, slot_index, table = self._splice[module] if isinstance(self._splice, dict) else self._splice
        replacement = table[slot_index].to(output.dtype)
        return torch.where(slot_mask[..., None], replacement, output)

    def _vector_table(self, grad: bool = True):
        import torch

        table = self.concept_vectors if self.subject_vector is None else torch.cat([self.concept_vectors, self.subject_vector], dim=0)
        return table if grad else table.detach()

    def encode(self, prompts: list[list], grad: bool = True):
        """Text-encoder hidden states [B, 77, d] for segment-list prompts (see core/prompts.py)."""
        import torch

        model = self.model
        if model.is_sdxl:
            return self._encode_sdxl(prompts, grad)
        tokens = tokenize_segments(model.tokenizer, prompts)
        device = model.device
        table = self._vector_table(grad)
        self._splice = (tokens.slot_mask.to(device), tokens.slot_index.to(device), table)
        # The hook lives only for this call: outside it the text encoder is untouched.
        hook = model.text_encoder.get_input_embeddings().register_forward_hook(self._splice_hook)
        try:
            # Same call as SDModel.encode_prompts, so training sees what generation will see.
            attention_mask = None
            if getattr(model.text_encoder.config, "use_attention_mask", False):
                attention_mask = tokens.attention_mask.to(device)
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                return model.text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
        finally:
            hook.remove()
            self._splice = None

    def _encode_sdxl(self, prompts: list[list], grad: bool):
        """SDXL conditioning for segment-list prompts, packed ``[B, 78, d_l + d_g]``: rows 0-76 the
        two encoders' penultimate hidden states side by side (as ``encode_prompt``), row 77 the
        pooled embedding (zero-padded to the width); see :func:`unpack_sdxl`."""
        import torch

        model = self.model
        device = model.device
        tables = self._split_widths(self._vector_table(grad))
        splice, hooks, hidden, pooled = {}, [], [], None
        for (tokenizer, encoder), table in zip(model.text_encoders, tables):
            tokens = tokenize_segments(tokenizer, prompts)
            embedding = encoder.get_input_embeddings()
            splice[embedding] = (tokens.slot_mask.to(device), tokens.slot_index.to(device), table)
            hooks.append((encoder, tokens, embedding.register_forward_hook(self._splice_hook)))
        self._splice = splice
        try:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                for encoder, tokens, _ in hooks:
                    output = encoder(tokens.input_ids.to(device), output_hidden_states=True)
                    if output[0].ndim == 2:
                        pooled = output[0]
                    hidden.append(output.hidden_states[-2])
                return pack_sdxl(torch.cat(hidden, dim=-1), pooled)
        finally:
            for _, _, hook in hooks:
                hook.remove()
            self._splice = None

    def _concept_slots(self):
        return slots(self.config.num_vectors)

    def _subject_phrase(self) -> list:
        if not self.config.subject_in_prompt:
            return []
        if self.subject_vector is not None:
            return slots(1, start=self.config.num_vectors)
        return [self._training_subject()]

    def _training_subject(self) -> str:
        return self.subject_words if self.subject_words is not None else self.config.subject.strip()

    def _negative_words(self) -> list[str]:
        if self.config.negative_words is not None:
            return list(self.config.negative_words)
        return appearance_words(self._training_subject())

    # -- one step

    def _noisy_batch(self, exemplars, generator):
        """Pick images, flips, timesteps and noise for one step (all from ``generator``)."""
        import torch

        config = self.config
        scheduler = self.model.noise_scheduler
        b = config.batch_size
        index = torch.randint(len(exemplars), (b,), generator=generator)
        flips = torch.randint(2, (b,), generator=generator) if config.flip else torch.zeros(b, dtype=torch.long)
        z0 = exemplars.latents[index, flips]
        mask = exemplars.masks[index, flips]
        t = self._timesteps(int(scheduler.config.num_train_timesteps), b, generator)
        noise = torch.randn(z0.shape, generator=generator)
        device = self.model.device
        z0, noise, t, mask = z0.to(device), noise.to(device), t.to(device), mask.to(device)
        z_t = scheduler.add_noise(z0, noise, t)
        if self.model.family.prediction_type == "v_prediction":
            target = scheduler.get_velocity(z0, noise, t)
        else:
            target = noise
        # On the CPU: whether the batch has a mask decides which terms run, and reading it from the
        # device would wait for the GPU (and cannot be read at all when memory_trace runs on meta).
        has_mask = torch.tensor([exemplars.has_mask[i] for i in index.tolist()])
        sizes = exemplars.sizes[index, flips] if exemplars.sizes is not None else None
        return z_t, t, target, mask, has_mask, sizes

    def _timesteps(self, steps: int, b: int, generator):
        """``b`` noise levels in [0, steps): uniform, or with ``timestep_focus`` a > 0 drawn with
        density 1 - a·cos(pi·t/steps), more of them at high noise (ReVersion's relation-focal
        sampling; see docs/METHOD.md for what it did on Shape World)."""
        import torch

        focus = float(self.config.timestep_focus)
        if focus <= 0:
            return torch.randint(steps, (b,), generator=generator)
        key, weights = getattr(self, "_timestep_weights", (None, None))
        if key != (steps, focus):  # made once per run, not at every step
            weights = 1.0 - focus * torch.cos(torch.pi * torch.arange(steps, dtype=torch.float64) / steps)
            self._timestep_weights = ((steps, focus), weights)
        return torch.multinomial(weights, b, replacement=True, generator=generator)

    def _unet(self, z_t, t, conditioning, copies: int, sizes=None):
        """The UNet's prediction for ``copies`` conditionings of the batch. SDXL: ``sizes`` [B, 4]
        are the images' original size and crop (ExemplarSet.sizes), its micro-conditioning."""
        import torch

        model = self.model
        sample = z_t.repeat(copies, 1, 1, 1).to(model.dtype)
        if model.is_sdxl:
            hidden, pooled = unpack_sdxl(conditioning, model)
            h, w = (int(side) * model.vae_scale_factor for side in z_t.shape[-2:])
            time_ids = model.sdxl_time_ids(h, w, z_t.shape[0])
            if sizes is not None:
                time_ids = torch.cat([sizes.float(), time_ids[:, 4:]], dim=1)
            added = {"text_embeds": pooled.to(model.dtype),
                     "time_ids": time_ids.repeat(copies, 1).to(model.device, model.dtype)}
            return model.unet(sample, t.repeat(copies), encoder_hidden_states=hidden.to(model.dtype),
                              added_cond_kwargs=added).sample.float()
        return model.unet(sample, t.repeat(copies), encoder_hidden_states=conditioning.to(model.dtype)).sample.float()

    def _subject_token_loss(self, generator) -> dict:
        """Stage 0: plain textual inversion of the subject token on the subject-only images."""
        import torch

        z_t, t, target, _, _, sizes = self._noisy_batch(self.subject_set, generator)
        picks = torch.randint(len(self.config.templates), (z_t.shape[0],), generator=generator).tolist()
        prompts = [fill_template(self.config.templates[i], slots(1, start=self.config.num_vectors)) for i in picks]
        prediction = self._unet(z_t, t, self.encode(prompts), 1, sizes)
        rec = region_mse(prediction, target)
        zero = rec.detach() * 0.0
        return {"total": rec, "rec": rec, "subj": zero, "ctx": zero, "words": zero}

    def _concept_loss(self, generator) -> dict:
        import torch

        config = self.config
        z_t, t, target, mask, has_mask, sizes = self._noisy_batch(self.exemplars, generator)
        b = z_t.shape[0]
        picks = torch.randint(len(config.templates), (b,), generator=generator).tolist()
        templates = [config.templates[i] for i in picks]
        concept = self._concept_slots()
        lego = config.method == "lego"
        masked = lego and bool(has_mask.any())
        # The subject region per sample (all zero for an image without a mask).
        subject_region = mask * has_mask.to(mask.device).float().view(-1, 1, 1, 1)
        use_subj = masked and config.w_subj > 0
        use_ctx = lego and config.w_ctx > 0
        if use_ctx:
            chosen = torch.randint(len(config.context_subjects), (b,), generator=generator).tolist()
            others = [config.context_subjects[i] for i in chosen]
        subject = self._subject_phrase() if lego else []
        with_concept = [fill_template(tp, subject + concept) for tp in templates]

        # Conditionings with gradient (prompts holding the concept) and without.
        grad_parts = {"SC": self.encode(with_concept)}
        if use_ctx:
            grad_parts["RC"] = self.encode([fill_template(tp, [other] + concept) for tp, other in zip(templates, others)])
        plain_parts = {}
        with torch.no_grad():
            if use_subj or use_ctx:
                plain_parts["S"] = self.encode([fill_template(tp, subject) for tp in templates], grad=False)
            if use_ctx:
                plain_parts["R"] = self.encode([fill_template(tp, [other]) for tp, other in zip(templates, others)], grad=False)
        predictions = self._predict(z_t, t, grad_parts, plain_parts, sizes)
        pred_sc = predictions["SC"]

        # L_rec: the subject region counts concept_inside_weight (rec_region "concept" = 0).
        inside = 0.0 if config.rec_region == "concept" else config.concept_inside_weight
        if masked and inside < 1.0:
            rec = region_mse(pred_sc, target, 1.0 - (1.0 - inside) * subject_region)
        else:
            rec = region_mse(pred_sc, target)
        zero = rec.detach() * 0.0
        subj = ctx = words = zero
        if use_subj:
            subj = region_mse(pred_sc, predictions["S"], subject_region)
        if use_ctx:
            # With words that leave part of the subject unexplained, delta_S inside the mask holds
            # that unexplained appearance, which no other subject can copy: measured there, the
            # cheapest way to meet the term is a concept with no effect at all (docs/METHOD.md).
            delta_s = pred_sc.detach() - predictions["S"]
            region = 1.0 - subject_region if config.ctx_region == "outside" and masked else None
            ctx = region_mse(predictions["RC"] - predictions["R"], delta_s, region)
        if lego and config.w_words > 0 and config.positive_words:
            words = self._words_loss(generator)
        total = rec + config.w_subj * subj + config.w_ctx * ctx + config.w_words * words
        return {"total": total, "rec": rec, "subj": subj, "ctx": ctx, "words": words}

    def _predict(self, z_t, t, grad_parts: dict, plain_parts: dict, sizes=None) -> dict:
        """UNet predictions for every named conditioning, all on the same noisy latents.

        "stacked" makes one UNet call over every conditioning; "split" one call with gradient and
        one without (less backward work, one more call)."""
        import torch

        b = z_t.shape[0]
        names = list(grad_parts) + list(plain_parts)
        if self.config.unet_batching == "split" or not plain_parts:
            outputs = list(self._unet(z_t, t, torch.cat(list(grad_parts.values())), len(grad_parts), sizes).split(b))
            if plain_parts:
                with torch.no_grad():
                    outputs += list(self._unet(z_t, t, torch.cat(list(plain_parts.values())), len(plain_parts), sizes).split(b))
        else:
            stacked = torch.cat(list(grad_parts.values()) + list(plain_parts.values()))
            outputs = list(self._unet(z_t, t, stacked, len(names), sizes).split(b))
        predictions = dict(zip(names, outputs))
        for name in plain_parts:
            predictions[name] = predictions[name].detach()
        return predictions

    def _words_loss(self, generator):
        import torch

        config = self.config
        positives = torch.stack([self._word_embedding(w) for w in config.positive_words])
        negatives = [self._word_embedding(w) for w in self._negative_words()]
        if config.random_negatives:
            ids = torch.randint(self._vocab_limit, (config.random_negatives,), generator=generator)
            negatives += list(self._table[ids.to(self._table.device)].float())
        negatives = torch.stack(negatives) if negatives else None
        return info_nce(self.concept_vectors, positives.to(self.concept_vectors.device),
                        None if negatives is None else negatives.to(self.concept_vectors.device),
                        config.words_temperature)

    # -- previews

    def preview_prompt_segments(self) -> list[list]:
        fields = {"concept": self._concept_slots(), "subject": self._subject_phrase() if self._training_subject() or self.subject_vector is not None else []}
        return [split_fields(p, fields) for p in self.config.effective_preview_prompts()]

    def _preview(self, step: int):
        import torch
        from PIL import Image

        config = self.config
        model = self.model
        resolution = int(config.resolution or model.family.resolution)
        with torch.no_grad():
            prompts = self.preview_prompt_segments()
            cond = self.encode(prompts, grad=False).to(model.dtype)
            uncond = self.encode([[]] * len(prompts), grad=False).to(model.dtype)
            pipe = model.pipeline("ddim")
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator(device="cpu").manual_seed(config.seed)
            extra = {}
            if model.is_sdxl:
                cond, pooled = unpack_sdxl(cond, model)
                uncond, uncond_pooled = unpack_sdxl(uncond, model)
                extra = {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": uncond_pooled}
            images = pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond,
                **extra,
                num_inference_steps=config.preview_steps,
                guidance_scale=7.5,
                height=resolution,
                width=resolution,
                generator=generator,
                output_type="pil",
            ).images
        sheet = Image.new("RGB", (resolution * len(images), resolution))
        for i, image in enumerate(images):
            sheet.paste(image, (i * resolution, 0))
        path = self.preview_dir / f"{step_name(step)}.png"
        atomic_save(path, lambda tmp: sheet.save(tmp, format="PNG"))
        return list(images), path

    # -- events

    def _emit(self, event: TrainEvent) -> None:
        if event.total == 0:
            event.total = self.config.total_steps
        if self.on_event is not None:
            self.on_event(event)

    def _wait_if_paused(self, step: int, total: int) -> None:
        if not self.paused:
            return
        self._emit(TrainEvent("log", step=step, total=total, message="paused"))
        while self.paused and not self._cancel_requested():
            self._running.wait(timeout=0.05)  # wakes at once on unpause(); polls paused()
            if self._running.is_set() and self.paused:
                time.sleep(0.05)
        if not self._cancel_requested():
            self._emit(TrainEvent("log", step=step, total=total, message="resumed"))
