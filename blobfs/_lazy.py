"""Public names imported on first use (PEP 562), for the package facades.

A facade lists each public name with the private module defining it and gets a module
``__getattr__`` that imports that module when the name is first looked up (then stores the
value in the package, so later look-ups are plain attribute reads). ``import blobfs.core`` is
then nearly free, and a command loads only the modules it uses: ``blobfs mount`` never loads
the archive-creation code, ``blobfs --version`` not even numpy. Type checkers see the same
names through ``if TYPE_CHECKING:`` imports next to the table.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str], public: Collection[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module ``package``, whose name ``n`` is defined in
    the module ``names[n]`` (relative to ``package``). An unknown name raises AttributeError
    as for any module; ``dir()`` lists the public names before they are loaded."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public))

    return __getattr__, __dir__
