"""The push side of :class:`~blobfs.registry.Registry`: blob uploads, manifests, ``push``.

Blobs are uploaded unless the registry already has them (HEAD). A blob up to ``chunk_size``
bytes goes up in one monolithic PUT; a larger one is streamed from its file in **one** PATCH
(``POST`` to open the upload, the PATCH, then ``PUT ?digest=`` to commit it), as docker and
skopeo do: a PATCH per chunk waits for the registry's answer to each chunk before sending the
next, so reading, sending and the registry's writing never overlap (8 MiB PATCHes reached
86 MB/s where one streamed PATCH reaches the registry's own speed, docs/benchmarks.md). The
body is read in :data:`READ_SIZE` pieces (never the whole blob in memory) and hashed on the
way in a helper thread, so a file that changed under us is caught before the upload is
committed. An upload that fails with a transient error starts again from the beginning.
Manifests are put as exact bytes and the registry's ``Docker-Content-Digest`` answer is checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import httpx

from ..core import Compression, Index
from ..errors import DigestMismatch, RegistryError
from ._manifest import (
    DATA_MEDIA_TYPE,
    EMPTY_CONFIG,
    EMPTY_CONFIG_DIGEST,
    INDEX_MEDIA_TYPE,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    build_manifest,
    digest_of,
)
from ._transport import DEFAULT_CHUNK_SIZE, ReferenceLike, Transport, parse_ref, transient

__all__ = ["DEFAULT_CHUNK_SIZE", "READ_SIZE", "UploadProgress", "Uploads"]

log = logging.getLogger(__name__)

READ_SIZE: Final = 1 << 20
"""Bytes read from the file and handed to the socket at a time by a streamed upload, and the
step of its progress reports: a piece costs one Python round (read, hash hand-off, h11 framing,
``sendall``), so 1 MiB makes that overhead about 1,000 rounds per GiB, while two pieces (the
one being sent, the one being hashed) are all the memory an upload holds."""

UploadProgress = Callable[[str, int, int], object]
"""``progress(blob_digest, bytes_done, total)`` of :meth:`Registry.push` uploads."""

Opener = Callable[[], contextlib.AbstractContextManager[Any]]
"""Gives a fresh binary file positioned at 0 (an upload may start again)."""


def bytes_opener(data: bytes) -> Opener:
    return lambda: io.BytesIO(data)


def _file_opener(path: Path) -> Opener:
    return lambda: open(path, "rb", buffering=0)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_SIZE):
            h.update(block)
    return "sha256:" + h.hexdigest()


class _StreamBody:
    """The body of one streamed PATCH: ``size`` bytes of a file, read in :data:`READ_SIZE`
    pieces and hashed on the way.

    Iterable more than once (never a generator, which httpx refuses to send twice): an auth
    flow that answers a 401 by sending the request again with a fresh token sends the file
    again from its start, with a fresh hash and progress from 0. Each piece is hashed in a
    helper thread while it is being sent (``hashlib`` releases the GIL), so hashing costs no
    time on the sending thread; the previous piece's hash is awaited before the next piece is
    handed on, which keeps the order and bounds memory to two pieces. ``on_sent(done)`` is
    called in the sending thread with 0 as each sending starts and after each piece but the
    last.

    The file must be exactly ``size`` bytes: shorter or longer raises :class:`RegistryError`
    from the iteration (the request fails; nothing is committed). :meth:`digest` is the hash of
    the last complete iteration.
    """

    __slots__ = ("_digest", "_hasher_pool", "_on_sent", "_opener", "_size", "_what")

    def __init__(
        self,
        what: str,
        opener: Opener,
        size: int,
        hasher_pool: ThreadPoolExecutor,
        on_sent: Callable[[int], object] | None,
    ) -> None:
        self._what = what
        self._opener = opener
        self._size = size
        self._hasher_pool = hasher_pool
        self._on_sent = on_sent
        self._digest: str | None = None

    def digest(self) -> str | None:
        """``sha256:<hex>`` of what the last complete iteration sent (None: none completed)."""
        return self._digest

    def __iter__(self) -> Iterator[bytes]:
        self._digest = None
        hasher = hashlib.sha256()
        pending: Future[None] | None = None
        size = self._size
        sent = 0
        try:
            with self._opener() as f:
                if self._on_sent is not None:
                    self._on_sent(0)
                while sent < size:
                    piece = f.read(min(READ_SIZE, size - sent))
                    if not piece:
                        raise RegistryError(
                            f"{self._what}: the file ended after {sent} of {size} bytes"
                        )
                    if pending is not None:
                        pending.result()
                    pending = self._hasher_pool.submit(hasher.update, piece)
                    yield piece
                    sent += len(piece)
                    if self._on_sent is not None and sent < size:
                        self._on_sent(sent)
                if f.read(1):
                    raise RegistryError(f"{self._what}: the file is longer than {size} bytes")
        finally:
            if pending is not None:
                pending.result()
        self._digest = "sha256:" + hasher.hexdigest()


class Uploads(Transport):
    """Blob uploads, manifest puts and :meth:`push` (see the module docstring)."""

    def _has_blob(self, ref: ReferenceLike, digest: str, size: int) -> bool:
        url = self.blob_url(ref, digest)
        r = self._send(f"{ref}: blob {digest}", "HEAD", url, ok=(200,), allow=(404,))
        if r.status_code != 200:
            return False
        length = r.headers.get("Content-Length")
        return length is None or not length.isdigit() or int(length) == size

    def _upload(
        self,
        ref: ReferenceLike,
        digest: str,
        size: int,
        opener: Opener,
        progress: UploadProgress | None = None,
    ) -> bool:
        """Upload one blob unless the registry has it; True when bytes were sent.

        An upload that fails with a transient error (a retryable status, a broken connection)
        is restarted from the beginning (a new upload, a fresh file from ``opener``), up to
        ``retries`` times. ``progress(digest, bytes_done, size)`` is called as bytes are sent
        (see :meth:`push`).
        """
        what = f"{ref}: blob {digest}"
        if self._has_blob(ref, digest, size):
            log.debug("%s: already in the registry, skipped", what)
            if progress is not None:
                progress(digest, size, size)
            return False
        attempts = self._retries + 1
        for attempt in range(attempts):
            try:
                self._upload_once(ref, what, digest, size, opener, progress)
                return True
            except RegistryError as exc:
                if not transient(exc) or attempt == attempts - 1:
                    raise
                log.log(
                    logging.WARNING if attempt else logging.INFO,
                    "%s: upload failed (%s), starting again (attempt %d of %d)",
                    what,
                    exc,
                    attempt + 2,
                    attempts,
                )
                self._sleep(attempt, None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _upload_once(
        self,
        ref: ReferenceLike,
        what: str,
        digest: str,
        size: int,
        opener: Opener,
        progress: UploadProgress | None = None,
    ) -> None:
        start = f"{self._base(ref)}/blobs/uploads/"
        r = self._send(what, "POST", start, ok=(202,), retry=False)
        location = self._location(what, start, r)
        if size <= self._chunk_size:
            self._put_whole(what, location, digest, size, opener)
        else:
            try:
                location = self._patch_stream(what, location, digest, size, opener, progress)
            except BaseException:
                self._cancel(what, location)
                raise
            self._send(
                what,
                "PUT",
                location.copy_add_param("digest", digest),
                headers={"Content-Length": "0"},
                ok=(201,),
                retry=False,
            )
        if progress is not None:
            progress(digest, size, size)

    def _put_whole(
        self, what: str, location: httpx.URL, digest: str, size: int, opener: Opener
    ) -> None:
        """A small blob in one monolithic PUT (read into memory, checked first)."""
        with opener() as f:
            body = f.read(size + 1)
        if len(body) != size:
            raise RegistryError(f"{what}: the file is {len(body)} bytes, expected {size}")
        if digest_of(body) != digest:
            raise DigestMismatch(f"{what}: local file", digest, digest_of(body))
        self._send(
            what,
            "PUT",
            location.copy_add_param("digest", digest),
            headers={"Content-Type": "application/octet-stream"},
            content=body,
            ok=(201,),
            retry=False,
        )

    def _patch_stream(
        self,
        what: str,
        location: httpx.URL,
        digest: str,
        size: int,
        opener: Opener,
        progress: UploadProgress | None,
    ) -> httpx.URL:
        """The whole blob in one streamed PATCH; the location to commit it at.

        Raises :class:`DigestMismatch` when what was sent is not ``digest`` (the file changed
        since it was hashed): the upload is then not committed.
        """
        on_sent = None if progress is None else (lambda done: progress(digest, done, size))
        headers = {
            "Content-Type": "application/octet-stream",
            # An iterable body has no length of its own; with one, the registry knows the
            # size up front and httpx sends no chunked framing.
            "Content-Length": str(size),
            "Content-Range": f"0-{size - 1}",
        }
        with ThreadPoolExecutor(1, thread_name_prefix="blobfs-upload-hash") as hasher_pool:
            body = _StreamBody(what, opener, size, hasher_pool, on_sent)
            r = self._send(
                what, "PATCH", location, headers=headers, content=body, ok=(202,), retry=False
            )
        actual = body.digest()
        if actual != digest:
            raise DigestMismatch(f"{what}: local file", digest, actual or "(not read)")
        return self._location(what, location, r)

    def _cancel(self, what: str, location: httpx.URL) -> None:
        """Best effort: tell the registry to drop a failed upload (it would purge it later)."""
        with contextlib.suppress(Exception):
            self._send(what, "DELETE", location, ok=(204,), allow=(404,), retry=False)

    @staticmethod
    def _location(what: str, base: httpx.URL | str, r: httpx.Response) -> httpx.URL:
        loc = r.headers.get("Location")
        if not loc:
            raise RegistryError(f"{what}: upload answer without a Location header")
        # httpx's params= would drop the _state query string: keep the URL as given.
        return httpx.URL(str(base)).join(loc)

    def _put_manifest(
        self, ref: ReferenceLike, target: str, raw: bytes, media_type: str
    ) -> httpx.Response:
        """Put ``raw`` as manifest ``target`` (tag or digest); the registry's digest is
        checked. Returns the answer (its headers: ``OCI-Subject``)."""
        what = f"{ref.registry}/{ref.repository}:{target}"
        r = self._send(
            what,
            "PUT",
            f"{self._base(ref)}/manifests/{target}",
            headers={"Content-Type": media_type},
            content=raw,
            ok=(201, 200),
        )
        expected = digest_of(raw)
        got = r.headers.get("Docker-Content-Digest")
        if got and got != expected:
            raise DigestMismatch(f"{what}: manifest stored", expected, got)
        return r

    def push(
        self,
        ref: ReferenceLike | str,
        src: str | os.PathLike[str],
        *,
        compression: Compression = Compression.ZSTD,
        tags: Sequence[str] = (),
        annotations: Mapping[str, str] | None = None,
        created: str | None = None,
        progress: UploadProgress | None = None,
    ) -> Manifest:
        """Push a directory tree, or a local archive directory, as ``ref`` (which needs a tag).

        ``src`` holding ``index.blob`` and ``data.blob`` is pushed as it is; any other directory
        is archived first (``compression``) into a temporary directory next to nothing else,
        streamed to disk, removed afterwards. Blobs go up in order config, index, data, each
        skipped when the registry already has it (HEAD), a blob over ``chunk_size`` (the data
        blob) streamed from its file in one PATCH; then the manifest under ``ref``'s tag, then
        under each of ``tags`` (the same raw bytes). Returns the manifest pushed (``.raw``
        exactly as stored).

        ``progress(digest, bytes_done, total)``, when given, is called in the calling thread for
        each blob: for a streamed blob with 0 when its upload starts and after every
        :data:`READ_SIZE` piece sent (increasing ``bytes_done``), and for every blob with
        ``bytes_done == total`` once it is committed (or already present). A restarted upload
        (transient error, or a token refreshed mid-upload) reports from 0 again.
        """
        r = parse_ref(ref)
        if not r.tag or r.digest:
            raise ValueError(f"push needs a reference with a tag and no digest, got {r}")
        src_path = Path(src)
        index_path, data_path = src_path / "index.blob", src_path / "data.blob"
        if index_path.is_file() and data_path.is_file():
            return self._push_archive(
                r, index_path, data_path, tags, annotations, created, progress
            )
        if not src_path.is_dir():
            raise ValueError(f"{src}: not a directory")
        from ..core import create_blob  # here only: pulling and mounting never create archives

        with tempfile.TemporaryDirectory(prefix="blobfs-push-") as tmp:
            create_blob(src_path, tmp, compression=compression).close()
            return self._push_archive(
                r,
                Path(tmp) / "index.blob",
                Path(tmp) / "data.blob",
                tags,
                annotations,
                created,
                progress,
            )

    def _push_archive(
        self,
        ref: ReferenceLike,
        index_path: Path,
        data_path: Path,
        tags: Sequence[str],
        annotations: Mapping[str, str] | None,
        created: str | None,
        progress: UploadProgress | None = None,
    ) -> Manifest:
        index_raw = index_path.read_bytes()
        index = Index(index_raw)
        data_size = data_path.stat().st_size
        if index.data_hash:
            if index.data_size != data_size:
                raise ValueError(
                    f"{data_path} is {data_size} bytes, the index records {index.data_size}"
                )
            data_digest = "sha256:" + index.data_hash.hex()
        else:
            data_digest = _hash_file(data_path)
        index_desc = Descriptor(INDEX_MEDIA_TYPE, digest_of(index_raw), len(index_raw))
        data_desc = Descriptor(DATA_MEDIA_TYPE, data_digest, data_size)
        raw = build_manifest(index_desc, data_desc, annotations, created=created)
        manifest = Manifest.parse(raw)
        self._upload(
            ref, EMPTY_CONFIG_DIGEST, len(EMPTY_CONFIG), bytes_opener(EMPTY_CONFIG), progress
        )
        self._upload(ref, index_desc.digest, index_desc.size, bytes_opener(index_raw), progress)
        self._upload(ref, data_digest, data_size, _file_opener(data_path), progress)
        assert ref.tag is not None
        for tag in (ref.tag, *tags):
            self._put_manifest(ref, tag, raw, OCI_MANIFEST)
        return manifest
