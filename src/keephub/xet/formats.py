"""Xorb and shard binary formats: parse what clients upload, write what the dedup query answers.

Parsing is strict: every length is bounds-checked and any inconsistency raises `FormatError` with a
message naming the offending piece, so a malformed upload becomes a 400 and never a partial write.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import lz4.frame

from keephub.xet import hashing

MAX_CHUNK_BYTES = 128 * 1024
MAX_XORB_CHUNKS = 8192
# hf_xet fills a xorb with up to 64 MiB of chunk data, then adds an 8-byte header per chunk.
MAX_XORB_BYTES = 64 * 1024 * 1024 + MAX_XORB_CHUNKS * 8
MAX_SHARD_BYTES = 64 * 1024 * 1024
# Reads of stored xorbs go in pieces this large: few calls, a bounded buffer.
READ_PIECE_BYTES = 8 * 1024 * 1024
CHUNK_HEADER = struct.Struct("<B3sB3s")
SCHEME_NONE, SCHEME_LZ4, SCHEME_BG4_LZ4 = 0, 1, 2
SHARD_TAG = b"HFRepoMetaData\x00" + bytes([85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209,
                                          74, 169])
SHARD_HEADER_VERSION = 2
SHARD_FOOTER_VERSION = 1
SHARD_FOOTER_BYTES = 200
FLAG_WITH_VERIFICATION = 1 << 31
FLAG_WITH_METADATA_EXT = 1 << 30
EMPTY_FILE_HASH = bytes(32)  # the file hash of zero bytes
BOOKEND = b"\xff" * 32 + bytes(16)
_ENTRY = 48


class FormatError(ValueError):
    """An uploaded xorb or shard is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk of a verified xorb: its hash, where its serialized bytes start, and its unpacked size."""

    hash: bytes
    offset: int
    size: int


def _u24(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def ungroup_bg4(grouped: bytes) -> bytes:
    """Undo byte grouping: group i holds bytes i, i+4, i+8, ... of the original."""
    n = len(grouped)
    base, extra = divmod(n, 4)
    out = bytearray(n)
    start = 0
    for index in range(4):
        size = base + (1 if index < extra else 0)
        out[index::4] = grouped[start : start + size]
        start += size
    return bytes(out)


def decode_chunk(scheme: int, payload: bytes | memoryview, size: int, index: int) -> bytes | memoryview:
    if scheme == SCHEME_NONE:
        data = payload
    elif scheme in (SCHEME_LZ4, SCHEME_BG4_LZ4):
        try:
            data = lz4.frame.decompress(payload)
        except RuntimeError as exc:
            raise FormatError(f"chunk {index} does not decompress as LZ4: {exc}")
        if scheme == SCHEME_BG4_LZ4:
            data = ungroup_bg4(data)
    else:
        raise FormatError(f"chunk {index} uses unknown compression scheme {scheme} (known: 0 none, 1 LZ4, 2 BG4+LZ4)")
    if len(data) != size:
        raise FormatError(f"chunk {index} unpacks to {len(data)} bytes but its header says {size}")
    return data


class XorbReader:
    """A serialized xorb parsed as its bytes arrive, in pieces of any size: each chunk is unpacked (and hashed,
    with `hash_chunks`) as soon as its last byte is fed, then handed to `on_chunk` and dropped.

    This is how an upload is verified from the bytes already in memory, with nothing read back from disk, and
    how a file is rebuilt from its xorbs in large reads. Only a chunk cut by the end of a piece is held over.
    """

    def __init__(self, on_chunk: Callable[[bytes | memoryview], None] | None = None, *,
                 hash_chunks: bool = True) -> None:
        self.chunks: list[ChunkRecord] = []
        self._on_chunk = on_chunk
        self._hash_chunks = hash_chunks
        self._held = bytearray()
        self._offset = 0  # serialized offset of the next chunk

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        position = 0
        while self._held:
            end = self._chunk_end(self._held, 0)
            wanted = (CHUNK_HEADER.size if end is None else end) - len(self._held)
            if wanted > 0:
                piece = view[position : position + wanted]
                self._held += piece
                position += len(piece)
                if len(piece) < wanted:
                    return
                continue
            self._take(memoryview(self._held), 0, end)  # type: ignore[arg-type]
            self._held = bytearray()
        while position < len(view):
            end = self._chunk_end(view, position)
            if end is None or end > len(view):
                self._held = bytearray(view[position:])
                return
            self._take(view, position, end)
            position = end

    def finish(self, expected_hash: bytes | None = None) -> list[ChunkRecord]:
        """The chunks, once the xorb is complete; with `expected_hash`, also checks the chunks' Merkle hash."""
        if self._held:
            where = "a chunk header" if len(self._held) < CHUNK_HEADER.size else "the chunk's data"
            raise FormatError(f"chunk {len(self.chunks)} at byte {self._offset}: the xorb ends inside {where}")
        if not self.chunks:
            raise FormatError("the xorb is empty")
        if expected_hash is not None:
            actual = hashing.merkle_root([(c.hash, c.size) for c in self.chunks])
            if actual != expected_hash:
                raise FormatError(f"the xorb's chunks hash to {hashing.to_hex(actual)}, not the "
                                  f"{hashing.to_hex(expected_hash)} in the URL; nothing was stored")
        return self.chunks

    def _chunk_end(self, buffer: bytearray | memoryview, start: int) -> int | None:
        """Where the chunk starting at `start` ends, from its header; None while the header is incomplete."""
        if len(buffer) - start < CHUNK_HEADER.size:
            return None
        version, packed_raw, _scheme, size_raw = CHUNK_HEADER.unpack_from(buffer, start)
        packed, size = _u24(packed_raw), _u24(size_raw)
        where = f"chunk {len(self.chunks)} at byte {self._offset}"
        if version != 0:
            raise FormatError(f"{where}: unknown chunk header version {version}")
        if size == 0 or size > MAX_CHUNK_BYTES or packed > MAX_CHUNK_BYTES + 1024:
            raise FormatError(f"{where}: sizes {packed}/{size} are outside 1..{MAX_CHUNK_BYTES}")
        if len(self.chunks) >= MAX_XORB_CHUNKS:
            raise FormatError(f"the xorb holds more than {MAX_XORB_CHUNKS} chunks, the limit")
        if self._offset + CHUNK_HEADER.size + packed > MAX_XORB_BYTES:
            raise FormatError(f"the xorb is larger than {MAX_XORB_BYTES} bytes, the limit")
        return start + CHUNK_HEADER.size + packed

    def _take(self, buffer: memoryview, start: int, end: int) -> None:
        _version, _packed, scheme, size_raw = CHUNK_HEADER.unpack_from(buffer, start)
        data = decode_chunk(scheme, buffer[start + CHUNK_HEADER.size : end], _u24(size_raw), len(self.chunks))
        chunk_hash = hashing.chunk_hash(data) if self._hash_chunks else b""
        self.chunks.append(ChunkRecord(chunk_hash, self._offset, len(data)))
        if self._on_chunk is not None:
            self._on_chunk(data)
        self._offset += end - start


