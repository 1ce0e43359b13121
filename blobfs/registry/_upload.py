"""The push side of :class:`~blobfs.registry.Registry`: blob uploads, manifests, ``push``.

Blobs are uploaded unless the registry already has them (HEAD), monolithically when they fit
one chunk, else streamed from their file in PATCH chunks (one chunk in memory) and hashed on the
way, so a file that changed under us is caught before the upload is committed. An upload that
fails with a transient error starts again from the beginning. Manifests are put as exact bytes
and the registry's ``Docker-Content-Digest`` answer is checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from ..core import Compression, Index, create_blob
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

__all__ = ["DEFAULT_CHUNK_SIZE", "UploadProgress", "Uploads"]


class _ChunkBody:
    """One PATCH body, which its request references only until :meth:`release`.

    httpx ties every response to its request in a reference cycle (the response's stream
    points back at the response), so a body passed as ``bytes`` lives until the cyclic garbage
    collector runs, which a loop of few, large requests seldom triggers: pushing 1 GiB in
    8 MiB chunks held 26 chunks (218 MB) at once. Released after its request, a chunk is freed
    as soon as the next one replaces it. Iterable more than once, so an auth flow that sends
    the request again (token refresh on 401) sends the same bytes.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data

    def release(self) -> None:
        self._data = b""


log = logging.getLogger(__name__)

UploadProgress = Callable[[str, int, int], object]
"""``progress(blob_digest, bytes_done, total)`` of :meth:`Registry.push` uploads."""

Opener = Callable[[], contextlib.AbstractContextManager[Any]]
"""Gives a fresh binary file positioned at 0 (an upload may start again)."""


def bytes_opener(data: bytes) -> Opener:
    return lambda: io.BytesIO(data)


def _file_opener(path: Path) -> Opener:
    return lambda: open(path, "rb")


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


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

        An upload that fails with a transient error is restarted from the beginning (a fresh
        file from ``opener``), up to ``retries`` times. ``progress(digest, bytes_done, size)``
        is called as the registry accepts bytes (see :meth:`push`).
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
                with opener() as f:
                    self._upload_once(ref, what, digest, size, f, progress)
                return True
            except RegistryError as exc:
                if not transient(exc) or attempt == attempts - 1:
                    raise
                log.info("%s: upload failed (%s), starting again", what, exc)
                self._sleep(attempt, None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _upload_once(
        self,
        ref: ReferenceLike,
        what: str,
        digest: str,
        size: int,
        f: Any,
        progress: UploadProgress | None = None,
    ) -> None:
        start = f"{self._base(ref)}/blobs/uploads/"
        r = self._send(what, "POST", start, ok=(202,), retry=False)
        location = self._location(what, start, r)
        ctype = {"Content-Type": "application/octet-stream"}
        if size <= self._chunk_size:
            body = f.read(size + 1)
            if len(body) != size:
                raise RegistryError(f"{what}: the file is {len(body)} bytes, expected {size}")
            if digest_of(body) != digest:
                raise DigestMismatch(f"{what}: local file", digest, digest_of(body))
            self._send(
                what,
                "PUT",
                location.copy_add_param("digest", digest),
                headers=ctype,
                content=body,
                ok=(201,),
                retry=False,
            )
            if progress is not None:
                progress(digest, size, size)
            return
        sent = 0
        hasher = hashlib.sha256()
        while sent < size:
            chunk = f.read(min(self._chunk_size, size - sent))
            if not chunk:
                raise RegistryError(f"{what}: the file ended after {sent} of {size} bytes")
            hasher.update(chunk)
            headers = {
                **ctype,
                "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                "Content-Length": str(len(chunk)),  # an iterable body has no length of its own
            }
            body = _ChunkBody(chunk)
            try:
                r = self._send(
                    what, "PATCH", location, headers=headers, content=body, ok=(202,), retry=False
                )
            finally:
                body.release()
            location = self._location(what, location, r)
            sent += len(chunk)
            if progress is not None:
                progress(digest, sent, size)
        if f.read(1):
            raise RegistryError(f"{what}: the file is longer than {size} bytes")
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"{what}: local file", digest, actual)
        self._send(
            what,
            "PUT",
            location.copy_add_param("digest", digest),
            headers={"Content-Length": "0"},
            ok=(201,),
            retry=False,
        )

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
        skipped when the registry already has it (HEAD), the data blob streamed from its file in
        PATCH chunks; then the manifest under ``ref``'s tag, then under each of ``tags`` (the
        same raw bytes). Returns the manifest pushed (``.raw`` exactly as stored).

        ``progress(digest, bytes_done, total)``, when given, is called in the calling thread for
        each blob: after every PATCH chunk the registry accepted (increasing ``bytes_done``),
        and with ``bytes_done == total`` when the blob is complete (or already present). A
        restarted upload (transient error) reports from its first chunk again.
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
