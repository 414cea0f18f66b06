"""Xet hashes, recomputed by the server so that nothing a client claims is trusted unchecked.

All hashes are 32 bytes. On the wire a hash is written as four little-endian u64 words, each printed
as 16 hex digits — i.e. every 8-byte group reversed before hex-encoding. `to_hex`/`from_hex` convert.
"""

from __future__ import annotations

import re
import struct

from blake3 import blake3

DATA_KEY = bytes([102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28, 157, 228, 33, 16,
                  155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41])
INTERNAL_NODE_KEY = bytes([1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230, 93, 221, 83,
                           111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63])
VERIFICATION_KEY = bytes([127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243, 164, 205, 38,
                          213, 181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195])
ZERO_HASH = bytes(32)
MEAN_BRANCHING = 4
MAX_GROUP = 2 * MEAN_BRANCHING + 1
GLOBAL_DEDUP_MODULUS = 1024
_HEX = re.compile(r"^[0-9a-f]{64}$")


def is_hash_string(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX.match(value))


def to_hex(raw: bytes) -> str:
    """The wire form of a raw 32-byte hash."""
    return (raw[7::-1] + raw[15:7:-1] + raw[23:15:-1] + raw[31:23:-1]).hex()


def from_hex(text: str) -> bytes:
    """The raw bytes of a wire-form hash; the caller has checked `is_hash_string`."""
    plain = bytes.fromhex(text)
    return b"".join(plain[i : i + 8][::-1] for i in range(0, 32, 8))


def chunk_hash(data: bytes) -> bytes:
    return blake3(data, key=DATA_KEY).digest()


def keyed(data: bytes, key: bytes) -> bytes:
    return blake3(data, key=key).digest()


def _last_word(raw: bytes) -> int:
    return struct.unpack_from("<Q", raw, 24)[0]


def is_global_dedup_eligible(raw: bytes) -> bool:
    """Chunks the client may ask the global dedup query about (besides each file's first chunk)."""
    return _last_word(raw) % GLOBAL_DEDUP_MODULUS == 0


def _merge(group: list[tuple[bytes, int]]) -> tuple[bytes, int]:
    lines = "".join(f"{to_hex(h)} : {size}\n" for h, size in group)
    return keyed(lines.encode(), INTERNAL_NODE_KEY), sum(size for _, size in group)


def _next_cut(nodes: list[tuple[bytes, int]], start: int) -> int:
    remaining = len(nodes) - start
    if remaining <= 2:
        return len(nodes)
    end = start + min(MAX_GROUP, remaining)
    for index in range(start + 2, end):
        if _last_word(nodes[index][0]) % MEAN_BRANCHING == 0:
            return index + 1
    return end


def merkle_root(chunks: list[tuple[bytes, int]]) -> bytes:
    """The aggregated Merkle hash of (chunk hash, size) pairs: the xorb hash, and the base of a file hash."""
    if not chunks:
        return ZERO_HASH
    nodes = list(chunks)
    while len(nodes) > 1:
        merged = []
        start = 0
        while start < len(nodes):
            cut = _next_cut(nodes, start)
            merged.append(_merge(nodes[start:cut]))
            start = cut
        nodes = merged
    return nodes[0][0]


def file_hash(chunks: list[tuple[bytes, int]]) -> bytes:
    if not chunks:
        return ZERO_HASH
    return keyed(merkle_root(chunks), ZERO_HASH)


def verification_hash(chunk_hashes: list[bytes]) -> bytes:
    """What a shard must state for each term: proof the uploader knows the chunk hashes it references."""
    return keyed(b"".join(chunk_hashes), VERIFICATION_KEY)