def iter_xorb(fh: BinaryIO, total: int) -> Iterator[tuple[int, bytes]]:
    """(serialized offset, unpacked bytes) of each chunk of a serialized xorb of `total` bytes."""
    offset = index = 0
    while offset < total:
        header = fh.read(CHUNK_HEADER.size)
        if len(header) != CHUNK_HEADER.size:
            raise FormatError(f"chunk {index} at byte {offset}: the xorb ends inside a chunk header")
        version, packed_raw, scheme, size_raw = CHUNK_HEADER.unpack(header)
        packed, size = _u24(packed_raw), _u24(size_raw)
        if version != 0:
            raise FormatError(f"chunk {index} at byte {offset}: unknown chunk header version {version}")
        if size == 0 or size > MAX_CHUNK_BYTES or packed > MAX_CHUNK_BYTES + 1024:
            raise FormatError(f"chunk {index} at byte {offset}: sizes {packed}/{size} are outside 1..{MAX_CHUNK_BYTES}")
        payload = fh.read(packed)
        if len(payload) != packed:
            raise FormatError(f"chunk {index} at byte {offset}: the xorb ends inside the chunk's data")
        if index >= MAX_XORB_CHUNKS:
            raise FormatError(f"the xorb holds more than {MAX_XORB_CHUNKS} chunks, the limit")
        yield offset, bytes(decode_chunk(scheme, payload, size, index))
        offset += CHUNK_HEADER.size + packed
        index += 1


