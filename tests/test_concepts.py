"""Concept files (Lego, diffusers, AUTOMATIC1111, kohya) and installing concepts into a model."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lego_studio.core.concepts import (
    Concept,
    detect_concept_format,
    expand_prompt,
    export_concept,
    install_concepts,
    load_concept,
    save_concept,
)
from lego_studio.core.errors import InputError

WIDTH = 32  # tiny model text width is checked in the install tests, not assumed here


def _concept(n=3, width=WIDTH, placeholder="<frozen>", seed=0, **metadata) -> Concept:
    generator = torch.Generator().manual_seed(seed)
    return Concept("frozen", placeholder, torch.randn(n, width, generator=generator), metadata)


def test_tokens_follow_the_diffusers_multi_vector_convention():
    assert _concept(4).tokens == ["<frozen>", "<frozen>_1", "<frozen>_2", "<frozen>_3"]
    assert _concept(1).tokens == ["<frozen>"]
    one_d = Concept("x", "<x>", torch.ones(8, dtype=torch.float16))
    assert one_d.vectors.shape == (1, 8) and one_d.vectors.dtype == torch.float32 and one_d.text_width == 8
    with pytest.raises(InputError, match="spaces"):
        Concept("x", "<frozen in ice>", torch.ones(1, 8))


def test_lego_format_roundtrip_keeps_vectors_and_metadata(tmp_path):
    concept = _concept(
        3,
        family="tiny",
        method="lego",
        config={"lr": 0.005, "weights": {"subj": 1.0, "ctx": 0.5}},
        steps=120,
        created="2026-01-02T03:04:05Z",
        subject="a toy robot",
        base_model="/models/tiny",
    )
    path = save_concept(concept, tmp_path / "frozen.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert list(handle.keys()) == ["lego.vectors"]
        info = json.loads(handle.metadata()["lego"])
    assert info["tokens"] == concept.tokens and info["text_width"] == WIDTH and info["num_vectors"] == 3
    assert info["subject"] == "a toy robot" and info["config"]["weights"]["ctx"] == 0.5

    loaded = load_concept(path)
    assert detect_concept_format(path) == "lego"
    assert loaded.name == "frozen" and loaded.placeholder == "<frozen>"
    assert torch.equal(loaded.vectors, concept.vectors)
    assert loaded.metadata == concept.metadata

    renamed = load_concept(path, name="Frozen in ice")
    assert renamed.placeholder == "<frozen-in-ice>" and torch.equal(renamed.vectors, concept.vectors)


@pytest.mark.parametrize(
    "fmt, filename",
    [
        ("lego", "c.safetensors"),
        ("diffusers", "learned_embeds.safetensors"),
        ("diffusers", "learned_embeds.bin"),
        ("a1111", "frozen.pt"),
        ("a1111", "frozen.safetensors"),
        ("kohya", "frozen.safetensors"),
    ],
)
def test_every_export_format_roundtrips(tmp_path, fmt, filename):
    concept = _concept(3, steps=40)
    path = export_concept(concept, tmp_path / filename, fmt)
    assert path.exists() and not list(tmp_path.glob(".*.tmp"))
    loaded = load_concept(path)
    expected_format = "kohya" if fmt == "a1111" and filename.endswith(".safetensors") else fmt
    assert detect_concept_format(path) == expected_format
    assert torch.equal(loaded.vectors, concept.vectors)
    if fmt in ("lego", "diffusers", "a1111"):
        assert loaded.placeholder == "<frozen>"
    if fmt == "a1111" and filename.endswith(".pt"):
        raw = torch.load(path, weights_only=True)
        assert raw["string_to_token"] == {"*": 265} and raw["name"] == "frozen" and raw["step"] == 40
        assert loaded.metadata["steps"] == 40


def test_imports_files_written_by_other_tools(tmp_path):
    vector = torch.randn(WIDTH)
    # diffusers single-vector learned_embeds.bin: {token: [d]}
    torch.save({"<cat-toy>": vector}, tmp_path / "learned_embeds.bin")
    concept = load_concept(tmp_path / "learned_embeds.bin")
    assert concept.placeholder == "<cat-toy>" and concept.num_vectors == 1
    assert torch.equal(concept.vectors[0], vector)

    # AUTOMATIC1111 keeps a trainable tensor (requires_grad) and fp16 is common.
    vec = torch.randn(2, WIDTH).half().requires_grad_(True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "Wet Look", "step": 3000,
                "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5"}, tmp_path / "wet.pt")
    concept = load_concept(tmp_path / "wet.pt")
    assert concept.placeholder == "<wet-look>" and concept.num_vectors == 2
    assert concept.metadata["steps"] == 3000 and concept.metadata["base_model"] == "v1-5"
    assert concept.metadata["imported_from"] == {"format": "a1111", "file": "wet.pt"}

    # kohya sd-scripts: emb_params with string metadata of its own.
    save_file({"emb_params": torch.randn(4, WIDTH)}, str(tmp_path / "kohya-style.safetensors"),
              metadata={"ss_network_module": "x"})
    concept = load_concept(tmp_path / "kohya-style.safetensors")
    assert concept.placeholder == "<kohya-style>" and concept.num_vectors == 4

    # Token-per-row diffusers dicts are one multi-vector concept.
    save_file({"<m>": torch.ones(WIDTH), "<m>_1": torch.zeros(WIDTH)}, str(tmp_path / "rows.safetensors"))
    concept = load_concept(tmp_path / "rows.safetensors")
    assert concept.tokens == ["<m>", "<m>_1"] and concept.vectors[0, 0] == 1 and concept.vectors[1, 0] == 0


def test_sdxl_files_are_read_and_half_sdxl_and_multi_embedding_files_are_refused(tmp_path):
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(tmp_path / "xl.safetensors"))
    xl = load_concept(tmp_path / "xl.safetensors")
    assert xl.widths == (768, 1280) and xl.family == "sdxl" and xl.num_vectors == 2
    save_file({"clip_l": torch.randn(2, 768)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(InputError, match=r"half\.safetensors: SDXL embedding without its clip_g tensor"):
        load_concept(tmp_path / "half.safetensors")
    save_file({"<a>": torch.randn(WIDTH), "<b>": torch.randn(WIDTH)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(InputError, match=r"two\.safetensors: holds 2 separate embeddings"):
        load_concept(tmp_path / "two.safetensors")


def _lego_bytes(tmp_path) -> bytes:
    return save_concept(_concept(2), tmp_path / "good.safetensors").read_bytes()


@pytest.mark.parametrize(
    "name, make",
    [
        ("empty.safetensors", lambda tmp: b""),
        ("random.safetensors", lambda tmp: bytes(range(256)) * 8),
        ("text.pt", lambda tmp: b"hello, I am not a concept\n"),
        ("truncated.safetensors", lambda tmp: _lego_bytes(tmp)[:-20]),
        ("header-only.safetensors", lambda tmp: _lego_bytes(tmp)[:60]),
        ("image.png", lambda tmp: b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
    ],
)
def test_broken_files_raise_input_error_naming_the_file(tmp_path, name, make):
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    with pytest.raises(InputError) as info:
        load_concept(path)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_bad_tensors_are_explained(tmp_path):
    save_file({"<x>": torch.ones(3, WIDTH, dtype=torch.int64)}, str(tmp_path / "ints.safetensors"))
    with pytest.raises(InputError, match=r"ints\.safetensors: .*not float"):
        load_concept(tmp_path / "ints.safetensors")
    save_file({"<x>": torch.ones(2, 3, WIDTH)}, str(tmp_path / "cube.safetensors"))
    with pytest.raises(InputError, match=r"cube\.safetensors: .*shape \[2, 3, 32\]"):
        load_concept(tmp_path / "cube.safetensors")
    save_file({"<x>": torch.tensor([[1.0, float("nan")]])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(InputError, match=r"nan\.safetensors: .*NaN"):
        load_concept(tmp_path / "nan.safetensors")
    with pytest.raises(InputError, match="no such concept file"):
        load_concept(tmp_path / "missing.pt")


def test_pickles_are_loaded_safely_and_truncated_pickles_explained(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"<x>": Evil()}, path)
    (tmp_path / "evil-legacy.bin").write_bytes(pickle.dumps({"<x>": Evil()}, protocol=2))
    with pytest.raises(InputError, match=r"evil-legacy\.bin"):
        load_concept(tmp_path / "evil-legacy.bin")
    with pytest.raises(InputError, match=r"evil\.pt"):
        load_concept(path)

    good = export_concept(_concept(2), tmp_path / "good.pt", "a1111").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match=r"cut\.pt"):
        load_concept(tmp_path / "cut.pt")


def test_export_refuses_unknown_format_and_wrong_extension(tmp_path):
    with pytest.raises(InputError, match="unknown concept format 'comfy'"):
        export_concept(_concept(), tmp_path / "x.safetensors", "comfy")
    with pytest.raises(InputError, match=r"x\.pt: kohya embeddings end in \.safetensors"):
        export_concept(_concept(), tmp_path / "x.pt", "kohya")


def test_expand_prompt_like_diffusers():
    three = _concept(3)
    one = Concept("wet", "<wet>", torch.ones(1, WIDTH))
    prompt = "a photo of a dog <frozen>, next to a <wet> cat"
    expanded = expand_prompt(prompt, [three, one])
    assert expanded == "a photo of a dog <frozen> <frozen>_1 <frozen>_2, next to a <wet> cat"
    assert expand_prompt(expanded, [three, one]) == expanded  # idempotent
    assert expand_prompt("<frozen> and <frozen>", three).count("<frozen>_2") == 2
    assert expand_prompt("no concept here", three) == "no concept here"


# ----------------------------------------------------------------------------- with the tiny model


def _width(model) -> int:
    return int(model.text_encoder.get_input_embeddings().weight.shape[1])


def test_install_refuses_a_concept_for_another_text_width(fresh_tiny_model):
    width = _width(fresh_tiny_model)
    concept = _concept(2, width=width + 8)
    with pytest.raises(InputError) as info:
        install_concepts(fresh_tiny_model, concept)
    message = str(info.value)
    assert f"{width + 8}-wide" in message and f"is {width} wide" in message and "<frozen>" in message


def test_install_writes_rows_only_for_new_tokens_and_is_idempotent(fresh_tiny_model):
    model = fresh_tiny_model
    width = _width(model)
    before = model.text_encoder.get_input_embeddings().weight.detach().clone()
    vocab_before = len(model.tokenizer)
    concept = _concept(3, width=width)
    install_concepts(model, [concept])
    weight = model.text_encoder.get_input_embeddings().weight.detach()
    ids = model.tokenizer.convert_tokens_to_ids(concept.tokens)
    assert len(model.tokenizer) == vocab_before + 3 and weight.shape[0] == vocab_before + 3
    assert torch.equal(weight[ids], concept.vectors)
    assert torch.equal(weight[:vocab_before], before)  # every old row bit-identical

    install_concepts(model, [concept])
    assert len(model.tokenizer) == vocab_before + 3
    assert torch.equal(model.text_encoder.get_input_embeddings().weight.detach()[ids], concept.vectors)

    # Same placeholder, new vectors (e.g. a retrained concept): rows replaced, no new tokens.
    retrained = _concept(3, width=width, seed=5)
    install_concepts(model, retrained)
    assert len(model.tokenizer) == vocab_before + 3
    assert torch.equal(model.text_encoder.get_input_embeddings().weight.detach()[ids], retrained.vectors)
    ids_in_prompt = model.tokenizer(expand_prompt("a dog <frozen>", retrained)).input_ids
    assert ids_in_prompt[-4:-1] == ids


def _plain_diffusers_pipeline(model_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        str(model_dir), safety_checker=None, requires_safety_checker=False, local_files_only=True
    )


@pytest.mark.parametrize(
    "fmt, filename", [("diffusers", "e.safetensors"), ("diffusers", "e.bin"), ("a1111", "e.pt"), ("lego", "e.safetensors")]
)
def test_exported_file_gives_same_prompt_embeddings_in_plain_diffusers(
    tiny_model_dir, fresh_tiny_model, tmp_path, fmt, filename
):
    model = fresh_tiny_model
    concept = _concept(3, width=_width(model), placeholder="<x>")
    path = export_concept(concept, tmp_path / filename, fmt)
    prompt = "a photo of a dog <x>"

    pipe = _plain_diffusers_pipeline(tiny_model_dir)
    pipe.load_textual_inversion(str(path), token="<x>")
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)

    install_concepts(model, load_concept(path, name=None) if fmt != "a1111" else load_concept(path, name="x"))
    ours = model.encode_prompts([expand_prompt(prompt, [concept])])
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    # And the concept really changes the embedding (the test could fail).
    plain = model.encode_prompts(["a photo of a dog"])
    assert not torch.equal(plain, ours)


# ----------------------------------------------------------------------------- CLI


def test_cli_import_list_inspect_export(tmp_path, capsys):
    from lego_studio.cli import main

    source = export_concept(_concept(2, steps=10), tmp_path / "learned_embeds.bin", "diffusers")
    assert main(["concepts", "import", str(source), "--name", "Frozen Solid"]) == 0
    out = capsys.readouterr().out
    assert "<frozen-solid>" in out and "2 vectors" in out

    assert main(["concepts", "list"]) == 0
    listing = capsys.readouterr().out
    assert "frozen-solid" in listing and "<frozen-solid>" in listing

    assert main(["concepts", "inspect", "frozen-solid", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "lego" and info["num_vectors"] == 2 and info["text_width"] == WIDTH
    assert info["tokens"] == ["<frozen-solid>", "<frozen-solid>_1"]

    assert main(["concepts", "inspect", str(source)]) == 0
    text = capsys.readouterr().out
    assert "format:      diffusers" in text and "vectors:     2 x 32" in text

    out_file = tmp_path / "exported.pt"
    assert main(["concepts", "export", "frozen-solid", "--format", "a1111", "--out", str(out_file)]) == 0
    assert torch.equal(load_concept(out_file).vectors, load_concept(source).vectors)

    # Importing the same name again is refused unless --replace.
    assert main(["concepts", "import", str(source), "--name", "frozen solid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already has a concept named 'frozen-solid'" in err
    assert main(["concepts", "import", str(source), "--name", "frozen solid", "--replace"]) == 0


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    from lego_studio.cli import main

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 7)
    assert main(["concepts", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.safetensors" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["concepts", "export", "nothing-here", "--format", "kohya", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "nothing-here: no such concept file" in capsys.readouterr().err
    assert main(["concepts", "list"]) == 0
    assert "the library is empty" in capsys.readouterr().out


def test_closest_words_are_whole_words_nearest_the_learned_vector():
    from lego_studio.core.concepts import closest_words
    from lego_studio.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("sd1")
    vocab = tokenizer.get_vocab()
    table = torch.randn(len(vocab), 32, generator=torch.Generator().manual_seed(0))
    cage, yellow, melting = (vocab[f"{w}</w>"] for w in ("cage", "yellow", "melting"))
    # A concept that is mostly "cage" with some "yellow" in it, as a leaking Shape World concept is.
    vector = 0.8 * table[cage] / table[cage].norm() + 0.6 * table[yellow] / table[yellow].norm()
    assert closest_words(vector[None], tokenizer, table, k=2) == ["cage", "yellow"]
    # Several vectors: each word counts by the vector it is nearest.
    two = torch.stack([table[melting], vector])
    assert closest_words(two, tokenizer, table, k=3)[0] == "melting"
    assert set(closest_words(two, tokenizer, table, k=3)) == {"melting", "cage", "yellow"}
    # Word pieces, punctuation and "a" / "of" never show, however near.
    piece = vocab["ice"] if "ice" in vocab else vocab["ing"]
    table[piece] = vector * 10
    table[vocab["of</w>"]] = vector
    assert closest_words(vector[None], tokenizer, table, k=2) == ["cage", "yellow"]
