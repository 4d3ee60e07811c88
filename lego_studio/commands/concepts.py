"""``lego-studio concepts``: import, export, inspect and list concepts in the library."""

from __future__ import annotations

import json
from pathlib import Path

from lego_studio.core.wording import plural

FORMAT_CHOICES = ("lego", "diffusers", "a1111", "kohya", "comfyui")  # core.concepts.FORMATS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "concepts",
        help="import, export, inspect and list concepts",
        description="Manage the concept library (Lego, diffusers learned_embeds, AUTOMATIC1111 and kohya files).",
    )
    sub = parser.add_subparsers(dest="concepts_command", metavar="ACTION", required=True)

    imp = sub.add_parser("import", help="copy a concept file into the library", description=(
        "Import a concept file (Lego .safetensors, diffusers learned_embeds .bin/.safetensors, "
        "AUTOMATIC1111 .pt/.safetensors, kohya .safetensors) into the library."))
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("--name", help="library name (default: the concept's own name); the placeholder becomes <name>")
    imp.add_argument("--replace", action="store_true", help="replace a library concept of the same name instead of refusing")
    imp.add_argument("--tag", action="append", default=[], help="tag to attach; repeat for several")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser("export", help="write a concept in another tool's format")
    exp.add_argument("concept", metavar="NAME_OR_FILE", help="library name or concept file")
    exp.add_argument("--format", required=True, choices=FORMAT_CHOICES, dest="fmt")
    exp.add_argument("--out", required=True, type=Path, metavar="FILE",
                     help="diffusers: .safetensors or .bin; a1111: .pt; kohya, comfyui and lego: .safetensors; "
                          "an SDXL concept: one .safetensors with clip_l and clip_g for every tool")
    exp.set_defaults(func=run_export)

    ins = sub.add_parser("inspect", help="show what a concept file holds")
    ins.add_argument("concept", metavar="FILE", help="concept file (or library name)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=run_inspect)

    lst = sub.add_parser("list", help="list the concepts in the library")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=run_list)


def load_concept_spec(spec: str):
    """(concept, path) from a concept file path or, failing that, a library name."""
    from lego_studio.core.concepts import load_concept
    from lego_studio.core.errors import InputError
    from lego_studio.core.library import ConceptLibrary, library_name

    path = Path(spec).expanduser()
    if path.exists():
        return load_concept(path), path
    library = ConceptLibrary()
    name = library_name(spec)
    if name in library:
        return library.get(name), library.concept_path(name)
    raise InputError(f"{spec}: no such concept file, and no concept of that name in the library ({library.root})")


def run_import(args) -> int:
    from lego_studio.core.concepts import load_concept
    from lego_studio.core.errors import InputError
    from lego_studio.core.library import ConceptLibrary, NameTaken, library_name

    library = ConceptLibrary()
    concept = load_concept(args.file)  # fails here, naming the file, before touching the library
    wanted = library_name(args.name or concept.name)
    try:  # the library lock makes the name check and the write one step (core/library.py)
        entry = library.add(
            concept,
            name=wanted,
            tags=args.tag,
            source=str(args.file.resolve()),
            on_conflict="replace" if args.replace else "error",
        )
    except NameTaken as exc:
        raise InputError(f"{exc}; pass --replace to replace it, or --name {exc.free_name} to keep both") from None
    print(
        f"imported {args.file} as {entry.placeholder} ({plural(entry.num_vectors, 'vector')}, width {entry.text_width}, "
        f"{entry.badge}) -> {entry.path}"
    )
    return 0


def run_export(args) -> int:
    from lego_studio.core.concepts import export_concept

    concept, source = load_concept_spec(args.concept)
    out = export_concept(concept, args.out, args.fmt)
    hint = {
        "diffusers": f'pipe.load_textual_inversion("{out}", token="{concept.placeholder}")',
        "a1111": f"put it in stable-diffusion-webui/embeddings/ and write {out.stem} in prompts",
        "kohya": f"use it as an embedding; write {out.stem} in prompts",
        "comfyui": f"put it in ComfyUI/models/embeddings/ and write embedding:{out.stem} in prompts",
        "lego": f"import it with: lego-studio concepts import {out}",
    }[args.fmt]
    if concept.is_sdxl and args.fmt == "diffusers":
        hint = (f'state = safetensors.torch.load_file("{out}"); pipe.load_textual_inversion(state["clip_l"], '
                f'token="{concept.placeholder}", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer); '
                f'pipe.load_textual_inversion(state["clip_g"], token="{concept.placeholder}", '
                f'text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)')
    width = " + ".join(f"{name} {w}" for name, w in zip(("clip_l", "clip_g"), concept.widths)) \
        if concept.is_sdxl else str(concept.text_width)
    print(f"wrote {args.fmt} file {out} ({plural(concept.num_vectors, 'vector')} of width {width})")
    print(f"  use: {hint}")
    return 0


def describe(concept, path: Path) -> dict:
    from lego_studio.core.concepts import detect_concept_format
    from lego_studio.core.library import family_badge

    family = concept.family
    return {
        "file": str(path),
        "format": detect_concept_format(path),
        "name": concept.name,
        "placeholder": concept.placeholder,
        "tokens": concept.tokens,
        "num_vectors": concept.num_vectors,
        "text_width": concept.text_width,
        "text_width_2": concept.text_width_2,
        "family": family,
        "made_for": family_badge(family, concept.text_width),
        "metadata": concept.metadata,
    }


def run_inspect(args) -> int:
    concept, path = load_concept_spec(args.concept)
    info = describe(concept, path)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    print(f"file:        {info['file']}")
    print(f"format:      {info['format']}")
    print(f"name:        {info['name']}")
    print(f"placeholder: {info['placeholder']}")
    print(f"tokens:      {' '.join(info['tokens'])}")
    if info["text_width_2"]:
        print(f"vectors:     {info['num_vectors']} x clip_l {info['text_width']} + clip_g {info['text_width_2']}")
    else:
        print(f"vectors:     {info['num_vectors']} x {info['text_width']}")
    print(f"made for:    {info['made_for']}")
    for key in sorted(info["metadata"]):
        value = info["metadata"][key]
        text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)
        print(f"  {key}: {text}")
    return 0


def run_list(args) -> int:
    import sys

    from lego_studio.core.library import ConceptLibrary

    library = ConceptLibrary()
    entries = library.list()
    if args.json:
        print(json.dumps([
            {"name": e.name, "placeholder": e.placeholder, "num_vectors": e.num_vectors, "text_width": e.text_width,
             "made_for": e.badge, "subject": e.subject, "tags": e.tags, "file": str(e.path)}
            for e in entries
        ], indent=2))
    elif not entries:
        print(f"the library is empty ({library.root}); add concepts with: lego-studio concepts import FILE")
    else:
        rows = [("NAME", "PLACEHOLDER", "N", "WIDTH", "MADE FOR", "SUBJECT", "TAGS")]
        rows += [(e.name, e.placeholder, str(e.num_vectors), str(e.text_width), e.badge, e.subject, ",".join(e.tags))
                 for e in entries]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for path, reason in library.problems():
        print(f"skipped unreadable concept: {reason}", file=sys.stderr)
    return 0
