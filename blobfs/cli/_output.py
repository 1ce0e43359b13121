"""Rendering for the ``blobfs`` command: text or JSON on stdout, warnings on stderr.

Library code never prints (STYLE rule 9); everything the command shows goes through
:class:`Output`, which looks up ``sys.stdout``/``sys.stderr`` at write time so that in-process
callers (tests, the demo) that swap the streams see the output.
"""

from __future__ import annotations

import json
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CliError",
    "Output",
    "format_mode",
    "format_mtime",
    "human_size",
    "parse_size",
]

OutputMode = Literal["text", "json"]


class CliError(Exception):
    """A user mistake the command reports as one line (``blobfs: error: ...``), exit 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class Output:
    """Where a command's results go: ``text`` lines or one JSON object on stdout."""

    mode: OutputMode = "text"
    quiet: bool = False

    @property
    def json(self) -> bool:
        return self.mode == "json"

    def line(self, text: str = "") -> None:
        """One line of a text result (always shown: it is what the user asked for)."""
        sys.stdout.write(text + "\n")

    def lines(self, texts: Iterable[str]) -> None:
        write = sys.stdout.write
        for t in texts:
            write(t + "\n")

    def info(self, text: str) -> None:
        """A text summary line (``Copied 3 files``); dropped with ``--quiet``."""
        if not self.quiet:
            sys.stdout.write(text + "\n")

    def warn(self, text: str) -> None:
        """A warning on stderr; dropped with ``--quiet``."""
        if not self.quiet:
            sys.stderr.write(f"blobfs: warning: {text}\n")

    def emit_json(self, obj: Any) -> None:
        """The JSON result: one 2-space-indented object on stdout (as blob-cli)."""
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """Binary-prefixed size: ``512 B``, ``1.5 KiB``, ``2.9 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


_SUFFIXES = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 1 << 30,
    "GIB": 1 << 30,
    "T": 1 << 40,
    "TB": 1 << 40,
    "TIB": 1 << 40,
}


def parse_size(text: str) -> int:
    """``"64K"``, ``"1M"``, ``"1MiB"``, ``"4096"`` -> bytes (binary multiples; K = 1024).

    Raises ``ValueError`` with a readable message for anything else.
    """
    s = text.strip().replace("_", "")
    i = 0
    while i < len(s) and s[i].isdigit():
        i += 1
    digits, suffix = s[:i], s[i:].strip().upper()
    if not digits or suffix not in _SUFFIXES:
        raise ValueError(f"invalid size {text!r} (use bytes or a K/M/G suffix, e.g. 64K, 1M)")
    return int(digits) * _SUFFIXES[suffix]


def format_mode(st_mode: int) -> str:
    """``-rw-r--r--`` / ``drwxr-xr-x``, like ``ls -l``."""
    return stat.filemode(st_mode)


def format_mtime(mtime_ns: int) -> str:
    """Local time to the minute, ``2023-11-14 22:13``, like ``ls -l --time-style=long-iso``."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime_ns / 1e9))
    except (OverflowError, OSError, ValueError):
        return "?"
