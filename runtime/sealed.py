"""The chunked AES-256-GCM file format of the store and its engine cache.

A header (magic, chunk size, chunk count, total length), then per chunk a random 96-bit
nonce and the ciphertext with its tag. There is always at least one chunk, and the count
must be the one the length needs, so no header can make a reader skip authentication.
Every chunk's associated data binds the model name,
version, file, chunk index, chunk count, total length and chunk size, so a file cannot be
swapped, reordered, truncated or have any header byte changed unnoticed. Keys are used for
one model version only.

Files written before the chunk size was bound (``EKENC1``) are still read; there a changed
chunk size that still parses yields the same plaintext, so nothing but that field is lost.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgekit.core.errors import StoreError

CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
MAGIC = b"EKENC2\n\0"
LEGACY_MAGIC = b"EKENC1\n\0"
"""The format before the chunk size was in the associated data."""
_HEADER = struct.Struct(">8sIIQ")  # magic, chunk size, chunk count, total length
_NONCE = 12


def seal(data: bytes, key: bytes, name: str, version: int, file: str) -> bytes:
    """``data`` encrypted as ``file`` of model ``name`` v``version``."""
    aead, count = AESGCM(key), max(1, -(-len(data) // CHUNK_BYTES))
    parts = [_HEADER.pack(MAGIC, CHUNK_BYTES, count, len(data))]
    for index in range(count):
        nonce = os.urandom(_NONCE)
        chunk = data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
        aad = _aad(name, version, file, index, count, len(data), CHUNK_BYTES)
        parts += [nonce, aead.encrypt(nonce, chunk, aad)]
    return b"".join(parts)


def unseal(path: Path, key: bytes, name: str, version: int, file: str) -> bytes:
    """The plaintext of a sealed file, or a StoreError saying what is wrong with it."""
    try:
        sealed = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{name} v{version}: {file} is missing from the store") from None
    if len(sealed) < _HEADER.size:
        raise StoreError(f"{name} v{version}: {file} is truncated")
    magic, chunk_bytes, count, total = _HEADER.unpack_from(sealed)
    if magic not in (MAGIC, LEGACY_MAGIC):
        raise StoreError(f"{name} v{version}: {file} is not an edgekit encrypted file")
    # Even empty data is one authenticated chunk, and the count follows from the length: a
    # header rewritten to zero chunks, or to fewer than its length needs, never skips the tags.
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES or count != max(1, -(-total // chunk_bytes)):
        raise StoreError(f"{name} v{version}: {file} has a forged or truncated header; it was tampered with")
    aead, offset, out, view = AESGCM(key), _HEADER.size, [], memoryview(sealed)  # slices without copies
    for index in range(count):
        size = min(chunk_bytes, total - index * chunk_bytes) + 16
        nonce, body = view[offset : offset + _NONCE], view[offset + _NONCE : offset + _NONCE + size]
        offset += _NONCE + size
        try:
            bound = chunk_bytes if magic == MAGIC else None
            out.append(aead.decrypt(nonce, body, _aad(name, version, file, index, count, total, bound)))
        except (InvalidTag, ValueError):
            raise StoreError(
                f"{name} v{version}: {file} fails authentication at chunk {index}; it was tampered with"
            ) from None
    if offset != len(sealed):
        raise StoreError(f"{name} v{version}: {file} has trailing bytes; it was tampered with")
    return b"".join(out)


def _aad(
    name: str, version: int, file: str, index: int, count: int, total: int, chunk_bytes: int | None
) -> bytes:
    if chunk_bytes is None:  # LEGACY_MAGIC
        return f"edgekit/v1|{name}|{version}|{file}|{index}|{count}|{total}".encode()
    return f"edgekit/v2|{name}|{version}|{file}|{index}|{count}|{total}|{chunk_bytes}".encode()
