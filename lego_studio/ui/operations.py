"""Operations that change the open project, in the manner of Anki's ``aqt/operations``.

No file work on the UI thread: an operation starts its work off the UI thread and returns at once;
when the work is done, on the UI thread, it sends its own change notice through the
:class:`~lego_studio.ui.context.AppContext` and then calls the caller's ``on_done`` (or
``on_error(message)``, the one line to show, a full or read-only disk included). Writes to the
project go through the context's one serial writer (``context.writes``, a FIFO on one thread), so
they land in the order they were made and never interleave; creating a project (decoding, hashing
and copying images into a new folder) runs in the calling view's :class:`TaskRunner`.

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
from typing import Callable

from lego_studio.ui import project_io

OnError = Callable[[str], None] | None


def describe_skipped(problems: list[tuple[Path, str]]) -> str:
    """One line per skipped file: ``name: reason`` (the reason usually names the file already)."""
    lines = []
    for path, reason in problems:
        name = Path(path).name
        lines.append(reason if name in reason else f"{name}: {reason}")
    return "\n".join(lines)


def create_project(context, runner, name: str | None, sources: list[Path], on_done: Callable, on_error: OnError) -> bool:
    """Create project ``name`` (None: named after the first source) under the projects folder from
    image files / a folder in ``runner``'s worker, then open it: ``on_done(project, problems)`` after
    ``project_changed``. Returns False (and starts nothing) while the runner is busy."""
    settings = context.settings

    def work(state):
        called = name if name is not None else project_io.name_for(sources[0])
        state.progress(0, 0, f"Creating project {called}…")
        return project_io.create_project(settings.projects_path(), called, sources)

    def created(result) -> None:
        project, problems = result
        settings.first_run = False
        context.set_project(project, on_done=lambda opened: on_done(opened, problems))

    return runner.start(work, on_done=created, on_error=on_error, name="create-project")


def open_project(context, folder: Path, on_done: Callable | None = None, on_error: OnError = None,
                 only_if_there: bool = False) -> None:
    """Open the project in ``folder`` (reading it, claiming it and recording it happen in the
    writer): ``on_done(project)`` after ``project_changed``. With ``only_if_there``, a folder that
    no longer holds a project is passed over quietly (the last session's project, gone since)."""
    from lego_studio.core.project import PROJECT_FILE, Project

    def load():
        if only_if_there and not (Path(folder) / PROJECT_FILE).is_file():
            return None
        return Project.open(folder)

    if not only_if_there:
        context.settings.first_run = False
    context.switch_project(load, on_done=on_done, on_error=on_error, keep_when_none=only_if_there)


def add_images(context, sources: list[Path], on_done: Callable, on_error: OnError, subject_only: bool = False) -> None:
    """Copy images (files or folders) into the open project, in the writer: ``on_done(added,
    problems)`` after ``project_edited`` (sent when something was added)."""
    project = context.project

    def work():
        return project_io.add_images(project, sources, subject_only=subject_only)

    def added(result) -> None:
        count, problems = result
        if count:
            context.project_edited.emit()
        on_done(count, problems)

    context.writes.submit(work, on_done=added, on_error=on_error)


def remove_images(context, paths: list[Path], on_done: Callable[[list], None]) -> None:
    """Remove images and their masks from the open project, in the writer: ``on_done(problems)``
    after ``project_edited``, with ``(path, reason)`` for each image that could not be removed."""
    from lego_studio.core.errors import LegoError

    project = context.project

    def work():
        problems = []
        for path in paths:
            try:
                project.remove_image(path)
            except LegoError as exc:  # collected per file, shown to the user
                problems.append((Path(path), str(exc)))
        return problems

    def removed(problems) -> None:
        context.project_edited.emit()
        on_done(problems)

    context.writes.submit(work, on_done=removed)


def read_mask_badges(context, project, images: list[Path], on_read: Callable) -> None:
    """Whether each of ``images`` has a painted mask (header reads), read in the writer so that the
    mask saves before are seen: ``on_read({image: painted})``, or ``on_read(None)`` when it could
    not be read (said in the status bar)."""

    def failed(message: str) -> None:
        context.status_message.emit(message)
        on_read(None)

    context.writes.submit(lambda: {path: project_io.has_mask(project, path) for path in images},
                          on_done=on_read, on_error=failed)


def save_mask(context, project, image: Path, mask, on_done: Callable | None = None, on_error: OnError = None) -> None:
    """Store (or, when empty, clear) ``image``'s mask in ``project``, in the writer, then announce
    it (``masks_changed``) and call ``on_done()``. ``mask`` must not change afterwards (pass a copy)."""

    def saved(_result) -> None:
        context.masks_changed.emit(Path(image))
        if on_done is not None:
            on_done()

    context.writes.submit(lambda: project_io.save_mask(project, image, mask), on_done=saved, on_error=on_error)


def set_fields(context, on_done: Callable | None = None, on_error: OnError = None, **fields) -> None:
    """Change the project's subject / concept name / word lists and save them, in the writer, then
    announce it (``project_fields_changed``) and call ``on_done()``; invalid values are rolled back
    and are ``on_error(message)``."""
    project = context.project

    def saved(_result) -> None:
        context.project_fields_changed.emit()
        if on_done is not None:
            on_done()

    context.writes.submit(lambda: project_io.set_fields(project, **fields), on_done=saved, on_error=on_error)
