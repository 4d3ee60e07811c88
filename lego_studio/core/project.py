"""A project is a folder of plain files; ``project.json`` ties them together.

Layout::

    My Project/
      project.json        versioned (``"schema": 1``), rewritten atomically on every change
      images/             the exemplar images (copies of what the user added)
      masks/              <image stem>.png: 8-bit, 255 = subject, same size as its image
      subject_images/     optional clean pictures of the subject alone (for stage 0)
      runs/<id>/          one training run; written by the trainer (config.json, log.jsonl,
                          checkpoints/, previews/, concept.safetensors)
      gallery/            generated PNGs, prompt/seed/model/concept in their text chunks

Decisions (user-visible; docs/FILES.md repeats them):

* **Adding images copies them.** A file is copied byte for byte unless its EXIF orientation tag
  says it is stored rotated: then the upright pixels are saved as PNG instead. Masks are painted
  on upright pixels, so the stored image must *be* upright for every reader, not only for those
  that honour EXIF. Every file is first checked with :func:`core.images.load_image`; a broken one is
  reported and skipped, the others are still added. Names are de-duplicated by stem
  (``cat.jpg`` + ``cat.png`` -> ``cat.jpg``, ``cat-2.png``) because masks are keyed by stem. A file
  whose content is already in the project is skipped and reported.
* **Deleting a project moves it to the trash folder** ``<data dir>/trash/`` (nothing is lost
  by a mis-click; empty that folder to reclaim the space).
* Masks present in ``masks/`` but not listed in ``project.json`` (copied in by hand) are picked up
  when the project is opened: the files are the truth.
* **One window writes a project.** The app claims the project (:meth:`Project.claim`, the lock
  ``.project.lock``, core/locks.py) when it opens it; a second window or process opening the same
  project gets it **read-only** and is told so, and every change there is refused in one line
  instead of silently overwriting the other window's work. A project on a read-only disk opens
  read-only the same way. The lock dies with its process.
* Run status comes from each run's record ``runs/<id>/run.json`` (core/runs.py): the trainer
  writes its end state; a run whose process is gone is ``interrupted`` (the app crashed or was
  killed) and can be resumed from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from lego_studio.core import paths
from lego_studio.core.errors import InputError, disk_error
from lego_studio.core.runs import RunInfo, list_runs

PROJECT_FILE = "project.json"
LOCK_FILE = ".project.lock"
# Folders of the project whose atomic-write temp files the claiming window may clean (not runs/:
# a run there may be trained by another process, which cleans its own folder).
_CLEANED_FOLDERS = (".", "images", "masks", "subject_images", "gallery")
SCHEMA_VERSION = 1
IMAGES_DIR = "images"
MASKS_DIR = "masks"
SUBJECT_IMAGES_DIR = "subject_images"
RUNS_DIR = "runs"
GALLERY_DIR = "gallery"
TRASH_DIR = "trash"

# Mask states shown as badges on the image strip.
MASK_NONE = "none"  # not painted yet
MASK_PAINTED = "painted"
MASK_MISSING = "missing"  # listed in project.json, file gone
MASK_INVALID = "invalid"  # unreadable, or not the size of its image

_EXIF_ORIENTATION = 0x0112
_UNSAFE_NAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def safe_folder_name(name: str) -> str:
    """A project/file name usable on Windows, macOS and Linux (spaces kept, separators not)."""
    cleaned = _UNSAFE_NAME_CHARS.sub("-", name).strip().strip(".")
    return cleaned or "untitled"


def _stored_rotated(path: Path) -> bool:
    """True when the file carries an EXIF orientation other than 'upright' (1)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1) != 1
    except Exception:  # noqa: BLE001 - load_image already accepted the file; EXIF is best effort
        return False


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only: fast enough for badges on every image."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@dataclass
class ImageEntry:
    """One image of the project. Paths are relative to the project folder, with ``/``."""

    file: str
    mask: str | None = None
    added: str = field(default_factory=now_iso)
    source_sha256: str | None = None  # of the file the user added: spots re-adding it

    @property
    def name(self) -> str:
        return Path(self.file).name

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    def to_json(self) -> dict:
        data = {"file": self.file, "mask": self.mask, "added": self.added}
        if self.source_sha256:
            data["source_sha256"] = self.source_sha256
        return data


