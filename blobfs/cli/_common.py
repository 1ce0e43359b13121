"""What every ``blobfs`` subcommand shares: the run context and how ARCHIVE arguments resolve.

An archive is named either by a directory holding ``index.blob`` and ``data.blob`` (positional
``ARCHIVE``), or by ``--index FILE|URL --data FILE|URL``; in the second form the positional
``ARCHIVE`` is left out, so ``blobfs ls --index i.blob --data d.blob some/dir`` works. An
``http://`` or ``https://`` blob is read with range requests (``--header 'K: V'`` adds request
headers), through the content and block caches under the cache directory unless ``--no-cache``.

An ``ARCHIVE`` may also be an OCI reference (``host[:port]/repo[:tag][@sha256:...]``): a text is
taken as a reference when it is not an existing local path and its first ``/``-component looks
like a registry host (has a dot or a port, or is ``localhost``); it must then parse with
:meth:`blobfs.registry.Reference.parse` (a missing tag means ``:latest``), else the error says
both what was not found locally and why it is no reference. The archive is pulled with
:class:`blobfs.client.Client` (credentials from the docker config; ``--plain-http`` and
``--insecure-host`` choose plain HTTP) and read lazily through the same caches.

The configuration file (:func:`load_config`, ``--config FILE``, ``$BLOBFS_CONFIG``,
``$XDG_CONFIG_HOME/blobfs/config.toml``) gives the cache root, the tag TTL of the registry caches,
insecure registries, registry mirrors and the CA bundle for registry TLS (``[tls] ca_file``);
command-line options and ``$BLOBFS_CACHE_DIR`` win over it. The CLI is the only part of blobfs
that reads configuration files or the environment.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeAlias

from ..errors import InvalidReference
from ..registry import DEFAULT_REF_TTL, Reference
from ._output import CliError, Output

if TYPE_CHECKING:
    from collections.abc import Callable

    # Imported where used: a command loads the archive, HTTP and cache code it needs only
    # (``blobfs mount`` of a local archive never loads httpx; ``umount`` not even numpy).
    from ..client import Client
    from ..core import Archive, FileSource
    from ..core._closing import SupportsClose
    from ..core.cache import BlockCache as BlockCacheProtocol
    from ..core.cache import Cache
    from ..core.cache.disk import BlockCache, DiskCache
    from ..core.http import HttpSource
    from ..registry import CredentialStore, ManifestPolicy

__all__ = [
    "DEFAULT_DATA_NAME",
    "DEFAULT_INDEX_NAME",
    "ArchiveSpec",
    "Config",
    "Ctx",
    "add_archive_options",
    "archive_and_rest",
    "cache_root",
    "config_path",
    "display_path",
    "is_url",
    "load_config",
    "make_client",
    "open_archive",
    "parse_duration",
    "parse_reference",
    "reference_arg",
    "usage_error",
]

CONTENT_CACHE_BYTES = 4 << 30
"""Content cache bound: 4 GiB of verified files and chunks (CernVM-FS's default quota is
4,000 MB): the working set of a few datasets, a 1.8 GB tree read whole without evicting, and a
file up to 2 GiB kept as one entry when read front to back (see core/_whole.py)."""

MAX_INDEX_BYTES = 1 << 31
"""FlatBuffers offsets are 32-bit: no valid index is larger, so a bigger one is refused unread."""

DEFAULT_INDEX_NAME = "index.blob"
DEFAULT_DATA_NAME = "data.blob"


@dataclass(frozen=True, slots=True)
class Config:
    """What the configuration file says (defaults when there is none)."""

    path: Path | None = None
    """The file read, or None when there was none."""
    cache_dir: Path | None = None
    """``[cache] dir``: the cache root (``--cache-dir`` and ``$BLOBFS_CACHE_DIR`` win)."""
    ref_ttl: float = DEFAULT_REF_TTL
    """``[cache] ref_ttl``: seconds a tag -> digest answer is trusted (0 = always resolve)."""
    insecure_hosts: tuple[str, ...] = ()
    """``[[registry]]`` entries with ``insecure = true``: reached over plain HTTP."""
    mirrors: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    """``[[registry.mirror]]`` entries, as :func:`blobfs.registry.parse_mirrors` gives them."""
    ca_file: Path | None = None
    """``[tls] ca_file``: PEM bundle of CA certificates registry TLS is verified against
    (checked readable and parsable when the file is loaded; ``--ca-file`` wins)."""


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a TOML value: a number of seconds (``300``, ``0``, ``1.5``) or a string with
    a unit, ``ms``, ``s``, ``m``, ``h`` or ``d`` (``"5m"``, ``"30s"``, ``"300"``). ValueError
    says what is wrong (negative, not finite, no number, unknown unit)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"want seconds or a duration like '5m', not {value!r}")
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is None:
            raise ValueError(f"not a duration: {value!r} (want e.g. '30s', '5m', '1h' or 300)")
        seconds = float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s").lower()]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be 0 or more seconds, not {value!r}")
    return seconds


def config_path(explicit: str | None) -> tuple[Path, bool]:
    """The configuration file to read and whether it was named explicitly (``--config`` or
    ``$BLOBFS_CONFIG``: then it must exist); else ``$XDG_CONFIG_HOME/blobfs/config.toml`` or
    ``~/.config/blobfs/config.toml``, which may be missing."""
    if explicit:
        return Path(explicit).expanduser(), True
    env = os.environ.get("BLOBFS_CONFIG")
    if env:
        return Path(env).expanduser(), True
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "blobfs" / "config.toml", False


_TOP_KEYS = frozenset({"cache", "registry", "tls"})
_CACHE_KEYS = frozenset({"dir", "ref_ttl"})
_TLS_KEYS = frozenset({"ca_file"})


def load_config(explicit: str | None = None) -> Config:
    """Read the configuration file (see :func:`config_path`); defaults when an implicit one is
    missing. :class:`CliError` ``FILE: problem`` (one line) for a missing explicit file, an
    unreadable or malformed one."""
    path, named = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise CliError(f"{path}: configuration file not found") from None
        return Config()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CliError(f"{path}: cannot read the configuration file: {reason}") from None
    try:
        return _parse_config(path, text)
    except ValueError as e:
        problem = " ".join(str(e).split())
        raise CliError(f"{path}: {problem}") from None


def _parse_config(path: Path, text: str) -> Config:
    import tomllib  # only with a configuration file

    from ..registry import parse_mirrors

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"invalid TOML: {e}") from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} (known: [cache], [tls], [[registry]])")
    cache = _table(doc, "cache", _CACHE_KEYS)
    cache_dir = _config_path(path, cache, "cache", "dir")
    ref_ttl = DEFAULT_REF_TTL
    if "ref_ttl" in cache:
        try:
            ref_ttl = parse_duration(cache["ref_ttl"])
        except ValueError as e:
            raise ValueError(f"[cache] ref_ttl: {e}") from None
    mirrors = parse_mirrors(text)
    insecure: list[str] = []
    for i, entry in enumerate(doc.get("registry", [])):
        flag = entry.get("insecure", False)
        if not isinstance(flag, bool):
            raise ValueError(f"registry #{i + 1}: 'insecure' must be true or false")
        if flag:
            insecure.append(str(entry["location"]).strip().rstrip("/"))
    return Config(path, cache_dir, ref_ttl, tuple(insecure), mirrors, _tls_ca_file(path, doc))


def _table(doc: dict[str, Any], name: str, known: frozenset[str]) -> dict[str, Any]:
    """The top-level table ``[name]`` (empty when absent); ValueError on another type or an
    unknown key."""
    table: Any = doc.get(name, {})
    if not isinstance(table, dict):
        raise ValueError(f"'{name}' must be a table ([{name}])")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(
            f"[{name}]: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    return table


def _config_path(path: Path, table: dict[str, Any], name: str, key: str) -> Path | None:
    """``[name] key``, a file or directory name (``~`` expanded, relative to the configuration
    file's directory), or None when absent."""
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"[{name}] {key}: must be a non-empty string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else path.parent / p


def _tls_ca_file(path: Path, doc: dict[str, Any]) -> Path | None:
    """``[tls] ca_file``, loaded once here so that a missing or non-PEM bundle is a
    configuration error naming the key, not a failure of the first HTTPS request."""
    ca_file = _config_path(path, _table(doc, "tls", _TLS_KEYS), "tls", "ca_file")
    if ca_file is not None:
        import ssl  # only with a CA bundle configured (~10 ms)

        try:
            ssl.create_default_context(cafile=os.fspath(ca_file))
        except OSError as e:  # FileNotFoundError, ssl.SSLError (not PEM), ...
            reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"[tls] ca_file: {ca_file}: {reason}") from None
    return ca_file


