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
``kohya``      sd-scripts ``.safetensors`` (or ``.pt``) with ``emb_params`` [N, d].
``sdxl``       the SDXL file AUTOMATIC1111, ComfyUI, kohya and diffusers all read: a ``.safetensors``
               with exactly ``clip_l`` [N, 768] (for ``text_encoder``) and ``clip_g`` [N, 1280] (for
               ``text_encoder_2``). Exporting an SDXL concept as a1111, kohya, comfyui or diffusers
               writes this file; diffusers loads it with two ``load_textual_inversion`` calls
               (``state_dict["clip_l"]`` into ``text_encoder``/``tokenizer``, ``state_dict["clip_g"]``
               into ``text_encoder_2``/``tokenizer_2``). A file with only one of the two is refused.

SDXL concepts hold both parts: ``Concept.vectors`` is ``clip_l`` and ``Concept.vectors_2`` is
``clip_g``; the Lego format stores the second as ``lego.vectors_2`` with ``family: sdxl``.
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

FORMATS = ("lego", "diffusers", "a1111", "kohya", "comfyui")
SDXL_KEYS = ("clip_l", "clip_g")
A1111_EXTRA_KEY = "lego_studio"  # our own key in an A1111 .pt (A1111_EXTRA_FIELDS)
# What that key keeps across an export and re-import: the base model, and when and how it was trained.
A1111_EXTRA_FIELDS = ("family", "base_model", "created", "method")


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
LEGO_TENSOR_2 = "lego.vectors_2"  # SDXL: the clip_g rows for text_encoder_2
LEGO_FORMAT_TAG = "lego-studio-concept"
FORMAT_VERSION = 1
# CLIP prompts hold 77 tokens including start/end; a concept must leave room for words.
MAX_VECTORS = 64
# Keys the file format derives from the vectors / identity; not part of Concept.metadata.
_DERIVED_KEYS = ("format_version", "name", "placeholder", "tokens", "num_vectors", "text_width", "text_width_2")
_FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sd2-base": "SD 2.x", "sdxl": "SDXL", "shapeworld": "Shape World",
                  "tiny": "tiny test model"}


@dataclass
class Concept:
    """A learned concept: ``vectors`` [N, d] float32 on the CPU, one row per token. SDXL concepts
    also hold ``vectors_2`` [N, d_g] for the second text encoder (``vectors`` is then ``clip_l``)."""

    name: str
    placeholder: str
    vectors: torch.Tensor
    metadata: dict = field(default_factory=dict)
    # The file it was loaded from (not saved in files); generation records it for reproduction.
    source_file: Path | None = field(default=None, compare=False, repr=False)
    vectors_2: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.vectors = self._checked(self.vectors, "vectors")
        if self.vectors_2 is not None:
            self.vectors_2 = self._checked(self.vectors_2, "clip_g vectors")
            if self.vectors_2.shape[0] != self.vectors.shape[0]:
                raise InputError(f"concept {self.placeholder}: clip_l has {self.vectors.shape[0]} vectors but clip_g "
                                 f"has {self.vectors_2.shape[0]}; an SDXL concept has as many of each")
        check_placeholder(self.placeholder)
        if isinstance(self.name, str) and any(ch < " " or ch == "\x7f" for ch in self.name):
            # A name read from a file (or typed) with a line break would split every line that shows it.
            self.name = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", self.name).split()) or "concept"
        self.metadata = dict(self.metadata or {})
        if self.vectors_2 is not None:
            self.metadata["family"] = "sdxl"

    def _checked(self, value, what: str) -> torch.Tensor:
        vectors = torch.as_tensor(value).detach()
        if vectors.dim() == 1:
            vectors = vectors.unsqueeze(0)
        if vectors.dim() != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
            raise InputError(f"concept {self.placeholder}: {what} must be [N, d], got {list(vectors.shape)}")
        return vectors.to(device="cpu", dtype=torch.float32).contiguous().clone()

    @property
    def is_sdxl(self) -> bool:
        return self.vectors_2 is not None

    @property
    def text_width_2(self) -> int:
        """The clip_g width of an SDXL concept; 0 otherwise."""
        return int(self.vectors_2.shape[1]) if self.vectors_2 is not None else 0

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.text_width, self.text_width_2) if self.vectors_2 is not None else (self.text_width,)

    @property
    def family(self) -> str | None:
        family = self.metadata.get("family")
        return family if isinstance(family, str) and family else None

    @property
    def joined_vectors(self) -> torch.Tensor:
        """[N, d] — or, for SDXL, clip_l and clip_g side by side [N, d_l + d_g]."""
        if self.vectors_2 is None:
            return self.vectors
        return torch.cat([self.vectors, self.vectors_2], dim=1)

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


