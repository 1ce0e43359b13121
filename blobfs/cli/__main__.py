"""``python -m blobfs.cli ...`` runs the ``blobfs`` command."""

from . import console_main

if __name__ == "__main__":
    console_main()