@dataclass(slots=True)
class Ctx:
    """Per-invocation settings the handlers need besides their own arguments."""

    out: Output
    max_file_size_option: int | None
    """``--max-file-size`` in bytes (0 = unlimited), None when not given: see
    :attr:`max_file_size`."""
    verbose: int = 0
    cache_dir: Path | None = None
    """Root of the caches for remote archives (``None``: the default, see :func:`cache_root`)."""
    use_cache: bool = True
    plain_http: bool = False
    """``--plain-http``: talk plain HTTP to every registry (default: only to loopback ones)."""
    insecure_hosts: tuple[str, ...] = ()
    """``--insecure-host HOST`` and the configuration's insecure registries: reached over
    plain HTTP as well."""
    offline: bool = False
    """``--offline``: registry metadata (tags, manifests, indexes) only from the caches."""
    ca_file: str | None = None
    """``--ca-file PEM``, else the configuration's ``[tls] ca_file``: CA bundle to verify
    registry TLS certificates against (None: the system's)."""
    config: Config = field(default_factory=Config)
    """The configuration file's settings."""
    cache_bytes: int | None = None
    """Bound of each disk cache (content, blocks) in bytes; None: their defaults (the mount's
    ``-o cache_size``)."""

    def __post_init__(self) -> None:
        if self.ca_file is None and self.config.ca_file is not None:
            self.ca_file = os.fspath(self.config.ca_file)

    @property
    def max_file_size(self) -> int:
        """Whole-file read limit in bytes; 0 = unlimited."""
        if self.max_file_size_option is not None:
            return self.max_file_size_option
        from ..core import DEFAULT_MAX_FILE_SIZE  # the archive module: only when reading one

        return DEFAULT_MAX_FILE_SIZE


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """Where an archive's two blobs are, and how to name the archive in output."""

    index: str
    data: str
    label: str
    directory: Path | None = None
    """The ARCHIVE directory, when the archive was named by one."""
    headers: tuple[tuple[str, str], ...] = ()
    """Request headers for ``http(s)://`` blobs."""
    reference: str | None = None
    """The OCI reference, when the archive was named by one (``index``/``data`` are then
    empty)."""

    @property
    def remote(self) -> bool:
        return self.reference is not None or is_url(self.index) or is_url(self.data)


