"""The shipped Shape World model in the SDXL architecture: quality, not plumbing.

Two text encoders of different widths (clip_l 96, clip_g 32), pooled embeddings and
micro-conditioning, grown from the SD Shape World model by ``lego_studio.shapeworld.xl_model``.
These tests check that it draws what it is asked for (the base-quality check) and that a Lego
concept learned through both encoders at once composes with a subject its words leave partly out.
"""

from __future__ import annotations

import pytest

from lego_studio.core.model_specs import shapeworld_model_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shapeworld_model_dir("shapeworld-xl") / "model_index.json").is_file(),
                       reason="resources/models/shapeworld-xl is missing (build it with lego_studio.shapeworld.xl_model)"),
]


@pytest.fixture(scope="module")
def xl_model():
    from lego_studio.core.models import load_model

    return load_model("shapeworld-xl", device="cpu", precision="fp32")


def test_the_xl_model_is_sdxl_shaped_and_fits_the_size_budget(xl_model):
    from lego_studio.core.model_specs import is_shapeworld

    family = xl_model.family
    assert family.is_sdxl and family.widths == (96, 32) and family.resolution == 64
    assert xl_model.unet.config.addition_embed_type == "text_time"  # pooled embeddings + time ids
    assert is_shapeworld(xl_model)
    folder = shapeworld_model_dir("shapeworld-xl")
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    assert size_mb <= 30


def test_the_xl_model_draws_what_it_is_asked_for(xl_model):
    # The base-quality bar of the SD model (>= 90 % right concept and subject), judged on
    # trained prompts through the SDXL pipeline with both encoders.
    from lego_studio.shapeworld.evaluate import score_prompts
    from lego_studio.shapeworld.judge import load_judge

    result = score_prompts(xl_model.pipeline("ddim"), load_judge(None), n=24, seed=1000, device="cpu", steps=20,
                           which="trained", batch_size=24)
    assert result["concept_accuracy"] >= 0.9, result
    assert result["subject_accuracy"] >= 0.9, result


def test_lego_learns_a_concept_through_both_encoders_with_partial_subject_words(xl_model, tmp_path):
    import torch

    from lego_studio.core.concepts import load_concept
    from lego_studio.shapeworld import benchmark as bench
    from lego_studio.shapeworld import benchmark_runner as runner
    from lego_studio.shapeworld.judge import load_judge

    concept = "shattered"  # a tuning concept, as in the SD partial-words check
    config = bench.BenchmarkConfig(concepts=[concept], seeds=[0], steps=150, device="cpu", model="shapeworld-xl",
                                   tracks=["no-colour"]).validate()
    lego = bench.resolve_methods(["lego"])[0]
    renders = bench.render_exemplars(concept, bench.exemplar_subject(concept), config.n_exemplars)
    with runner.torch_threads(1):
        torch.manual_seed(0)
        result = runner.run_one(xl_model, load_judge(None), lego, concept, 0, 150, config, tmp_path, renders,
                                track="no-colour")
    row = result.row
    assert row["subject_words"] == "a hexagon"
    assert row["concept_fidelity"] >= 0.5, row
    assert row["colour_leakage"] <= 0.25, row
    learned = load_concept(next(tmp_path.rglob("concept.safetensors")))
    assert learned.vectors.shape[-1] == 96 and learned.vectors_2.shape[-1] == 32  # clip_l and clip_g both learned
