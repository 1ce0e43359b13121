"""Globs of references, git refs and workflow paths: ``*`` stays within one ``/`` segment.

``*`` matches any run of characters except ``/``, ``**`` any run including ``/``, ``?`` one
character except ``/``; everything else is literal. So ``registry.example.com/team/*`` matches
``team/app`` but not ``team/sub/app`` (``team/**`` does), and ``refs/tags/v*`` matches
``refs/tags/v1.2`` — the matching rules of the reference's GitHub Actions identity patterns.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["glob_match", "glob_regex"]


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """The compiled, fully anchored regular expression of glob ``pattern``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, text: str) -> bool:
    """True when the whole of ``text`` matches glob ``pattern``."""
    return glob_regex(pattern).fullmatch(text) is not None
