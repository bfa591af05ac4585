"""The arrays of an .npz file read without loading them: each member's header (dtype, shape), then its
data a chunk at a time. np.load reads a whole member into memory (800 MB for 25 M int64 edges x 4)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Self

import numpy as np


class NpzArrays:
    """Open with `with NpzArrays(path) as arrays:`; OSError / ValueError / BadZipFile when unreadable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path)
        self.headers: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for info in self._zip.infolist():
            if info.filename.endswith(".npy"):
                with self._zip.open(info) as fh:
                    dtype, shape, _ = _header(fh)
                self.headers[info.filename[:-4]] = (dtype, shape)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        return sorted(self.headers)

    def dtype(self, name: str) -> np.dtype:
        return self.headers[name][0]

    def length(self, name: str) -> int:
        shape = self.headers[name][1]
        return shape[0] if shape else 1

    def read(self, name: str) -> np.ndarray:
        """The whole array (for small ones: id maps, scalars)."""
        with self._zip.open(f"{name}.npy") as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)

    def chunks(self, name: str, rows: int) -> Iterator[np.ndarray]:
        """A 1-D array in chunks of at most `rows` values."""
        with self._zip.open(f"{name}.npy") as fh:
            dtype, shape, _ = _header(fh)
            if len(shape) != 1 or dtype.hasobject:
                raise ValueError(f"{name}: a 1-D array of plain values expected, found {dtype} {shape}")
            left = shape[0]
            while left:
                n = min(rows, left)
                data = fh.read(n * dtype.itemsize)
                if len(data) != n * dtype.itemsize:
                    raise ValueError(f"{name}: the file ends inside the array")
                yield np.frombuffer(data, dtype=dtype)
                left -= n


def _header(fh: IO[bytes]) -> tuple[np.dtype, tuple[int, ...], bool]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return dtype, shape, fortran