def verify_xorb(fh: BinaryIO, total: int, expected_hash: bytes) -> list[ChunkRecord]:
    """Decompress and hash every chunk, recompute the Merkle root, and compare with the claimed xorb hash."""
    if total > MAX_XORB_BYTES:
        raise FormatError(f"the xorb is {total} bytes; the limit is {MAX_XORB_BYTES}")
    reader = XorbReader()
    remaining = total
    while remaining > 0 and (piece := fh.read(min(READ_PIECE_BYTES, remaining))):
        reader.feed(piece)
        remaining -= len(piece)
    return reader.finish(expected_hash)


# -- chunk index, as stored in the metadata database ----------------------------------------------------
_INDEX_ENTRY = struct.Struct("<32sII")


def pack_chunk_index(chunks: list[ChunkRecord]) -> bytes:
    return b"".join(_INDEX_ENTRY.pack(c.hash, c.offset, c.size) for c in chunks)


def unpack_chunk_index(blob: bytes) -> list[ChunkRecord]:
    return [ChunkRecord(h, o, s) for h, o, s in _INDEX_ENTRY.iter_unpack(blob)]


# -- shards -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    xorb: bytes
    unpacked: int
    start: int
    end: int


@dataclass(frozen=True)
class FileInfo:
    file_hash: bytes
    terms: list[Term]
    verifications: list[bytes] | None
    sha256: bytes | None


@dataclass(frozen=True)
class CasInfo:
    xorb: bytes
    unpacked: int
    stored: int
    chunks: list[tuple[bytes, int, int]]


@dataclass(frozen=True)
class Shard:
    files: list[FileInfo]
    xorbs: list[CasInfo]


_TERM = struct.Struct("<32sIIII")
_TERMS_PACK = struct.Struct("<32sIII")


def pack_terms(terms: list[Term]) -> bytes:
    return b"".join(_TERMS_PACK.pack(t.xorb, t.unpacked, t.start, t.end) for t in terms)


def unpack_terms(blob: bytes) -> list[Term]:
    return [Term(x, u, s, e) for x, u, s, e in _TERMS_PACK.iter_unpack(blob)]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def entry(self, what: str) -> bytes:
        if self.pos + _ENTRY > len(self.data):
            raise FormatError(f"the shard ends inside {what} at byte {self.pos}")
        raw = self.data[self.pos : self.pos + _ENTRY]
        self.pos += _ENTRY
        return raw


def parse_shard(data: bytes) -> Shard:
    if len(data) > MAX_SHARD_BYTES:
        raise FormatError(f"the shard is {len(data)} bytes; the limit is {MAX_SHARD_BYTES}")
    if len(data) < 48 or data[:32] != SHARD_TAG:
        raise FormatError("this is not a Xet shard: the 32-byte header tag is missing or wrong")
    version, footer_size = struct.unpack_from("<QQ", data, 32)
    if version != SHARD_HEADER_VERSION:
        raise FormatError(f"shard header version {version} is not supported (expected {SHARD_HEADER_VERSION})")
    if footer_size not in (0, SHARD_FOOTER_BYTES):
        raise FormatError(f"shard footer size {footer_size} is invalid; upload the shard without its footer")
    body_end = len(data) - footer_size
    reader = _Reader(data[:body_end])
    reader.pos = 48
    files: list[FileInfo] = []
    while True:
        raw = reader.entry("a file header")
        if raw == BOOKEND:
            break
        file_hash, flags, count = struct.unpack_from("<32sII", raw)
        label = f"file {hashing.to_hex(file_hash)}"
        if (count == 0 and file_hash != EMPTY_FILE_HASH) or count > 10_000_000:
            raise FormatError(f"{label} declares {count} terms")
        if flags & ~(FLAG_WITH_VERIFICATION | FLAG_WITH_METADATA_EXT):
            raise FormatError(f"{label} has unknown flags {flags:#x}")
        if count == 0:  # an empty file (hf_xet lists them in bucket uploads): no content to record
            if flags & FLAG_WITH_METADATA_EXT:
                reader.entry(f"{label}'s metadata extension")
            continue
        terms = []
        for _ in range(count):
            xorb, _cas_flags, unpacked, start, end = _TERM.unpack(reader.entry(f"{label}'s terms"))
            if end <= start:
                raise FormatError(f"{label}: a term's chunk range [{start}, {end}) is empty or reversed")
            terms.append(Term(xorb, unpacked, start, end))
        verifications = None
        if flags & FLAG_WITH_VERIFICATION:
            verifications = [reader.entry(f"{label}'s verification entries")[:32] for _ in range(count)]
        sha256 = None
        if flags & FLAG_WITH_METADATA_EXT:
            sha256 = reader.entry(f"{label}'s metadata extension")[:32]
        files.append(FileInfo(file_hash, terms, verifications, sha256))
    xorbs: list[CasInfo] = []
    while True:
        raw = reader.entry("a xorb header")
        if raw == BOOKEND:
            break
        xorb, _flags, count, unpacked, stored = struct.unpack_from("<32sIIII", raw)
        chunks = []
        for _ in range(count):
            chunk, start, size = struct.unpack_from("<32sII", reader.entry(f"xorb {hashing.to_hex(xorb)}'s chunks"))
            chunks.append((chunk, start, size))
        xorbs.append(CasInfo(xorb, unpacked, stored, chunks))
    if reader.pos != body_end:
        raise FormatError(f"the shard has {body_end - reader.pos} unexpected bytes after its xorb section")
    return Shard(files, xorbs)


