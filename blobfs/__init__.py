"""blobfs: two-blob archives of directory trees (index + data), read back with verification."""

__version__ = "0.1.0"