def _relative_file(value, source: Path) -> str:
    """Validate a project-relative path from project.json: inside the project, forward slashes."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{source}: an image entry has no file name")
    path = Path(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise InputError(f"{source}: image path {value!r} points outside the project")
    return path.as_posix()


class Project:
    """An open project folder. Change fields, then :meth:`save`; methods that add or remove
    files save by themselves so ``project.json`` always matches the folder."""

    def __init__(self, folder: Path, data: dict):
        self.folder = Path(folder)
        self.name: str = data["name"]
        self.subject: str = data["subject"]
        self.concept_name: str = data["concept_name"]
        self.positive_words: list[str] = list(data["positive_words"])
        self.negative_words: list[str] = list(data["negative_words"])
        self.images: list[ImageEntry] = list(data["images"])
        self.subject_images: list[ImageEntry] = list(data["subject_images"])
        self.created: str = data["created"]
        self.modified: str = data["modified"]
        self.train_defaults: dict = dict(data["train_defaults"])
        self.extra: dict = dict(data.get("extra", {}))  # keys from newer minor versions, kept
        self.read_only: str | None = None  # why changes are refused (set by claim), None = writable
        self._lock = None

    # ---------------------------------------------------------------- one writer

    def claim(self) -> str | None:
        """Make this the window that writes the project: take its lock. Returns None when it is
        ours, else the one-line reason it is opened read-only (another window or process has it,
        or the folder cannot be written); every change then raises :class:`ProjectReadOnly`.
        Claiming also removes temp files that killed writes left in the project."""
        from lego_studio.core.locks import LockBusy, ProcessLock

        if self._lock is not None:
            return self.read_only
        lock = ProcessLock(self.folder / LOCK_FILE, reentrant=False,
                           busy_message=f"{self.folder}: open in another Lego Studio window (process {{pid}}); "
                                        "opened read-only: close it there to change it here")
        try:
            lock.acquire(timeout=0)
        except LockBusy as exc:
            self.read_only = str(exc)
            return self.read_only
        except OSError as exc:
            problem = disk_error(exc, self.folder, "opening")
            self.read_only = f"{self.folder}: opened read-only ({problem or exc})"
            return self.read_only
        self._lock = lock
        if not os.access(self.folder, os.W_OK) or not os.access(self.file, os.W_OK):
            self.read_only = f"{self.folder}: opened read-only (the folder or project.json cannot be written)"
            return self.read_only
        self.read_only = None
        for sub in _CLEANED_FOLDERS:
            paths.clean_stale_temps(self.folder / sub)
        return None

    def release(self) -> None:
        """Give the project back (the window closes it or opens another)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_writable(self) -> None:
        if self.read_only:
            raise ProjectReadOnly(self.read_only)

    # ---------------------------------------------------------------- create / open / save

    @property
    def file(self) -> Path:
        return self.folder / PROJECT_FILE

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        name: str | None = None,
        subject: str = "",
        concept_name: str | None = None,
        positive_words: Iterable[str] = (),
        negative_words: Iterable[str] = (),
        train_defaults: dict | None = None,
    ) -> "Project":
        """Make a new project in ``folder`` (which must not exist, or be empty)."""
        folder = Path(folder).expanduser()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise InputError(f"{folder}: already exists and is not an empty folder")
        name = (name or folder.name).strip()
        stamp = now_iso()
        data = {
            "name": name,
            "subject": subject.strip(),
            "concept_name": (concept_name or _default_concept_name(name)).strip(),
            "positive_words": _word_list(positive_words, folder),
            "negative_words": _word_list(negative_words, folder),
            "images": [],
            "subject_images": [],
            "created": stamp,
            "modified": stamp,
            "train_defaults": dict(train_defaults or {}),
        }
        for sub in (IMAGES_DIR, MASKS_DIR, SUBJECT_IMAGES_DIR, RUNS_DIR, GALLERY_DIR):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        project = cls(folder, data)
        project.save()
        return project

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "Project":
        """Open a project folder (or its project.json)."""
        folder = Path(folder).expanduser()
        if folder.name == PROJECT_FILE and folder.is_file():
            folder = folder.parent
        source = folder / PROJECT_FILE
        if not source.is_file():
            raise InputError(f"{folder}: not a Lego Studio project (no {PROJECT_FILE})")
        try:
            raw = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: cannot read project file ({exc})") from None
        except ValueError as exc:
            raise InputError(f"{source}: broken project file ({exc})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{source}: broken project file (not a JSON object)")
        schema = raw.get("schema", SCHEMA_VERSION)  # a hand-written project.json may leave it out
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise InputError(f"{source}: broken project file (schema {schema!r} is not a number)")
        if schema > SCHEMA_VERSION:
            raise InputError(
                f"{source}: made by a newer Lego Studio (project schema {schema}, this version reads "
                f"up to {SCHEMA_VERSION}); update the app"
            )
        project = cls(folder, _validated(raw, folder, source))
        project._adopt_unlisted_masks()
        return project

    def to_json(self) -> dict:
        data = dict(self.extra)
        data.update(
            {
                "schema": SCHEMA_VERSION,
                "name": self.name,
                "subject": self.subject,
                "concept_name": self.concept_name,
                "positive_words": list(self.positive_words),
                "negative_words": list(self.negative_words),
                "images": [e.to_json() for e in self.images],
                "subject_images": [e.to_json() for e in self.subject_images],
                "created": self.created,
                "modified": self.modified,
                "train_defaults": self.train_defaults,
            }
        )
        return data

    def save(self) -> Path:
        """Check the editable fields and write project.json atomically. A read-only project
        (:meth:`claim`) refuses, unless nothing changed."""
        if self.read_only:
            if self._same_as_on_disk():
                return self.file
            raise ProjectReadOnly(self.read_only)
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"{self.file}: the project needs a name")
        if "\n" in self.name:
            raise InputError(f"{self.file}: the project name must be one line")
        if not isinstance(self.subject, str):
            raise InputError(f"{self.file}: the subject must be words such as 'a toy robot'")
        _check_concept_name(self.concept_name, self.file)
        self.positive_words = _word_list(self.positive_words, self.file)
        self.negative_words = _word_list(self.negative_words, self.file)
        if not isinstance(self.train_defaults, dict):
            raise InputError(f"{self.file}: train_defaults must be a JSON object")
        self.modified = now_iso()
        return paths.atomic_write_json(self.file, self.to_json())

    def _same_as_on_disk(self) -> bool:
        try:
            on_disk = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        mine = self.to_json()
        if not isinstance(on_disk, dict):
            return False
        for data in (on_disk, mine):
            data.pop("modified", None)
        return json.loads(json.dumps(mine, default=str)) == on_disk

    @property
    def placeholder(self) -> str:
        """What the user types in prompts for this project's concept."""
        return f"<{self.concept_name}>"

    # ---------------------------------------------------------------- images

    def _entries(self, kind: str) -> list[ImageEntry]:
        if kind == "exemplar":
            return self.images
        if kind == "subject":
            return self.subject_images
        raise InputError(f"unknown image kind {kind!r} (use 'exemplar' or 'subject')")

    def entry(self, image) -> ImageEntry:
        """The entry for ``image``: an ImageEntry, its name ("a.png"), its relative path
        ("images/a.png") or its absolute path."""
        if isinstance(image, ImageEntry):
            return image
        text = str(image)
        candidate = Path(text)
        if candidate.is_absolute():
            try:
                text = candidate.resolve().relative_to(self.folder.resolve()).as_posix()
            except ValueError:
                raise InputError(f"{candidate}: is not an image of project {self.name!r}") from None
        for entry in self.images + self.subject_images:
            if text in (entry.file, entry.name):
                return entry
        raise InputError(f"{self.file}: no image {text!r} in this project")

    def image_path(self, image) -> Path:
        return self.folder / self.entry(image).file

    def add_images(self, files: Iterable[str | os.PathLike], kind: str = "exemplar") -> list[tuple[Path, str]]:
        """Copy ``files`` into the project (see the module docstring for the policy).

        Returns the files that were NOT added, as ``(path, one-line reason)``; the good ones are
        appended to :attr:`images` (or :attr:`subject_images` for ``kind="subject"``) and saved.
        """
        self._check_writable()
        entries = self._entries(kind)
        failures: list[tuple[Path, str]] = []
        added = False
        for source in files:
            source = Path(source)
            try:
                entries.append(self._import_image(source, kind))
                added = True
            except InputError as exc:
                failures.append((source, str(exc)))
        if added:
            self.save()
        return failures

    def _import_image(self, source: Path, kind: str) -> ImageEntry:
        from lego_studio.core.images import load_image

        image = load_image(source)  # raises InputError naming the file when it is unusable
        digest = paths.file_sha256(source)
        for existing in self._entries(kind):
            if existing.source_sha256 == digest:
                raise InputError(f"{source}: already in the project as {existing.file}")
        subdir = IMAGES_DIR if kind == "exemplar" else SUBJECT_IMAGES_DIR
        rotated = _stored_rotated(source)
        suffix = ".png" if rotated else source.suffix.lower()
        target = self._unique_target(self.folder / subdir, safe_folder_name(source.stem), suffix)
        if rotated:
            paths.atomic_save(target, lambda tmp: image.save(tmp, format="PNG"))
        else:
            paths.atomic_save(target, lambda tmp: shutil.copyfile(source, tmp))
        return ImageEntry(file=f"{subdir}/{target.name}", source_sha256=digest)

    def _unique_target(self, folder: Path, stem: str, suffix: str) -> Path:
        """``folder/stem+suffix``, with ``-2``, ``-3`` ... so that no two files share a stem
        (case-insensitively: masks are keyed by stem and some file systems ignore case)."""
        folder.mkdir(parents=True, exist_ok=True)
        taken = {p.stem.casefold() for p in folder.iterdir()}
        taken |= {Path(e.file).stem.casefold() for e in self.images + self.subject_images if Path(e.file).parent.name == folder.name}
        candidate, counter = stem, 2
        while candidate.casefold() in taken:
            candidate = f"{stem}-{counter}"
            counter += 1
        return folder / (candidate + suffix)

    def remove_image(self, image) -> None:
        """Forget ``image`` and delete its copy and its mask from the project folder."""
        self._check_writable()
        entry = self.entry(image)
        for entries in (self.images, self.subject_images):
            if entry in entries:
                entries.remove(entry)
        for relative in (entry.file, entry.mask):
            if relative:
                (self.folder / relative).unlink(missing_ok=True)
        self.save()

    def training_inputs(self) -> tuple[list[Path], list[Path | None]]:
        """Exemplar image paths and their mask paths (None = no mask), for the trainer."""
        images, masks = [], []
        for entry in self.images:
            images.append(self.folder / entry.file)
            status = self.mask_status(entry)
            masks.append(self.folder / entry.mask if status == MASK_PAINTED else None)
        return images, masks

    # ---------------------------------------------------------------- masks

    def _mask_relative(self, entry: ImageEntry) -> str:
        return f"{MASKS_DIR}/{entry.stem}.png"

    def _adopt_unlisted_masks(self) -> None:
        for entry in self.images:
            if entry.mask is None and (self.folder / self._mask_relative(entry)).is_file():
                entry.mask = self._mask_relative(entry)

    def save_mask(self, image, mask: np.ndarray) -> Path:
        """Store ``mask`` (uint8 or bool HxW, nonzero/>=128 = subject) for ``image``, as an 8-bit
        PNG with 255 = subject. It must be the size of the image."""
        self._check_writable()
        entry = self.entry(image)
        array = np.asarray(mask)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype != np.uint8:
            raise InputError(f"mask for {entry.file}: expected 8-bit values, got {array.dtype}")
        else:
            array = np.where(array >= 128, 255, 0).astype(np.uint8)
        width, height = _image_size(self.folder / entry.file)
        if array.ndim != 2 or array.shape != (height, width):
            raise InputError(
                f"mask for {entry.file}: is {'x'.join(map(str, array.shape[::-1]))} but the image is {width}x{height}"
            )
        if array.size and array.min() == 255:
            raise InputError(f"mask for {entry.file}: marks the whole image as subject, leaving nothing for the concept")
        from PIL import Image

        relative = self._mask_relative(entry)
        target = self.folder / relative
        paths.atomic_save(target, lambda tmp: Image.fromarray(array, mode="L").save(tmp, format="PNG"))
        if entry.mask != relative:
            entry.mask = relative
            self.save()
        return target

    def clear_mask(self, image) -> None:
        self._check_writable()
        entry = self.entry(image)
        if entry.mask:
            (self.folder / entry.mask).unlink(missing_ok=True)
            entry.mask = None
            self.save()

    def mask_for(self, image) -> np.ndarray | None:
        """The mask as uint8 HxW (255 = subject), or None when none is painted (or its file is
        gone). A broken mask file raises InputError naming it."""
        from lego_studio.core.images import load_mask

        entry = self.entry(image)
        if not entry.mask or not (self.folder / entry.mask).is_file():
            return None
        return load_mask(self.folder / entry.mask, _image_size(self.folder / entry.file))

    def mask_status(self, image) -> str:
        """MASK_NONE / MASK_PAINTED / MASK_MISSING / MASK_INVALID (header-only checks: fast)."""
        entry = self.entry(image)
        if not entry.mask:
            return MASK_NONE
        mask_path = self.folder / entry.mask
        if not mask_path.is_file():
            return MASK_MISSING
        try:
            if _image_size(mask_path) != _image_size(self.folder / entry.file):
                return MASK_INVALID
        except Exception:  # noqa: BLE001 - any unreadable file is simply "invalid" here
            return MASK_INVALID
        return MASK_PAINTED

    def mask_statuses(self) -> dict[str, str]:
        return {entry.name: self.mask_status(entry) for entry in self.images}

    # ---------------------------------------------------------------- folder operations

    def rename(self, new_name: str, rename_folder: bool = True) -> None:
        """Change the name; with ``rename_folder`` the folder is renamed to match (it must not
        exist yet). The recent-projects list follows the move."""
        self._check_writable()
        new_name = (new_name or "").strip()
        if not new_name or "\n" in new_name:
            raise InputError(f"{self.file}: a project name must be one non-empty line")
        old_folder = self.folder
        if rename_folder:
            target = old_folder.parent / safe_folder_name(new_name)
            if target != old_folder:
                if target.exists():
                    raise InputError(f"{target}: already exists; choose another name")
                os.rename(old_folder, target)
                self.folder = target
        self.name = new_name
        self.save()
        if self.folder != old_folder:
            _update_recent(old_folder, self.folder)

    def duplicate(self, new_folder: str | os.PathLike, name: str | None = None, include_runs: bool = False) -> "Project":
        """Copy the project (images, masks, words, settings) to ``new_folder``. Runs and the
        gallery are copied only with ``include_runs`` (checkpoints are large)."""
        new_folder = Path(new_folder).expanduser()
        if new_folder.exists() and (not new_folder.is_dir() or any(new_folder.iterdir())):
            raise InputError(f"{new_folder}: already exists and is not an empty folder")
        subfolders = [IMAGES_DIR, MASKS_DIR, SUBJECT_IMAGES_DIR] + ([RUNS_DIR, GALLERY_DIR] if include_runs else [])
        new_folder.mkdir(parents=True, exist_ok=True)
        for sub in (IMAGES_DIR, MASKS_DIR, SUBJECT_IMAGES_DIR, RUNS_DIR, GALLERY_DIR):
            if sub in subfolders and (self.folder / sub).is_dir():
                shutil.copytree(self.folder / sub, new_folder / sub, dirs_exist_ok=True)
            else:
                (new_folder / sub).mkdir(exist_ok=True)
        copy = Project(new_folder, _validated(self.to_json(), new_folder, new_folder / PROJECT_FILE))
        copy.name = name or f"{self.name} copy"
        copy.created = now_iso()
        copy.save()
        return copy

    def delete(self) -> Path:
        """Move the whole project folder to ``<data dir>/trash/`` and return where it went."""
        self._check_writable()
        trash = paths.data_dir() / TRASH_DIR
        trash.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        target = trash / f"{self.folder.name}-{stamp}"
        counter = 2
        while target.exists():
            target = trash / f"{self.folder.name}-{stamp}-{counter}"
            counter += 1
        shutil.move(str(self.folder), str(target))
        _update_recent(self.folder, None)
        return target

    # ---------------------------------------------------------------- runs

    def new_run_dir(self) -> Path:
        """A fresh, empty ``runs/<id>`` (id = local time, unique even for two runs a second)."""
        self._check_writable()
        runs = self.folder / RUNS_DIR
        runs.mkdir(parents=True, exist_ok=True)
        base = datetime.now().strftime("%Y%m%d-%H%M%S")
        candidate, counter = base, 2
        while True:
            try:
                (runs / candidate).mkdir()  # exclusive: two trainers never share a folder
                return runs / candidate
            except FileExistsError:
                candidate = f"{base}-{counter}"
                counter += 1

    def discard_run_dir(self, run_dir: Path) -> None:
        """Remove a run folder from :meth:`new_run_dir` that no run used (still empty); a folder
        with anything in it, or gone already, is left as it is."""
        try:
            os.rmdir(run_dir)
        except OSError:
            pass

    def runs(self) -> list[RunInfo]:
        """Every run, newest first, with its status read from its record (core/runs.py)."""
        return list_runs(self.folder / RUNS_DIR)

    # ---------------------------------------------------------------- gallery

    def gallery(self) -> list[Path]:
        """Generated images in ``gallery/``, newest first."""
        folder = self.folder / GALLERY_DIR
        if not folder.is_dir():
            return []
        files = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)

    def new_gallery_path(self, prefix: str = "image") -> Path:
        """An unused ``gallery/<prefix>-<time>.png`` path for a generated image."""
        self._check_writable()
        folder = self.folder / GALLERY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        base = f"{safe_folder_name(prefix)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        candidate, counter = folder / f"{base}.png", 2
        while candidate.exists():
            candidate = folder / f"{base}-{counter}.png"
            counter += 1
        return candidate

    # ---------------------------------------------------------------- import a folder

    @classmethod
    def create_from_folder(
        cls,
        images_dir: str | os.PathLike,
        folder: str | os.PathLike | None = None,
        name: str | None = None,
        masks_dir: str | os.PathLike | None = None,
        subject_images_dir: str | os.PathLike | None = None,
        **fields,
    ) -> tuple["Project", list[tuple[Path, str]]]:
        """A new project from a folder of images; returns ``(project, problems)``.

        Masks are paired by stem (``a.jpg`` <-> ``a.png`` / ``a_mask.png``) from ``masks_dir``,
        by default ``images_dir/masks``; ``a_mask.png``-style files next to the images are masks
        too, not images. Subject-only images come from ``subject_images_dir`` (default
        ``images_dir/subject_images`` when it exists). ``folder`` defaults to the projects folder
        from the settings. Images or masks that cannot be used are listed in ``problems``.
        """
        from lego_studio.core.images import find_mask_for, is_image_file, list_images, load_mask

        images_dir = Path(images_dir).expanduser()
        sources = list_images(images_dir)
        mask_like = {p for p in sources if _is_mask_name(p, sources)}
        sources = [p for p in sources if p not in mask_like]
        if not sources:
            raise InputError(f"{images_dir}: only mask files found, no images")
        name = name or images_dir.name
        if folder is None:
            from lego_studio.core.settings import Settings

            folder = Settings.load().projects_path() / safe_folder_name(name)
        project = cls.create(folder, name=name, **fields)

        masks_dir = Path(masks_dir).expanduser() if masks_dir else images_dir / MASKS_DIR
        problems: list[tuple[Path, str]] = []
        for source in sources:
            try:
                entry = project._import_image(source, "exemplar")
            except InputError as exc:
                problems.append((source, str(exc)))
                continue
            project.images.append(entry)
            mask_source = find_mask_for(source, masks_dir) or _sibling_mask(source, mask_like)
            if mask_source is None:
                continue
            try:
                size = _image_size(project.folder / entry.file)
                project.save_mask(entry, load_mask(mask_source, size))
            except InputError as exc:
                problems.append((mask_source, str(exc)))

        subject_dir = Path(subject_images_dir).expanduser() if subject_images_dir else images_dir / SUBJECT_IMAGES_DIR
        if subject_dir.is_dir():
            subject_files = [p for p in sorted(subject_dir.iterdir()) if p.is_file() and is_image_file(p)]
            problems += project.add_images(subject_files, kind="subject")
        project.save()
        return project, problems


