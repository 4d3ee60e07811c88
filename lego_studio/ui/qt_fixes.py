"""Work-arounds for bugs in the installed Qt binding, applied once when ``lego_studio.ui`` loads.

PySide6 6.12.0 on CPython 3.11 returns ``True`` from ``SignalInstance.emit`` without taking a
reference, so every emit drops one reference to ``True``. After a few thousand emits (a training
run streams one per step) the interpreter aborts with "bool_dealloc: deallocating True or False".
We detect the leak at start-up instead of trusting version numbers, and compensate only then.
"""

from __future__ import annotations

import ctypes
import sys

_applied = False


def _emit_leaks_bool_reference() -> bool:
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    rounds = 16
    probe.ping.emit()  # warm up any one-off caches
    before = sys.getrefcount(True) + sys.getrefcount(False)
    for _ in range(rounds):
        probe.ping.emit()
    after = sys.getrefcount(True) + sys.getrefcount(False)
    leaked = before - after
    if leaked > 0:
        # Give back what the probe itself took away.
        for _ in range(leaked):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    return leaked >= rounds


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    if not _emit_leaks_bool_reference():
        return
    from PySide6.QtCore import SignalInstance

    original_emit = SignalInstance.emit
    incref = ctypes.pythonapi.Py_IncRef
    incref.argtypes = [ctypes.py_object]
    incref.restype = None

    def emit(self, *args):
        result = original_emit(self, *args)
        if result is True or result is False:
            incref(result)  # the reference the binding forgot to take
        return result

    SignalInstance.emit = emit
