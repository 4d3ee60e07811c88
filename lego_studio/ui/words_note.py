"""The Training page's note on the subject words, before Start (core/separation.py): vague words
("an object"), or words that name no colour where the masks' subject is mostly one (a link adds it).

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

    def __init__(self, context, on_word: Callable[[str], None]):
        self.context = context
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: #8a5a00;")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.label.linkActivated.connect(on_word)
        self.label.hide()
        self.colour: str | None = None  # the masks' subject colour, once read
        self._reading = None
        self._shown = ("", False)  # the last words shown: (phrase, Lego separating by words)

    def show(self, phrase: str, separates_by_words: bool) -> None:
        """Show the note for ``phrase`` (nothing unless the run is Lego separating by words)."""
        self._shown = (phrase, separates_by_words)
        text = ""
        if separates_by_words:
            colour_note = separation.missing_colour_note(phrase, self.colour)
            note = separation.vague_subject(phrase) or colour_note
            if note:
                text = html.escape(f"{note[0].upper()}{note[1:]}.")
            if colour_note:  # a link that adds the colour (separation.add_subject_word)
                text += f' Add <a href="{html.escape(self.colour)}">{html.escape(self.colour)}</a>.'
        self.label.setText(text)
        self.label.setVisible(bool(text))

    def read_colour(self, project) -> None:
        """Read ``project``'s masks' subject colour in the writer, then show the note again."""
        reading = self._reading = object()
        if project is None:
            self.colour = None
            self.show(*self._shown)
            return

        def read():
            from lego_studio.core.images import subject_colour

            return subject_colour(*project.training_inputs())

        def done(colour) -> None:
            if reading is self._reading:
                self.colour = colour
                self.show(*self._shown)

        # An unreadable image or mask: Start says so; no colour here.
        self.context.writes.submit(read, on_done=done, on_error=lambda _message: done(None))
