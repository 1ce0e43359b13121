"""Argument parsing, dispatch and the error policy of the ``blobfs`` command.

Error policy (STYLE rule 9): a user mistake or a :class:`~blobfs.errors.BlobfsError` becomes one
line ``blobfs: error: <message>`` on stderr and exit status 1; usage errors exit 2 (argparse);
Ctrl-C exits 130 without a word; a closed stdout (``blobfs cat ... | head``) exits 141 quietly.
A traceback is printed only with ``-vv`` or ``BLOBFS_DEBUG=1``.

Global options are accepted before and after the subcommand (``blobfs --output json ls A`` and
``blobfs ls A --output json``): each subparser carries its own copy under a separate ``dest``,
merged in :func:`_settings`.

Start-up: a command imports only its own modules. The parser is built for the one subcommand
named on the command line (:func:`_command_of`; ``blobfs mount`` then never imports the trust,
registry-command or progress-bar modules), and handlers are looked up at dispatch through this
module's attributes (:data:`_HANDLERS`, imported on first access). Anything else (help, an
unknown or missing command, the mount(8) helper form) builds the whole parser as before; the
command modules import their heavy dependencies (numpy, httpx, trio, cryptography) where they
use them, so even the whole parser loads none of them. ``blobfs --version`` builds no parser.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NoReturn

from .. import __version__
from ..core import CHUNK_SIZE_MAX, CHUNK_SIZE_MIN
from ..errors import BlobfsError, PolicyViolation
from ._common import (
    DEFAULT_DATA_NAME,
    DEFAULT_INDEX_NAME,
    Ctx,
    add_archive_options,
    add_policy_options,
    load_config,
)
from ._output import CliError, Output, OutputMode, parse_size

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
"""128 + SIGINT, what a shell reports for a program killed by Ctrl-C."""
EXIT_BROKEN_PIPE: Final = 141
"""128 + SIGPIPE, what ``cat`` reports when its reader went away."""

ZSTD_MAX_LEVEL: Final = 22
"""zstd's highest standard level (``zstandard.MAX_COMPRESSION_LEVEL``)."""

Handler = Callable[[argparse.Namespace, Ctx], int]

_HANDLERS: Final = {
    "cmd_cat": "._archive_cmds",
    "cmd_ls": "._archive_cmds",
    "cmd_tree": "._archive_cmds",
    "cmd_cache": "._cache_cmds",
    "cmd_cp": "._cp",
    "cmd_create": "._create_cmd",
    "cmd_login": "._login",
    "cmd_logout": "._login",
    "cmd_inspect_any": "._registry_cmds",
    "cmd_pull": "._registry_cmds",
    "cmd_push": "._registry_cmds",
    "cmd_tag": "._registry_cmds",
    "cmd_verify_any": "._trust_cmds",
}
"""The handlers of the subcommands defined here, by the module defining each (imported when a
handler is first used: see :func:`__getattr__`)."""

_GROUPS: Final = {
    "mount": ("._mount_cmds", "add_mount_commands"),
    "umount": ("._mount_cmds", "add_mount_commands"),
    "status": ("._mount_cmds", "add_mount_commands"),
    "keygen": ("._trust_cmds", "add_trust_commands"),
    "sign": ("._trust_cmds", "add_trust_commands"),
    "attest": ("._trust_cmds", "add_trust_commands"),
}
"""Subcommands registered by other modules: the module and its ``add_*`` function (which
registers all of the group). tests/test_cli_startup.py checks this table against the parser."""


def __getattr__(name: str) -> Any:
    """The subcommand handlers of :data:`_HANDLERS`, imported on first access (tests may
    monkeypatch them here)."""
    module = _HANDLERS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __package__), name)


def _handler(name: str) -> Handler:
    """The handler ``name`` of :data:`_HANDLERS`, resolved when the command runs."""
    this = sys.modules[__name__]

    def run(args: argparse.Namespace, ctx: Ctx) -> int:
        handler: Handler = getattr(this, name)
        return handler(args, ctx)

    return run


def _load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module, __package__), name)


log = logging.getLogger("blobfs.cli")

_EPILOG = """\
exit status: 0 ok, 1 error (including failed verification), 2 usage error,
5 refused by a trust policy,
130 interrupted, 141 output pipe closed.
Set BLOBFS_DEBUG=1 (or pass -vv) to see tracebacks."""