def _sdxl_vectors(path: Path, data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(clip_l, clip_g)`` of an SDXL embedding file; None when it is not one. A file with only
    one of the two, or with different numbers of vectors in them, is refused."""
    present = [key for key in SDXL_KEYS if key in data]
    if not present:
        return None
    if len(present) == 1:
        missing = SDXL_KEYS[1 - SDXL_KEYS.index(present[0])]
        encoder = "text_encoder_2, 1280 wide on SDXL" if missing == "clip_g" else "text_encoder, 768 wide on SDXL"
        raise InputError(f"{path}: SDXL embedding without its {missing} tensor (for {encoder}); "
                         f"an SDXL concept needs both clip_l and clip_g")
    clip_l = _as_vectors(path, data["clip_l"], "clip_l")
    clip_g = _as_vectors(path, data["clip_g"], "clip_g")
    if clip_l.shape[0] != clip_g.shape[0]:
        raise InputError(f"{path}: clip_l has {clip_l.shape[0]} vectors but clip_g has {clip_g.shape[0]}")
    return clip_l, clip_g


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
    """-> (format, token_or_name, vectors, metadata); SDXL vectors are (clip_l, clip_g) tuples."""
    kind = _sniff(path)
    if kind == "safetensors":
        tensors, file_meta = _read_safetensors(path)
        sdxl = _sdxl_vectors(path, tensors)
        if sdxl is not None:
            return "sdxl", "", sdxl, dict(file_meta)
        if LEGO_TENSOR in tensors:
            try:
                info = json.loads(file_meta.get("lego", "{}"))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: its Lego Studio metadata is not valid JSON ({exc.msg})") from None
            if not isinstance(info, dict):
                raise InputError(f"{path}: its Lego Studio metadata is not a JSON object")
            vectors = _as_vectors(path, tensors[LEGO_TENSOR], LEGO_TENSOR)
            if LEGO_TENSOR_2 in tensors:
                vectors = (vectors, _as_vectors(path, tensors[LEGO_TENSOR_2], LEGO_TENSOR_2))
            elif info.get("family") == "sdxl":
                raise InputError(f"{path}: SDXL concept without its clip_g vectors ({LEGO_TENSOR_2})")
            return "lego", "", vectors, info
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
    sdxl = _sdxl_vectors(path, data)
    if sdxl is not None:
        return "sdxl", "", sdxl, {}
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
            info.update({k: v for k, v in ours.items() if k in A1111_EXTRA_FIELDS and isinstance(v, str)})
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
    vectors_2 = None
    if isinstance(vectors, tuple):
        vectors, vectors_2 = vectors
    if fmt == "lego":
        stored_name = str(info.get("name") or path.stem)
        stored_placeholder = str(info.get("placeholder") or placeholder_for(stored_name))
        metadata = {k: v for k, v in info.items() if k not in _DERIVED_KEYS}
        tokens = info.get("tokens")
        if isinstance(tokens, list) and len(tokens) != vectors.shape[0]:
            raise InputError(f"{path}: lists {len(tokens)} tokens but holds {vectors.shape[0]} vectors")
        if name:
            return Concept(name, placeholder_for(name), vectors, metadata, vectors_2=vectors_2)
        try:
            return Concept(stored_name, stored_placeholder, vectors, metadata, vectors_2=vectors_2)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    metadata: dict = {"imported_from": {"format": fmt, "file": path.name}}
    if fmt == "sdxl":
        metadata["family"] = "sdxl"
    if fmt == "a1111":
        if "step" in info:
            metadata["steps"] = info["step"]
        if info.get("sd_checkpoint_name"):
            metadata["base_model"] = info["sd_checkpoint_name"]
        if info.get("base_model"):
            metadata["base_model"] = info["base_model"]
        for key in ("family", "created", "method"):  # what our own export kept (A1111_EXTRA_FIELDS)
            if info.get(key):
                metadata[key] = info[key]
    if name:
        return Concept(name, placeholder_for(name), vectors, metadata, vectors_2=vectors_2)
    if fmt == "diffusers" and token and not any(ch.isspace() for ch in token):
        return Concept(_name_from_token(token), token, vectors, metadata, vectors_2=vectors_2)
    # A1111 users type the embedding's name (the file name) in prompts; keep it recognisable.
    display = token if fmt == "a1111" and token else path.stem
    return Concept(display, placeholder_for(display), vectors, metadata, vectors_2=vectors_2)


# ----------------------------------------------------------------------------- writing


def _whole_word(token: str) -> str | None:
    """The word a CLIP token ends, when it is a whole word of three or more plain ASCII letters (no
    word piece, punctuation, emoji, special token or "a" / "of"); else None."""
    word = token[:-4] if token.endswith("</w>") else None
    return word if word and len(word) >= 3 and word.isascii() and word.isalpha() else None


def closest_words(vectors: torch.Tensor, tokenizer, table: torch.Tensor, k: int = 5) -> list[str]:
    """The ``k`` whole words whose token embeddings (rows of ``table``) point most nearly the way
    the concept's ``vectors`` [N, d] do (cosine, the best over the N vectors), closest first.

    What it is for: a word that describes the exemplars' *subject* (its colour, its shape) among
    them means the subject words left it out and it went into the concept, to be drawn on other
    subjects (measured on Shape World, docs/METHOD.md "What a leaking concept is made of").
    Tokens are looked up as text nearest first, only until ``k`` words are found: this runs at the
    end of a training run beside the app's UI thread, so it keeps Python-level work (which holds
    the GIL) small."""
    rows = torch.nn.functional.normalize(table.detach().float().cpu(), dim=-1)
    v = torch.nn.functional.normalize(torch.as_tensor(vectors).float().cpu().reshape(-1, rows.shape[1]), dim=-1)
    words: list[str] = []
    for i in (v @ rows.T).max(dim=0).values.argsort(descending=True).tolist():
        word = _whole_word(tokenizer.convert_ids_to_tokens(i) or "")
        if word is not None and word not in words:
            words.append(word)
            if len(words) == k:
                break
    return words


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
    if concept.is_sdxl:
        info.update(text_width_2=concept.text_width_2, family="sdxl")
    return json.dumps(info, sort_keys=True, default=str)


def save_concept(concept: Concept, path: str | os.PathLike) -> Path:
    """Write the Lego format (``.safetensors``), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"{path}: Lego Studio concept files end in .safetensors")
    tensors = {LEGO_TENSOR: concept.vectors.contiguous()}
    if concept.is_sdxl:
        tensors[LEGO_TENSOR_2] = concept.vectors_2.contiguous()
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
    if concept.is_sdxl:
        if fmt not in FORMATS:
            raise InputError(f"unknown concept format {fmt!r}; choose one of {', '.join(FORMATS)}")
        # One SDXL file serves AUTOMATIC1111, ComfyUI, kohya and diffusers alike.
        sdxl = {"clip_l": vectors, "clip_g": concept.vectors_2.clone().contiguous()}
        if suffix == ".safetensors":
            return atomic_save(path, lambda tmp: save_file(sdxl, tmp))
        if suffix in (".pt", ".bin"):
            return atomic_save(path, lambda tmp: torch.save(sdxl, tmp))
        raise InputError(f"{path}: SDXL embeddings (clip_l + clip_g) end in .safetensors")
    if fmt == "comfyui":
        fmt = "kohya"  # ComfyUI reads the emb_params file
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
        ours = {k: str(concept.metadata[k]) for k in A1111_EXTRA_FIELDS if concept.metadata.get(k)}
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


