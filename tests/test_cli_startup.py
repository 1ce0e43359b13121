"""What ``blobfs`` imports and builds to run one command.

The parser is built for the subcommand on the command line only (``blobfs mount`` does not
import the trust, registry-command or progress modules); these tests check that this is
invisible: every subcommand parses and helps exactly as in the whole parser, the tables that
name the subcommands agree with the parser, and help or unknown words still get the whole one.

The rest checks what each path loads at all, in fresh interpreters: ``--version``, ``--help``
and ``umount`` no numpy, httpx, trio or cryptography; a mount no asyncio or archive-creation
code, and a local one no httpx; the lazy package facades still give every public name. And the
mount's start-up tricks keep their promises: the GC comes back on, the content cache opened in
a thread still fails the mount when it cannot be opened.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from blobfs.cli import _main
from blobfs.cli._output import CliError

REPO = Path(__file__).resolve().parent.parent


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_command_tables_match_the_parser() -> None:
    full = _main.build_parser()
    names = tuple(_subparsers(full))
    assert full.get_default("commands") == names
    assert _main._all_commands() == names  # same names, same order (help lists them so)
    for name in names:
        partial = _main.build_parser(name)
        assert tuple(_subparsers(partial)) == (name,) or name in _main._GROUPS
        assert partial.get_default("commands") == names


@pytest.mark.parametrize("name", _main._all_commands())
def test_each_subcommand_parses_and_helps_as_in_the_whole_parser(name: str) -> None:
    full = _subparsers(_main.build_parser())[name]
    partial = _subparsers(_main.build_parser(name))[name]
    assert partial.format_help() == full.format_help()
    assert partial.format_usage() == full.format_usage()

    def described(p: argparse.ArgumentParser) -> list[tuple[object, ...]]:
        return [
            (a.option_strings, a.dest, a.nargs, a.default, a.choices, a.required, type(a))
            for a in p._actions
        ]

    assert described(partial) == described(full)
    assert partial.get_default("handler") is not None


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["ls", "A"], "ls"),
        (["--output", "json", "ls", "A"], "ls"),
        (["--cache-dir", "mount", "status", "M"], "status"),  # an option's value is no command
        (["-vv", "--offline", "mount", "R", "M", "-o", "ro"], "mount"),
        (["mount", "-h"], "mount"),
        (["--config=x.toml", "keygen"], "keygen"),
        (["-h", "mount"], None),  # the top-level help lists every command
        (["--version"], None),
        ([], None),
        (["lss", "A"], None),  # a typo: argparse names the choices
        (["--output", "yaml", "ls"], None),  # a bad value: argparse reports it
        (["ref", "/mnt"], None),  # perhaps the mount(8) helper form
    ],
)
def test_the_command_is_found_only_when_it_is_sure(argv: list[str], command: str | None) -> None:
    assert _main._command_of(argv) == command


def test_help_and_errors_still_come_from_the_whole_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in _main._all_commands():
        assert name in out
    assert _main.main(["lss"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'lss'" in err
    assert "keygen" in err  # the choices listed are all of them


def _imported_by(argv: list[str]) -> set[str]:
    """Modules loaded after running ``blobfs ARGV`` in a fresh interpreter (not the names
    blocked with None)."""
    return _modules_after(f"from blobfs.cli import main\nrc = main({argv!r})\n")


NOT_FOR_MOUNT = (
    "blobfs.cli._trust_cmds",
    "blobfs.cli._registry_cmds",
    "blobfs.cli._archive_cmds",
    "blobfs.cli._cp",
    "blobfs.cli._create_cmd",
    "blobfs.cli._login",
    "blobfs.cli._progress",
    "blobfs.policy",
    "cryptography",
    "httpx._main",
    "rich",
    "click",
    "pygments",
)


def test_mount_imports_only_what_it_needs(tmp_path: Path) -> None:
    """``blobfs mount`` (here its argument checking: the archive does not exist) and
    ``blobfs umount`` load neither the trust modules nor httpx's command-line client."""
    for argv in (
        ["mount", str(tmp_path / "none"), str(tmp_path)],
        ["umount", str(tmp_path / "none")],
    ):
        modules = _imported_by(argv)
        assert "blobfs.cli._mount_cmds" in modules
        assert not [m for m in modules if m.startswith(NOT_FOR_MOUNT)], argv


def test_other_commands_still_load_their_modules(tmp_path: Path) -> None:
    modules = _imported_by(["keygen", "--help"])
    assert "blobfs.cli._trust_cmds" in modules
    modules = _imported_by(["ls", str(tmp_path / "none")])
    assert "blobfs.cli._archive_cmds" in modules
    assert "blobfs.cli._trust_cmds" not in modules


# ------------------------------------------------------------- what each path imports, at all