def add_policy_options(p: argparse.ArgumentParser, *, policy_help: str, key_help: str) -> None:
    """``--policy FILE`` (``args.policy``) and ``--key PUB`` (``args.verify_key``), each
    repeatable, as ``verify`` and ``pull`` take them (see ``_trust_cmds.policy_of``)."""
    p.add_argument("--policy", action="append", default=[], metavar="FILE", help=policy_help)
    p.add_argument(
        "--key", dest="verify_key", action="append", default=[], metavar="PUB", help=key_help
    )


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Report a usage mistake the way argparse does (usage line + message, exit 2)."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def add_archive_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "archive files (instead of an ARCHIVE directory; then ARCHIVE is left out)"
    )
    group.add_argument("--index", metavar="FILE|URL", help="the index blob of the archive")
    group.add_argument("--data", metavar="FILE|URL", help="the data blob of the archive")
    group.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP request header for URL blobs (repeatable)",
    )


def archive_and_rest(
    args: argparse.Namespace, positionals: list[str], *, min_rest: int, max_rest: int | None
) -> tuple[ArchiveSpec, list[str]]:
    """Split ``[ARCHIVE] REST...`` into the archive and the remaining arguments."""
    index: str | None = args.index
    data: str | None = args.data
    rest = list(positionals)
    if (index is None) != (data is None):
        usage_error(args, "--index and --data go together (or give an ARCHIVE directory)")
    headers = tuple(_parse_header(args, h) for h in args.header)
    if index is not None and data is not None:
        spec = ArchiveSpec(index, data, label=f"{index} + {data}", headers=headers)
    else:
        if not rest:
            usage_error(args, "missing ARCHIVE (a directory, or --index FILE --data FILE)")
        directory = rest.pop(0)
        ref = reference_arg(directory)
        if ref is not None:
            spec = ArchiveSpec("", "", str(ref), reference=str(ref))
        else:
            d = Path(directory)
            spec = ArchiveSpec(
                str(d / DEFAULT_INDEX_NAME), str(d / DEFAULT_DATA_NAME), directory, d, headers
            )
    if len(rest) < min_rest:
        usage_error(args, "missing PATH argument")
    if max_rest is not None and len(rest) > max_rest:
        usage_error(args, f"unexpected extra arguments: {' '.join(rest[max_rest:])}")
    return spec, rest


def is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def _looks_like_host(first: str) -> bool:
    return (
        bool(first)
        and not first.startswith(".")
        and ("." in first or ":" in first or first.lower() == "localhost")
    )


