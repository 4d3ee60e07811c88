"""An honest duration estimate before a run commits: timed real steps, or a cached figure.

A figure is the wall time of one training step (checkpoint writes included) measured on this
machine for a model, device, method, resolution and batch size. Every run records its figure in
``<cache dir>/step_times.json``: first after its second step (the first one carries warm-up costs
and the image encoding), then at the end as the median of its steps. Before a run, the app and
``lego-studio train`` look the figure up; without one, the run's first two steps are the probe,
and the estimate is shown (and a long run confirmed or warned about) right after them.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

LONG_RUN_SECONDS = 3600.0
FIGURES_FILE = "step_times.json"


def figure_key(spec, device: str, method: str, resolution, batch_size: int) -> str:
    """``device`` as the user asked for it ("auto", "cpu", ...): that is what is known before a load."""
    return f"{spec}|{device}|{method}|{resolution or 'native'}|{int(batch_size)}"


def _figures_path():
    from lego_studio.core.paths import cache_dir

    return cache_dir() / FIGURES_FILE


def load_figures() -> dict:
    try:
        data = json.loads(_figures_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_seconds_per_step(key: str) -> float | None:
    return _seconds_per_step(load_figures().get(key))


def _seconds_per_step(entry) -> float | None:
    """The seconds per step of a recorded figure; None when missing or broken."""
    try:
        value = float(entry["seconds_per_step"])
    except (TypeError, KeyError, ValueError):
        return None
    return value if value > 0 else None


def record_figure(key: str, seconds_per_step: float, steps_timed: int, device: str = "") -> None:
    from lego_studio.core.paths import atomic_write_json

    figures = load_figures()
    figures[key] = {"seconds_per_step": round(float(seconds_per_step), 4), "steps_timed": int(steps_timed),
                    "device": device, "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        atomic_write_json(_figures_path(), figures)
    except OSError:
        pass  # a read-only cache costs the next run its estimate before start, nothing else


def format_duration(seconds: float | None) -> str:
    """A duration as people say it: "42 s", "10 min", "9 h 43 min"; "—" when unknown (None).
    The one formatter of durations: estimates, the app's ETA, the CLI's progress line."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{max(1, int(round(seconds)))} s"
    minutes = int(round(seconds / 60))
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class Estimate:
    kind = "estimate"  # travels with the trainer's events (the app shows it on arrival)

    seconds_per_step: float
    steps_left: int
    total_steps: int
    device: str  # "cpu", "cuda", "mps" or what was asked
    source: str  # "timed" (this run's first steps) | "cached" (a figure measured before)
    step: int = 0  # the run's step when it was made (it travels among the TrainEvents, so it reads like one)
    probe_steps: int = 0  # of steps_left, the steps of Shape from masks' probe (core/subject_name.py)

    @property
    def total(self) -> int:
        return self.total_steps

    @property
    def message(self) -> str:
        return self.line()

    @property
    def eta_s(self) -> float:
        return self.seconds

    @property
    def seconds(self) -> float:
        return self.seconds_per_step * self.steps_left

    @property
    def long(self) -> bool:
        return self.seconds > LONG_RUN_SECONDS

    def line(self) -> str:
        how = "timed on its first steps" if self.source == "timed" else "from an earlier run on this machine"
        probe = f", {self.probe_steps} of them a probe for what the subject is" if self.probe_steps else ""
        return (f"expected duration: about {format_duration(self.seconds)} for {self.steps_left} steps{probe} "
                f"({self.seconds_per_step:.3g} s a step on {self.device}, {how})")

    def fastest_option(self) -> str:
        """What would make the run short: fewer steps, and a GPU when it runs on the CPU."""
        fit = max(1, int(LONG_RUN_SECONDS // self.seconds_per_step))
        options = [f"fewer steps ({fit} steps take about {format_duration(fit * self.seconds_per_step)})"]
        if self.device in ("cpu", "auto"):
            options.append("a GPU (CUDA or Apple MPS), often 10-100x faster")
        else:
            options.append("a lower resolution")
        return " or ".join(options)

    def warning(self) -> str:
        return (f"this run is expected to take about {format_duration(self.seconds)}; the fastest option is "
                f"{self.fastest_option()}")


class StepClock:
    """Times the steps of a run from its events (call :meth:`observe` with every TrainEvent).

    Returns an :class:`Estimate` once, after the first timed step (the second step of the run),
    and records the machine's figure under ``key`` then and when the run ends.
    """

    def __init__(self, key: str | None, device: str, clock=time.perf_counter):
        self.key = key
        self.device = device
        self.clock = clock
        self.intervals: list[float] = []
        self._last: float | None = None
        self._reported = False

    def observe(self, event) -> Estimate | None:
        kind = getattr(event, "kind", "")
        if kind in ("step", "skipped"):
            if kind == "skipped":
                return None  # a skipped step is followed by its own "step" event
            now = self.clock()
            if self._last is not None:
                self.intervals.append(now - self._last)
            self._last = now
            if self.intervals and not self._reported:
                self._reported = True
                per_step = self.intervals[0]
                self._record()
                return Estimate(per_step, max(0, event.total - event.step), event.total, self.device, "timed", event.step)
        elif kind in ("done",):
            self._record()
        elif kind in ("preview", "checkpoint", "log"):
            pass  # they happen between steps: part of the next interval, as in a real run
        return None

    def finish(self) -> None:
        """Record the run's figure (call when it ends, however it ends)."""
        self._record()

    def _record(self) -> None:
        if self.key and self.intervals:
            record_figure(self.key, statistics.median(self.intervals), len(self.intervals), self.device)


def estimate_from_cache(key: str, steps_left: int, total_steps: int, device: str,
                        figures: dict | None = None, probe_steps: int = 0) -> Estimate | None:
    """The estimate from the recorded figure for ``key`` (None without one). ``figures``: the
    figures as :func:`load_figures` read them earlier (the app reads them off its UI thread);
    by default they are read now. ``probe_steps``: Shape from masks' probe runs first
    (core/subject_name.probe_steps_for); they count as steps."""
    entry = (load_figures() if figures is None else figures).get(key)
    per_step = _seconds_per_step(entry)
    if per_step is None:
        return None
    # The device the figure was measured on ("cpu"), not the choice it was keyed by ("auto").
    measured_on = entry.get("device")
    return Estimate(per_step, steps_left + probe_steps, total_steps + probe_steps,
                    measured_on if isinstance(measured_on, str) and measured_on else device, "cached",
                    probe_steps=probe_steps)
