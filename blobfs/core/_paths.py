"""Archive paths: validation of stored paths and normalisation of user input.

Stored paths are relative, ``/``-separated, with no empty, ``.`` or ``..`` component, no NUL and
valid UTF-8 (FORMAT.md section 2). User input is normalised the way the reference does it
(leading and trailing ``/`` trimmed, repeated ``/`` collapsed, ``""``/``/``/``.`` = the root), then
validated, so ``"/a//b/"`` names ``a/b`` and ``"a/../b"`` is refused rather than resolved.
"""

from __future__ import annotations

import re

from ..errors import InvalidPath

__all__ = ["BAD_PATH_RE", "first_bad_path", "normalize_path", "path_problem"]

# One pattern finds every structural problem in a NUL-joined run of stored paths: an empty path,
# a leading or trailing "/", an empty component ("//"), or a "." / ".." component.  \Z, not $,
# because $ also matches before a trailing newline, which is a legal byte in a name.
BAD_PATH_RE = re.compile(
    rb"(?:\A|\x00)(?:/|\x00|\Z)|/(?:/|\x00|\Z)|(?:\A|[\x00/])\.\.?(?=[\x00/]|\Z)"
)


def path_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a valid stored path, or ``None`` when it is."""
    if not raw:
        return "empty path"
    if b"\x00" in raw:
        return "NUL byte in path"
    if raw.startswith(b"/"):
        return "absolute path"
    if BAD_PATH_RE.search(raw):
        return "empty, '.' or '..' component"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "path is not valid UTF-8"
    return None


def first_bad_path(paths: list[bytes]) -> tuple[int, str] | None:
    """``(position, problem)`` of the first invalid path of a batch, or ``None``.

    The common all-valid case runs in C: one join, three searches, one decode. With NUL turned
    into "/" and "/" around the whole run, every structural fault of any path (empty path,
    leading or trailing "/", empty, "." or ".." component) shows up as "//", "/./" or "/../".
    """
    joined = b"\x00".join(paths)
    ok = joined.count(0) == len(paths) - 1
    if ok:
        run = b"/" + joined.replace(b"\x00", b"/") + b"/"
        ok = b"//" not in run and b"/./" not in run and b"/../" not in run
    if ok:
        try:
            joined.decode("utf-8")
        except UnicodeDecodeError:
            ok = False
    if ok:
        return None
    # Slow path, only on the way to an error: find the first offending path.
    for i, raw in enumerate(paths):
        problem = path_problem(raw)
        if problem is not None:
            return i, problem
    return None


def normalize_path(path: str) -> str:
    """Normalise a user-supplied archive path; ``""`` is the root.

    Raises :class:`~blobfs.errors.InvalidPath` for ``.``/``..`` components, NUL bytes or
    characters that cannot be encoded as UTF-8.
    """
    wrapped = f"/{path}/"
    if (
        "//" not in wrapped
        and "/./" not in wrapped
        and "/../" not in wrapped
        and "\x00" not in path
        and path.isascii()
    ):
        return path  # already normal: the common case, kept cheap
    trimmed = "/".join(part for part in path.split("/") if part)
    if trimmed in ("", "."):
        return ""
    try:
        raw = trimmed.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(path, "path is not valid UTF-8") from None
    problem = path_problem(raw)
    if problem is not None:
        raise InvalidPath(path, problem)
    return trimmed