# -------------------------------------------------------------------- helpers


_MASK_SUFFIXES = ("_mask", "-mask", ".mask", " mask")


def _is_mask_name(path: Path, siblings: list[Path]) -> bool:
    """``a_mask.png`` is a mask when an image ``a.*`` sits next to it."""
    stems = {p.stem for p in siblings}
    return any(path.stem.endswith(s) and path.stem[: -len(s)] in stems for s in _MASK_SUFFIXES)


def _sibling_mask(image: Path, mask_like: set[Path]) -> Path | None:
    for candidate in sorted(mask_like):
        if any(candidate.stem == image.stem + s for s in _MASK_SUFFIXES):
            return candidate
    return None


def _default_concept_name(name: str) -> str:
    from lego_studio.core.concepts import placeholder_for

    return placeholder_for(name)[1:-1]


def _check_concept_name(concept_name, source: Path) -> None:
    if not isinstance(concept_name, str) or not concept_name.strip():
        raise InputError(f"{source}: the concept needs a name, e.g. 'frozen'")
    if any(ch.isspace() for ch in concept_name) or "<" in concept_name or ">" in concept_name:
        raise InputError(f"{source}: concept name {concept_name!r} must be one word without <> (e.g. frozen-in-ice)")


def _word_list(words, source) -> list[str]:
    if isinstance(words, str):
        words = [w for w in re.split(r"[,\n]", words)]
    try:
        cleaned = [w.strip() for w in words]
    except (TypeError, AttributeError):
        raise InputError(f"{source}: word lists must be lists of words") from None
    return [w for w in cleaned if w]


