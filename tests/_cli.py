"""Running the ``blobfs`` command in-process from tests that capture bytes (``capsysbinary``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from blobfs.cli import main

__all__ = ["Capture", "run", "run_json"]

Capture = pytest.CaptureFixture[bytes]


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``blobfs ARGV``."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.decode(), err.decode()


def run_json(capsys: Capture, *argv: str) -> Any:
    """The JSON document ``blobfs ARGV --output json`` prints; the command must succeed."""
    rc, out, err = run(capsys, *argv, "--output", "json")
    assert rc == 0, err
    return json.loads(out)
