"""blobfs: two-blob archives of directory trees (index + data), read back with verification.

``blobfs.Client`` (push directories to, and pull archives from, OCI registries) is imported on
first use, so ``import blobfs.core`` does not pull in the HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .client import Client as Client

__all__ = ["Client", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, {"Client": ".client"}, __all__)
