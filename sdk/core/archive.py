"""Reading a zip file that an attacker may have made.

Every entry is checked from the central directory before a byte is inflated: no symlinks,
no paths that leave the archive, no duplicates, only stored or deflated data, no zip
encryption. Every read is capped: an entry is never inflated past its declared size, and a
declared size over the caller's cap is refused before reading. Python's ``ZipFile.read``
inflates a whole entry in one call, whatever it declares, so it is never used here.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from edgekit.core.errors import BundleError

MAX_ENTRIES = 256
_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError)
"""What zipfile raises on a corrupt archive (NotImplementedError: a forged version field,
found by the atheris harness in tests/fuzz_bundle.py)."""


class Archive:
    """A checked, read-only zip archive; ``read`` returns at most the declared bytes."""

    def __init__(self, path: Path, data: IO[bytes] | None = None) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(data or path)
        except FileNotFoundError:
            raise BundleError(f"{path}: no such bundle") from None
        except _ZIP_ERRORS as exc:
            raise BundleError(f"{path}: not an edgekit bundle ({exc}); convert the model again") from exc
        try:
            self._infos = self._checked()
        except BundleError:
            self._zip.close()
            raise

    def _checked(self) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        if len(infos) > MAX_ENTRIES:
            raise BundleError(f"{self.path}: {len(infos)} entries in the archive; not a bundle")
        for info in infos:
            name = info.filename
            if info.external_attr >> 16 & 0o170000 == 0o120000:
                raise BundleError(f"{self.path}: entry '{name}' is a symlink; the bundle is tampered with")
            if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                raise BundleError(f"{self.path}: entry '{name}' escapes the bundle; it is tampered with")
            if info.compress_type not in _COMPRESSION or info.flag_bits & 0x1:
                raise BundleError(
                    f"{self.path}: entry '{name}' is encrypted or compressed with method "
                    f"{info.compress_type}; edgekit bundles are stored or deflated only"
                )
        by_name = {info.filename: info for info in infos}
        if len(by_name) != len(infos):
            raise BundleError(f"{self.path}: duplicate entries in the archive; the bundle is tampered with")
        return by_name

    @property
    def names(self) -> set[str]:
        return set(self._infos)

    def size(self, name: str) -> int:
        """The size the entry declares (not yet checked against its data)."""
        return self._infos[name].file_size

    def read(self, name: str, cap: int, what: str) -> bytes:
        """The entry's bytes, refusing one that declares over ``cap`` bytes (``what`` names
        the limit) and one whose data does not inflate to exactly its declared size."""
        info = self._infos[name]
        if info.file_size > cap:
            raise BundleError(
                f"{self.path}: {name} declares {info.file_size} bytes, over the {cap}-byte limit "
                f"for {what}; the bundle is not one to load"
            )
        try:
            with self._zip.open(info) as entry:
                # One bounded read: zipfile inflates at most the declared size for it, checks the
                # CRC at that point, and never looks at what a lying entry holds beyond.
                data = entry.read(info.file_size)
        except (*_ZIP_ERRORS, zlib.error) as exc:
            raise BundleError(
                f"{self.path}: {name} is corrupt ({exc}); the bundle is corrupt or tampered with"
            ) from exc
        if len(data) != info.file_size:
            raise BundleError(f"{self.path}: {name} is truncated; the bundle is corrupt")
        return data

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def load_npz(data: bytes, cap: int, what: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` held in memory, read as ``Archive`` reads a bundle: at most
    ``cap`` bytes in all, and each array's header must match the bytes it comes with, so
    no shape can make numpy allocate more than was sent. Raises ValueError."""
    try:
        with Archive(Path(what), io.BytesIO(data)) as archive:
            arrays, left = {}, cap
            for name in sorted(archive.names):
                member = archive.read(name, left, what)
                left -= len(member)
                arrays[name.removesuffix(".npy")] = _npy(member)
            return arrays
    except BundleError as exc:
        raise ValueError(str(exc)) from None


def _npy(member: bytes) -> np.ndarray:
    stream = io.BytesIO(member)
    version = np.lib.format.read_magic(stream)
    read_header = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError("an array of Python objects")
    body = memoryview(member)[stream.tell() :]
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(body):
        raise ValueError(f"an array header claims {shape} {dtype}, which its {len(body)} bytes do not hold")
    array = np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.copy()
