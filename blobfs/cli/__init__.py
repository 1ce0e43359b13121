"""The ``blobfs`` command line: create, ls, tree, cat, cp, verify, inspect.

``main(argv)`` runs one command in-process and returns its exit status (tests and the demo call
it); ``console_main()`` is the process entry point that exits with it.
"""

from __future__ import annotations

import os
import sys

# httpx imports its own command-line client when rich, click and pygments happen to be installed
# (they are, as other tools' dependencies): about 70 ms of every blobfs start-up, for a program
# blobfs never runs. None in sys.modules makes that import fail with ImportError, which httpx
# expects (it then defines a stub). Only when httpx is not imported yet: never half-loaded.
if "httpx" not in sys.modules:
    # typeshed types sys.modules values as modules, but None is the documented import blocker.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# numpy (the index columns) loads OpenBLAS, which starts a thread per core at import and keeps it
# spinning for a while: on a 2-core machine that took ~50 ms of every mount's start-up, for
# linear algebra blobfs never does. One thread unless the user chose otherwise; only before
# numpy is imported does it matter.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ._main import main as main

__all__ = ["console_main", "main"]


def console_main() -> None:
    """Entry point of the ``blobfs`` executable and ``python -m blobfs.cli``."""
    sys.exit(main())
