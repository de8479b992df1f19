"""Hostile inputs for the tests of issue 25 (docs/reliability.md): tiny files that look like trouble.

Every helper writes a file of a few hundred bytes at most: a decompression bomb is only a PNG
header that claims 20000 x 20000 pixels, which is all a reader that checks headers sees.
"""
from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 20000
EXIF_ORIENTATION = 0x0112


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path, side: int = BOMB_SIDE) -> Path:
    """A PNG whose header says side x side RGB pixels, with one empty data chunk: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def png16(path, size=(8, 6)) -> Path:
    """A 16-bit grayscale PNG (Pillow mode I;16) of mid-grey 30000: converting it to RGB clips it to white."""
    Image.fromarray(np.full(size[::-1], 30000, np.uint16)).save(path, format="PNG")  # whatever the suffix
    return Path(path)


def rotated_jpeg(path, size=(8, 6), orientation: int = 6) -> Path:
    """An RGB JPEG carrying EXIF orientation `orientation` (6: shown rotated 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.new("RGB", size, (90, 120, 150)).save(path, exif=exif.tobytes())
    return Path(path)


def rgb(path, size=(8, 6)) -> Path:
    """A plain RGB image of `size` (w, h), in the format of the suffix."""
    Image.new("RGB", size, (90, 120, 150)).save(path)
    return Path(path)


def fifo(path) -> Path:
    """A named pipe: a reader that opens it waits forever for a writer."""
    os.mkfifo(path)
    return Path(path)


def os_error(code: int, filename=None):
    """A function that raises OSError(code) naming `filename`, for monkeypatching a write."""
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), filename)
    return fail


def full_disk_open(budget: int, pattern: str):
    """linemod_format's `open` on a disk with `budget` bytes left for files whose name holds `pattern`:
    a write past it raises OSError(ENOSPC), as the file system does."""
    import builtins

    class Full:
        def __init__(self, f):
            self.f, self.left = f, budget

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, *args, **kwargs):
        f = builtins.open(path, *args, **kwargs)
        return Full(f) if pattern in str(path) else f

    return fake_open


ENOSPC, EROFS = errno.ENOSPC, errno.EROFS