def _truncated(raw: bytes) -> int:
    """The first little-endian u64 of a hash: the key of a shard's lookup tables."""
    return struct.unpack_from("<Q", raw)[0]


def dedup_shard(xorbs: list[tuple[bytes, list[ChunkRecord], int]], hmac_key: bytes, expiry_seconds: int) -> bytes:
    """A shard answering a global dedup query: no files, the given xorbs with HMAC-protected chunk hashes.

    Each xorb is (hash, chunks, serialized size). The client can match chunks it holds (by keying its
    own hashes) but learns no raw hash it did not already know. Unlike an uploaded shard, this one has
    the footer and the lookup tables the client's shard reader sizes its tables from.
    """
    out = bytearray(SHARD_TAG + struct.pack("<QQ", SHARD_HEADER_VERSION, SHARD_FOOTER_BYTES))
    file_info_offset = len(out)
    out += BOOKEND
    xorb_info_offset = len(out)
    xorb_lookup: list[tuple[int, int]] = []
    chunk_lookup: list[tuple[int, int, int]] = []
    index = 0
    for xorb, chunks, stored in sorted(xorbs, key=lambda x: x[0]):
        xorb_lookup.append((_truncated(xorb), index))
        out += struct.pack("<32sIIII", xorb, 0, len(chunks), sum(c.size for c in chunks), stored)
        position = 0
        for number, chunk in enumerate(chunks):
            protected = hashing.keyed(chunk.hash, hmac_key)
            out += struct.pack("<32sIIII", protected, position, chunk.size, 0, 0)
            chunk_lookup.append((_truncated(protected), index, number))
            position += chunk.size
        index += 1 + len(chunks)
    out += BOOKEND
    file_lookup_offset = len(out)
    xorb_lookup_offset = len(out)
    for key, value in xorb_lookup:
        out += struct.pack("<QI", key, value)
    chunk_lookup_offset = len(out)
    for key, xorb_index, number in sorted(chunk_lookup):
        out += struct.pack("<QII", key, xorb_index, number)
    footer_offset = len(out)
    now = int(time.time())
    stored_total = sum(stored for _, _, stored in xorbs)
    unpacked_total = sum(c.size for _, chunks, _ in xorbs for c in chunks)
    out += struct.pack("<9Q32sQQ6QQQQQ", SHARD_FOOTER_VERSION, file_info_offset, xorb_info_offset,
                       file_lookup_offset, 0, xorb_lookup_offset, len(xorb_lookup), chunk_lookup_offset,
                       len(chunk_lookup), hmac_key, now, now + expiry_seconds, 0, 0, 0, 0, 0, 0,
                       stored_total, unpacked_total, unpacked_total, footer_offset)
    return bytes(out)
