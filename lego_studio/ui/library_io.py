"""Glue between a finished training run and the concept library (runs in the worker)."""

from __future__ import annotations

from pathlib import Path


def run_thumbnail(run_dir: Path, project):
    """The first picture of the run's newest preview sheet (a row of square images), else the
    project's first image: what the concept does."""
    previews = sorted((run_dir / "previews").glob("*.png")) if (run_dir / "previews").is_dir() else []
    if previews:
        from lego_studio.core.images import load_image

        sheet = load_image(previews[-1])
        side = min(sheet.size)
        return sheet.crop((0, 0, side, side))
    if project is not None and project.images:
        return project.folder / project.images[0].file
    return None


def add_trained(library, concept_file: Path, concept, project, on_conflict: str = "error"):
    """Add a freshly trained concept (tagged with its method) and return its library file; with
    ``on_conflict="error"`` a taken name returns the :class:`~lego_studio.core.library.NameTaken`
    instead, so the UI can ask (replace, keep both) rather than rename silently."""
    from lego_studio.core.library import NameTaken

    run_dir = Path(concept_file).parent
    method = str(concept.metadata.get("method") or "")
    tags = [t for t in (method, project.name if project is not None else "") if t]
    try:
        entry = library.add(concept, thumbnail=run_thumbnail(run_dir, project), tags=tags, source=str(run_dir),
                            on_conflict=on_conflict)
    except NameTaken as clash:
        return clash
    return entry.path