# Families whose concepts only work with a model of the same family (widths alone may agree:
# an SD 1.x concept is 768 wide like SDXL's clip_l). tiny/custom/unknown concepts are judged by
# their widths only.
_STRICT_FAMILIES = {"sd1": "sd1", "sd2": "sd2", "sd2-base": "sd2", "sdxl": "sdxl", "shapeworld": "shapeworld"}


def family_label(family: str | None) -> str:
    return _FAMILY_LABELS.get(family, family or "unknown model")


def check_concept_family(model, concept: Concept) -> None:
    """Refuse a concept made for another model family, naming both families."""
    model_family = getattr(getattr(model, "family", None), "name", None)
    concept_family = concept.family
    if concept.is_sdxl != bool(getattr(model, "is_sdxl", False)):
        concept_family = concept_family or ("sdxl" if concept.is_sdxl else None)
    elif concept_family not in _STRICT_FAMILIES or model_family not in _STRICT_FAMILIES:
        return
    elif _STRICT_FAMILIES[concept_family] == _STRICT_FAMILIES[model_family]:
        return
    concept_label = family_label(concept_family) if concept_family else "a one-encoder model (SD 1.x/2.x)"
    raise InputError(
        f"concept {concept.placeholder} was made for {concept_label} but the model is {family_label(model_family)}; "
        f"use a {concept_label} model or a concept made for {family_label(model_family)}"
    )


