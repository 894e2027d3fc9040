"""Progress across several encoder calls: one running count of images through a forward pass,
reported after every batch with an estimate of the time left.

The encoders report ``progress(done, total, desc)`` after each batch of their own call;
:class:`WorkProgress` turns those per-call counts into one count over the whole extraction
(global features of each model, then LaZSL crops), so the user sees it move per batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[int, int, str], None]


def format_eta(seconds: float) -> str:
    """``"about 40 s left"`` / ``"about 3 min left"``."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    return f"about {round(seconds / 60)} min left"


class WorkProgress:
    """A running count of ``total`` work units (images through a forward pass; a LaZSL image with
    M crops is 1 + M units), reported through ``report(done, total, desc)``.

    Parameters
    ----------
    report : callable ``report(done, total, desc)``
    total : int
        Units expected; :meth:`drop` lowers it (images that failed to decode).
    clock : callable, optional
        Seconds, monotonic (tests pass a fake one).

    The estimate uses the rate since the first finished batch, so model loading before it does
    not count as encoding time.
    """

    def __init__(self, report: Progress, total: int, *,
                 clock: Callable[[], float] = time.monotonic):
        self.report = report
        self.total = int(total)
        self.done = 0
        self._clock = clock
        self._first: tuple[float, int] | None = None  # (time, done) at the first finished batch

    def part(self, desc: str) -> Progress:
        """A callback for one encoder call: its ``(done, total)`` counts are added to the run's."""
        base = self.done

        def callback(done: int, total: int, _desc: str) -> None:
            self.advance(base + done - self.done, desc)

        return callback

    def advance(self, units: int, desc: str) -> None:
        """Count ``units`` more as done and report, with a time estimate once there is a rate."""
        now = self._clock()
        self.done = min(self.total, self.done + int(units))
        if self._first is None:
            self._first = (now, self.done)
            text = desc
        else:
            t0, d0 = self._first
            rate = (self.done - d0) / max(now - t0, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else None
            text = desc if left is None else f"{desc}, {format_eta(left)}"
        self.report(self.done, self.total, text)

    def drop(self, units: int) -> None:
        """Expect ``units`` fewer (work that will not happen)."""
        self.total = max(self.done, self.total - int(units))


class NotedProgress:
    """``report(done, total, desc)`` that remembers the last counts, so that :meth:`note` can
    say what is happening between two reports (a model's one-time preparation) without moving
    the bar back."""

    def __init__(self, report: Progress):
        self._report = report
        self.last = (0, 1)

    def __call__(self, done: int, total: int, desc: str) -> None:
        self.last = (done, total)
        self._report(done, total, desc)

    def note(self, desc: str) -> None:
        self._report(*self.last, desc)


class LineProgress:
    """``progress(done, total, desc)`` as one line of a terminal stream (default: ``sys.stderr``
    as it is at each call), rewritten in place (``\r``) and ended when ``done`` reaches
    ``total``. :meth:`end_line` ends a line still open, so that an error printed after it starts
    on its own line."""

    def __init__(self, stream=None):
        self._stream = stream
        self.open = False  # a line awaits its newline

    def __call__(self, done: int, total: int, desc: str) -> None:
        print(f"\r{desc}: {done}/{total}", end="" if done < total else "\n",
              file=self._stream or sys.stderr, flush=True)
        self.open = done < total

    def end_line(self) -> None:
        if self.open:
            print(file=self._stream or sys.stderr)
            self.open = False
