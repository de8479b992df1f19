"""Backgrounds behind a rendered object: photos from a folder, or procedural ones that look like photos.

Used by synthetic.py for sets rendered from user meshes (docs/data.md §2c); the procedural sets
keep image.procedural_background. Every function takes its randomness from a numpy Generator,
so a seed fixes every pixel.

    photos = list_photos("VOCdevkit/VOC2012/JPEGImages")   # checked before any rendering
    rgb = photo_background(rng, photos, 640, 480)          # a random crop of a random photo
    rgb = procedural_photo(rng, 640, 480)                  # gradients, noise textures, shaded shapes
"""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from errors import ImageError, InputError

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PHOTO_ZOOM_RANGE = (1.0, 1.6)  # a crop covers 1/zoom of the photo's largest crop of the image's shape
NOISE_OCTAVES = 5  # fractal noise: grids of 4, 8, ... 64 cells, each half the amplitude of the last
SHAPE_COUNT_RANGE = (3, 12)
SHARP_SIZE = (0.02, 0.12)  # a sharp shape's size, fraction of the image's larger side
PROCEDURAL_SCALE = 2  # drawn at 1/2 resolution, then upsampled (smooth like a defocused photo anyway)


class BackgroundWarning(UserWarning):
    """Some files of a --bg-dir folder are not images OpenCV can read; they are skipped."""


