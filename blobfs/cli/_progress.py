"""A one-line progress bar on stderr, drawn only for a person watching a terminal.

It is disabled (every call is a no-op) unless stderr is a TTY, ``--quiet`` is off and the job is
big enough to be worth it; so pipes, logs and tests never see carriage returns.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Final, TextIO

from ._output import human_size

__all__ = ["MIN_PROGRESS_BYTES", "ProgressBar"]

MIN_PROGRESS_BYTES: Final = 8 << 20
"""Jobs under 8 MiB finish in well under a second on a local disk: a bar would only flicker."""

_REDRAW_INTERVAL: Final = 0.1
"""At most ten redraws a second: smooth to the eye, and negligible next to hashing/zstd."""

_BAR_WIDTH: Final = 24


class ProgressBar:
    """``label  [#####.....]  42%  12.3 MiB / 29.0 MiB  85.1 MiB/s``, redrawn in place.

    ``update`` takes the absolute amount done; ``close`` erases the line. Not thread-safe: call
    it from the thread that does the work (the callbacks of ``create``/``verify`` are).
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        enabled: bool | None = None,
        quiet: bool = False,
        stream: TextIO | None = None,
        min_total: int = MIN_PROGRESS_BYTES,
        unit: str = "bytes",
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        # Decided per draw, not here: create learns its total only after enumerating the tree.
        self._can_draw = enabled if enabled is not None else not quiet and _isatty(self._stream)
        self._min_total = 0 if enabled else min_total
        self.total = max(total, 0)
        self.label = label
        self.unit = unit
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def enabled(self) -> bool:
        """Whether the bar is drawn: a terminal is watching and the job is big enough."""
        return self._can_draw and self.total > self._min_total

    def set_total(self, total: int) -> None:
        self.total = max(total, 0)

    def update(
        self,
        done: int,
        label: str | None = None,
        total: int | None = None,
        unit: str | None = None,
    ) -> None:
        """Record ``done`` units finished; redraw if the last redraw is old enough.

        ``unit`` switches what is counted (``"bytes"`` or e.g. ``"files"``) and restarts the
        rate, for jobs in phases (verify hashes the data blob, then checks each file).
        """
        if unit is not None and unit != self.unit:
            self.unit = unit
            self._start = time.monotonic()
        self.done = done
        if total is not None:
            self.total = max(total, 0)
        if label is not None:
            self.label = label
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < _REDRAW_INTERVAL and done < self.total:
            return
        self._last_draw = now
        self._draw(now)

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    def _draw(self, now: float) -> None:
        total = self.total
        frac = min(self.done / total, 1.0) if total else 1.0
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        filled = int(frac * _BAR_WIDTH)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        if self.unit == "bytes":
            amount = f"{human_size(self.done)} / {human_size(total)}  {human_size(int(rate))}/s"
        else:
            amount = f"{self.done} / {total} {self.unit}  {rate:.0f}/s"
        stats = f"[{bar}] {frac * 100:3.0f}%  {amount}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        room = width - len(stats) - 2
        label = self.label
        if room < 8:
            label = ""
        elif len(label) > room:
            label = "..." + label[-(room - 3) :]
        text = f"{label}  {stats}" if label else stats
        self._stream.write("\r\x1b[K" + text[:width])
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar (the summary printed next stands on a clean line)."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
