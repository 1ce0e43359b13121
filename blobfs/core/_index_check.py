"""Validation of the entries of an index, vectorised with numpy in batches.

Structural checks (offsets, vtables, field bounds, string and vector lengths, scalar values) run
as array operations over :data:`BATCH` entries at a time, so temporary memory stays small whatever
the index size; the path checks that need Python (order, duplicates, directories) run over plain
``bytes`` slices in C-level comprehensions.
"""

from __future__ import annotations

import mmap
from itertools import pairwise
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import CorruptIndex
from ._fb import (
    E_CHUNK_HASHES,
    E_CHUNK_SIZE,
    E_COMPRESSION,
    E_DATA_OFFSET,
    E_DATA_SIZE,
    E_FIELD_SIZE,
    E_FRAME_OFFSETS,
    E_HASH,
    E_ORIGINAL_SIZE,
    E_PATH,
    E_SLOTS,
    EntryDecoder,
    Gather,
    IntArray,
)
from ._paths import first_bad_path
from ._types import CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, FEATURE_CHUNKS, HASH_SIZE, Compression

__all__ = ["BATCH", "Validated", "validate_entries"]

BATCH: Final = 1 << 16
"""Entries validated per numpy batch: 64 Ki entries keep each temporary array under 1 MB."""


class Validated(NamedTuple):
    """Per-entry positions in wire order, whether that order is bytewise, and the directories."""

    tpos: npt.NDArray[np.uint32]
    pstart: npt.NDArray[np.uint32]
    pend: npt.NDArray[np.uint32]
    in_order: bool
    dirs: set[bytes]


def validate_entries(
    buf: bytes | mmap.mmap,
    g: Gather,
    dec: EntryDecoder,
    entries_at: int,
    count: int,
    *,
    data_hash: bytes,
    data_size: int,
    features: int,
) -> Validated:
    """Check every entry of the vector at ``entries_at``; raise :class:`CorruptIndex` on the
    first problem, naming the entry and what is wrong with it."""
    size = len(buf)
    tpos = np.empty(count, dtype=np.uint32)
    pstart = np.empty(count, dtype=np.uint32)
    pend = np.empty(count, dtype=np.uint32)
    # Whether the vector is in bytewise path order; duplicates are found on the way when it
    # is, after the permutation when it is not.
    in_order = True
    prev = b""
    dirs: set[bytes] = set()
    any_chunked = False
    for lo in range(0, count, BATCH):
        hi = min(lo + BATCH, count)
        slot_pos = entries_at + 4 * np.arange(lo, hi, dtype=np.int64)
        t = slot_pos + g(slot_pos, 4)
        _check(t + 4 <= size, lo, "entry table offset is outside the index")
        vt = t - g(t, 4).astype(np.uint32).view(np.int32).astype(np.int64)
        _check((vt >= 0) & (vt + 4 <= size), lo, "entry vtable is outside the index")
        fo = _field_offsets(g, size, t, vt, lo)
        _check(fo[E_PATH] != 0, lo, "entry has no path (a required field)")
        _check(fo[E_HASH] != 0, lo, "entry has no hash (a required field)")
        # Path strings.
        sref = t + fo[E_PATH]
        st = sref + g(sref, 4)
        _check(st + 4 <= size, lo, "path string is outside the index")
        sa = st + 4
        se = sa + g(st, 4)
        _check(se <= size, lo, "path string runs past the end of the index")
        # Hash vectors: exactly 32 bytes.
        href = t + fo[E_HASH]
        h = href + g(href, 4)
        _check(h + 4 <= size, lo, "hash vector is outside the index")
        hlen = g(h, 4)
        _check(h + 4 + hlen <= size, lo, "hash vector runs past the end of the index")
        _check(hlen == HASH_SIZE, lo, "hash is not 32 bytes")
        # Scalars that must make sense: compression, sizes, payload inside the data blob.
        comp = _scalar(g, t, fo[E_COMPRESSION], 1)
        _check(comp <= 1, lo, "unknown compression")
        dsize = _scalar(g, t, fo[E_DATA_SIZE], 8).astype(np.uint64)
        osize = _scalar(g, t, fo[E_ORIGINAL_SIZE], 8).astype(np.uint64)
        doff = _scalar(g, t, fo[E_DATA_OFFSET], 8).astype(np.uint64)
        _check(
            (comp == 1) | (dsize == osize),
            lo,
            "uncompressed entry has data_size different from original_size",
        )
        if data_hash:
            limit = np.uint64(data_size)
            _check(
                (doff <= limit) & (dsize <= limit - np.minimum(doff, limit)),
                lo,
                f"payload lies outside the data blob ({data_size} bytes)",
            )
        tpos[lo:hi] = t
        pstart[lo:hi] = sa
        pend[lo:hi] = se
        # Paths: structure, NUL and UTF-8 in C over the whole batch; order and directories
        # in C-level comprehensions.
        paths = [buf[x:y] for x, y in zip(sa.tolist(), se.tolist(), strict=True)]
        _check_paths(paths, lo)
        if in_order:
            if (lo and paths[0] <= prev) or sorted(paths) != paths:
                in_order = False
            elif len(set(paths)) != len(paths):
                dup = next(p for p, q in pairwise(paths) if p == q)
                raise CorruptIndex(f"duplicate path {dup.decode()!r}")
            prev = paths[-1]
        for parent in {p.rpartition(b"/")[0] for p in paths}:
            while parent and parent not in dirs:
                dirs.add(parent)
                parent = parent.rpartition(b"/")[0]
        chunked = (fo[E_CHUNK_SIZE] != 0) | (fo[E_CHUNK_HASHES] != 0)
        chunked |= fo[E_FRAME_OFFSETS] != 0
        if chunked.any():
            any_chunked = True
            for i in np.flatnonzero(chunked).tolist():
                _check_chunks(dec, lo + i, int(t[i]))
    if any_chunked and not features & FEATURE_CHUNKS:
        raise CorruptIndex("entries carry chunk tables but the chunk feature bit is not set")
    return Validated(tpos, pstart, pend, in_order, dirs)