def check_concepts_fit(model, concepts: Concept | Iterable[Concept]) -> None:
    """Refuse, before anything is drawn, a concept of another family or of other text widths
    than ``model``'s (one line naming both); the gallery checks every column this way first."""
    pairs = list(getattr(model, "text_encoders", None) or [(model.tokenizer, model.text_encoder)])
    widths = tuple(int(encoder.get_input_embeddings().weight.shape[1]) for _, encoder in pairs)
    for concept in _as_list(concepts):
        check_concept_family(model, concept)
        if tuple(concept.widths) != widths:
            if len(widths) == 2:
                raise InputError(
                    f"concept {concept.placeholder} has clip_l {concept.widths[0]} / clip_g {concept.widths[-1]} wide "
                    f"vectors but the model's text encoders are clip_l {widths[0]} / clip_g {widths[1]} wide "
                    f"({_family_label(model)})"
                )
            raise InputError(
                f"concept {concept.placeholder} has {concept.text_width}-wide vectors but the model's "
                f"text encoder is {widths[0]} wide ({_family_label(model)})"
            )


def install_concepts(model, concepts: Concept | Iterable[Concept]) -> None:
    """Add the concepts' tokens to ``model.tokenizer`` and their vectors to the text encoder's
    embedding table (cast to its dtype/device) — for SDXL ``clip_l`` into ``text_encoder`` and
    ``clip_g`` into ``text_encoder_2`` (with ``tokenizer_2``). Idempotent: installing the same
    concept again changes nothing; a concept with an already installed placeholder replaces its rows.

    A concept of another family (SDXL on SD 1.x, SD 1.x on SDXL ...) or of other widths is
    refused, naming both."""
    concepts = _as_list(concepts)
    if not concepts:
        return
    pairs = list(getattr(model, "text_encoders", None) or [(model.tokenizer, model.text_encoder)])
    check_concepts_fit(model, concepts)
    seen: dict[str, Concept] = {}
    for concept in concepts:
        for token in concept.tokens:
            if token in seen and seen[token] is not concept:
                raise InputError(f"two concepts use the token {token}; rename one of them")
            seen[token] = concept

    for index, (tokenizer, text_encoder) in enumerate(pairs):
        rows_of = (lambda c: c.vectors) if index == 0 else (lambda c: c.vectors_2)
        _install_rows(tokenizer, text_encoder, concepts, seen, rows_of)


def _install_rows(tokenizer, text_encoder, concepts, seen, rows_of) -> None:
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
            rows = rows_of(concept).to(device=weight.device, dtype=weight.dtype)
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
