"""User settings: one ``settings.json`` under :func:`paths.config_dir`, plain JSON, written atomically.

A broken ``settings.json`` never stops the app: it is renamed to ``settings.json.bad`` (kept for
the user to inspect) and the defaults are used; :attr:`Settings.load_warning` says what happened so
the front end can show it once. Fields with the wrong type fall back to their default one by one,
and keys this version does not know are kept and written back (a newer version's settings survive
a round trip through an older one).

Model specs are inspected without loading any weights (:func:`inspect_model_spec`), so adding a
model to the list is instant and works offline.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego_studio.core import paths
from lego_studio.core.errors import InputError, ModelError
from lego_studio.core.model_specs import (
    BUILTIN_MODELS,
    FAMILY_FILE,
    inspect_single_file,
    is_diffusers_folder,
    resolve_spec,
)

SETTINGS_FILE = "settings.json"
SCHEMA_VERSION = 1
MAX_RECENT_PROJECTS = 10
MODEL_KINDS = ("diffusers", "hf-cache", "single-file", "builtin")

DEVICES = ("auto", "cpu", "cuda", "mps")


_warning_listeners: list = []


def add_warning_listener(listener) -> None:
    """``listener(message)`` is called whenever :meth:`Settings.load` finds the settings file
    unusable (the CLI prints it; the app shows ``load_warning`` in its status bar)."""
    if listener not in _warning_listeners:
        _warning_listeners.append(listener)


def _warn(message: str) -> None:
    for listener in list(_warning_listeners):
        listener(message)


def settings_path() -> Path:
    return paths.config_dir() / SETTINGS_FILE


@dataclass
class ModelEntry:
    """One model the user told the app about. ``spec`` is what :func:`core.models.load_model` takes."""

    name: str
    spec: str
    kind: str  # one of MODEL_KINDS
    family: str = ""  # "sd1" | "sd2" | "shapeworld" | "tiny" | "" (unknown until loaded)

    def to_json(self) -> dict:
        return {"name": self.name, "spec": self.spec, "kind": self.kind, "family": self.family}

    @classmethod
    def from_json(cls, data: Any) -> "ModelEntry | None":
        if not isinstance(data, dict):
            return None
        name, spec, kind = data.get("name"), data.get("spec"), data.get("kind")
        if not (isinstance(name, str) and isinstance(spec, str) and kind in MODEL_KINDS):
            return None
        family = data.get("family") if isinstance(data.get("family"), str) else ""
        return cls(name=name, spec=spec, kind=kind, family=family)


# ----------------------------------------------------------------- model spec inspection


def _guess_family(folder: Path) -> str:
    """The base-model family of a diffusers folder from its configs alone (no weights read):
    an explicit ``lego_studio.json`` family, else the text-encoder width (768 = SD 1.x,
    1024 = SD 2.x)."""
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    for config_path, key in ((folder / FAMILY_FILE, "family"), (folder / "text_encoder" / "config.json", "hidden_size")):
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        value = config.get(key) if isinstance(config, dict) else None
        if key == "family" and isinstance(value, str) and value:
            return value
        if key == "hidden_size" and isinstance(value, int):
            return {768: "sd1", 1024: "sd2"}.get(value, "custom")
    return ""


def inspect_model_spec(spec: str | os.PathLike) -> ModelEntry:
    """Classify ``spec`` without loading weights; raise :class:`ModelError` (one line) if unusable.

    Accepts what :func:`core.models.load_model` accepts: a diffusers folder, a single
    ``.safetensors``/``.ckpt`` file, a model id already in the local Hugging Face cache, or
    a built-in name. Reads configs and file headers only (no torch import).
    """
    text = str(spec).strip()
    where, path = resolve_spec(text)  # ModelError naming the spec when it is unusable
    if text.lower() in BUILTIN_MODELS:
        return ModelEntry(name=text.lower(), spec=text.lower(), kind="builtin", family=BUILTIN_MODELS[text.lower()].family)
    if where == "file":
        if path.stat().st_size < 1024:
            raise ModelError(f"{path}: model file is too small to hold weights ({path.stat().st_size} bytes)")
        family = inspect_single_file(path)  # the header only: a random file is refused here
        return ModelEntry(name=path.stem, spec=str(path.resolve()), kind="single-file",
                          family=family.name if family is not None else "")
    if not is_diffusers_folder(path):
        raise ModelError(f"{path}: not a diffusers model folder (no model_index.json, no unet/vae/text_encoder)")
    if Path(text).expanduser().is_dir():
        return ModelEntry(name=path.name, spec=str(path.resolve()), kind="diffusers", family=_guess_family(path))
    return ModelEntry(name=text.split("/")[-1], spec=text, kind="hf-cache", family=_guess_family(path))


# ----------------------------------------------------------------- settings


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass
class Settings:
    models: list[ModelEntry] = field(default_factory=list)
    default_model: str | None = None  # a ModelEntry name
    sam_checkpoint: str | None = None
    default_device: str = "auto"
    library_dir: str | None = None  # None = paths.data_dir()/"library"
    recent_projects: list[str] = field(default_factory=list)  # most recent first
    last_project: str | None = None  # open when the app last closed; reopened at start
    projects_dir: str | None = None  # None = paths.default_projects_dir()
    window_state: bytes | None = None  # Qt saveState() blob; opaque to the core
    first_run: bool = True
    # Keys written by a newer version, kept so saving does not drop them.
    extra: dict = field(default_factory=dict)
    # Set by load() when settings.json could not be used as-is; not saved.
    load_warning: str | None = field(default=None, compare=False)
    path: Path | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------ persistence

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Settings":
        """Read settings; a missing file gives defaults, a corrupt one is set aside as ``.bad``."""
        path = Path(path) if path is not None else settings_path()
        if not path.exists():
            return cls(path=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            backup = path.with_name(path.name + ".bad")
            try:
                os.replace(path, backup)
                where = f"moved to {backup.name}"
            except OSError:
                where = "left in place"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            settings = cls(path=path)
            settings.load_warning = f"{path}: settings were unreadable ({reason}); {where}, using defaults"
            _warn(settings.load_warning)
            return settings
        settings, problems = cls._from_json(data)
        settings.path = path
        if problems:
            settings.load_warning = f"{path}: ignored invalid value(s) for {', '.join(problems)}; using defaults for them"
            _warn(settings.load_warning)
        return settings

    @classmethod
    def _from_json(cls, data: dict) -> tuple["Settings", list[str]]:
        settings = cls()
        problems: list[str] = []
        known = {
            "schema", "models", "default_model", "sam_checkpoint", "default_device", "library_dir",
            "recent_projects", "projects_dir", "window_state", "first_run", "last_project",
        }
        settings.extra = {k: v for k, v in data.items() if k not in known}

        models = data.get("models", [])
        if isinstance(models, list):
            parsed = [ModelEntry.from_json(m) for m in models]
            if any(m is None for m in parsed):
                problems.append("models")
            settings.models = [m for m in parsed if m is not None]
        else:
            problems.append("models")

        for key in ("default_model", "sam_checkpoint", "library_dir", "projects_dir", "last_project"):
            value = data.get(key)
            if value is None or isinstance(value, str):
                setattr(settings, key, _optional_str(value))
            else:
                problems.append(key)

        device = data.get("default_device", "auto")
        if device in DEVICES:
            settings.default_device = device
        else:
            problems.append("default_device")

        recent = data.get("recent_projects", [])
        if isinstance(recent, list) and all(isinstance(p, str) for p in recent):
            settings.recent_projects = recent[:MAX_RECENT_PROJECTS]
        else:
            problems.append("recent_projects")

        blob = data.get("window_state")
        if blob is not None:
            try:
                settings.window_state = base64.b64decode(blob, validate=True)
            except (TypeError, ValueError, binascii.Error):
                problems.append("window_state")

        first_run = data.get("first_run", True)
        if isinstance(first_run, bool):
            settings.first_run = first_run
        else:
            problems.append("first_run")
        return settings, problems

    def to_json(self) -> dict:
        data = dict(self.extra)
        data.update(
            {
                "schema": SCHEMA_VERSION,
                "models": [m.to_json() for m in self.models],
                "default_model": self.default_model,
                "sam_checkpoint": self.sam_checkpoint,
                "default_device": self.default_device,
                "library_dir": self.library_dir,
                "recent_projects": list(self.recent_projects[:MAX_RECENT_PROJECTS]),
                "projects_dir": self.projects_dir,
                "last_project": self.last_project,
                "window_state": base64.b64encode(self.window_state).decode("ascii")
                if self.window_state is not None
                else None,
                "first_run": self.first_run,
            }
        )
        return data

    def save(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else (self.path or settings_path())
        self.path = target
        return paths.atomic_write_json(target, self.to_json())

    # ------------------------------------------------------------ derived locations

    def library_path(self) -> Path:
        return Path(self.library_dir).expanduser() if self.library_dir else paths.data_dir() / "library"

    def projects_path(self) -> Path:
        if self.projects_dir:
            folder = Path(self.projects_dir).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        return paths.default_projects_dir()

    # ------------------------------------------------------------ models

    def add_model(self, spec: str | os.PathLike, name: str | None = None, make_default: bool | None = None) -> ModelEntry:
        """Validate ``spec`` (no weights loaded) and add it; the same spec again updates its entry.

        ``make_default``: True makes it the default, False never does (the app asks first);
        None (the default) makes the first model added the default. Raises :class:`ModelError`
        when the spec is not a usable model.
        """
        entry = inspect_model_spec(spec)
        if name:
            entry.name = name.strip()
        for index, existing in enumerate(self.models):
            if existing.spec == entry.spec:
                if not name:
                    entry.name = existing.name
                if self.default_model == existing.name or make_default:
                    self.default_model = entry.name
                self.models[index] = entry
                return entry
        taken = {m.name for m in self.models}
        base, counter = entry.name, 2
        while entry.name in taken:
            entry.name = f"{base} ({counter})"
            counter += 1
        self.models.append(entry)
        if make_default or (make_default is None and self.default_model is None):
            self.default_model = entry.name
        return entry

    def remove_model(self, name: str) -> None:
        before = len(self.models)
        self.models = [m for m in self.models if m.name != name]
        if len(self.models) == before:
            raise InputError(f"no model named {name!r} in the settings")
        if self.default_model == name:
            self.default_model = self.models[0].name if self.models else None

    def model(self, name: str | None = None) -> ModelEntry | None:
        """The entry called ``name`` (default: the default model), or None."""
        wanted = name or self.default_model
        return next((m for m in self.models if m.name == wanted), None)

    # ------------------------------------------------------------ SAM

    def set_sam_checkpoint(self, path: str | os.PathLike | None) -> None:
        """Remember a Segment Anything checkpoint (None clears it). Only existence is checked
        here; :class:`core.segmentation.SamSegmenter` validates the contents when loading."""
        if path is None or str(path) == "":
            self.sam_checkpoint = None
            return
        checkpoint = Path(path).expanduser()
        if not checkpoint.is_file():
            raise InputError(f"{checkpoint}: no such SAM checkpoint file")
        self.sam_checkpoint = str(checkpoint.resolve())

    # ------------------------------------------------------------ recent projects

    def add_recent_project(self, folder: str | os.PathLike) -> None:
        """Put ``folder`` first in the recent list (no duplicates, at most 10)."""
        key = str(Path(folder).expanduser().resolve())
        self.recent_projects = [key] + [p for p in self.recent_projects if p != key]
        del self.recent_projects[MAX_RECENT_PROJECTS:]

    def remove_recent_project(self, folder: str | os.PathLike) -> None:
        key = str(Path(folder).expanduser().resolve())
        self.recent_projects = [p for p in self.recent_projects if p != key]

    def replace_recent_project(self, old: str | os.PathLike, new: str | os.PathLike) -> None:
        """After a project folder moved: keep its place in the list under the new path."""
        old_key = str(Path(old).expanduser().resolve())
        new_key = str(Path(new).expanduser().resolve())
        self.recent_projects = [new_key if p == old_key else p for p in self.recent_projects]

    def existing_recent_projects(self) -> list[Path]:
        """Recent projects whose folder still holds a project.json (moved/deleted ones skipped)."""
        return [Path(p) for p in self.recent_projects if (Path(p) / "project.json").is_file()]
