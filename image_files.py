"""Image files: reading headers and pixels, with every check a reader needs first (design D61).

    header = check_image_header("LINEMOD/ape/JPEGImages/000000.jpg", size=(640, 480))
    rgb = decode_rgb(read_bytes(path), path)            # uint8 (H, W, 3), cv2's decoder
    img = load_image(path)                              # a PIL RGB image, Pillow's decoder

A file is checked before it is decoded: a regular file (not a folder or FIFO), at most
MAX_IMAGE_PIXELS pixels (a decompression bomb is refused from its header), 8 bits per sample. The
pre-flights' `check_image_header` also refuses an EXIF rotation and decodes the file once, so that
a truncated file fails there, not in a loader later. Errors are
FileNotFoundError or ImageError (an InputError), naming the file and its kind ('image', 'mask',
'background image'). dataset.py builds the samples from these readers; the pre-flights
(preflight.py, detect.py) check headers with them; image.py holds the pixel operations.
"""
from __future__ import annotations

import contextlib
import os
import stat
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

import image as im
from errors import ImageError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # background pool
# design D61: the largest image decoded, 220 times a LINEMOD image; a 20000 x 20000 PNG of a few
# kilobytes (a decompression bomb) would take 1.2 GB as RGB, so it is refused from its header
MAX_IMAGE_PIXELS = 8192 * 8192
HIGH_BIT_MODES = ("I", "F")  # Pillow's 32-bit modes; "I;16..." are the 16-bit ones
EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 = stored as shown, 2..8 = mirrored and / or rotated
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# JPEG start-of-frame markers (baseline, progressive, ...), whose segment holds the image size;
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def list_images(folder) -> list[str]:
    """All .jpg/.jpeg/.png files under `folder`, recursively, sorted (the background pool)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: background folder not found")
    files = sorted(os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
                   if n.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} images found (recursively)")
    return files


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding the pixels (design D61).

    size (w, h); mode: Pillow's ('RGB', 'L', 'I;16', ...); orientation: the EXIF orientation tag
    (1, or no tag: the pixels are stored as they are shown)."""
    size: tuple[int, int]
    mode: str
    orientation: int = 1


def check_regular_file(path, kind: str = "image") -> None:
    """FileNotFoundError if `path` is missing; ImageError if it is not a regular file (a folder,
    a FIFO, a device), which a reader would fail on or wait on forever."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {kind} not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path}: {kind} is not a regular file (a folder, FIFO or device); expected an image file")


def check_pixels(path, size: tuple[int, int], kind: str = "image") -> None:
    """ImageError if an image of `size` (w, h) has more than MAX_IMAGE_PIXELS pixels (decompression bombs)."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: {kind} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS:,} this project "
                         f"decodes (LINEMOD images are 640x480); resize it")


@contextlib.contextmanager
def open_image(path, kind: str = "image"):
    """The image file opened by Pillow, header read and pixels not yet decoded, after the checks:
    a regular file (`check_regular_file`), at most MAX_IMAGE_PIXELS pixels (`check_pixels`, and
    Pillow's own decompression-bomb check). Errors: FileNotFoundError or ImageError, naming the file."""
    path = os.fspath(path)
    check_regular_file(path, kind)
    try:
        with warnings.catch_warnings():  # Pillow warns, then refuses, past its own limits: one error instead
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            f = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: {kind} is too large to decode ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read {kind} ({e})") from e
    with f:
        check_pixels(path, f.size, kind)
        yield f


def check_bit_depth(path, mode: str, kind: str = "image") -> None:
    """ImageError for a 16-bit or float image: Pillow's conversion to RGB clips it (to white, mostly)."""
    if mode in HIGH_BIT_MODES or mode.startswith("I;"):
        raise ImageError(f"{path}: {kind} has 16 or 32 bits per sample (Pillow mode {mode}), which converting to "
                         f"8-bit RGB clips; expected an 8-bit image (save it with 8 bits per channel)")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 without one), read from the header alone.

    Pillow's `getexif` decodes a whole PNG to look for the tag; `info['exif']` holds what the
    header has (JPEG APP1, a PNG eXIf chunk before the pixels), which is where writers put it."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = int(exif.get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block says nothing about the pixels: no rotation
        return 1
    return value


