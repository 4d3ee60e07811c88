"""The concept library: a folder of concepts the user keeps, with thumbnails and tags.

Layout (plain files; the ``.safetensors`` files are the truth)::

    library/
      frozen.safetensors     a concept in the Lego format (core/concepts.py)
      frozen.png             optional thumbnail (at most 256 px)
      index.json             {"schema": 1, "entries": {"frozen": {"tags", "added", "source"}}}

A library name is one lower-case word (``frozen-in-ice``) and the concept's placeholder is always
``<name>``: what the user sees in the list is what they type in prompts, so renaming an entry
renames its placeholder too (prompts written with the old placeholder must be updated).
Concept files copied into the folder by hand show up in :meth:`ConceptLibrary.list` as well.

Where it lives: ``Settings.library_dir`` or ``<data dir>/library``; :meth:`ConceptLibrary.move_to`
moves the files and remembers the new place in the settings.

Several processes (the app, the CLI, two windows) may change one library at once: every change
(add/import, rename, delete, tags, thumbnail, move) holds the library lock ``.index.json.lock``
(core/locks.py) across its read-modify-write of the folder and ``index.json``, so no entry is lost
and a name is taken by one of them only. Reading needs no lock (every file is replaced atomically).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable

from lego_studio.core import paths
from lego_studio.core.errors import InputError, LegoError, disk_error
from lego_studio.core.locks import LockBusy, ProcessLock

INDEX_FILE = "index.json"
LOCK_FILE = ".index.json.lock"
LOCK_TIMEOUT_S = 60.0  # a change waits this long for another process's change to end
INDEX_SCHEMA = 1
THUMBNAIL_SIZE = 256
CONFLICT_CHOICES = ("rename", "error", "replace")

_BADGES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sd2-base": "SD 2.x", "sdxl": "SDXL", "shapeworld": "Shape World"}
# Text-encoder widths of the public families, for concepts whose metadata does not say.
_WIDTH_FAMILIES = {768: "sd1", 1024: "sd2"}


def family_badge(family: str | None, width: int) -> str:
    """Short label for the base model a concept was made for; a concept whose file does not say
    (an imported A1111/kohya embedding of an unusual width) is an "unknown model"."""
    family = family or _WIDTH_FAMILIES.get(width)
    if family in _BADGES:
        return _BADGES[family]
    if family in ("tiny", "custom"):
        return f"tiny/custom (width {width})"
    return f"unknown model, width {width}"


def library_name(name: str) -> str:
    """The library's spelling of ``name``: ``"Frozen in ice"`` -> ``"frozen-in-ice"``."""
    from lego_studio.core.concepts import placeholder_for

    return placeholder_for(name)[1:-1]


class NameTaken(InputError):
    """The library already has a concept of this name (``on_conflict="error"``); front ends ask
    the user whether to replace it or keep both."""

    def __init__(self, message: str, name: str, free_name: str):
        super().__init__(message)
        self.name = name
        self.free_name = free_name  # what "keep both" would call the new one


@dataclass
class LibraryEntry:
    name: str
    placeholder: str
    num_vectors: int
    text_width: int
    family: str | None
    badge: str
    tags: list[str]
    thumbnail: Path | None
    created: str  # when the concept was trained (or added, when the file does not say)
    added: str
    source: str  # where it came from: a run folder, an imported file ...
    subject: str
    path: Path
    metadata: dict = field(default_factory=dict, repr=False)
    text_width_2: int = 0  # SDXL: the clip_g width (text_width is clip_l's)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.text_width, self.text_width_2) if self.text_width_2 else (self.text_width,)