def _field_offsets(g: Gather, size: int, t: IntArray, vt: IntArray, base: int) -> list[IntArray]:
    """Offsets of the 13 entry slots for every table of a batch (0 = absent), checked.

    Writers share a handful of vtables among all entries, so each distinct vtable is read
    once and its offsets broadcast, instead of 13 gathers per entry.
    """
    uvt, inverse = np.unique(vt, return_inverse=True)
    vt_len = g(uvt, 2)
    ok = (vt_len >= 4) & (vt_len % 2 == 0) & (uvt + vt_len <= size)
    _check(ok[inverse], base, "entry vtable is malformed")
    tbl_len = g(uvt + 2, 2)[inverse]
    _check(t + tbl_len <= size, base, "entry table runs past the end of the index")
    fo = []
    for slot in range(E_SLOTS):
        at = 4 + 2 * slot
        present = vt_len > at
        off = np.where(present, g(np.where(present, uvt + at, 0), 2), 0)[inverse]
        _check(
            (off == 0) | ((off >= 4) & (off + E_FIELD_SIZE[slot] <= tbl_len)),
            base,
            f"entry field {slot} lies outside its table",
        )
        fo.append(off)
    return fo


def _scalar(g: Gather, t: IntArray, off: IntArray, width: int) -> npt.NDArray[np.int64]:
    present = off != 0
    return np.where(present, g(np.where(present, t + off, 0), width), 0)


def _check(ok: npt.NDArray[np.bool_], base: int, problem: str) -> None:
    if not ok.all():
        i = base + int(np.flatnonzero(~ok)[0])
        raise CorruptIndex(f"entry {i}: {problem}")


def _check_paths(paths: list[bytes], base: int) -> None:
    bad = first_bad_path(paths)
    if bad is not None:
        i, problem = bad
        raise CorruptIndex(f"entry {base + i}: invalid path {paths[i]!r}: {problem}")


def _check_chunks(dec: EntryDecoder, i: int, t: int) -> None:
    e = dec.decode(t)
    where = f"entry {i} ({e.path!r})"
    cs = e.chunk_size
    if cs == 0 or cs & (cs - 1) or not CHUNK_SIZE_MIN <= cs <= CHUNK_SIZE_MAX:
        raise CorruptIndex(f"{where}: invalid chunk_size {cs}")
    nchunks = -(-e.original_size // cs)
    if len(e.chunk_hashes) != HASH_SIZE * nchunks:
        have, want = len(e.chunk_hashes), HASH_SIZE * nchunks
        raise CorruptIndex(f"{where}: chunk table has {have} bytes, expected {want}")
    if e.compression == Compression.ZSTD:
        fr = e.frame_offsets
        if len(fr) != nchunks or (fr and fr[0] != 0):
            raise CorruptIndex(f"{where}: frame_offsets do not match the chunk table")
        if any(a >= z for a, z in pairwise(fr)) or (fr and fr[-1] >= e.data_size):
            raise CorruptIndex(f"{where}: frame_offsets are not increasing inside the payload")
    elif e.frame_offsets:
        raise CorruptIndex(f"{where}: frame_offsets on an uncompressed entry")
