"""blobfs: two-blob archives of directory trees (index + data), read back with verification.

``blobfs.Client`` (push directories to, and pull archives from, OCI registries) is imported on
first use, so ``import blobfs.core`` does not pull in the HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from .client import Client as Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'blobfs' has no attribute {name!r}")