def list_photos(folder) -> list[str]:
    """The readable photos of `folder` (recursively, sorted, as strings) for --bg-dir.

    A file counts when its extension is an image's and OpenCV recognises its header. Raises
    InputError naming the folder, before any rendering, when it is missing, not a folder, or holds
    no readable photo; warns once (BackgroundWarning) naming how many files were skipped.
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(f"--bg-dir {root}: folder not found")
    if not root.is_dir():
        raise InputError(f"--bg-dir {root}: not a folder (expected a folder of photos, e.g. VOC2012 JPEGImages)")
    try:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())
    except OSError as exc:
        raise InputError(f"--bg-dir {root}: cannot list the folder ({exc})") from None
    good, bad = [], []
    for p in files:
        try:
            ok = p.stat().st_size > 0 and cv2.haveImageReader(str(p))
        except (OSError, cv2.error):
            ok = False
        (good if ok else bad).append(p)
    if not good:
        what = f"{len(files)} image file(s), none readable (first: {files[0].name})" if files else "no image files"
        raise InputError(f"--bg-dir {root}: {what}; expected photos ({', '.join(PHOTO_EXTENSIONS)}), "
                         f"e.g. VOC2012 JPEGImages")
    if bad:
        warnings.warn(f"--bg-dir {root}: {len(bad)} of {len(files)} image files are not readable and are "
                      f"skipped (first: {bad[0]})", BackgroundWarning, stacklevel=2)
    return [str(p) for p in good]


def photo_background(rng: np.random.Generator, photos: list[str], width: int, height: int) -> np.ndarray:
    """A random crop (H, W, 3) uint8 RGB of a random photo of `photos`: the largest crop of the
    image's aspect ratio shrunk by a zoom in PHOTO_ZOOM_RANGE, at a random place, mirrored half the
    time. ImageError naming the file when it cannot be decoded."""
    path = photos[int(rng.integers(len(photos)))]
    zoom, fx, fy, flip = rng.uniform(*PHOTO_ZOOM_RANGE), rng.random(), rng.random(), rng.random() < 0.5
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageError(f"{path}: a --bg-dir photo that cannot be decoded; remove it from the folder")
    h, w = bgr.shape[:2]
    scale = min(w / width, h / height) / zoom
    cw, ch = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    x0, y0 = int(fx * (w - cw)), int(fy * (h - ch))
    crop = bgr[y0:y0 + ch, x0:x0 + cw]
    inter = cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR
    out = cv2.resize(crop, (width, height), interpolation=inter)[:, :, ::-1]
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (3,) float 0-255 of everyday scenes: mostly low saturation, any brightness."""
    hsv = np.array([[[rng.uniform(0, 180), rng.beta(1.5, 3.0) * 255, rng.uniform(40, 240)]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A linear or radial blend (H, W, 3) float between two muted colours."""
    c1, c2 = _muted_colour(rng), _muted_colour(rng)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    if rng.random() < 0.6:
        a = rng.uniform(0, 2 * np.pi)
        s = (x * np.cos(a) + y * np.sin(a)) / max(width, height)
        s = (s - s.min()) / max(np.ptp(s), 1e-9)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        s = np.clip(np.hypot(x - cx, y - cy) / (rng.uniform(0.5, 1.2) * max(width, height)), 0, 1)
    return c1 + s[..., None] * (c2 - c1)


def fractal_noise(rng: np.random.Generator, width: int, height: int, octaves: int = NOISE_OCTAVES) -> np.ndarray:
    """Smooth fractal noise (H, W) float in [0, 1]: random grids of 4, 8, ... cells upsampled (cubic)
    and summed with halving amplitude."""
    total = np.zeros((height, width), np.float32)
    for k in range(octaves):
        cells = 4 * 2 ** k
        grid = rng.random((max(2, cells * height // width), cells)).astype(np.float32)
        total += 0.5 ** k * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    total -= total.min()
    return (total / max(float(total.max()), 1e-6)).astype(np.float64)


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A noise texture (H, W, 3) float: fractal noise between two colours, sometimes warped into
    grain (wood, fabric) by a sine along a random direction."""
    n = fractal_noise(rng, width, height)
    if rng.random() < 0.4:
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        a, f = rng.uniform(0, np.pi), rng.uniform(0.02, 0.15)
        n = 0.5 + 0.5 * np.sin(f * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(4, 12) * n)
    c1, c2 = _muted_colour(rng), _muted_colour(rng)
    return c1 + n[..., None] * (c2 - c1)


def _shape_mask(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A filled ellipse, rectangle or polygon (H, W) float 0/1 somewhere in the image."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(0.05, 0.35) * max(width, height)
    kind = int(rng.integers(3))
    if kind == 0:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.3, 1.0))), float(rng.uniform(0, 180)),
                    0, 360, 1, -1)
    elif kind == 1:
        box = ((float(cx), float(cy)), (float(r), float(r * rng.uniform(0.2, 1.0))), float(rng.uniform(0, 180)))
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    else:
        ang = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))))
        rad = r * rng.uniform(0.4, 1.0, size=len(ang))
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(np.float64)


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (3,) uint8 from the whole range: half the time black, white or grey (print,
    paper, plastic), else a saturated colour of any brightness."""
    if rng.random() < 0.5:
        grey = (rng.integers(0, 40), rng.integers(215, 256), rng.integers(40, 215))[int(rng.integers(3))]
        return np.full(3, grey, np.uint8)
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(100, 255), rng.uniform(75, 255)]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]


def _draw_sharp(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    """Draw `count` sharp-edged, full-contrast shapes on img (H, W, 3) uint8 in place: filled
    rectangles and polygons, checker or stripe patches and thick lines in colours from black to
    white (the print, tiles and small objects of real scenes; the smooth layers have no edges)."""
    h, w = img.shape[:2]
    for _ in range(count):
        size = rng.uniform(*SHARP_SIZE) * max(w, h)
        cx, cy, angle = rng.uniform(0, w), rng.uniform(0, h), float(rng.uniform(0, 180))
        c1, c2 = _vivid_colour(rng), _vivid_colour(rng)
        kind = int(rng.integers(4))
        box = ((float(cx), float(cy)), (float(size), float(size * rng.uniform(0.3, 1.0))), angle)
        corners = cv2.boxPoints(box)
        if kind == 0:
            cv2.fillPoly(img, [np.round(corners).astype(np.int32)], c1.tolist(), lineType=cv2.LINE_AA)
        elif kind == 1:
            ang = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
            pts = np.stack([cx + 0.5 * size * np.cos(ang), cy + 0.5 * size * np.sin(ang)], axis=1)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], c1.tolist(), lineType=cv2.LINE_AA)
        elif kind == 2:  # a checker (or stripes) of 2-6 cells inside the rotated rectangle
            cells, checker = int(rng.integers(2, 7)), rng.random() < 0.6
            x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
            x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, (w, h))
            if x1 <= x0 or y1 <= y0:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
            a = np.deg2rad(angle)
            u = np.floor(((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / size * cells)
            v = np.floor((-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / size * cells)
            first = ((u + v) if checker else u) % 2 == 0
            inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(inside, [np.round(corners - (x0, y0)).astype(np.int32)], 1)
            patch = img[y0:y1, x0:x1]
            patch[(inside > 0) & first] = c1
            patch[(inside > 0) & ~first] = c2
        else:
            a = np.deg2rad(angle)
            end = (int(cx + size * np.cos(a)), int(cy + size * np.sin(a)))
            cv2.line(img, (int(cx), int(cy)), end, c1.tolist(), int(rng.integers(2, 9)), lineType=cv2.LINE_AA)


def procedural_photo(rng: np.random.Generator, width: int, height: int, sharp_shapes: tuple = (0, 0)) -> np.ndarray:
    """A photo-like background (H, W, 3) uint8 RGB: a gradient or a noise texture, then shapes lit
    from one side (a shading gradient across each) with soft shadows, each filled with a flat
    colour, a gradient or a texture; a little vignetting; then, when sharp_shapes (low, high) asks
    for any, that many sharp-edged, full-contrast shapes at full resolution (no draw otherwise)."""
    w, h = max(1, width // PROCEDURAL_SCALE), max(1, height // PROCEDURAL_SCALE)
    img = _gradient(rng, w, h) if rng.random() < 0.5 else _texture(rng, w, h)
    light = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    along = (x * np.cos(light) + y * np.sin(light)) / max(w, h)
    shadow_shift = np.round(np.array([-np.cos(light), -np.sin(light)]) * rng.uniform(2, 8)).astype(int)
    pad = int(np.abs(shadow_shift).max()) + 12  # room for the shadow's offset and blur
    for _ in range(int(rng.integers(SHAPE_COUNT_RANGE[0], SHAPE_COUNT_RANGE[1] + 1))):
        mask = _shape_mask(rng, w, h)
        bx, by, bw, bh = cv2.boundingRect(mask.astype(np.uint8))
        box = (slice(max(by - pad, 0), min(by + bh + pad, h)), slice(max(bx - pad, 0), min(bx + bw + pad, w)))
        shadow = np.roll(mask, tuple(shadow_shift[::-1]), axis=(0, 1))[box]
        shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(1.5, 4.0))
        img[box] *= 1.0 - rng.uniform(0.2, 0.5) * shadow[..., None]
        fill, (box_h, box_w) = rng.random(), shadow.shape
        if fill < 0.4:
            colour = np.broadcast_to(_muted_colour(rng), (box_h, box_w, 3))
        elif fill < 0.7:
            colour = _gradient(rng, box_w, box_h)
        else:
            colour = _texture(rng, box_w, box_h)
        shade = 1.0 + rng.uniform(0.1, 0.5) * (along[box] - (along[mask > 0].mean() if mask.any() else 0.0))
        soft = cv2.GaussianBlur(mask[box], (0, 0), 0.7)[..., None]
        img[box] = img[box] * (1 - soft) + soft * colour * shade[..., None]
    vignette = 1.0 - rng.uniform(0.0, 0.35) * (np.hypot(x / w - 0.5, y / h - 0.5) / np.hypot(0.5, 0.5)) ** 2
    img *= vignette[..., None]
    small = np.clip(np.round(img), 0, 255).astype(np.uint8)
    out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if sharp_shapes[1] > 0:
        _draw_sharp(rng, out, int(rng.integers(sharp_shapes[0], sharp_shapes[1] + 1)))
    return out