class ConceptLibrary:
    """A folder of concepts. Every method reads the folder afresh, so two windows (or the CLI and
    the app) see each other's changes."""

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            from lego_studio.core.settings import Settings

            root = Settings.load().library_path()
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: the library folder is a file, not a folder; move that file away "
                             "or choose another library folder in the settings")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise (disk_error(exc, self.root, "creating the library folder") or exc) from exc
        self._clean_temps()

    def _clean_temps(self) -> None:
        """Temp files a killed write left behind, removed when no other process is changing the
        library (a live writer's temp file is never taken)."""
        if not any(paths.is_temp_file(p.name) for p in self.root.glob(".*")):
            return
        try:
            with self._lock(timeout=0):
                paths.clean_stale_temps(self.root)
        except (LockBusy, OSError):
            pass  # busy or read-only: the next start cleans up

    @contextmanager
    def _lock(self, timeout: float | None = LOCK_TIMEOUT_S):
        """Hold the library's change lock across a read-modify-write of the folder."""
        lock = ProcessLock(self.root / LOCK_FILE,
                           "{path}: the library is being changed by process {pid}; try again in a moment")
        try:
            lock.acquire(timeout=timeout)
        except OSError as exc:
            raise (disk_error(exc, self.root, "changing the library in") or exc) from exc
        try:
            yield lock
        finally:
            lock.release()

    # ---------------------------------------------------------------- index

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def _read_index(self) -> dict[str, dict]:
        """Tags and provenance per name. A broken index only loses tags, never concepts."""
        import json

        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}

    def _write_index(self, entries: dict[str, dict]) -> None:
        paths.atomic_write_json(self.index_path, {"schema": INDEX_SCHEMA, "entries": entries})

    def concept_path(self, name: str) -> Path:
        return self.root / f"{name}.safetensors"

    def thumbnail_path(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def _require(self, name: str) -> Path:
        path = self.concept_path(name)
        if not path.is_file():
            raise InputError(f"{self.root}: no concept named {name!r} in the library")
        return path

    # ---------------------------------------------------------------- reading

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.safetensors") if not p.name.startswith("."))

    def __contains__(self, name: str) -> bool:
        return self.concept_path(name).is_file()

    def get(self, name: str):
        """The :class:`core.concepts.Concept` called ``name``."""
        from lego_studio.core.concepts import load_concept

        return load_concept(self._require(name))

    def entry(self, name: str, index: dict | None = None) -> LibraryEntry:
        concept = self.get(name)
        info = (index if index is not None else self._read_index()).get(name, {})
        metadata = concept.metadata
        width = concept.text_width
        family = concept.family
        path = self.concept_path(name)
        added = str(info.get("added") or datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds"))
        thumbnail = self.thumbnail_path(name)
        tags = info.get("tags") if isinstance(info.get("tags"), list) else []
        return LibraryEntry(
            name=name,
            placeholder=concept.placeholder,
            num_vectors=concept.num_vectors,
            text_width=width,
            family=family or _WIDTH_FAMILIES.get(width),
            badge=family_badge(family, width),
            tags=[str(t) for t in tags],
            thumbnail=thumbnail if thumbnail.is_file() else None,
            created=str(metadata.get("created") or added),
            added=added,
            source=str(info.get("source") or ""),
            subject=str(metadata.get("subject") or ""),
            path=path,
            metadata=metadata,
            text_width_2=concept.text_width_2,
        )

    def list(self) -> list[LibraryEntry]:
        """Every readable concept, by name. Unreadable files are skipped (see :meth:`problems`)."""
        index = self._read_index()
        entries = []
        for name in self.names():
            try:
                entries.append(self.entry(name, index))
            except LegoError:
                continue
        return entries

    def problems(self) -> list[tuple[Path, str]]:
        """Files in the library folder that are not readable concepts, with the reason."""
        found = []
        for name in self.names():
            try:
                self.get(name)
            except LegoError as exc:
                found.append((self.concept_path(name), str(exc)))
        return found

    def search(self, text: str) -> list[LibraryEntry]:
        """Entries whose name, placeholder, tags or subject contain every word of ``text``
        (case-insensitive). Empty text matches everything."""
        words = text.casefold().split()
        results = []
        for entry in self.list():
            haystack = " ".join([entry.name, entry.placeholder, entry.subject, *entry.tags]).casefold()
            if all(word in haystack for word in words):
                results.append(entry)
        return results

    def compatible_with(self, model_or_family=None, width: int | None = None) -> list[LibraryEntry]:
        """Entries usable with a model: an SDModel, a ModelFamily, or a text-encoder ``width``.

        The text-encoder widths decide (vectors must fit the embedding tables: SDXL concepts need
        an SDXL model of the same clip_l / clip_g widths), and a concept made for another known
        family (an SD 1.x concept on SDXL, whose clip_l is as wide) is left out too."""
        from lego_studio.core.concepts import _STRICT_FAMILIES

        family = None
        if width is None:
            family = getattr(model_or_family, "family", model_or_family)
            width = getattr(family, "text_width", None)
        if width is None:
            raise InputError("compatible_with needs a model, a model family or a text-encoder width")
        widths = tuple(getattr(family, "widths", None) or (int(width),))
        name = getattr(family, "name", None)

        def fits(entry: LibraryEntry) -> bool:
            if tuple(entry.widths) != widths:
                return False
            if entry.family in _STRICT_FAMILIES and name in _STRICT_FAMILIES:
                return _STRICT_FAMILIES[entry.family] == _STRICT_FAMILIES[name]
            return True

        return [entry for entry in self.list() if fits(entry)]

    # ---------------------------------------------------------------- changing

    def free_name(self, wanted: str) -> str:
        candidate, counter = wanted, 2
        while candidate in self:
            candidate = f"{wanted}-{counter}"
            counter += 1
        return candidate

    def add(
        self,
        concept,
        name: str | None = None,
        thumbnail=None,
        tags: Iterable[str] = (),
        source: str | None = None,
        on_conflict: str = "rename",
    ) -> LibraryEntry:
        """Add a Concept or any concept file :func:`core.concepts.load_concept` reads.

        The library keeps its own copy in the Lego format. ``name`` defaults to the concept's
        name; when it is taken, ``on_conflict`` decides: ``"rename"`` (``frozen-2``),
        ``"error"`` or ``"replace"``. ``thumbnail`` is an image path or a PIL image.
        """
        from lego_studio.core.concepts import Concept, load_concept

        if on_conflict not in CONFLICT_CHOICES:
            raise InputError(f"unknown on_conflict {on_conflict!r}; choose one of {', '.join(CONFLICT_CHOICES)}")
        if not isinstance(concept, Concept):
            source = source or str(Path(concept).resolve())
            concept = load_concept(concept)
        with self._lock():
            return self._add_locked(concept, name, thumbnail, tags, source, on_conflict)

    def _add_locked(self, concept, name, thumbnail, tags, source, on_conflict) -> LibraryEntry:
        from lego_studio.core.concepts import Concept, save_concept

        concept, original = self._with_original_record(concept)
        index = self._read_index()
        if original is not None:  # the copy looks like its original in the library, too
            if thumbnail is None and self.thumbnail_path(original).is_file():
                thumbnail = self.thumbnail_path(original)
            tags = tags or index.get(original, {}).get("tags", [])
        wanted = library_name(name or concept.name)
        if wanted in self:
            if on_conflict == "error":
                raise NameTaken(f"{self.concept_path(wanted)}: the library already has a concept named {wanted!r}",
                                wanted, self.free_name(wanted))
            if on_conflict == "rename":
                wanted = self.free_name(wanted)
        stored = Concept(wanted, f"<{wanted}>", concept.vectors, dict(concept.metadata), vectors_2=concept.vectors_2)
        save_concept(stored, self.concept_path(wanted))
        if thumbnail is not None:
            self.set_thumbnail(wanted, thumbnail)
        elif on_conflict == "replace":
            self.thumbnail_path(wanted).unlink(missing_ok=True)
        index[wanted] = {
            "tags": _clean_tags(tags),
            "added": datetime.now().isoformat(timespec="seconds"),
            "source": source or "",
        }
        self._write_index(index)
        return self.entry(wanted)

    def _with_original_record(self, concept) -> tuple:
        """An imported file (A1111, diffusers, kohya) carries little metadata; when the library
        holds the concept it came from (the same vectors), keep that concept's record (method,
        config, subject, base model) and note where this copy came from. Returns the concept and
        the original's name (None when there is none)."""
        from lego_studio.core.concepts import Concept

        imported = concept.metadata.get("imported_from")
        if not imported:
            return concept, None
        import torch

        for path in sorted(self.root.glob("*.safetensors")):
            if path.name.startswith("."):
                continue
            try:
                original = self.get(path.stem)
            except LegoError:
                continue
            if (original.joined_vectors.shape == concept.joined_vectors.shape
                    and torch.equal(original.joined_vectors, concept.joined_vectors)):
                metadata = {**original.metadata, "imported_from": imported}
                return (Concept(concept.name, concept.placeholder, concept.vectors, metadata, vectors_2=concept.vectors_2),
                        path.stem)
        return concept, None

    def set_thumbnail(self, name: str, image) -> Path:
        """Store a thumbnail (image path or PIL image), shrunk to 256 px on the long side."""
        from PIL import Image

        self._require(name)
        if isinstance(image, Image.Image):
            picture = image.convert("RGB")
        else:
            from lego_studio.core.images import load_image

            picture = load_image(image)
        picture = picture.copy()
        picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        with self._lock():
            self._require(name)
            return paths.atomic_save(self.thumbnail_path(name), lambda tmp: picture.save(tmp, format="PNG"))

    def rename(self, old: str, new: str) -> LibraryEntry:
        """Rename an entry; its placeholder becomes ``<new>``."""
        with self._lock():
            return self._rename_locked(old, new)

    def _rename_locked(self, old: str, new: str) -> LibraryEntry:
        from lego_studio.core.concepts import Concept, save_concept

        self._require(old)
        new = library_name(new)
        if new == old:
            return self.entry(old)
        if new in self:
            raise InputError(f"{self.concept_path(new)}: the library already has a concept named {new!r}")
        concept = self.get(old)
        save_concept(Concept(new, f"<{new}>", concept.vectors, concept.metadata, vectors_2=concept.vectors_2),
                     self.concept_path(new))
        if self.thumbnail_path(old).is_file():
            os.replace(self.thumbnail_path(old), self.thumbnail_path(new))
        index = self._read_index()
        if old in index:
            index[new] = index.pop(old)
        self._write_index(index)
        self.concept_path(old).unlink()
        return self.entry(new)

    def delete(self, name: str) -> None:
        with self._lock():
            self._require(name)
            try:
                self.concept_path(name).unlink()
                self.thumbnail_path(name).unlink(missing_ok=True)
            except OSError as exc:
                raise (disk_error(exc, self.concept_path(name), "deleting") or exc) from exc
            index = self._read_index()
            if index.pop(name, None) is not None:
                self._write_index(index)

    def set_tags(self, name: str, tags: Iterable[str]) -> None:
        with self._lock():
            self._require(name)
            index = self._read_index()
            index.setdefault(name, {"added": datetime.now().isoformat(timespec="seconds"), "source": ""})
            index[name]["tags"] = _clean_tags(tags)
            self._write_index(index)

    def export(self, name: str, fmt: str, path: str | os.PathLike) -> Path:
        """Write the concept as ``fmt`` ("lego" | "diffusers" | "a1111" | "kohya" | "comfyui") to
        ``path`` (an SDXL concept: one clip_l + clip_g file for all but lego)."""
        from lego_studio.core.concepts import export_concept

        return export_concept(self.get(name), path, fmt)

    def move_to(self, new_root: str | os.PathLike, remember: bool = True) -> Path:
        """Move every library file to ``new_root`` (which must be empty or missing) and, with
        ``remember``, store the new place in the settings."""
        new_root = Path(new_root).expanduser()
        if new_root.resolve() == self.root.resolve():
            return self.root
        if new_root.exists() and (not new_root.is_dir() or any(new_root.iterdir())):
            raise InputError(f"{new_root}: choose an empty or new folder for the library")
        new_root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            for item in sorted(self.root.iterdir()):
                if item.name != LOCK_FILE:
                    shutil.move(str(item), str(new_root / item.name))
        (self.root / LOCK_FILE).unlink(missing_ok=True)
        try:
            self.root.rmdir()  # empty now; a folder the user chose stays if it had other files
        except OSError:
            pass
        self.root = new_root
        if remember:
            from lego_studio.core.settings import Settings

            settings = Settings.load()
            settings.library_dir = str(new_root.resolve())
            settings.save()
        return new_root


def _clean_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    seen: list[str] = []
    for tag in tags:
        tag = str(tag).strip()
        if tag and tag not in seen:
            seen.append(tag)
    return seen
