"""The ``blobfs`` command line: create, ls, tree, cat, cp, verify, inspect.

``main(argv)`` runs one command in-process and returns its exit status (tests and the demo call
it); ``console_main()`` is the process entry point that exits with it.
"""

from __future__ import annotations

import sys

from ._main import main as main

__all__ = ["console_main", "main"]


def console_main() -> None:
    """Entry point of the ``blobfs`` executable and ``python -m blobfs.cli``."""
    sys.exit(main())