def _modules_after(code: str) -> set[str]:
    """Modules loaded (not blocked with None) after running ``code`` in a fresh interpreter."""
    code += (
        "\nimport json, sys\n"
        "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    modules: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return set(modules)


def _loaded(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if m.startswith(prefixes))


HEAVY = ("numpy", "trio", "pyfuse3", "httpx", "httpcore", "asyncio", "cryptography", "zstandard")
"""What no command needs before it runs (and ``--version``, ``--help``, ``umount`` never)."""

ASYNCIO_ONLY = ("asyncio",)
"""Loaded only by the asyncio flavour of the async API; the trio mount never."""

CREATE_ONLY = (
    "blobfs.core._create",  # _create, _create_engine, _create_sink, _create_walk
    "blobfs.core._index_writer",
)


def test_version_help_and_umount_load_no_heavy_module(tmp_path: Path) -> None:
    for argv in (["--version"], ["--help"], ["umount", str(tmp_path)], ["status", str(tmp_path)]):
        modules = _modules_after(
            "import contextlib, io\n"
            "from blobfs.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    with contextlib.redirect_stderr(io.StringIO()):\n"
            f"        main({argv!r})\n"
        )
        assert not _loaded(modules, *HEAVY, *CREATE_ONLY), argv


def test_version_is_argparse_s_answer(capsys: pytest.CaptureFixture[str]) -> None:
    """The fast path prints what the parser's --version action prints."""
    assert _main.main(["--version"]) == 0
    fast = capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        _main.build_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == fast
    assert fast.startswith("blobfs ")


def _local_archive(tmp_path: Path) -> Path:
    from blobfs.core import create_blob

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a\n")
    dest = tmp_path / "archive"
    create_blob(src, dest).close()
    return dest


def test_mount_of_a_local_archive_loads_no_http_asyncio_or_create_code(tmp_path: Path) -> None:
    """The whole daemon is loaded (the mount fails on the missing mountpoint only after that)
    and the archive opened as the daemon opens it: no httpx, asyncio or archive creation."""
    archive = _local_archive(tmp_path)
    missing = tmp_path / "no-such-mountpoint"
    modules = _modules_after(
        "import contextlib, io\n"
        "from blobfs.cli import main\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        f"    assert main(['mount', {str(archive)!r}, {str(missing)!r}]) == 1\n"
        "from blobfs.cli._main import build_parser, _settings\n"
        "from blobfs.cli._common import archive_and_rest, open_archive\n"
        f"args = build_parser('mount').parse_args(['mount', {str(archive)!r}, 'M'])\n"
        "ctx, _ = _settings(args)\n"
        "spec, _ = archive_and_rest(args, args.positionals, min_rest=1, max_rest=1)\n"
        "with open_archive(spec, ctx) as a:\n"
        "    assert a.read_file('a.txt') == b'a\\n'\n"
    )
    assert {"blobfs.fuse._daemon", "pyfuse3", "trio", "numpy"} <= modules  # it did load
    assert not _loaded(modules, "httpx", "httpcore", *ASYNCIO_ONLY, *CREATE_ONLY, "cryptography")


def test_registry_mount_path_loads_no_asyncio_or_create_code() -> None:
    modules = _modules_after(
        "import blobfs.cli._mount_cmds, blobfs.fuse._daemon, blobfs.fuse._counting\n"
        "from blobfs.client import Client\n"
        "from blobfs.core.cache.disk import DiskCache\n"
        "from blobfs.registry import Registry\n"
    )
    assert {"httpx", "blobfs.registry._reads", "blobfs.fuse._daemon"} <= modules
    assert not _loaded(modules, *ASYNCIO_ONLY, *CREATE_ONLY, "blobfs.policy._", "cryptography")


@pytest.mark.parametrize("package", ["blobfs", "blobfs.core", "blobfs.registry", "blobfs.policy"])
def test_lazy_facades_still_give_every_public_name(package: str) -> None:
    """Each facade's public names resolve in a fresh interpreter, one by one and through
    ``import *``; its table names exactly ``__all__``; unknown names are AttributeErrors."""
    code = (
        "import importlib\n"
        f"m = importlib.import_module({package!r})\n"
        "names = list(m.__all__)\n"
        "assert set(names) <= set(dir(m)), set(names) - set(dir(m))\n"
        "for n in names:\n"
        "    assert getattr(m, n) is not None, n\n"
        "    assert getattr(m, n) is getattr(m, n), n\n"
        "ns = {}\n"
        f"exec('from {package} import *', ns)\n"
        "assert set(names) <= set(ns), set(names) - set(ns)\n"
        "try:\n"
        "    m.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
        "table = getattr(m, '_NAMES', None)\n"
        "if table is not None:\n"
        "    assert set(table) == set(names), set(table) ^ set(names)\n"
    )
    _modules_after(code)


def test_a_client_opens_its_caches_on_first_pull_only(tmp_path: Path) -> None:
    """A mount builds a Client for its registry (and brings its own content cache): the
    client's content and block caches must not be created for it (two SQLite ledgers, ~30 ms
    of a first mount)."""
    from blobfs.client import Client

    with Client(cache_dir=tmp_path, docker_config=False):
        pass
    assert not (tmp_path / "content").exists()
    assert not (tmp_path / "blocks").exists()


def test_mount_start_up_runs_without_the_gc_and_turns_it_back_on(tmp_path: Path) -> None:
    """``cmd_mount`` switches the cyclic GC off for its start-up; a failed mount (here: no
    mountpoint) and the daemon's archive factory, opened or failed, turn it back on."""
    from blobfs.cli import _mount_cmds
    from blobfs.cli._common import ArchiveSpec

    archive = _local_archive(tmp_path)
    assert gc.isenabled()
    assert _main.main(["mount", str(archive), str(tmp_path / "no-such-mountpoint")]) == 1
    assert gc.isenabled()

    ctx, _ = _main._settings(_main.build_parser("mount").parse_args(["mount", "A", "M"]))
    good = ArchiveSpec(str(archive / "index.blob"), str(archive / "data.blob"), "a", archive)
    bad = ArchiveSpec(str(tmp_path / "none"), str(tmp_path / "none"), "none")
    try:
        gc.disable()
        with _mount_cmds._opener(good, ctx, None, None, resume_gc=True)() as opened:
            assert gc.isenabled()
            assert opened.read_file("a.txt") == b"a\n"
        gc.disable()
        with pytest.raises(CliError):
            _mount_cmds._opener(bad, ctx, None, None, resume_gc=True)()
        assert gc.isenabled()
        gc.disable()
        _mount_cmds._opener(good, ctx, None, None, resume_gc=False)().close()
        assert not gc.isenabled()  # not ours to turn on
    finally:
        gc.enable()


def test_the_opening_cache_waits_for_and_forwards_to_the_cache() -> None:
    from blobfs.cli._mount_cmds import _OpeningCache
    from blobfs.core.cache import MemoryCache
    from blobfs.fuse._counting import CountingCache

    started = threading.Event()
    release = threading.Event()
    inner = MemoryCache()

    def slow_open() -> MemoryCache:
        started.set()
        release.wait(10)
        return inner

    opening = _OpeningCache(slow_open)
    assert started.wait(10)  # opened in another thread, while this one goes on
    release.set()
    counted = CountingCache(opening)
    counted.put_bytes(b"\1" * 32, b"content")  # an optional method, found through the opening
    f = counted.get(b"\1" * 32)
    assert f is not None
    with f:
        assert f.read() == b"content"
    assert opening.opened() is inner
    assert (opening.size_bytes(), opening.max_bytes()) == (inner.size_bytes(), inner.max_bytes())
    counted.close()


def test_a_cache_that_cannot_be_opened_still_fails_the_registry_mount(tmp_path: Path) -> None:
    """The content cache is opened while the manifest and index are fetched; an unusable
    cache directory is still an error of the archive's opening (before the mount exists)."""
    from blobfs.cli import _mount_cmds
    from blobfs.registry import CredentialStore, Registry
    from tests._registry import local_registry

    archive = _local_archive(tmp_path)
    (tmp_path / "not-a-dir").write_bytes(b"")
    with local_registry(tmp_path / "reg") as reg:
        ref = f"{reg.host}/startup/a:v1"
        with Registry() as client:
            client.push(ref, archive)
        parser = _main.build_parser("mount")
        ctx, _ = _main._settings(parser.parse_args(["mount", ref, "M"]))
        ctx.cache_dir = tmp_path / "not-a-dir"
        store = CredentialStore(docker_config=False, auth_file=False)
        with pytest.raises(NotADirectoryError, match="not-a-dir"):
            _mount_cmds._registry_archive(ref, ctx, store, None)
        ctx.cache_dir = tmp_path / "cache"
        with _mount_cmds._registry_archive(ref, ctx, store, None) as opened:
            assert opened.read_file("a.txt") == b"a\n"
        assert (tmp_path / "cache" / "content").is_dir()


def test_listing_attributes_never_imports_numpy_ma() -> None:
    """``np.unique`` imports numpy.ma (about 20 ms) the first time it runs: the first listing
    of a cold ``find`` or ``ls -lR`` paid for it. Attributes of positions in two blocks of the
    index's attribute columns take that path."""
    code = (
        "import hashlib\n"
        "from blobfs.core import Compression, Entry, Index, encode_index\n"
        "d = hashlib.sha256(b'x').digest()\n"
        "es = [Entry(f'd/f{i:06d}', i, 1, 1, d, 0o644, 0, 0, i, Compression.NONE)"
        " for i in range(20000)]\n"
        "idx = Index(encode_index(es, data_size=20000, data_hash=d))\n"
        "cols = idx.attributes([3, 19999])\n"
        "assert int(cols.size[1]) == 1, cols\n"
    )
    modules = _modules_after(code)
    assert "numpy" in modules
    assert "numpy.ma" not in modules
