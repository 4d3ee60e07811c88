"""The few project operations the views share, on top of :mod:`lego_studio.core.project`.

Kept apart so the views read as UI code: path <-> entry mapping, mask status as a bool for the
badges, the project-folder naming rules for create/duplicate, and one-line errors for problems
with individual files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lego_studio.core.errors import InputError
from lego_studio.core.project import MASK_PAINTED, Project, safe_folder_name


def free_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name 2``, ``name 3``... when taken by a non-empty folder."""
    base = safe_folder_name(name) or "project"
    candidate, counter = parent / base, 2
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        candidate = parent / f"{base} {counter}"
        counter += 1
    return candidate


def name_for(source: Path) -> str:
    """A new project's name from the first thing the user dropped: a folder's name, a file's stem."""
    source = Path(source)
    return source.name if source.is_dir() else source.stem


def create_project(projects_dir: Path, name: str, sources: list[Path]) -> tuple[Project, list[tuple[Path, str]]]:
    """New project ``name`` in ``projects_dir`` (a free folder name is chosen); ``sources`` are
    image files and/or folders of images. A single folder is imported with its masks. Returns the
    project and every file that was skipped, with its reason. SLOW (decodes, hashes, copies):
    call it from a worker."""
    name = name.strip()
    if not name:
        raise InputError("a project needs a name")
    folder = free_folder(Path(projects_dir), name)
    if len(sources) == 1 and Path(sources[0]).is_dir():
        return Project.create_from_folder(sources[0], folder=folder, name=name)
    project = Project.create(folder, name=name)
    problems: list[tuple[Path, str]] = []
    if sources:
        _added, problems = add_images(project, sources)
    return project, problems


def _expand(sources: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    from lego_studio.core.images import is_image_file, list_images

    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            files.extend(list_images(source))
        elif is_image_file(source):
            files.append(source)
        else:
            problems.append((source, f"{source}: not an image or a folder of images"))
    return files, problems


def add_images(project: Project, sources: list[Path], subject_only: bool = False) -> tuple[int, list[tuple[Path, str]]]:
    """Copy images (files or folders) into the project. Returns how many were added and every
    file that was skipped, with its reason. SLOW: call it from a worker."""
    files, problems = _expand(sources)
    before = len(project.subject_images if subject_only else project.images)
    problems += project.add_images(files, kind="subject" if subject_only else "exemplar")
    added = len(project.subject_images if subject_only else project.images) - before
    return added, problems


def image_paths(project: Project) -> list[Path]:
    return [project.folder / entry.file for entry in project.images]


def subject_image_paths(project: Project) -> list[Path]:
    return [project.folder / entry.file for entry in project.subject_images]


def has_mask(project: Project, path: Path) -> bool:
    try:
        return project.mask_status(path) == MASK_PAINTED
    except InputError:
        return False


def load_mask(project: Project, path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """The stored mask, or None. A mask that no longer fits its image is dropped (None), not
    fatal: the user simply paints again."""
    if not has_mask(project, path):
        return None
    mask = project.mask_for(path)
    if mask is not None and mask.shape != (size[1], size[0]):
        return None
    return mask


def save_mask(project: Project, path: Path, mask: np.ndarray) -> None:
    """Store ``mask``; an empty mask removes the file (no subject marked = no mask)."""
    if not mask.any():
        project.clear_mask(path)
        return
    project.save_mask(path, mask)


def get_fields(project: Project) -> dict:
    return {
        "subject": project.subject,
        "concept_name": project.concept_name,
        "positive_words": list(project.positive_words),
        "negative_words": list(project.negative_words),
    }


def set_fields(project: Project, **fields) -> None:
    """Change subject / concept name / word lists and save; invalid values are rolled back."""
    before = get_fields(project)
    for key, value in fields.items():
        setattr(project, key, value)
    try:
        project.save()
    except InputError:
        for key, value in before.items():
            setattr(project, key, value)
        raise


def store_training_settings(project: Project, fields: dict, train_defaults: dict | None) -> None:
    """Store what Start remembers (ui/train_form.settings_to_remember): the fields typed in the
    training form (validated; refused ones are rolled back) and the training settings (None:
    unchanged). Writes project.json: call it from the writer."""
    if fields:
        set_fields(project, **fields)
    if train_defaults is not None:
        project.train_defaults = train_defaults
        project.save()


def duplicate_project(project: Project) -> Project:
    name = f"{project.name} copy"
    return project.duplicate(free_folder(project.folder.parent, name), name=name)
