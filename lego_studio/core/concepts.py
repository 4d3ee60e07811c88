"""Concepts: N learned token embeddings, the files they live in, and putting them into a model.

A concept called ``frozen`` with placeholder ``<frozen>`` and N vectors uses the tokens
``<frozen>, <frozen>_1, ..., <frozen>_{N-1}`` - the diffusers multi-vector convention - so a file
exported from Lego Studio and loaded with ``pipe.load_textual_inversion(file, token="<frozen>")``
gives exactly the prompt embeddings Lego Studio uses.

File formats (auto-detected from the file's content, not its extension):

``lego``       ``.safetensors``; tensor ``lego.vectors`` [N, d] float32; safetensors metadata
               ``{"format": "lego-studio-concept", "lego": "<JSON>"}`` where the JSON holds
               ``format_version, name, placeholder, tokens, num_vectors, text_width`` plus the
               concept's metadata (family, method, config, steps, created, subject, base_model ...).
``diffusers``  ``learned_embeds.safetensors`` / ``.bin``: ``{placeholder: tensor [d] or [N, d]}``.
``a1111``      AUTOMATIC1111 ``.pt``: ``{"string_to_token": {"*": 265}, "string_to_param":
               {"*": [N, d]}, "name": ..., "step": ...}``; or a ``.safetensors`` with ``emb_params``.
``kohya``      sd-scripts ``.safetensors`` (or ``.pt``) with ``emb_params`` [N, d]; SDXL files
               (``clip_l`` / ``clip_g``) are refused: SDXL is not supported.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from lego_studio.core.errors import InputError
from lego_studio.core.paths import atomic_save

FORMATS = ("lego", "diffusers", "a1111", "kohya")
A1111_EXTRA_KEY = "lego_studio"  # our own key in an A1111 .pt: {"family", "base_model"}


def model_display_name(spec) -> str:
    """A base model's name as people know it: the file or folder name of a path, else the spec
    itself ("shapeworld", "runwayml/stable-diffusion-v1-5")."""
    if not spec:
        return ""
    text = str(spec)
    if "/" in text or "\\" in text:
        path = Path(text)
        if path.is_absolute() or text.startswith((".", "~")):
            return path.stem if path.suffix in (".safetensors", ".ckpt") else path.name
    return text
LEGO_TENSOR = "lego.vectors"
LEGO_FORMAT_TAG = "lego-studio-concept"
FORMAT_VERSION = 1
# CLIP prompts hold 77 tokens including start/end; a concept must leave room for words.
MAX_VECTORS = 64
# Keys the file format derives from the vectors / identity; not part of Concept.metadata.
_DERIVED_KEYS = ("format_version", "name", "placeholder", "tokens", "num_vectors", "text_width")
_FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sd2-base": "SD 2.x", "shapeworld": "Shape World", "tiny": "tiny test model"}


@dataclass
class Concept:
    """A learned concept: ``vectors`` [N, d] float32 on the CPU, one row per token."""

    name: str
    placeholder: str
    vectors: torch.Tensor
    metadata: dict = field(default_factory=dict)
    # The file it was loaded from (not saved in files); generation records it for reproduction.
    source_file: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        vectors = torch.as_tensor(self.vectors).detach()
        if vectors.dim() == 1:
            vectors = vectors.unsqueeze(0)
        if vectors.dim() != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
            raise InputError(f"concept {self.placeholder}: vectors must be [N, d], got {list(vectors.shape)}")
        self.vectors = vectors.to(device="cpu", dtype=torch.float32).contiguous().clone()
        check_placeholder(self.placeholder)
        self.metadata = dict(self.metadata or {})

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def text_width(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def tokens(self) -> list[str]:
        return [self.placeholder] + [f"{self.placeholder}_{i}" for i in range(1, self.num_vectors)]


def check_placeholder(placeholder: str) -> None:
    if not isinstance(placeholder, str) or not placeholder.strip():
        raise InputError("a concept placeholder must be a non-empty word such as <frozen>")
    if any(ch.isspace() for ch in placeholder):
        raise InputError(f"concept placeholder {placeholder!r} contains spaces; use one word such as <frozen-in-ice>")


def placeholder_for(name: str) -> str:
    """``"Frozen in ice"`` -> ``"<frozen-in-ice>"``. Lower case because the CLIP tokenizer
    lower-cases prompts, and diffusers only expands multi-vector tokens it finds verbatim."""
    slug = re.sub(r"[^0-9a-z_\-]+", "-", name.strip().casefold()).strip("-_") or "concept"
    return f"<{slug}>"


def _name_from_token(token: str) -> str:
    return token.strip().strip("<>").strip() or token


# ----------------------------------------------------------------------------- reading


def _sniff(path: Path) -> str:
    """"safetensors" | "torch" from the first bytes; anything else is not a concept file."""
    if not path.exists():
        raise InputError(f"{path}: no such concept file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a concept file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: not a concept file (empty file)")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= size - 8:
            return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"  # zip-based torch.save, or a legacy pickle
    if path.suffix.lower() == ".png":
        raise InputError(f"{path}: AUTOMATIC1111 embeddings hidden in PNG images are not supported; use the .pt or .safetensors file")
    raise InputError(f"{path}: not a concept file (neither safetensors nor a PyTorch file)")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable concept file ({reason})") from None
    return tensors, metadata


def _read_pickle(path: Path) -> object:
    from lego_studio.core.models import safe_torch_load

    try:
        return safe_torch_load(path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated zips, bad pickles, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable concept file ({reason})") from None


def _as_vectors(path: Path, value, what: str) -> torch.Tensor:
    if isinstance(value, torch.nn.Parameter):
        value = value.detach()
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{path}: {what} is a {type(value).__name__}, not a tensor of embeddings")
    if not value.is_floating_point():
        raise InputError(f"{path}: {what} holds {value.dtype} numbers, not float embeddings")
    tensor = value.detach().to("cpu", torch.float32)
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InputError(f"{path}: {what} has shape {list(value.shape)}; expected [N, width] embeddings")
    if tensor.shape[0] > MAX_VECTORS:
        raise InputError(f"{path}: {what} has {tensor.shape[0]} vectors; at most {MAX_VECTORS} fit in a prompt")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{path}: {what} contains NaN or infinite values")
    return tensor


def _refuse_sdxl(path: Path, keys) -> None:
    if "clip_l" in keys or "clip_g" in keys:
        raise InputError(f"{path}: this is an SDXL embedding (clip_l/clip_g); SDXL is not supported, only SD 1.x/2.x")


def _diffusers_from_dict(path: Path, data: dict) -> tuple[str, torch.Tensor]:
    """``{token: tensor}``; several keys are accepted only when they are one multi-vector concept
    written token by token (``<x>``, ``<x>_1``, ...)."""
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"{path}: not a concept file (no embedding tensors in it)")
    if len(tensors) == 1:
        token, value = next(iter(tensors.items()))
        return str(token), _as_vectors(path, value, f"embedding {token!r}")
    bases = [k for k in tensors if f"{k}_1" in tensors]
    if len(bases) == 1:
        base = bases[0]
        rows = [base] + [f"{base}_{i}" for i in range(1, len(tensors))]
        if set(rows) == set(tensors):
            stacked = torch.cat([_as_vectors(path, tensors[r], f"embedding {r!r}") for r in rows])
            return str(base), stacked
    listed = ", ".join(sorted(map(str, tensors))[:5])
    raise InputError(f"{path}: holds {len(tensors)} separate embeddings ({listed}); a concept file holds one")


def detect_concept_format(path: str | os.PathLike) -> str:
    """"lego" | "diffusers" | "a1111" | "kohya" for a concept file (InputError otherwise)."""
    return _read_any(Path(path))[0]


def _read_any(path: Path) -> tuple[str, str, torch.Tensor, dict]:
    """-> (format, token_or_name, vectors, metadata)."""
    kind = _sniff(path)
    if kind == "safetensors":
        tensors, file_meta = _read_safetensors(path)
        _refuse_sdxl(path, tensors)
        if LEGO_TENSOR in tensors:
            try:
                info = json.loads(file_meta.get("lego", "{}"))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: its Lego Studio metadata is not valid JSON ({exc.msg})") from None
            if not isinstance(info, dict):
                raise InputError(f"{path}: its Lego Studio metadata is not a JSON object")
            return "lego", "", _as_vectors(path, tensors[LEGO_TENSOR], LEGO_TENSOR), info
        if "emb_params" in tensors:
            # kohya sd-scripts writes this; A1111 reads it too. Call it kohya, its origin.
            return "kohya", "", _as_vectors(path, tensors["emb_params"], "emb_params"), dict(file_meta)
        token, vectors = _diffusers_from_dict(path, tensors)
        return "diffusers", token, vectors, {}
    data = _read_pickle(path)
    if isinstance(data, torch.Tensor):
        return "diffusers", "", _as_vectors(path, data, "the tensor"), {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a concept file (it holds a {type(data).__name__})")
    _refuse_sdxl(path, data)
    if "string_to_param" in data:
        params = data["string_to_param"]
        if isinstance(params, dict) or hasattr(params, "items"):
            values = dict(params.items())
            value = values.get("*", next(iter(values.values()), None))
        else:
            value = params
        if value is None:
            raise InputError(f"{path}: AUTOMATIC1111 embedding with an empty string_to_param")
        info = {}
        for key in ("name", "step", "sd_checkpoint", "sd_checkpoint_name"):
            if data.get(key) is not None and isinstance(data.get(key), (str, int, float)):
                info[key] = data[key]
        ours = data.get(A1111_EXTRA_KEY)
        if isinstance(ours, dict):  # written by export_concept: the base model's family
            info.update({k: v for k, v in ours.items() if k in ("family", "base_model") and isinstance(v, str)})
        return "a1111", str(data.get("name") or ""), _as_vectors(path, value, "string_to_param"), info
    if "emb_params" in data:
        return "kohya", "", _as_vectors(path, data["emb_params"], "emb_params"), {}
    token, vectors = _diffusers_from_dict(path, data)
    return "diffusers", token, vectors, {}


def load_concept(path: str | os.PathLike, name: str | None = None) -> Concept:
    """Read any supported concept file (see module docstring). ``name`` renames it (and sets the
    placeholder to ``<name>``); otherwise the file's own name/token, or the file name, is used."""
    path = Path(path)
    concept = _load_concept(path, name)
    concept.source_file = path
    return concept