def reference_arg(text: str) -> Reference | None:
    """The reference an ARCHIVE argument names, or None when it is a local path.

    A local path wins when it exists. Otherwise a text whose first ``/``-component looks like a
    registry host must be a valid reference (:class:`CliError` explains when it is not); any
    other text is a local path (and the caller reports it missing).
    """
    if is_url(text) or Path(text).exists():
        return None
    first, slash, _ = text.partition("/")
    if not slash or not _looks_like_host(first):
        return None
    try:
        return Reference.parse(text, default_tag="latest")
    except InvalidReference as e:
        raise CliError(
            f"{text}: no such archive directory, and not a registry reference ({e.problem})"
        ) from None


def parse_reference(text: str, *, allow_digest: bool = True) -> Reference:
    """Parse a REF argument of ``push``/``pull``/``tag`` (a missing tag means ``:latest``);
    :class:`CliError` with the reason when it is not a reference."""
    try:
        ref = Reference.parse(text, default_tag="latest")
    except InvalidReference as e:
        raise CliError(str(e)) from None
    if not allow_digest and ref.digest is not None:
        raise CliError(f"{text}: needs a tag, not a digest")
    return ref


def make_client(
    ctx: Ctx,
    *,
    caches: bool | None = None,
    credentials: CredentialStore | None = None,
    policy: ManifestPolicy | None = None,
) -> Client:
    """A :class:`Client` with docker-config credentials, the run's plain-HTTP, TLS, offline and
    mirror settings and (when ``caches``, default: unless ``--no-cache``) the caches under the
    cache root (content, blocks, and the registry caches with the configured tag TTL).
    ``credentials`` replaces the default credential store (the mount keeps it to re-read it on
    SIGHUP), ``policy`` is the trust policy the registry evaluates."""
    from ..client import Client

    use = ctx.use_cache if caches is None else caches
    if ctx.offline and not use:
        raise CliError("--offline serves registry metadata from the caches: drop --no-cache")
    try:
        return Client(
            cache_dir=cache_root(ctx) if use else None,
            plain_http=True if ctx.plain_http else None,
            insecure_hosts=ctx.insecure_hosts,
            ref_ttl=ctx.config.ref_ttl,
            offline=ctx.offline,
            mirrors=ctx.config.mirrors,
            ca_file=ctx.ca_file,
            credentials=credentials,
            policy=policy,
        )
    except OSError as e:  # the CA bundle (the only file read on construction)
        if ctx.ca_file is None:
            raise
        reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
        raise CliError(f"{ctx.ca_file}: --ca-file: {reason}") from None


