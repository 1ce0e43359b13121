"""The high-level client of blobfs: :class:`Client`, push a directory, pull an archive.

As the seed's ``blob.NewClient(blob.WithDockerConfig())`` / ``c.Push`` / ``c.Pull``::

    with blobfs.Client(cache_dir="~/.cache/blobfs") as c:
        manifest = c.push("registry.example.com/team/data:v1", "src/")
        with c.pull("registry.example.com/team/data:v1") as archive:
            archive.read_file("docs/readme.md")

It wires a :class:`~blobfs.registry.Registry` with docker-config credentials
(:class:`~blobfs.registry.CredentialStore` + :class:`~blobfs.registry.RegistryAuth`), the
registry caches (tags, manifests, indexes) and the content and block caches under
``cache_dir``. Everything else is the registry's behaviour.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .core import DEFAULT_MAX_FILE_SIZE, Compression, Index
from .registry import (
    DEFAULT_REF_TTL,
    Credentials,
    CredentialStore,
    Manifest,
    ManifestPolicy,
    MirrorSpec,
    Reference,
    Registry,
    RegistryAuth,
    RegistryCaches,
    RemoteArchive,
)

if TYPE_CHECKING:
    from .core import CreateProgress
    from .core.cache.disk import BlockCache, DiskCache

__all__ = ["Client"]


class Client:
    """Push directory trees to, and pull archives from, OCI registries.

    - ``docker_config``: read credentials from the docker config (``$DOCKER_CONFIG`` or
      ``~/.docker/config.json``, with credential helpers) and ``$REGISTRY_AUTH_FILE``; False
      = only ``credentials``.
    - ``credentials``: explicit credentials per registry host (they win over the files), or a
      ready :class:`~blobfs.registry.CredentialStore`.
    - ``cache_dir``: when given, pulled archives read through a content cache
      (``cache_dir/content``) and a block cache (``cache_dir/blocks``), opened by the first
      :meth:`pull` (a mount, which brings its own, never opens them), and the registry built
      uses :class:`~blobfs.registry.RegistryCaches` (``cache_dir/refs``, ``manifests``,
      ``indexes``) with tags trusted for ``ref_ttl`` seconds (0 = always resolve); None = no
      caches.
    - ``plain_http``/``insecure_hosts``/``offline``/``mirrors``/``ca_file``: as
      :class:`~blobfs.registry.Registry` (by default plain HTTP only for loopback registries;
      ``offline`` serves manifests and indexes from the registry caches only, so it wants
      ``cache_dir``; ``ca_file`` is a PEM bundle of CAs to verify TLS against).
    - ``policy``: a trust policy (:class:`~blobfs.registry.ManifestPolicy`, e.g. from
      ``blobfs.policy``) the registry evaluates on every manifest before its index is used
      (pull, inspect, mounts), from the caches and offline too; a refusal raises
      :class:`~blobfs.errors.PolicyViolation` and nothing of the archive is read.
    - ``registry``: use this :class:`~blobfs.registry.Registry` instead of building one (then
      ``docker_config``, ``credentials``, ``plain_http``, ``insecure_hosts``, ``ref_ttl``,
      ``offline``, ``mirrors``, ``ca_file`` are unused, ``cache_dir`` only gives the content
      and block caches, and ``policy`` must be None: the registry's own policy applies); it is
      not closed by :meth:`close`.

    Thread safety: as the registry's (methods may be called from several threads).
    """

    def __init__(
        self,
        *,
        docker_config: bool = True,
        credentials: Mapping[str, Credentials] | CredentialStore | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        plain_http: bool | None = None,
        insecure_hosts: Collection[str] = (),
        policy: ManifestPolicy | None = None,
        registry: Registry | None = None,
        ref_ttl: float = DEFAULT_REF_TTL,
        offline: bool = False,
        mirrors: Mapping[str, Sequence[MirrorSpec]] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if policy is not None and registry is not None:
            raise ValueError("pass the policy to the Registry given, not to the Client")
        if ref_ttl < 0:
            raise ValueError(f"ref_ttl must be >= 0, got {ref_ttl!r}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._owns_registry = registry is None
        if registry is None:
            if isinstance(credentials, CredentialStore):
                store = credentials
            else:
                store = CredentialStore(
                    credentials, docker_config=docker_config, auth_file=docker_config
                )
            caches = (
                RegistryCaches(self.cache_dir, ref_ttl=ref_ttl)
                if self.cache_dir is not None
                else None
            )
            registry = Registry(
                auth=RegistryAuth(store),
                plain_http=plain_http,
                insecure_hosts=insecure_hosts,
                caches=caches,
                offline=offline,
                mirrors=mirrors,
                ca_file=ca_file,
                policy=policy,
            )
        self.registry = registry
        self._cache: DiskCache | None = None
        self._block_cache: BlockCache | None = None
        self._caches_lock = threading.Lock()

    def _caches(self) -> tuple[DiskCache | None, BlockCache | None]:
        """The content and block caches, opened on first use (None without ``cache_dir``)."""
        if self.cache_dir is None:
            return None, None
        with self._caches_lock:
            if self._cache is None or self._block_cache is None:
                from .core.cache.disk import BlockCache, DiskCache

                cache = self._cache or DiskCache(self.cache_dir / "content")
                self._cache = cache
                self._block_cache = BlockCache(self.cache_dir / "blocks")
            return self._cache, self._block_cache

    @property
    def policy(self) -> ManifestPolicy | None:
        """The trust policy the client's registry evaluates (None: none)."""
        return self.registry.policy

    def close(self) -> None:
        """Close the caches and the registry made by this client. Archives pulled before keep
        their connections but must not be read after this (their caches are closed)."""
        with self._caches_lock:
            caches, self._cache, self._block_cache = (self._cache, self._block_cache), None, None
        for c in caches:
            if c is not None:
                c.close()
        if self._owns_registry:
            self.registry.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push(
        self,
        ref: str | Reference,
        src_dir: str | os.PathLike[str],
        *,
        compression: Compression = Compression.ZSTD,
        tags: Sequence[str] = (),
        annotations: Mapping[str, str] | None = None,
        progress: Callable[[CreateProgress], object] | None = None,
        upload_progress: Callable[[str, int, int], object] | None = None,
    ) -> Manifest:
        """Archive the directory ``src_dir`` and push it as ``ref`` (which needs a tag; a bare
        ``host/repo`` gets ``:latest``), plus each of ``tags``; return the manifest pushed.

        A directory that already is an archive (``index.blob`` + ``data.blob``) is pushed as
        it is. The archive is written to a temporary directory (removed afterwards) and
        streamed up; ``progress`` receives the archiving progress, ``upload_progress`` the
        upload's as ``(blob_digest, bytes_done, total)`` (see :meth:`Registry.push`). Raises
        ``ValueError`` for a reference with a digest or a ``src_dir`` that is not a directory,
        and the registry's errors (:class:`~blobfs.errors.RegistryError` and subclasses).
        """
        r = ref if isinstance(ref, Reference) else Reference.parse(ref, default_tag="latest")
        if r.digest is not None:
            raise ValueError(f"{r}: push needs a tag, not a digest")
        src = Path(src_dir)
        if not src.is_dir():
            raise ValueError(f"{src}: not a directory")
        if (src / "index.blob").is_file() and (src / "data.blob").is_file():
            Index((src / "index.blob").read_bytes())  # a broken archive fails here, clearly
            return self.registry.push(
                r, src, tags=tags, annotations=annotations, progress=upload_progress
            )
        import tempfile

        from .core import create_blob  # only pushing creates archives

        with tempfile.TemporaryDirectory(prefix="blobfs-push-") as tmp:
            create_blob(src, tmp, compression=compression, progress=progress).close()
            return self.registry.push(
                r, tmp, tags=tags, annotations=annotations, progress=upload_progress
            )

    def pull(
        self,
        ref: str | Reference,
        *,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    ) -> RemoteArchive:
        """Open ``ref`` (a bare ``host/repo`` means ``:latest``) as an archive read lazily.

        The manifest and index are fetched and verified now; file contents are fetched with
        range requests when read, verified, through the client's caches. Close the archive
        (or use ``with``) when done; it needs the client open (the caches are the client's).
        """
        r = ref if isinstance(ref, Reference) else Reference.parse(ref, default_tag="latest")
        cache, block_cache = self._caches()
        return self.registry.pull(
            r, max_file_size=max_file_size, cache=cache, block_cache=block_cache
        )
