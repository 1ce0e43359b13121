"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._servers import RangeServer, serve_blobs


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    """A fresh, empty HTTP/1.1 range server (``tests/_servers.py``); add blobs with ``put``."""
    with serve_blobs() as server:
        yield server