def _validated(raw: dict, folder: Path, source: Path) -> dict:
    """Check types and fill defaults; one-line InputError naming project.json on nonsense."""
    known = {
        "schema", "name", "subject", "concept_name", "positive_words", "negative_words", "images",
        "subject_images", "created", "modified", "train_defaults",
    }
    name = raw.get("name", folder.name)
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{source}: broken project file ('name' must be text)")
    subject = raw.get("subject", "")
    if not isinstance(subject, str):
        raise InputError(f"{source}: broken project file ('subject' must be text)")
    concept_name = raw.get("concept_name") or _default_concept_name(name)
    _check_concept_name(concept_name, source)
    train_defaults = raw.get("train_defaults", {})
    if not isinstance(train_defaults, dict):
        raise InputError(f"{source}: broken project file ('train_defaults' must be an object)")
    data = {
        "name": name,
        "subject": subject,
        "concept_name": concept_name,
        "positive_words": _word_list(raw.get("positive_words", []), source),
        "negative_words": _word_list(raw.get("negative_words", []), source),
        "created": str(raw.get("created") or now_iso()),
        "modified": str(raw.get("modified") or now_iso()),
        "train_defaults": train_defaults,
        "extra": {k: v for k, v in raw.items() if k not in known},
    }
    for key in ("images", "subject_images"):
        items = raw.get(key, [])
        if not isinstance(items, list):
            raise InputError(f"{source}: broken project file ('{key}' must be a list)")
        entries = []
        for item in items:
            if not isinstance(item, dict):
                raise InputError(f"{source}: broken project file (an entry of '{key}' is not an object)")
            mask = item.get("mask")
            entries.append(
                ImageEntry(
                    file=_relative_file(item.get("file"), source),
                    mask=_relative_file(mask, source) if mask else None,
                    added=str(item.get("added") or data["created"]),
                    source_sha256=item.get("source_sha256") if isinstance(item.get("source_sha256"), str) else None,
                )
            )
        data[key] = entries
    return data


def _update_recent(old: Path, new: Path | None) -> None:
    """Keep settings' recent-projects list in step with a moved or deleted project."""
    from lego_studio.core.settings import Settings

    settings = Settings.load()
    old_key = str(Path(old).expanduser().resolve())
    if old_key not in settings.recent_projects:
        return
    if new is None:
        settings.remove_recent_project(old)
    else:
        settings.replace_recent_project(old, new)
    settings.save()


class ProjectReadOnly(InputError):
    """A change to a project opened read-only (another window has it, or its disk is read-only)."""