def _load_concept(path: Path, name: str | None) -> Concept:
    fmt, token, vectors, info = _read_any(path)
    if fmt == "lego":
        stored_name = str(info.get("name") or path.stem)
        stored_placeholder = str(info.get("placeholder") or placeholder_for(stored_name))
        metadata = {k: v for k, v in info.items() if k not in _DERIVED_KEYS}
        tokens = info.get("tokens")
        if isinstance(tokens, list) and len(tokens) != vectors.shape[0]:
            raise InputError(f"{path}: lists {len(tokens)} tokens but holds {vectors.shape[0]} vectors")
        if name:
            return Concept(name, placeholder_for(name), vectors, metadata)
        try:
            return Concept(stored_name, stored_placeholder, vectors, metadata)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    metadata: dict = {"imported_from": {"format": fmt, "file": path.name}}
    if fmt == "a1111":
        if "step" in info:
            metadata["steps"] = info["step"]
        if info.get("sd_checkpoint_name"):
            metadata["base_model"] = info["sd_checkpoint_name"]
        if info.get("base_model"):
            metadata["base_model"] = info["base_model"]
        if info.get("family"):
            metadata["family"] = info["family"]
    if name:
        return Concept(name, placeholder_for(name), vectors, metadata)
    if fmt == "diffusers" and token and not any(ch.isspace() for ch in token):
        return Concept(_name_from_token(token), token, vectors, metadata)
    # A1111 users type the embedding's name (the file name) in prompts; keep it recognisable.
    display = token if fmt == "a1111" and token else path.stem
    return Concept(display, placeholder_for(display), vectors, metadata)


