"""``python -m blobfs.cli.demo``: a terminal session of the ``blobfs`` command on a sample tree.

Act 1, the main job: starts a loopback OCI registry (``docker-registry``), pushes the bundled
sample tree (``blobfs/_sample``) to it, mounts the reference with ``blobfs mount``, shows
``ls -lR`` and reads a file through the mount, prints ``blobfs status``, unmounts, and stops the
registry. The mount needs root and ``/dev/fuse``; without them that part is skipped with the
reason (the push, ``inspect`` and ``ls`` by reference still run).

Act 2, local archives: ``create``, ``ls -l -h``, ``tree``, ``cat``, ``inspect``, ``verify`` and
``cp -r`` in-process. The last step flips one byte of a copy of the data blob and shows
``verify`` and ``cat`` refusing it.

Each command line is echoed before its output. Exits non-zero as soon as a step does not end
with the status it should.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import blobfs

from ..core import open_file
from . import main as blobfs_main
from ._demo_registry import RegistryUnavailable, loopback_registry

__all__ = ["main", "sample_dir"]

ARCHIVE = "sample.blob"


class DemoFailed(Exception):
    pass


def sample_dir() -> Path:
    """The sample tree shipped as package data."""
    return Path(blobfs.__file__).parent / "_sample"


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run(args: list[str], expect: int = 0) -> None:
    _say("$ blobfs " + shlex.join(args))
    # stderr into stdout, so the transcript reads in order however it is captured.
    with contextlib.redirect_stderr(sys.stdout):
        rc = blobfs_main(args)
        sys.stdout.flush()
    if rc != expect:
        raise DemoFailed(f"`blobfs {shlex.join(args)}` exited {rc}, expected {expect}")
    _say()


def _pick_text_file(tree: Path) -> str:
    """A small text file to ``cat``: a README if there is one, else the smallest .txt/.md."""
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    for p in files:
        if p.name.lower().startswith("readme") and 0 < p.stat().st_size <= 4096:
            return p.relative_to(tree).as_posix()
    texts = [p for p in files if p.suffix in (".txt", ".md") and 0 < p.stat().st_size <= 4096]
    if not texts:
        texts = files
    if not texts:
        raise DemoFailed(f"{tree}: the sample tree has no files")
    return min(texts, key=lambda p: p.stat().st_size).relative_to(tree).as_posix()


def _pick_dir(tree: Path) -> str | None:
    dirs = sorted(p for p in tree.iterdir() if p.is_dir() and not p.is_symlink())
    return dirs[0].name if dirs else None


def _corrupt_copy(src: Path, dest: Path, path: str) -> None:
    """Copy archive ``src`` to ``dest`` and flip one byte in the payload of file ``path``."""
    shutil.copytree(src, dest)
    with open_file(os.fspath(dest / "index.blob"), os.fspath(dest / "data.blob")) as ar:
        entry = ar.index.entry(path)
    offset = entry.data_offset + entry.data_size // 2
    with open(dest / "data.blob", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _sh(argv: list[str], expect: int = 0) -> None:
    """Run a program (not ``blobfs`` in-process: the mount daemon must be its own process)."""
    shown = ["blobfs", *argv[1:]] if argv[0] == _BLOBFS[0] else argv
    _say("$ " + shlex.join(shown))
    rc = subprocess.run(argv, stderr=subprocess.STDOUT, check=False).returncode
    sys.stdout.flush()
    if rc != expect:
        raise DemoFailed(f"`{shlex.join(shown)}` exited {rc}, expected {expect}")
    _say()


_BLOBFS = [os.path.join(os.path.dirname(sys.executable), "blobfs")]
"""The console script next to this interpreter (the virtualenv's), as a user would run it."""


def _mount_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "mounting needs root on this machine"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.path.exists(_BLOBFS[0]):
        return f"{_BLOBFS[0]} is missing (run `make setup`)"
    return None


def registry_act(work: Path, text_file: str) -> None:
    """Push the sample tree to a loopback registry and mount it."""
    _say("# The main job: ship a tree through an OCI registry and mount it without downloading.")
    try:
        with loopback_registry(work / "registry") as host:
            _say(f"# A loopback registry (docker-registry) listens on {host}.")
            _push_and_mount(work, f"{host}/demo/sample:v1", text_file)
    except RegistryUnavailable as e:
        raise DemoFailed(str(e)) from None
    _say("# Registry stopped.")
    _say()


def _push_and_mount(work: Path, ref: str, text_file: str) -> None:
    _run(["push", ref, "sample"])
    _run(["inspect", ref])
    _run(["ls", "-l", ref])
    reason = _mount_skip_reason()
    if reason is not None:
        _say(f"# SKIPPED the mount: {reason}.")
        return
    mnt = work / "mnt"
    mnt.mkdir()
    _say("# Mount the reference: listings come from the index, reads are verified ranges.")
    _sh([*_BLOBFS, "mount", ref, str(mnt), "-o", f"cache_dir={work / 'mount-cache'}"])
    try:
        _sh(["ls", "-lR", str(mnt)])
        _sh(["cat", str(mnt / text_file)])
        _sh([*_BLOBFS, "status", str(mnt)])
    finally:
        _sh([*_BLOBFS, "umount", str(mnt)])


def session(work: Path) -> None:
    sample = sample_dir()
    if not sample.is_dir():
        raise DemoFailed(f"{sample}: the bundled sample tree is missing")
    shutil.copytree(sample, work / "sample")
    os.chdir(work)
    text_file = _pick_text_file(Path("sample"))
    some_dir = _pick_dir(Path("sample"))
    registry_act(work, text_file)

    _say("# Archive a directory tree: one index blob, one data blob (zstd per file).")
    _run(["create", "sample", ARCHIVE])
    _say("# The index answers listings without touching the data blob.")
    _run(["ls", "-l", "-h", ARCHIVE])
    _run(["tree", ARCHIVE])
    _say("# Reads are verified against the SHA-256 in the index before they are shown.")
    _run(["cat", ARCHIVE, text_file])
    _run(["inspect", ARCHIVE])
    _run(["verify", ARCHIVE])
    if some_dir is not None:
        _say("# Extraction is verified, atomic and confined to the destination.")
        _run(["cp", "-r", "--preserve", f"{ARCHIVE}:/{some_dir}", "extracted"])
        _run(["ls", "-l", ARCHIVE, some_dir])
    _say(f"# Flip one byte of {text_file} in a copy of the data blob...")
    _corrupt_copy(Path(ARCHIVE), Path("corrupt.blob"), text_file)
    _say("# ...and blobfs refuses it (these two steps are expected to fail).")
    _run(["verify", "corrupt.blob"], expect=1)
    _run(["cat", "corrupt.blob", text_file], expect=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blobfs.cli.demo", description="Show the blobfs command at work."
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="run in DIR (must not exist; kept afterwards) instead of a temporary directory",
    )
    opts = parser.parse_args(argv)
    old_cwd = os.getcwd()
    try:
        if opts.workdir:
            work = Path(opts.workdir).resolve()
            work.mkdir(parents=True)
            session(work)
        else:
            with tempfile.TemporaryDirectory(prefix="blobfs-demo-") as tmp:
                try:
                    session(Path(tmp))
                finally:
                    os.chdir(old_cwd)
    except (DemoFailed, OSError) as e:
        sys.stderr.write(f"demo: FAILED: {e}\n")
        return 1
    finally:
        os.chdir(old_cwd)
    _say("# Demo finished: every step ended as expected.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