def _parse_header(args: argparse.Namespace, text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        usage_error(args, f"--header wants 'NAME: VALUE', got {text.split(':')[0]!r}...")
    return name.strip(), value.strip()


def cache_root(ctx: Ctx) -> Path:
    """``--cache-dir``, else ``$BLOBFS_CACHE_DIR``, else the configuration's ``[cache] dir``,
    else ``$XDG_CACHE_HOME/blobfs``, else ``~/.cache/blobfs``."""
    if ctx.cache_dir is not None:
        return ctx.cache_dir
    if os.environ.get("BLOBFS_CACHE_DIR"):
        return Path(os.environ["BLOBFS_CACHE_DIR"])
    if ctx.config.cache_dir is not None:
        return ctx.config.cache_dir
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "blobfs"


def open_caches(ctx: Ctx) -> tuple[DiskCache, BlockCache]:
    from ..core.cache.disk import BlockCache, DiskCache

    root = cache_root(ctx)
    return (
        DiskCache(root / "content", max_bytes=ctx.cache_bytes or CONTENT_CACHE_BYTES),
        BlockCache(root / "blocks")
        if ctx.cache_bytes is None
        else BlockCache(root / "blocks", max_bytes=ctx.cache_bytes),
    )


def check_archive_files(spec: ArchiveSpec) -> None:
    """Turn a missing or misnamed archive into a one-line explanation."""
    if spec.reference is not None:
        return
    directory = spec.directory
    for what, name in (("index", spec.index), ("data", spec.data)):
        path = Path(name)
        if is_url(name) or path.is_file():
            continue
        if directory is not None and not directory.is_dir():
            if directory.exists():
                raise CliError(
                    f"{spec.label}: not a directory (an ARCHIVE is a directory holding "
                    f"{DEFAULT_INDEX_NAME} and {DEFAULT_DATA_NAME}; for single files use "
                    "--index FILE --data FILE)"
                )
            raise CliError(f"{spec.label}: no such archive directory")
        if path.exists():
            raise CliError(f"{path}: the {what} blob is not a regular file")
        raise CliError(f"{path}: {what} blob not found")


if TYPE_CHECKING:

    class ClosingCache(Cache, SupportsClose, Protocol): ...

    class ClosingBlockCache(BlockCacheProtocol, SupportsClose, Protocol): ...


CacheOpener: TypeAlias = "Callable[[Ctx], tuple[ClosingCache, ClosingBlockCache]]"
"""Opens the caches of an archive with a blob behind a URL: the content cache and what stands
where the block cache does (:func:`open_caches`, or the mount's own)."""


def requested_trust(args: argparse.Namespace) -> tuple[ManifestPolicy | None, list[str]]:
    """The trust policy of ``--policy FILE``/``--key PUB`` (:func:`add_policy_options`) and
    the names of its parts; ``(None, [])`` without them."""
    if not args.policy and not args.verify_key:
        return None, []
    # Only when asked for: the trust modules cost a plain command ~130 ms of start-up.
    from ._trust_cmds import policy_of

    return policy_of(args)


def requested_policy(args: argparse.Namespace, specs: list[ArchiveSpec]) -> ManifestPolicy | None:
    """The policy of :func:`requested_trust`; a usage error when one is asked for and an
    archive in ``specs`` is not a registry reference."""
    if (args.policy or args.verify_key) and any(spec.reference is None for spec in specs):
        usage_error(args, "--policy/--key apply to registry references only")
    return requested_trust(args)[0]


def open_archive(
    spec: ArchiveSpec,
    ctx: Ctx,
    policy: ManifestPolicy | None = None,
    *,
    caches: CacheOpener | None = None,
) -> Archive:
    """Open the archive for reading (index validated, data source opened); close it after use.
    ``policy`` (registry references only) must accept the manifest before anything is read.
    ``caches`` opens the caches of a URL archive (default :func:`open_caches`)."""
    check_archive_files(spec)
    if spec.reference is not None:
        return _pull(spec.reference, ctx, policy)
    if not spec.remote:
        from ..core import open_file

        return open_file(spec.index, spec.data, max_file_size=ctx.max_file_size)
    return _connect(spec, ctx, caches or open_caches)


def _pull(ref: str, ctx: Ctx, policy: ManifestPolicy | None) -> Archive:
    """Open a registry archive that owns its client (closed with the archive)."""
    client = make_client(ctx, policy=policy)
    try:
        archive = client.pull(ref, max_file_size=ctx.max_file_size)
    except BaseException:
        client.close()
        raise
    archive.own(client)
    return archive


def _connect(spec: ArchiveSpec, ctx: Ctx, caches: CacheOpener) -> Archive:
    """An archive with at least one blob behind a URL; it owns its sources and caches."""
    from ..core import Archive, Index

    headers = dict(spec.headers)
    owned: list[SupportsClose] = []
    try:
        cache = block_cache = None
        if ctx.use_cache:
            # First: a cache opened in a thread of its own (the mount's) overlaps the index fetch.
            cache, block_cache = caches(ctx)
            owned += (cache, block_cache)
        index_src = _source(spec.index, headers)
        owned.append(index_src)
        if index_src.size > MAX_INDEX_BYTES:
            raise CliError(f"{spec.index}: {index_src.size} bytes is too large for an index")
        index = Index(index_src.read_at(0, index_src.size))
        data_src = _source(spec.data, headers, index.data_hash, index.data_size)
        owned.append(data_src)
        if cache is not None:
            cache.max_bytes()  # waits for such an opening: a cache that cannot open fails here
        archive = Archive(
            index,
            data_src,
            cache=cache,
            block_cache=block_cache,
            max_file_size=ctx.max_file_size,
        )
    except BaseException:
        for thing in reversed(owned):
            thing.close()
        raise
    for thing in owned:
        archive.own(thing)
    return archive


def _source(
    name: str, headers: dict[str, str], digest: bytes = b"", size: int = 0
) -> FileSource | HttpSource:
    if not is_url(name):
        from ..core import FileSource

        return FileSource(name, data_hash=digest or None)
    from ..core.http import HttpSource  # httpx: only for URL blobs

    if not digest:
        return HttpSource(name, headers=headers)
    # With the data digest known, the block cache keys on content, not on the URL (the same
    # archive served from another address reuses its blocks), and the size the index records
    # saves the probe request; a server whose blob differs fails verification, not silently.
    return HttpSource(name, headers=headers, source_id="sha256:" + digest.hex(), size=size)


def display_path(norm: str) -> str:
    """An archive path as shown to people: ``/`` for the root, ``/a/b`` otherwise."""
    return "/" + norm