# ----------------------------------------------------------------------------- writing


def _lego_json(concept: Concept) -> str:
    info = dict(concept.metadata)
    info.update(
        format_version=FORMAT_VERSION,
        name=concept.name,
        placeholder=concept.placeholder,
        tokens=concept.tokens,
        num_vectors=concept.num_vectors,
        text_width=concept.text_width,
    )
    return json.dumps(info, sort_keys=True, default=str)


def save_concept(concept: Concept, path: str | os.PathLike) -> Path:
    """Write the Lego format (``.safetensors``), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"{path}: Lego Studio concept files end in .safetensors")
    tensors = {LEGO_TENSOR: concept.vectors.contiguous()}
    metadata = {"format": LEGO_FORMAT_TAG, "lego": _lego_json(concept)}
    return atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def export_concept(concept: Concept, path: str | os.PathLike, fmt: str) -> Path:
    """Write ``concept`` in ``fmt`` ("lego" | "diffusers" | "a1111" | "kohya"), atomically.

    diffusers: ``.safetensors`` or ``.bin``/``.pt``; a1111: ``.pt`` (or ``.safetensors`` holding
    ``emb_params``); kohya: ``.safetensors``; lego: ``.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    suffix = path.suffix.lower()
    vectors = concept.vectors.clone().contiguous()
    if fmt == "lego":
        return save_concept(concept, path)
    if fmt == "diffusers":
        if suffix == ".safetensors":
            return atomic_save(path, lambda tmp: save_file({concept.placeholder: vectors}, tmp))
        if suffix in (".bin", ".pt"):
            return atomic_save(path, lambda tmp: torch.save({concept.placeholder: vectors}, tmp))
        raise InputError(f"{path}: diffusers embeddings end in .safetensors or .bin")
    if fmt == "a1111":
        if suffix == ".safetensors":
            return atomic_save(path, lambda tmp: save_file({"emb_params": vectors}, tmp))
        if suffix not in (".pt", ".bin"):
            raise InputError(f"{path}: AUTOMATIC1111 embeddings end in .pt (or .safetensors)")
        steps = concept.metadata.get("steps")
        data = {
            # 265 is the id of "*" in the CLIP vocabulary; A1111 writes it in every embedding.
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors},
            "name": concept.name,
            "step": int(steps) if isinstance(steps, (int, float)) else 0,
            "sd_checkpoint": None,
            "sd_checkpoint_name": model_display_name(concept.metadata.get("base_model")),
        }
        # A1111 ignores keys it does not know; this one brings the base model back on import.
        ours = {k: str(concept.metadata[k]) for k in ("family", "base_model") if concept.metadata.get(k)}
        if ours:
            data[A1111_EXTRA_KEY] = ours
        return atomic_save(path, lambda tmp: torch.save(data, tmp))
    if fmt == "kohya":
        if suffix != ".safetensors":
            raise InputError(f"{path}: kohya embeddings end in .safetensors")
        return atomic_save(path, lambda tmp: save_file({"emb_params": vectors}, tmp))
    raise InputError(f"unknown concept format {fmt!r}; choose one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------- using


def _as_list(concepts) -> list[Concept]:
    if concepts is None:
        return []
    if isinstance(concepts, Concept):
        return [concepts]
    return list(concepts)


def _family_label(model) -> str:
    family = getattr(getattr(model, "family", None), "name", None)
    return _FAMILY_LABELS.get(family, family or "unknown model")


def install_concepts(model, concepts: Concept | Iterable[Concept]) -> None:
    """Add the concepts' tokens to ``model.tokenizer`` and their vectors to the text encoder's
    embedding table (cast to its dtype/device). Idempotent: installing the same concept again
    changes nothing; a concept with an already installed placeholder replaces its rows.
    """
    concepts = _as_list(concepts)
    if not concepts:
        return
    tokenizer = model.tokenizer
    text_encoder = model.text_encoder
    width = int(text_encoder.get_input_embeddings().weight.shape[1])
    seen: dict[str, Concept] = {}
    for concept in concepts:
        if concept.text_width != width:
            raise InputError(
                f"concept {concept.placeholder} has {concept.text_width}-wide vectors but the model's "
                f"text encoder is {width} wide ({_family_label(model)})"
            )
        for token in concept.tokens:
            if token in seen and seen[token] is not concept:
                raise InputError(f"two concepts use the token {token}; rename one of them")
            seen[token] = concept

    added = tokenizer.get_added_vocab()
    vocabulary = tokenizer.get_vocab()
    for token, concept in seen.items():
        if token in vocabulary and token not in added:
            raise InputError(
                f"concept {concept.placeholder}: {token!r} is already a word the model knows; "
                f"give the concept another placeholder such as {placeholder_for(concept.name + '-concept')}"
            )
    new_tokens = [token for token in seen if token not in added]
    if new_tokens:
        tokenizer.add_tokens(new_tokens)
    embeddings = text_encoder.get_input_embeddings()
    if len(tokenizer) > embeddings.weight.shape[0]:
        # Rows are overwritten below, so skip transformers' mean/covariance initialisation.
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embeddings = text_encoder.get_input_embeddings()
    weight = embeddings.weight
    with torch.no_grad():
        for concept in concepts:
            ids = tokenizer.convert_tokens_to_ids(concept.tokens)
            rows = concept.vectors.to(device=weight.device, dtype=weight.dtype)
            index = torch.tensor(ids, device=weight.device)
            if not torch.equal(weight.index_select(0, index), rows):
                weight.index_copy_(0, index, rows)


def expand_prompt(prompt: str, concepts: Concept | Iterable[Concept]) -> str:
    """``"a dog <frozen>"`` -> ``"a dog <frozen> <frozen>_1 <frozen>_2"`` for a 3-vector concept,
    as diffusers' ``maybe_convert_prompt`` does. Already expanded prompts are left alone."""
    multi = [c for c in _as_list(concepts) if c.num_vectors > 1]
    if not multi:
        return prompt
    by_placeholder = {c.placeholder: c for c in multi}
    alternatives = sorted(by_placeholder, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(p) for p in alternatives))

    def replace(match: re.Match) -> str:
        placeholder = match.group(0)
        rest = prompt[match.end():]
        # Skip "<x>_1" itself and an "<x>" that is already followed by its "<x>_1".
        if re.match(r"_\d", rest) or re.match(r"\s*" + re.escape(placeholder) + r"_1(?!\d)", rest):
            return placeholder
        return " ".join(by_placeholder[placeholder].tokens)

    return pattern.sub(replace, prompt)
