"""Work-arounds for bugs in the installed Qt binding, applied once when ``lego_studio.ui`` loads.

PySide6 6.12.0 on CPython 3.11 returns ``None``, ``True`` and ``False`` from some calls without
taking a reference to them:

* ``SignalInstance.emit`` drops one reference to ``True`` per call; a training run streams one
  emit per step, and after a few thousand the interpreter aborts with "bool_dealloc: deallocating
  True or False".
* ``QPainterPath.lineTo`` / ``moveTo`` (and other ``void`` methods) drop one reference to
  ``None`` per call; the loss chart draws a path point by point on every repaint, and a long run
  aborted the app with "none_dealloc: deallocating None" (found in the Xvfb walkthrough).

Which methods leak is the binding's business and can change with any release, so instead of
patching methods one by one, the three singletons get the treatment CPython 3.12 gives them
anyway: they are made *immortal* (their reference count is raised so far that no leak can bring it
to zero; they are never freed in any case). This is done only where a leak is detected at start-up
and only on CPython before 3.12 (from 3.12 on they are immortal already).
"""

from __future__ import annotations

import ctypes
import sys

_applied = False
# 2**40 leaked references at one per call is more calls than a process makes in years.
_IMMORTAL_REFERENCES = 1 << 40


def _leaks(singletons, action, rounds: int = 16) -> bool:
    """Whether ``action()`` takes away references to ``singletons`` (each call one)."""
    before = sum(sys.getrefcount(s) for s in singletons)
    for _ in range(rounds):
        action()
    after = sum(sys.getrefcount(s) for s in singletons)
    leaked = before - after
    for _ in range(max(0, leaked)):  # give back what the probe itself took away
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(singletons[0]))
    return leaked >= rounds


def binding_leaks() -> dict[str, bool]:
    """Probe the binding: which singletons lose references (``{"bool": ..., "None": ...}``)."""
    from PySide6.QtCore import QObject, QPointF, Signal
    from PySide6.QtGui import QPainterPath

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    probe.ping.emit()  # warm up any one-off caches
    path = QPainterPath()
    point = QPointF(1.0, 1.0)
    path.lineTo(point)
    return {
        "bool": _leaks((True, False), probe.ping.emit),
        "None": _leaks((None,), lambda: path.lineTo(point)),
    }


def make_immortal(obj) -> bool:
    """Raise ``obj``'s reference count out of reach of any leak (release builds of CPython < 3.12,
    where the count is the object's first field). Returns whether it was done."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return False  # 3.12+: immortal already; a debug build puts other fields first
    count = ctypes.c_ssize_t.from_address(id(obj))
    # Not the layout we expect (the count read there is not the object's count): leave it alone.
    # A few references to None come and go between the two reads, hence the tolerance.
    if abs(count.value - (sys.getrefcount(obj) - 1)) > 16:
        return False
    count.value += _IMMORTAL_REFERENCES
    return True


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    leaks = binding_leaks()
    if leaks["bool"]:
        make_immortal(True)
        make_immortal(False)
    if leaks["None"]:
        make_immortal(None)