# ------------------------------------------------------------------------------------- parsing


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _chunk_size_arg(text: str) -> int:
    n = _size_arg(text)
    if n and (n & (n - 1) or not CHUNK_SIZE_MIN <= n <= CHUNK_SIZE_MAX):
        raise argparse.ArgumentTypeError(
            f"chunk size must be 0 (no chunk tables) or a power of two from "
            f"{CHUNK_SIZE_MIN >> 10}K to {CHUNK_SIZE_MAX >> 20}M, not {text!r}"
        )
    return n


def _zstd_level_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= n <= ZSTD_MAX_LEVEL:
        raise argparse.ArgumentTypeError(f"zstd level must be 1 to {ZSTD_MAX_LEVEL}, not {n}")
    return n


def _read_policy_options(p: argparse.ArgumentParser, verb: str) -> None:
    """``--policy``/``--key`` of a command reading an archive (``ls``, ``tree``, ``cat``)."""
    add_policy_options(
        p,
        policy_help=f"{verb} a REF only if it satisfies the trust policy FILE (repeatable); "
        "exit 5 when it is refused",
        key_help=f"{verb} a REF only if it is signed by public key PUB (repeatable)",
    )


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def _add_global_options(parser: argparse.ArgumentParser, suffix: str) -> None:
    g = parser.add_argument_group("global options")
    g.add_argument(
        "--output",
        choices=("text", "json"),
        dest="output" + suffix,
        default=None,
        help="result format on stdout (default: text)",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        dest="quiet" + suffix,
        default=False,
        help="no summaries, warnings or progress bars",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        dest="verbose" + suffix,
        default=0,
        help="log more (-v info, -vv debug and tracebacks)",
    )
    g.add_argument(
        "--cache-dir",
        metavar="DIR",
        dest="cache_dir" + suffix,
        default=None,
        help="cache root for remote archives (default $XDG_CACHE_HOME/blobfs)",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        dest="no_cache" + suffix,
        default=False,
        help="read remote archives without the content and block caches",
    )
    g.add_argument(
        "--max-file-size",
        type=_size_arg,
        metavar="SIZE",
        dest="max_file_size" + suffix,
        default=None,
        help="whole-file read limit (default 256M; 0 = unlimited)",
    )
    g.add_argument(
        "--plain-http",
        action="store_true",
        dest="plain_http" + suffix,
        default=False,
        help="talk plain HTTP to every registry (default: only to loopback registries)",
    )
    g.add_argument(
        "--insecure-host",
        action="append",
        metavar="HOST[:PORT]",
        dest="insecure_host" + suffix,
        default=[],
        help="a registry to reach over plain HTTP (repeatable)",
    )
    g.add_argument(
        "--offline",
        action="store_true",
        dest="offline" + suffix,
        default=False,
        help="never ask registries for tags, manifests or indexes: serve them from the caches",
    )
    g.add_argument(
        "--ca-file",
        metavar="PEM",
        dest="ca_file" + suffix,
        default=None,
        help="verify registry TLS certificates against the CA certificates in PEM",
    )
    g.add_argument(
        "--config",
        metavar="FILE",
        dest="config" + suffix,
        default=None,
        help="configuration file (default $BLOBFS_CONFIG, else "
        "$XDG_CONFIG_HOME/blobfs/config.toml)",
    )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``blobfs`` parser; with ``only``, the top level and that one subcommand (the others
    are left out, so their modules are not imported; ``commands`` still lists them all)."""
    parser = argparse.ArgumentParser(
        prog="blobfs",
        description="Create, list, read, extract and verify blobfs archives "
        "(an index blob + a data blob).",
        epilog=_EPILOG,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"blobfs {__version__}")
    _add_global_options(parser, "")

    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_global_options(common, "_sub")
    with_archive = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_archive_options(with_archive)

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        handler: Handler,
        help_text: str,
        usage: str,
        *,
        archive: bool = True,
        add_help: bool = True,
    ) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return argparse.ArgumentParser(add_help=False)  # not this run's: dropped
        parents = [common, with_archive] if archive else [common]
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            usage=f"blobfs {name} {usage}",
            parents=parents,
            add_help=add_help,
            epilog=_EPILOG,
            formatter_class=_Formatter,
            allow_abbrev=False,
        )
        if not add_help:
            p.add_argument("--help", action="help", help="show this help message and exit")
        p.set_defaults(handler=handler, parser=p)
        return p

    # create
    p = add(
        "create",
        _handler("cmd_create"),
        "archive the directory tree SRC into DEST/index.blob + DEST/data.blob",
        "[options] SRC DEST",
        archive=False,
    )
    p.add_argument("src", metavar="SRC", help="directory to archive")
    p.add_argument("dest", metavar="DEST", help="directory to write the two blobs into")
    p.add_argument(
        "-c",
        "--compression",
        choices=("zstd", "none"),
        default="zstd",
        help="per-file compression (default: zstd, as blob-cli push)",
    )
    p.add_argument(
        "--no-skip-compressed",
        action="store_true",
        help="compress every file; by default files under 1 KiB and already-compressed "
        "formats (.gz, .jpg, .zip, ...) are stored raw",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="strict change detection: fail if a file is replaced or modified while archived",
    )
    p.add_argument(
        "--max-files",
        type=_positive_int,
        default=200_000,
        metavar="N",
        help="refuse trees with more than N regular files (default 200000; 0 = no limit)",
    )
    p.add_argument(
        "--chunk-size",
        type=_chunk_size_arg,
        default=None,
        metavar="SIZE",
        help="chunk size for random access to big files, e.g. 1M (default), 64K; "
        "0 writes no chunk tables (plain v1 entries)",
    )
    p.add_argument(
        "--zstd-level",
        type=_zstd_level_arg,
        default=None,
        metavar="N",
        help="zstd level 1-22 (default 3)",
    )
    p.add_argument(
        "--index-name",
        default=DEFAULT_INDEX_NAME,
        metavar="NAME",
        help=f"file name of the index blob (default {DEFAULT_INDEX_NAME})",
    )
    p.add_argument(
        "--data-name",
        default=DEFAULT_DATA_NAME,
        metavar="NAME",
        help=f"file name of the data blob (default {DEFAULT_DATA_NAME})",
    )
    p.add_argument("-f", "--force", action="store_true", help="replace an existing archive")

    archive_help = (
        "ARCHIVE is a directory holding index.blob and data.blob, "
        "or a registry reference host[:port]/repo[:tag][@sha256:...]"
    )

    # ls
    p = add(
        "ls",
        _handler("cmd_ls"),
        "list a directory of the archive (or one file)",
        "[-l] [-h] [--digest] (ARCHIVE | REF [--policy FILE] [--key PUB] "
        "| --index FILE --data FILE) [PATH]",
        add_help=False,
    )
    p.add_argument("positionals", nargs="*", metavar="[ARCHIVE] [PATH]", help=archive_help)
    p.add_argument("-l", "--long", action="store_true", help="mode, size, mtime and name")
    p.add_argument("-h", "--human", action="store_true", help="sizes as 1.5 KiB, 3.0 MiB")
    p.add_argument("--digest", action="store_true", help="with -l: a short SHA-256 column")
    _read_policy_options(p, "list")

    # tree
    p = add(
        "tree",
        _handler("cmd_tree"),
        "draw the directory tree of the archive",
        "[-L N] [--dirsfirst] (ARCHIVE | REF [--policy FILE] [--key PUB] "
        "| --index FILE --data FILE) [PATH]",
    )
    p.add_argument("positionals", nargs="*", metavar="[ARCHIVE] [PATH]", help=archive_help)
    p.add_argument(
        "-L", "--level", type=_positive_int, default=0, metavar="N", help="depth (0 = all)"
    )
    p.add_argument("--dirsfirst", action="store_true", help="list directories before files")
    _read_policy_options(p, "draw")

    # cat
    p = add(
        "cat",
        _handler("cmd_cat"),
        "write files of the archive to stdout, verified",
        "(ARCHIVE | REF [--policy FILE] [--key PUB] | --index FILE --data FILE) PATH...",
    )
    p.add_argument("positionals", nargs="*", metavar="[ARCHIVE] PATH", help=archive_help)
    _read_policy_options(p, "write")

    # cp
    p = add(
        "cp",
        _handler("cmd_cp"),
        "extract files or directories (verified, atomic, confined to DEST)",
        "[-r] [--preserve] [-f] ARCHIVE:/PATH... DEST\n"
        "       blobfs cp [-r] [--preserve] [-f] --index FILE --data FILE PATH... DEST",
    )
    p.add_argument(
        "positionals",
        nargs="*",
        metavar="SOURCE... DEST",
        help="sources ARCHIVE:/PATH (plain PATH with --index/--data), then the destination",
    )
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    p.add_argument("--preserve", action="store_true", help="apply archived mode bits and mtime")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing files")
    add_policy_options(
        p,
        policy_help="copy from a REF only if it satisfies the trust policy FILE (repeatable); "
        "exit 5, nothing written, when it is refused",
        key_help="copy from a REF only if it is signed by public key PUB (repeatable)",
    )

    # verify
    p = add(
        "verify",
        _handler("cmd_verify_any"),
        "check every file (and the data blob digest) against the index; with --policy or "
        "--key, check REF's signatures and attestations instead",
        "(ARCHIVE | --index FILE --data FILE | REF --policy FILE | REF --key PUB)",
    )
    p.add_argument("positionals", nargs="*", metavar="ARCHIVE", help=archive_help)
    if only in (None, "verify"):
        _load("._trust_cmds", "add_verify_options")(p)

    # inspect
    p = add(
        "inspect",
        _handler("cmd_inspect_any"),
        "show archive statistics and format details (of a REF: manifest, sizes, annotations)",
        "(ARCHIVE | REF | --index FILE --data FILE)",
    )
    p.add_argument("positionals", nargs="*", metavar="ARCHIVE", help=archive_help)

    ref_help = "host[:port]/repo[:tag][@sha256:...] (no tag: latest)"

    # push
    p = add(
        "push",
        _handler("cmd_push"),
        "archive directory DIR and push it to a registry as REF",
        "[-c zstd|none] [--annotation K=V]... [--tag T]... REF DIR",
        archive=False,
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("dir", metavar="DIR", help="directory to archive (or an archive directory)")
    p.add_argument(
        "-c",
        "--compression",
        choices=("zstd", "none"),
        default="zstd",
        help="per-file compression (default: zstd)",
    )
    p.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a manifest annotation (repeatable)",
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="also tag the pushed manifest TAG (repeatable)",
    )

    # pull
    p = add(
        "pull",
        _handler("cmd_pull"),
        "extract a registry archive into DEST (verified, confined to DEST, modes and times kept)",
        "[-f] REF [DEST]",
        archive=False,
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("dest", metavar="DEST", nargs="?", default=".", help="default: .")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing files")
    add_policy_options(
        p,
        policy_help="pull only if REF satisfies the trust policy FILE (TOML or YAML; "
        "repeatable); exit 5, nothing written, when it is refused",
        key_help="pull only if REF is signed by public key PUB (repeatable: all required)",
    )

    # tag
    p = add(
        "tag",
        _handler("cmd_tag"),
        "tag the manifest of SRC_REF as DST_REF (same repository, same digest)",
        "SRC_REF DST_REF",
        archive=False,
    )
    p.add_argument("src", metavar="SRC_REF", help=ref_help)
    p.add_argument("dst", metavar="DST_REF", help="the same repository with the new tag")

    # login / logout
    p = add(
        "login",
        _handler("cmd_login"),
        "check credentials against REGISTRY and store them in the docker config",
        "-u USER (--password-stdin | -p PASSWORD) REGISTRY",
        archive=False,
    )
    p.add_argument("registry", metavar="REGISTRY", help="host[:port]")
    p.add_argument("-u", "--username", metavar="USER", help="user name")
    p.add_argument(
        "-p", "--password", metavar="PASSWORD", help="password (insecure: use --password-stdin)"
    )
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    p = add(
        "logout",
        _handler("cmd_logout"),
        "remove the credentials of REGISTRY from the docker config",
        "REGISTRY",
        archive=False,
    )
    p.add_argument("registry", metavar="REGISTRY", help="host[:port]")

    # cache
    p = add(
        "cache",
        _handler("cmd_cache"),
        "show, locate, prune or clear the caches of remote archives",
        "{status,path,prune,clear} [content|blocks|registry|all] [--max-size SIZE]",
        archive=False,
    )
    p.add_argument("action", choices=("status", "path", "prune", "clear"))
    p.add_argument(
        "kind", nargs="?", choices=("content", "blocks", "registry", "all"), default=None
    )
    p.add_argument(
        "--max-size",
        type=_size_arg,
        metavar="SIZE",
        default=None,
        help="prune: shrink each cache to SIZE (default: its configured limit)",
    )
    for module, register in dict.fromkeys(_GROUPS.values()):
        if only is None or _GROUPS.get(only) == (module, register):
            _load(module, register)(add)
    parser.set_defaults(commands=tuple(sub.choices) if only is None else _all_commands())
    return parser


def _all_commands() -> tuple[str, ...]:
    """Every subcommand name, without building the parser (own ones from :func:`build_parser`'s
    source order would need the parser; they are the handlers' commands plus the groups)."""
    return _OWN_COMMANDS + tuple(_GROUPS)


_OWN_COMMANDS: Final = (
    "create", "ls", "tree", "cat", "cp", "verify", "inspect",
    "push", "pull", "tag", "login", "logout", "cache",
)  # fmt: skip
"""The subcommands :func:`build_parser` defines itself, in its order (checked by
tests/test_cli_startup.py)."""


class _ScanError(Exception):
    pass


class _Scanner(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ScanError(message)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, when it surely names one: the first positional argument
    once the global options (and their values) are skipped. None for anything else (help or
    ``--version`` before a subcommand, an unknown word, a parse problem): then the whole parser
    is built and argparse answers exactly as it always did."""
    scan = _Scanner(add_help=False, allow_abbrev=False)
    _add_global_options(scan, "")
    scan.add_argument("-h", "--help", "--version", action="store_true", dest="top_help")
    scan.add_argument("command", nargs="?")
    scan.add_argument("rest", nargs=argparse.REMAINDER)  # the subcommand's: not looked at
    try:
        ns, _ = scan.parse_known_args(list(argv))
    except _ScanError:
        return None
    name = ns.command
    if ns.top_help or (name not in _OWN_COMMANDS and name not in _GROUPS):
        return None
    return str(name)


# ------------------------------------------------------------------------------------- running


def _settings(args: argparse.Namespace) -> tuple[Ctx, int]:
    output: OutputMode = args.output_sub or args.output or "text"
    quiet = bool(args.quiet or args.quiet_sub)
    verbose = int(args.verbose) + int(args.verbose_sub)
    mfs = args.max_file_size_sub if args.max_file_size_sub is not None else args.max_file_size
    cache_dir = args.cache_dir_sub or args.cache_dir
    config = load_config(args.config_sub or args.config)
    ctx = Ctx(
        Output(output, quiet),
        mfs,
        verbose,
        cache_dir=Path(cache_dir) if cache_dir else None,
        use_cache=not (args.no_cache or args.no_cache_sub),
        plain_http=bool(args.plain_http or args.plain_http_sub),
        insecure_hosts=tuple(args.insecure_host)
        + tuple(args.insecure_host_sub)
        + config.insecure_hosts,
        offline=bool(args.offline or args.offline_sub),
        ca_file=args.ca_file_sub or args.ca_file,
        config=config,
    )
    return ctx, verbose


class _LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"blobfs: {record.levelname.lower()}: {record.getMessage()}"


@contextmanager
def _logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Log records of ``blobfs.*`` to stderr for the duration of one command."""
    logger = logging.getLogger("blobfs")
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter())
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    sys.stderr.write(f"{e.code}\n")
    return EXIT_ERROR


def _describe(e: BaseException) -> str:
    if isinstance(e, (BlobfsError, CliError)):
        return str(e)
    if isinstance(e, OSError):
        if e.strerror and e.filename is not None:
            target = f" -> {e.filename2}" if e.filename2 is not None else ""
            return f"{e.filename}{target}: {e.strerror}"
        return e.strerror or str(e)
    return f"internal error: {type(e).__name__}: {e}"


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``blobfs`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    debug = os.environ.get("BLOBFS_DEBUG", "") not in ("", "0")
    verbose = 0
    try:
        words = list(sys.argv[1:] if argv is None else argv)
        if words == ["--version"]:  # what argparse would print, without building the parser
            sys.stdout.write(f"blobfs {__version__}\n")
            return 0
        command = _command_of(words)
        if command is None:
            # mount(8) runs "blobfs SOURCE MOUNTPOINT -o ..." (no subcommand): that is a mount.
            helper_argv = _load("._mount_cmds", "helper_argv")
            words = helper_argv(words, _all_commands())
            if words[:2] == ["mount", "--helper"]:
                command = "mount"
        parser = build_parser(command)
        try:
            args = parser.parse_args(words)
        except SystemExit as e:
            return _exit_code(e)
        ctx, verbose = _settings(args)
        handler: Handler = args.handler
        with _logging(verbose, ctx.out.quiet):
            return handler(args, ctx)
    except SystemExit as e:  # usage errors found by a handler (parser.error)
        return _exit_code(e)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:
        expected = isinstance(e, (BlobfsError, CliError, OSError))
        if debug or verbose >= 2:
            traceback.print_exception(e, file=sys.stderr)
        message = _describe(e)
        if not expected and not debug and verbose < 2:
            message += " (run with -vv or BLOBFS_DEBUG=1 for a traceback)"
        sys.stderr.write(f"blobfs: error: {message}\n")
        if isinstance(e, PolicyViolation):
            exit_policy: int = _load("._trust_cmds", "EXIT_POLICY")
            return exit_policy
        return e.exit_code if isinstance(e, CliError) else EXIT_ERROR
