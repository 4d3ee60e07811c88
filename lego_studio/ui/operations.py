"""Operations that change the open project, in the manner of Anki's ``aqt/operations``.

Each operation does its work (file-heavy work in a worker: decoding, hashing and copying
images) and then sends its own change notice through the :class:`~lego_studio.ui.context.AppContext`:

==========================  =============================================
operation                   notice
==========================  =============================================
create / open a project     ``project_changed(project)``
add / remove images         ``project_edited``
save / clear a mask         ``masks_changed(image path)``
change subject, words       ``project_fields_changed``
==========================  =============================================

Views never call each other to say that something changed: every view that shows the changed
thing listens to the notice and refreshes from it (so the Projects page's mask count follows the
Masks page). Library operations run in the Library view's worker and end in ``library_changed``.

Problems with single files are collected, not raised: ``(path, reason)`` for every file that was
skipped, so the user sees each one with its reason (:func:`describe_skipped`).
"""

from __future__ import annotations

from pathlib import Path

from lego_studio.ui import project_io


def describe_skipped(problems: list[tuple[Path, str]]) -> str:
    """One line per skipped file: ``name: reason`` (the reason usually names the file already)."""
    lines = []
    for path, reason in problems:
        name = Path(path).name
        lines.append(reason if name in reason else f"{name}: {reason}")
    return "\n".join(lines)


def create_project(context, runner, projects_dir: Path, name: str, sources: list[Path]):
    """Create a project from image files / a folder in the worker, then open it.
    Returns ``(project or None, problems, error or None)``."""

    def work(state):
        state.progress(0, 0, f"Creating project {name}…")
        return project_io.create_project(projects_dir, name, sources)

    ok, result = runner.run_and_wait(work, name="create-project")
    if not ok:
        return None, [], result
    project, problems = result
    context.settings.first_run = False
    context.set_project(project)  # -> project_changed
    return project, problems, None


def add_images(context, runner, sources: list[Path], subject_only: bool = False):
    """Copy images (files or folders) into the open project in the worker.
    Returns ``(added, problems, error or None)``."""
    project = context.project

    def work(state):
        state.progress(0, 0, "Adding images…")
        return project_io.add_images(project, sources, subject_only=subject_only)

    ok, result = runner.run_and_wait(work, name="add-images")
    if not ok:
        return 0, [], result
    added, problems = result
    if added:
        context.project_edited.emit()
    return added, problems, None


def remove_images(context, paths: list[Path]) -> list[tuple[Path, str]]:
    problems = []
    for path in paths:
        try:
            context.project.remove_image(path)
        except Exception as exc:  # noqa: BLE001 - collected per file, shown to the user
            from lego_studio.core.errors import LegoError

            if not isinstance(exc, LegoError):
                raise
            problems.append((Path(path), str(exc)))
    context.project_edited.emit()
    return problems


def save_mask(context, image: Path, mask) -> None:
    """Store (or, when empty, clear) an image's mask and announce it."""
    project_io.save_mask(context.project, image, mask)
    context.masks_changed.emit(Path(image))


def set_fields(context, **fields) -> None:
    """Change the project's subject / concept name / word lists and announce it."""
    project_io.set_fields(context.project, **fields)
    context.project_fields_changed.emit()
