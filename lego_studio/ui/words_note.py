"""The Training page's note on the subject words, before Start (core/separation.py): vague words
("an object", "a purple object": with masks, training looks for what the subject is itself, Shape from
masks), or words that name no colour where the masks' subject is mostly one: training adds it
(Colour from masks), or, with that setting off, a link adds it to the words.

The masks' colour (core/images.subject_colour) is read in the app's writer thread, behind any mask
being saved, and read again when the masks or the images change; the label shows the note for the
form's current words at once."""

from __future__ import annotations

import html
from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from lego_studio.core import separation


class SubjectWordsNote:
    """The note's label (``label``) and the masks' subject colour it uses."""

    def __init__(self, context, on_word: Callable[[str], None], on_read: Callable[[], None] | None = None):
        self.context = context
        self._on_read = on_read  # called after each reading (whether there are masks changes the estimate)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: #8a5a00;")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.label.linkActivated.connect(on_word)
        self.label.hide()
        self.colour: str | None = None  # the masks' subject colour, once read
        self.has_masks = False  # whether the project's training images have masks, once read
        self._project = None  # the project whose colour is wanted
        self._reading = self._again = False  # a reading is queued or running; one more is due after it
        self._shown = ("", False, False, False)  # the last words shown: (phrase, separating by words, colour
        # from masks, shape from masks)

    def show(self, phrase: str, separates_by_words: bool, adds_colour: bool = False, looks_for_name: bool = False) -> None:
        """Show the note for ``phrase`` (nothing unless the run is Lego separating by words);
        ``adds_colour``: the run adds the masks' colour to the words itself (Colour from masks);
        ``looks_for_name``: the Shape from masks setting is on (it acts when there are masks)."""
        self._shown = (phrase, separates_by_words, adds_colour, looks_for_name)
        text = ""
        if separates_by_words:
            colour_note = separation.missing_colour_note(phrase, self.colour, adds=adds_colour)
            note = separation.vague_subject(phrase, looks_for_name=looks_for_name and self.has_masks) or colour_note
            if note:
                text = html.escape(f"{note[0].upper()}{note[1:]}.")
            if colour_note and not adds_colour:  # a link that adds the colour (separation.add_subject_word)
                text += f' Add <a href="{html.escape(self.colour)}">{html.escape(self.colour)}</a>.'
        self.label.setText(text)
        self.label.setVisible(bool(text))

    def read_colour(self, project) -> None:
        """Read ``project``'s masks' subject colour in the writer, then show the note again. Mask
        autosaves come in bursts: while a reading waits or runs, a new request only marks that one
        more reading is due when it ends (every image is read each time)."""
        self._project = project
        if project is None:
            self._reading = self._again = False
            self.colour, self.has_masks = None, False
            self.show(*self._shown)
            return
        if self._reading:
            self._again = True
            return
        self._reading, self._again = True, False

        def read():
            from lego_studio.core.images import subject_colour
            from lego_studio.core.subject_name import marks_any

            images, masks = project.training_inputs()
            return subject_colour(images, masks), marks_any(masks)

        def done(result) -> None:
            self._reading = False
            if self._again or self._project is not project:
                self.read_colour(self._project)
                return
            self.colour, self.has_masks = result
            self.show(*self._shown)
            if self._on_read is not None:
                self._on_read()

        # An unreadable image or mask: Start says so; no colour here.
        self.context.writes.submit(read, on_done=done, on_error=lambda _message: done((None, False)))
