"""The inversion engine: config, losses, data, and training runs on the tiny model."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from lego_studio.core.errors import Cancelled, InputError, TrainingError
from lego_studio.core.prompts import Slot, appearance_words, fill_template, slots, split_fields, tokenize_segments
from lego_studio.core.losses import info_nce, region_mse
from lego_studio.core.run_files import TrainEvent
from lego_studio.core.train_config import TrainConfig, lr_at
from lego_studio.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def exemplar_files(tmp_path_factory, make_exemplars):
    """Three 40x48 images with a square subject, and their masks (255 = subject)."""
    return make_exemplars(tmp_path_factory.mktemp("exemplars"), n=3, size=(40, 48), box=(10, 30, 12, 32))


def small(method="lego", **overrides):
    values = dict(steps=4, subject="a red square", checkpoint_every=2, seed=3)
    if method == "lego":
        # Every term on (the masked ones are off in the preset), so each one is exercised.
        values.update(num_vectors=2, positive_words=["frozen", "ice"], w_subj=1.0, rec_region="concept")
    values.update(overrides)
    return TrainConfig.preset(method, **values)


def train(model, config, files, run_dir, resume=False, on_event=None, masks=True):
    images, mask_files = files
    trainer = Trainer(model, config, images, mask_files if masks else None, run_dir, on_event=on_event)
    return trainer, trainer.run(resume=resume)


@pytest.fixture(scope="module")
def reference_run(tiny_model, exemplar_files, tmp_path_factory):
    """One uninterrupted Lego run (all terms on), shared by the reproducibility tests."""
    run_dir = tmp_path_factory.mktemp("reference")
    before = {k: v.clone() for k, v in _all_weights(tiny_model).items()}
    events: list[TrainEvent] = []
    config = small(preview_every=4, preview_steps=2)
    trainer, concept = train(tiny_model, config, exemplar_files, run_dir, on_event=events.append)
    return {"run_dir": run_dir, "concept": concept, "events": events, "before": before, "config": config}


def _all_weights(model) -> dict:
    weights = {}
    for part in ("text_encoder", "unet", "vae"):
        for key, value in getattr(model, part).state_dict().items():
            weights[f"{part}.{key}"] = value
    return weights


# ------------------------------------------------------------------------------ config


def test_config_json_round_trip_and_presets(tmp_path):
    config = TrainConfig.preset("lego", subject="a toy robot", num_vectors=3, positive_words=["melting"], lr_schedule="cosine")
    path = config.save(tmp_path / "c.json")
    again = TrainConfig.load(path)
    assert again == config
    assert again.placeholder == "<concept>"

    ti = TrainConfig.preset("ti", subject="a toy robot")
    assert (ti.num_vectors, ti.w_subj, ti.w_ctx, ti.w_words, ti.rec_region) == (1, 0.0, 0.0, 0.0, "full")
    assert TrainConfig.preset("lego", subject="x", name="Frozen in ice").placeholder == "<frozen-in-ice>"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"num_vectors": 17}, "num_vectors"),
        ({"num_vectors": 0}, "num_vectors"),
        ({"lr": -1.0}, "lr"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"templates": ["a photo of"]}, "exactly one"),
        ({"rec_region": "subject"}, "rec_region"),
        ({"w_ctx": -0.5}, "w_ctx"),
        ({"resolution": 30}, "resolution"),
        ({"batch_size": True}, "batch_size"),
    ],
)
def test_config_rejects_bad_values_in_one_line(overrides, fragment):
    values = {"subject": "a toy robot", **overrides}
    with pytest.raises(InputError) as info:
        TrainConfig.preset("lego", **values)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_config_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json: not valid JSON"):
        TrainConfig.load(broken)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"method": "ti", "stepz": 3}))
    with pytest.raises(InputError, match="unknown.json: unknown setting 'stepz'"):
        TrainConfig.load(unknown)
    with pytest.raises(InputError, match="no Lego terms"):
        TrainConfig.preset("ti", w_ctx=1.0)


def test_lr_schedules():
    config = TrainConfig.preset("ti", lr=1.0, warmup_steps=2, lr_schedule="cosine")
    assert lr_at(config, 0, 10) == pytest.approx(0.5)
    assert lr_at(config, 1, 10) == pytest.approx(1.0)
    assert lr_at(config, 2, 10) == pytest.approx(1.0)
    assert lr_at(config, 6, 10) == pytest.approx(0.5)
    linear = TrainConfig.preset("ti", lr=1.0, lr_schedule="linear")
    assert lr_at(linear, 5, 10) == pytest.approx(0.5)
    assert lr_at(TrainConfig.preset("ti", lr=2.0), 9, 10) == 2.0


# ------------------------------------------------------------------------------ losses


def test_region_mse_only_counts_the_region():
    prediction = torch.zeros(2, 4, 8, 8)
    target = torch.zeros(2, 4, 8, 8)
    region = torch.zeros(2, 1, 8, 8)
    region[:, :, :, :4] = 1.0
    target[:, :, :, 4:] = 100.0  # errors only outside the region
    assert region_mse(prediction, target, region).item() == 0.0
    assert region_mse(prediction, target).item() == pytest.approx(5000.0)
    target[:, :, :, :4] = 2.0
    assert region_mse(prediction, target, region).item() == pytest.approx(4.0)
    assert region_mse(prediction, target, torch.zeros_like(region)).item() == 0.0


def test_info_nce_prefers_vectors_near_positive_words():
    torch.manual_seed(0)
    positives = torch.randn(2, 16)
    negatives = torch.randn(5, 16)
    near = positives.mean(0, keepdim=True) + 0.01 * torch.randn(1, 16)
    far = negatives[:1] + 0.01 * torch.randn(1, 16)
    assert info_nce(near, positives, negatives, 0.07) < info_nce(far, positives, negatives, 0.07)
    vectors = torch.randn(3, 16, requires_grad=True)
    info_nce(vectors, positives, negatives, 0.07).backward()
    assert vectors.grad is not None and torch.isfinite(vectors.grad).all()


# ------------------------------------------------------------------------------ prompts


def test_prompt_segments_tokenise_like_plain_text(tiny_model):
    tokenizer = tiny_model.tokenizer
    tokens = tokenize_segments(tokenizer, [fill_template("a photo of {}", ["a red square"])])
    plain = tokenizer("a photo of a red square", padding="max_length", max_length=77)["input_ids"]
    assert tokens.input_ids[0].tolist() == plain
    with_slots = tokenize_segments(tokenizer, [fill_template("a photo of {}", ["a cat"] + slots(2))])
    assert with_slots.slot_mask[0].nonzero().flatten().tolist() == [6, 7]
    assert with_slots.slot_index[0, 6:8].tolist() == [0, 1]
    assert split_fields("{subject} is {concept}", {"subject": ["a dog"], "concept": [Slot(0)]}) == ["a dog", "is", Slot(0)]
    assert appearance_words("a red square") == ["red", "square"]


def test_ti_prompts_hold_the_placeholder_alone_and_lego_adds_subjects(tiny_model, exemplar_files, tmp_path):
    seen = {}
    for method in ("ti", "lego"):
        trainer = Trainer(tiny_model, small(method, context_subjects=["a blue teapot"]), *exemplar_files, tmp_path / method)
        prompts = []
        original = trainer.encode

        def spy(segments, grad=True, original=original, prompts=prompts, **kwargs):
            prompts.extend(segments)
            return original(segments, grad, **kwargs)

        trainer.encode = spy
        trainer.run()
        seen[method] = prompts
    ti_texts = {" ".join(s for s in p if isinstance(s, str)) for p in seen["ti"]}
    assert all("red square" not in t for t in ti_texts)
    assert all(sum(isinstance(s, Slot) for s in p) == 1 for p in seen["ti"])
    lego_texts = [" ".join(s for s in p if isinstance(s, str)) for p in seen["lego"]]
    assert any("a red square" in t for t in lego_texts)
    assert any("a blue teapot" in t for t in lego_texts)  # context subject with and without the concept
    assert any(isinstance(p[-1], Slot) and "a red square" in " ".join(s for s in p if isinstance(s, str)) for p in seen["lego"])


# ------------------------------------------------------------------------------ data


def test_exemplars_cache_latents_and_align_masks(tiny_model, tmp_path, monkeypatch):
    import lego_studio.core.data as data

    image = Image.new("RGB", (64, 32), (255, 255, 255))
    mask = np.zeros((32, 64), np.uint8)
    mask[:, 16:32] = 255  # left half of the centred 32x32 crop
    image_path = tmp_path / "a.png"
    image.save(image_path)
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    cache = tmp_path / "cache"
    exemplars = data.build_exemplars(tiny_model, [image_path], [tmp_path / "a_mask.png"], 32, cache)
    assert exemplars.latents.shape == (1, 2, 4, 16, 16)
    subject = exemplars.masks[0, 0, 0]
    assert subject[:, :8].min() == 1.0 and subject[:, 8:].max() == 0.0
    assert torch.equal(exemplars.masks[0, 1, 0], torch.flip(subject, dims=[-1]))
    assert len(list(cache.glob("*.safetensors"))) == 1

    calls = []
    monkeypatch.setattr(data, "encode_images", lambda *a: calls.append(1) or pytest.fail("re-encoded"))
    again = data.build_exemplars(tiny_model, [image_path], [tmp_path / "a_mask.png"], 32, cache)
    assert torch.equal(again.latents, exemplars.latents) and not calls


def test_exemplar_input_errors_name_the_file(tiny_model, tmp_path):
    from lego_studio.core.data import build_exemplars

    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    Image.new("L", (20, 20)).save(tmp_path / "small_mask.png")
    with pytest.raises(InputError, match="small_mask.png: mask is 20x20 but its image is 40x40"):
        build_exemplars(tiny_model, [tmp_path / "a.png"], [tmp_path / "small_mask.png"], 32)
    Image.new("L", (40, 40), 255).save(tmp_path / "full_mask.png")
    with pytest.raises(InputError, match="full_mask.png: mask marks the whole image"):
        build_exemplars(tiny_model, [tmp_path / "a.png"], [tmp_path / "full_mask.png"], 32)
    with pytest.raises(InputError, match="2 masks for 1 images"):
        build_exemplars(tiny_model, [tmp_path / "a.png"], [None, None], 32)


# ------------------------------------------------------------------------------ training runs


def test_training_changes_only_the_concept_vectors_and_writes_the_run(tiny_model, reference_run):
    after = _all_weights(tiny_model)
    before = reference_run["before"]
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []  # every weight, the whole embedding table included, is bit-identical
    assert all(not p.requires_grad for p in tiny_model.text_encoder.parameters())

    concept = reference_run["concept"]
    config = reference_run["config"]
    assert concept.vectors.shape == (2, 32)
    start = Trainer(tiny_model, config, [], None, reference_run["run_dir"])
    start._table = tiny_model.text_encoder.get_input_embeddings().weight.detach()
    start._vocab_limit = start._regular_vocab_limit()
    assert not torch.equal(concept.vectors, start._initial_concept_vectors())  # it did learn
    assert concept.metadata["method"] == "lego" and concept.metadata["family"] == tiny_model.family.name
    assert concept.metadata["text_width"] == 32 and concept.metadata["subject"] == "a red square"

    run_dir = reference_run["run_dir"]
    assert TrainConfig.load(run_dir / "config.json") == config
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert set(log[0]["losses"]) == {"total", "rec", "subj", "ctx", "words"}
    assert all(r["losses"]["subj"] > 0 and r["losses"]["ctx"] > 0 and r["losses"]["words"] > 0 for r in log)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.safetensors"))
    assert checkpoints == ["step-000002.safetensors", "step-000004.safetensors"]
    assert (run_dir / "checkpoints" / "step-000004.json").is_file()
    assert Image.open(run_dir / "previews" / "step-000004.png").size == (32 * 3, 32)

    from lego_studio.core.concepts import load_concept

    saved = load_concept(run_dir / "concept.safetensors")
    assert torch.equal(saved.vectors, concept.vectors)

    kinds = [e.kind for e in reference_run["events"]]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 4
    # The finished concept's closest words: in its file, and said once, just before "done".
    assert kinds[-2] == "closest" and kinds.count("closest") == 1
    words = saved.metadata["closest_words"]
    assert len(words) == 5 and all(w.isalpha() for w in words)
    assert reference_run["events"][-2].message.startswith("Closest words to the concept: " + ", ".join(words) + ".")
    preview = next(e for e in reference_run["events"] if e.kind == "preview")
    assert len(preview.images) == 3 and preview.images[0].size == (32, 32)
    step = next(e for e in reference_run["events"] if e.kind == "step")
    assert step.total == 4 and step.eta_s is not None and step.lr == pytest.approx(5e-3)


def test_same_seed_gives_identical_vectors_and_another_seed_does_not(tiny_model, exemplar_files, reference_run, tmp_path):
    _, again = train(tiny_model, small(), exemplar_files, tmp_path / "again")
    assert torch.equal(again.vectors, reference_run["concept"].vectors)
    _, other = train(tiny_model, small(seed=4), exemplar_files, tmp_path / "other")
    assert not torch.equal(other.vectors, reference_run["concept"].vectors)


class Killed(Exception):
    pass


def test_killed_run_resumes_to_exactly_the_same_vectors(tiny_model, exemplar_files, reference_run, tmp_path):
    def kill_after_step_3(event):
        if event.kind == "step" and event.step == 3:
            raise Killed()

    with pytest.raises(Killed):
        train(tiny_model, small(), exemplar_files, tmp_path, on_event=kill_after_step_3)
    assert (tmp_path / "checkpoints" / "step-000002.safetensors").is_file()
    events = []
    _, resumed = train(tiny_model, small(), exemplar_files, tmp_path, resume=True, on_event=events.append)
    assert [e.step for e in events if e.kind == "step"] == [3, 4]
    assert torch.equal(resumed.vectors, reference_run["concept"].vectors)
    log = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]  # the step redone after the kill is logged once


def test_cancel_writes_a_checkpoint_and_resume_finishes_identically(tiny_model, exemplar_files, reference_run, tmp_path):
    trainer = Trainer(tiny_model, small(checkpoint_every=0), *exemplar_files, tmp_path)

    def cancel_at_1(event):
        if event.kind == "step" and event.step == 1:
            trainer.cancel()

    trainer.on_event = cancel_at_1
    with pytest.raises(Cancelled, match="cancelled at step 1"):
        trainer.run()
    assert (tmp_path / "checkpoints" / "step-000001.safetensors").is_file()
    _, resumed = train(tiny_model, small(checkpoint_every=0), exemplar_files, tmp_path, resume=True)
    assert torch.equal(resumed.vectors, reference_run["concept"].vectors)


def test_resume_refuses_a_changed_config(tiny_model, exemplar_files, reference_run):
    with pytest.raises(TrainingError, match="different lr"):
        train(tiny_model, small(lr=1e-2), exemplar_files, reference_run["run_dir"], resume=True)


def test_pause_blocks_between_steps_until_unpaused(tiny_model, exemplar_files, tmp_path):
    trainer = Trainer(tiny_model, small("ti", steps=3, checkpoint_every=0), *exemplar_files, tmp_path)
    steps, paused_at = [], []

    def on_event(event):
        if event.kind == "step":
            steps.append(event.step)
            if event.step == 1:
                trainer.pause()
        if event.kind == "log" and event.message == "paused":
            paused_at.append(list(steps))
            threading.Timer(0.3, trainer.unpause).start()

    trainer.on_event = on_event
    trainer.run()
    assert paused_at == [[1]] and steps == [1, 2, 3]


def test_repeated_non_finite_loss_stops_with_a_clear_error(tiny_model, exemplar_files, tmp_path, monkeypatch):
    original = Trainer._unet

    def poisoned(self, *args):
        return original(self, *args) * float("nan")

    monkeypatch.setattr(Trainer, "_unet", poisoned)
    events = []
    config = small("ti", steps=10, max_nonfinite_in_a_row=3)
    with pytest.raises(TrainingError, match="not finite for 3 steps in a row") as info:
        train(tiny_model, config, exemplar_files, tmp_path, on_event=events.append)
    assert "\n" not in str(info.value)
    assert [e.step for e in events if e.kind == "skipped"] == [1, 2, 3]


def test_stage_zero_learns_a_subject_token_then_freezes_it(tiny_model, exemplar_files, tmp_path):
    images, masks = exemplar_files
    config = small(subject_token_steps=2, steps=2, checkpoint_every=1)
    snapshots = []
    trainer = Trainer(tiny_model, config, images, masks, tmp_path, subject_images=images[:2])
    trainer.on_event = lambda e: snapshots.append((e.step, trainer.subject_vector.detach().clone(),
                                                  trainer.concept_vectors.detach().clone())) if e.kind == "step" else None
    concept = trainer.run()
    (s1, subj1, con1), (s2, subj2, con2), (s3, subj3, con3), (s4, subj4, con4) = snapshots
    assert not torch.equal(subj1, subj2) and torch.equal(con1, con2)  # stage 0: only the subject moves
    assert torch.equal(subj2, subj3) and torch.equal(subj3, subj4)  # stage 1: subject frozen
    assert not torch.equal(con3, con4)
    assert concept.vectors.shape == (2, 32)

    with pytest.raises(InputError, match="subject-only images"):
        Trainer(tiny_model, config, images, masks, tmp_path / "x").run()

    # Killed right after the stage change, resumed from the checkpoint at the boundary.
    def kill_at_3(event):
        if event.kind == "step" and event.step == 3:
            raise Killed()

    interrupted = Trainer(tiny_model, config, images, masks, tmp_path / "k", subject_images=images[:2], on_event=kill_at_3)
    with pytest.raises(Killed):
        interrupted.run()
    assert sorted(p.name for p in (tmp_path / "k" / "checkpoints").glob("*.safetensors"))[-1] == "step-000002.safetensors"
    resumed = Trainer(tiny_model, config, images, masks, tmp_path / "k", subject_images=images[:2]).run(resume=True)
    assert torch.equal(resumed.vectors, concept.vectors)


def test_split_and_stacked_unet_batching_compute_the_same_losses(tiny_model, exemplar_files, tmp_path):
    logs = {}
    for batching in ("stacked", "split"):
        train(tiny_model, small(steps=1, unet_batching=batching), exemplar_files, tmp_path / batching)
        logs[batching] = json.loads((tmp_path / batching / "log.jsonl").read_text())["losses"]
    for term in ("rec", "subj", "ctx", "words", "total"):
        assert logs["split"][term] == pytest.approx(logs["stacked"][term], rel=1e-4, abs=1e-7)


def test_a_fresh_run_in_a_used_folder_starts_clean(tiny_model, exemplar_files, tmp_path):
    train(tiny_model, small("ti", steps=4, checkpoint_every=4), exemplar_files, tmp_path)
    train(tiny_model, small("ti", steps=2, checkpoint_every=1), exemplar_files, tmp_path)
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.safetensors"))
    assert checkpoints == ["step-000001.safetensors", "step-000002.safetensors"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_training_prompts_encode_exactly_like_an_installed_concept(fresh_tiny_model, tmp_path):
    """What the trainer optimises is what generation will see once the concept is installed."""
    from lego_studio.core.concepts import Concept, expand_prompt, install_concepts

    table = fresh_tiny_model.text_encoder.get_input_embeddings().weight.detach()
    concept = Concept(name="par", placeholder="<par>", vectors=table[[320, 1125, 2368]] * 1.5)
    trainer = Trainer(fresh_tiny_model, TrainConfig.preset("ti", name="par"), [], None, tmp_path)
    trainer.concept_vectors = torch.nn.Parameter(concept.vectors.clone())
    ours = trainer.encode([split_fields("a photo of a dog {concept} at dusk", {"concept": slots(3)})], grad=False)
    install_concepts(fresh_tiny_model, concept)
    theirs = fresh_tiny_model.encode_prompts([expand_prompt("a photo of a dog <par> at dusk", concept)])
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_v_prediction_models_train_against_the_velocity(tiny_model, exemplar_files, tmp_path):
    import copy
    import dataclasses

    from lego_studio.core.data import build_exemplars

    v_model = copy.copy(tiny_model)
    v_model.family = dataclasses.replace(tiny_model.family, prediction_type="v_prediction")
    # Uniform timesteps, so the draw below can be repeated with one randint.
    trainer = Trainer(v_model, small(timestep_focus=0.0, flip=True), *exemplar_files, tmp_path)
    exemplars = build_exemplars(v_model, exemplar_files[0], None, 32)
    generator = torch.Generator().manual_seed(0)
    z_t, t, target, *_ = trainer._noisy_batch(exemplars, generator)
    # Re-draw the same randomness to recover z0 and the noise.
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(3, (1,), generator=generator)
    flip = torch.randint(2, (1,), generator=generator)
    torch.randint(1000, (1,), generator=generator)
    z0 = exemplars.latents[index, flip]
    noise = torch.randn(z0.shape, generator=generator)
    expected = tiny_model.noise_scheduler.get_velocity(z0, noise, t)
    assert torch.allclose(target, expected) and not torch.allclose(target, noise)


def test_lego_trains_on_the_exemplars_as_given_and_ti_also_on_their_mirrors(tiny_model, exemplar_files, tmp_path):
    # The Random flips tooltip: off by default for Lego (a mirrored shadow is another concept),
    # on for the Textual Inversion baseline's usual recipe.
    from lego_studio.core.data import build_exemplars

    assert TrainConfig.preset("lego", subject="x").flip is False and TrainConfig.preset("ti").flip is True
    exemplars = build_exemplars(tiny_model, exemplar_files[0], None, 32)
    exemplars.latents[:, 0] = 0.0  # the image as given
    exemplars.latents[:, 1] = 1.0  # its mirror
    alphas = tiny_model.noise_scheduler.alphas_cumprod
    for method, mirrors_expected in (("lego", False), ("ti", True)):
        trainer = Trainer(tiny_model, small(method), *exemplar_files, tmp_path / method)
        seen = set()
        for k in range(24):
            z_t, t, target, *_ = trainer._noisy_batch(exemplars, torch.Generator().manual_seed(k))
            a = alphas[t].view(-1, 1, 1, 1)
            z0 = (z_t - (1 - a).sqrt() * target) / a.sqrt()
            seen.add(round(float(z0.mean())))
        assert seen == ({0, 1} if mirrors_expected else {0}), method


def test_no_subject_separation_ablation_leaves_the_subject_out_of_every_prompt(tiny_model, exemplar_files, tmp_path):
    # No subject words is allowed (the app and the CLI say before the run that it separates nothing).
    assert TrainConfig.preset("lego", subject="").subject == ""
    seen = []
    original = Trainer.encode

    def spy(self, prompts, *args, **kwargs):
        seen.extend(str(p) for p in prompts)
        return original(self, prompts, *args, **kwargs)

    for flag in (True, False):
        seen.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Trainer, "encode", spy)
            train(tiny_model, small(steps=1, subject_in_prompt=flag, w_subj=0.0), exemplar_files, tmp_path / str(flag))
        with_subject = [p for p in seen if "red square" in p]
        assert bool(with_subject) is flag, (flag, seen[:4])


def test_timestep_focus_draws_high_noise_steps_more_often_and_stays_reproducible(tiny_model, exemplar_files,
                                                                                 tmp_path):
    from lego_studio.core.training import Trainer

    def draws(focus):
        trainer = Trainer.__new__(Trainer)  # only the config is read
        trainer.config = small(timestep_focus=focus)
        return trainer._timesteps(1000, 20000, torch.Generator().manual_seed(0)).float()

    def share(mask):
        return float(mask.float().mean())

    uniform, focused = draws(0.0), draws(1.0)
    assert 0.2 < share(uniform >= 750) < 0.3 and 0.2 < share(uniform < 250) < 0.3
    assert share(focused >= 750) > 0.4 and share(focused < 250) < 0.1  # density 1 - cos(pi t / T)
    assert focused.min() >= 0 and focused.max() <= 999
    # A focused run is as reproducible as any (same seed, same vectors) and differs from uniform.
    _, first = train(tiny_model, small(timestep_focus=1.0), exemplar_files, tmp_path / "a")
    _, again = train(tiny_model, small(timestep_focus=1.0), exemplar_files, tmp_path / "b")
    _, uniform_run = train(tiny_model, small(timestep_focus=0.0), exemplar_files, tmp_path / "c")
    assert torch.equal(first.vectors, again.vectors)
    assert not torch.equal(first.vectors, uniform_run.vectors)
    # Lego's default is the focus; the Textual Inversion baseline keeps plain uniform sampling.
    assert TrainConfig.preset("lego").timestep_focus == 1.0 and TrainConfig.preset("ti").timestep_focus == 0.0


def test_a_vocabulary_the_closest_words_cannot_read_costs_nothing_but_the_words(tiny_model, exemplar_files, tmp_path,
                                                                                 monkeypatch):
    from lego_studio.core import concepts as concepts_module
    from lego_studio.core.concepts import load_concept

    def broken(*args, **kwargs):
        raise ValueError("odd tokenizer")

    monkeypatch.setattr(concepts_module, "closest_words", broken)
    events = []
    run_dir = tmp_path / "run"
    concept = train(tiny_model, small(), exemplar_files, run_dir, on_event=events.append)[1]
    saved = load_concept(run_dir / "concept.safetensors")  # the concept is written all the same
    assert torch.equal(saved.vectors, concept.vectors) and saved.metadata["closest_words"] == []
    assert "closest" not in [e.kind for e in events]
    assert any(e.kind == "log" and "closest words not found: odd tokenizer" in e.message for e in events)