def read_header(path, kind: str = "image", decode: bool = False) -> ImageHeader:
    """The `ImageHeader` of an image file (errors as `open_image`).

    decode: also decode the pixels once, so that a truncated or corrupt file is an ImageError now,
    not in a loader later; a JPEG is decoded at an eighth of its size (the decoder still reads
    every block, so a cut file fails the same way, at a fraction of the cost: design D61)."""
    with open_image(path, kind) as f:
        header = ImageHeader(tuple(f.size), f.mode, exif_orientation(f))
        if decode:
            if f.format == "JPEG":
                f.draft(f.mode, (max(f.size[0] // 8, 1), max(f.size[1] // 8, 1)))
            try:
                f.load()
            except (OSError, ValueError, SyntaxError) as e:
                raise ImageError(f"{os.fspath(path)}: cannot read {kind} ({e})") from e
        return header


def check_image_header(path, kind: str = "image", size: tuple[int, int] | None = None,
                       size_from: str = "", decode: bool = False) -> ImageHeader:
    """The header of an image (or mask) the pre-flights accept (design D61); with decode, its pixels
    decoded once too (`read_header`).

    Raises ImageError naming the file when it is 16-bit (`check_bit_depth`), carries an EXIF
    orientation other than 1 (the labels' pixel frame is the stored one, and no reader here
    rotates), or is not `size` (w, h), which `size_from` names ('the .data width and height').
    Other errors as `open_image`."""
    header = read_header(path, kind, decode)
    check_bit_depth(path, header.mode, kind)
    if header.orientation != 1:
        raise ImageError(f"{path}: {kind} has EXIF orientation {header.orientation} (stored rotated or mirrored); "
                         f"the labels and every reader here use the stored pixels, so save it with the rotation "
                         f"applied and the tag removed (e.g. PIL.ImageOps.exif_transpose)")
    if size is not None and header.size != tuple(size):
        w, h = header.size
        raise ImageError(f"{path}: {kind} is {w}x{h}, expected {size[0]}x{size[1]}"
                         + (f" ({size_from})" if size_from else ""))
    return header


def load_image(path, kind: str = "image", mode: str = "RGB") -> Image.Image:
    """Open an image file and convert it to `mode`; the stored pixels (EXIF orientation not applied,
    as every reader of this project; the pre-flights refuse rotated images, design D61).

    Raises FileNotFoundError (missing) or ImageError (an InputError, so a ValueError), both naming
    the file: not a regular file, unreadable, larger than MAX_IMAGE_PIXELS, 16-bit.
    """
    path = os.fspath(path)
    with open_image(path, kind) as f:
        check_bit_depth(path, f.mode, kind)
        try:
            return f.convert(mode)
        except (OSError, ValueError, SyntaxError) as e:  # a truncated or corrupt file fails when decoded
            raise ImageError(f"{path}: cannot read {kind} ({e})") from e


def image_size(path, kind: str = "image") -> tuple[int, int]:
    """(w, h) of an image file from its header, without decoding it; errors as `open_image`."""
    return read_header(path, kind).size


def read_bytes(path, kind: str = "image") -> bytes:
    """The raw bytes of a file; FileNotFoundError naming it (and its kind) if it is missing,
    ImageError if it is not a regular file (reading a FIFO would wait forever)."""
    path = os.fspath(path)
    check_regular_file(path, kind)
    with open(path, "rb") as f:
        return f.read()


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(w, h) from the header of JPEG or PNG bytes (tens of microseconds less than Pillow); None otherwise."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] != JPEG_SOI:
        return None
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in JPEG_SOF_MARKERS:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def decode_rgb(data: bytes, path, kind: str = "image", halved: bool = False, bgr: bool = False) -> np.ndarray:
    """The bytes of image file `path` as a uint8 RGB array (H, W, 3), decoded by cv2 (faster than Pillow).

    halved: the image reduced 2x (ceil(H/2), ceil(W/2), 3) as `image.halve` does; a JPEG decoder
    does it while decoding, in about half the time of a full decode. EXIF orientation is ignored,
    as Pillow (and so the label files' pixel frame) does. bgr: return cv2's own channel order
    (BGR) and skip the conversion of the full image; the fast path converts once, at the end (D49).
    """
    if halved and data[:2] != JPEG_SOI:  # other decoders decode in full anyway (and cv2 floors odd sizes)
        return im.halve(decode_rgb(data, path, kind, bgr=bgr))
    flags = (cv2.IMREAD_REDUCED_COLOR_2 if halved else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None:
        arr = np.asarray(load_image(path, kind))  # formats cv2 cannot read; Pillow names the problem
        arr = im.halve(arr) if halved else arr
        return np.ascontiguousarray(arr[:, :, ::-1]) if bgr else arr
    return arr if bgr else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_gray(path, size: tuple[int, int], kind: str = "mask") -> np.ndarray:
    """A mask file as uint8 (H, W); ImageError (a ValueError) naming the file if it is not `size` (w, h)."""
    path = os.fspath(path)
    check_regular_file(path, kind)
    arr = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if arr is None:
        arr = np.asarray(load_image(path, kind, mode="L"))
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        raise ImageError(f"{path}: {kind} is {arr.shape[1]}x{arr.shape[0]}, expected the image size "
                         f"{size[0]}x{size[1]}")
    return arr


def read_sized(path) -> tuple[bytes, tuple[int, int]]:
    """The bytes of image file `path` and its (w, h) from the header, checked by `check_pixels` before
    cv2 decodes a bomb (the pre-flight has refused one already)."""
    data = read_bytes(path)
    size = encoded_size(data) or image_size(path)
    check_pixels(path, size)
    return data, size


def check_decoded_size(path, img: np.ndarray, size: tuple[int, int]) -> None:
    """InputError naming `path` unless the full decode `img` (H, W[, C]) has the header's size (w, h)."""
    if img.shape[:2] != (size[1], size[0]):
        raise InputError(f"{path}: the image decodes to {img.shape[1]}x{img.shape[0]}, "
                         f"its header says {size[0]}x{size[1]}")


def load_mask(path, size: tuple[int, int]) -> Image.Image:
    """An object mask as a PIL 'L' image; ImageError (a ValueError) naming the file if it is not `size` (w, h)."""
    mask = load_image(path, "mask", mode="L")
    if mask.size != tuple(size):
        raise ImageError(f"{path}: mask is {mask.width}x{mask.height}, expected the image size {size[0]}x{size[1]}")
    return mask
