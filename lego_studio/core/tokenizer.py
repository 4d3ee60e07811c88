"""The CLIP tokenizer, derived offline and shipped in ``resources/tokenizer/``.

Stable Diffusion 1.x and 2.x both use OpenAI's CLIP BPE vocabulary (49,408 tokens). No hub access
is possible where Lego Studio is built, so the files that ``transformers.CLIPTokenizer`` reads
(vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) are rebuilt here from the
BPE merge list that the ``open_clip_torch`` wheel carries, following the construction in OpenAI's
``simple_tokenizer.py``: the 256 byte characters, their ``</w>`` variants, the first 48,894 merges
joined, then ``<|startoftext|>`` and ``<|endoftext|>``.

Regenerate with ``python -m lego_studio.core.tokenizer build``.

Layout:
    resources/tokenizer/             SD1 tokenizer (pad = ``<|endoftext|>``)
    resources/tokenizer/sd2/         config files only: SD2 pads with ``"!"`` (id 0); the vocabulary
                                     is the same, so :func:`load_tokenizer` reads it from the parent.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from lego_studio.core.errors import ModelError
from lego_studio.core.paths import atomic_write_json, atomic_write_text, resource

VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# 49152 BPE entries in OpenAI's vocabulary, minus the 256 byte tokens and the 2 special tokens.
NUM_MERGES = 49152 - 256 - 2
SD2_PAD_TOKEN = "!"


def tokenizer_dir(family: str = "sd1") -> Path:
    """Folder of the shipped tokenizer files for ``family`` ("sd2" has its own config files)."""
    root = resource("tokenizer")
    return root / "sd2" if family in ("sd2", "sd2-base") else root


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI/GPT-2 reversible byte -> printable unicode table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


def _open_clip_bpe_path() -> Path:
    import importlib.util

    # Locate the package without importing it (importing open_clip pulls in torch and more).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "open_clip_torch is not installed: it carries bpe_simple_vocab_16e6.txt.gz, needed to build the tokenizer"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def build_vocab_and_merges(bpe_gz_path: str | Path) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merge list exactly as OpenAI's ``SimpleTokenizer`` builds them."""
    lines = gzip.open(bpe_gz_path).read().decode("utf-8").split("\n")
    # Line 0 is the "#version" header; the next NUM_MERGES lines are the merges CLIP uses.
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise ModelError(f"{bpe_gz_path}: built {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {token: index for index, token in enumerate(tokens)}, [" ".join(pair) for pair in merges]


def _config(pad_token: str) -> dict:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
        "add_prefix_space": False,
    }


def _special_tokens(pad_token: str) -> dict:
    return {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}


def build(out_dir: str | Path | None = None, bpe_gz_path: str | Path | None = None) -> Path:
    """Write the tokenizer files (SD1 in ``out_dir``, SD2 configs in ``out_dir/sd2``)."""
    out = Path(out_dir) if out_dir is not None else resource("tokenizer")
    vocab, merges = build_vocab_and_merges(bpe_gz_path or _open_clip_bpe_path())
    # Compact JSON keeps the committed file small; ensure_ascii=False keeps it readable.
    atomic_write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
    atomic_write_text(out / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    atomic_write_json(out / "tokenizer_config.json", _config(EOS_TOKEN))
    atomic_write_json(out / "special_tokens_map.json", _special_tokens(EOS_TOKEN))
    atomic_write_json(out / "sd2" / "tokenizer_config.json", _config(SD2_PAD_TOKEN))
    atomic_write_json(out / "sd2" / "special_tokens_map.json", _special_tokens(SD2_PAD_TOKEN))
    return out


def load_tokenizer(family: str = "sd1"):
    """The shipped CLIP tokenizer for ``family`` as a ``transformers.CLIPTokenizer`` (offline)."""
    from lego_studio.core.model_stack import import_model_stack

    CLIPTokenizer = import_model_stack().CLIPTokenizer  # noqa: N806 - thread-safe import

    root = resource("tokenizer")
    if not (root / "vocab.json").is_file() or not (root / "merges.txt").is_file():
        raise ModelError(
            f"{root}: the shipped CLIP tokenizer is missing; run 'python -m lego_studio.core.tokenizer build'"
        )
    overrides = {}
    config_path = tokenizer_dir(family) / "tokenizer_config.json"
    if family in ("sd2", "sd2-base") and config_path.is_file():
        overrides["pad_token"] = json.loads(config_path.read_text(encoding="utf-8"))["pad_token"]
    return CLIPTokenizer.from_pretrained(str(root), local_files_only=True, **overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["build"]:
        print("usage: python -m lego_studio.core.tokenizer build [OUT_DIR]", file=sys.stderr)
        return 2
    out = build(argv[1] if len(argv) > 1 else None)
    print(f"wrote CLIP tokenizer ({VOCAB_SIZE} tokens) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
