"""Image-level augmentation steps (design §6) as small pure functions.

Every function takes numpy/PIL images and explicit random draws (or a numpy Generator), and
returns new images: no hidden global state, so each step is testable on its own.

Conventions: images are PIL RGB images or uint8 numpy arrays (H, W, 3); masks are PIL images
or uint8 arrays (H, W) / (H, W, 3) with 0 = background and 255 = object. Label rows are
float64 arrays (n, 2K+3) = [class, x0, y0, ..., x_{K-1}, y_{K-1}, x range, y range],
coordinates normalised by the image size (design §3.1).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageChops

from linemod_format import write_bytes

# design §6.4: the resampling filter of every resize (Pillow's default changed in 7.0)
RESAMPLE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}
DEFAULT_RESAMPLE = "bicubic"  # current Pillow; 'nearest' reproduces Pillow < 7 (MS results)

# design §6.1 step 2: the mask lookup mask/255 -> {0, 1} rounds, i.e. object where mask > 127
MASK_THRESHOLD = 127
# design §6.3 step 4: masks are binarised at > 200 for the overlap test
OVERLAP_MASK_THRESHOLD = 200

# a Gaussian sigma under it changes no uint8 pixel much: the blur is skipped (renders, test images)
BLUR_NEGLIGIBLE_PX = 0.05
# D69: the limits of the filters a test image can go through before it is resized (`input_filter`)
MAX_MEDIAN_PX = 15  # a wider median erases a LINEMOD object at 640x480
MAX_GAUSS_PX = 20.0  # a wider blur leaves no object to see

# design §6.1 step 6: the centroid is clamped to [0, CENTROID_MAX]; corners are not clamped
CENTROID_MAX = 0.999
# design §6.1 step 5: hue is wrapped modulo 255 (not 256)
HUE_WRAP = 255


def resample_filter(name: str) -> int:
    """The Pillow filter constant for 'bicubic' or 'nearest' (design §6.4)."""
    try:
        return RESAMPLE_FILTERS[name]
    except KeyError:
        raise ValueError(f"unknown resample filter {name!r}; expected one of {sorted(RESAMPLE_FILTERS)}") from None


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, C) uint8 blurred by a Gaussian of `sigma` pixels (cv2, reflected borders); the image
    itself when sigma <= BLUR_NEGLIGIBLE_PX. The one blur of the renders and of test images (D69)."""
    if sigma <= BLUR_NEGLIGIBLE_PX:
        return rgb
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def parse_input_filter(spec: str) -> tuple[str, float]:
    """(kind, size) of a D69 filter: 'none' -> ('none', 0); 'median:K' -> ('median', K), K odd in
    3..MAX_MEDIAN_PX; 'gauss:SIGMA' -> ('gauss', SIGMA), 0 < SIGMA <= MAX_GAUSS_PX. ValueError
    saying what is expected otherwise."""
    kind, _, value = str(spec).partition(":")
    expected = f"expected none, median:K (K odd, 3 to {MAX_MEDIAN_PX}) or gauss:SIGMA (0 to {MAX_GAUSS_PX:g} pixels)"
    if kind == "none" and not value:
        return "none", 0.0
    try:
        size = float(value)
    except ValueError:
        raise ValueError(expected) from None
    if kind == "median" and size.is_integer() and size % 2 == 1 and 3 <= size <= MAX_MEDIAN_PX:
        return "median", size
    if kind == "gauss" and 0.0 < size <= MAX_GAUSS_PX:
        return "gauss", size
    raise ValueError(expected)


def input_filter(rgb: np.ndarray, spec: str) -> np.ndarray:
    """(H, W, 3) uint8 through the D69 filter `spec` (`parse_input_filter`): a median takes away
    the lines thinner than about half its width that a real object shows and its renders lack,
    and keeps the object's outline; a Gaussian blurs both."""
    kind, size = parse_input_filter(spec)
    if kind == "median":
        return cv2.medianBlur(np.ascontiguousarray(rgb), int(size))
    if kind == "gauss":
        return gaussian_blur(rgb, size)
    return rgb


def to_pil(img) -> Image.Image:
    """A PIL RGB image from a PIL image (any mode) or a uint8 array (H, W, 3) / (H, W)."""
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, found dtype {arr.dtype}")
    return Image.fromarray(arr).convert("RGB")


def binary_mask(mask, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Boolean object mask (H, W, 3): per RGB channel, True where the mask value > threshold.

    `mask`: PIL image (any mode, converted to RGB as the original does) or a uint8 array
    (H, W) / (H, W, 3). A 0/255 mask gives the same result for any threshold in 0..254.
    """
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask.convert("RGB"))
    else:
        arr = np.asarray(mask)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a mask (H, W) or (H, W, 3), found shape {arr.shape}")
    return arr > threshold


# --------------------------------------------------------------------------------------------
# Background replacement (design §6.1 step 2)
# --------------------------------------------------------------------------------------------

def replace_background(img, mask, background, resample: str = DEFAULT_RESAMPLE) -> Image.Image:
    """Object pixels of `img` over `background`: per channel out = I*m + BG*(1-m), m = mask > 127.

    img: RGB (H, W); mask: same size, 0 = background, 255 = object (design §6.1 step 2);
    background: any size, resized to (W, H) with `resample`. Returns a PIL RGB image (H, W).
    """
    img = to_pil(img)
    bg = to_pil(background)
    if bg.size != img.size:
        bg = bg.resize(img.size, resample_filter(resample))
    m = binary_mask(mask)
    if m.shape[:2] != (img.height, img.width):
        raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]} but the image is {img.width}x{img.height}")
    return Image.fromarray(np.where(m, np.asarray(img), np.asarray(bg)))


# --------------------------------------------------------------------------------------------
# Crop / scale jitter (design §6.1 step 3)
# --------------------------------------------------------------------------------------------

def draw_crop_offsets(rng: np.random.Generator, width: int, height: int, jitter: float) -> tuple[int, int, int, int]:
    """(pleft, pright, ptop, pbot), drawn in that order, each uniform in {-d..d} inclusive.

    d = int(jitter * width) for left/right and int(jitter * height) for top/bottom
    (128 and 96 for a 640x480 image and jitter 0.2). Positive values crop, negative pad.
    """
    dw, dh = int(jitter * width), int(jitter * height)
    pleft, pright = (int(rng.integers(-dw, dw + 1)) for _ in range(2))
    ptop, pbot = (int(rng.integers(-dh, dh + 1)) for _ in range(2))
    return pleft, pright, ptop, pbot


def crop_size(width: int, height: int, offsets) -> tuple[int, int]:
    """(sw, sh) = (width - pleft - pright, height - ptop - pbot): the size the label maths assumes."""
    pleft, pright, ptop, pbot = offsets
    return width - pleft - pright, height - ptop - pbot


def crop_with_offsets(img: Image.Image, pleft: int, ptop: int, sw: int, sh: int,
                      fix_off_by_one: bool = False) -> Image.Image:
    """The crop of `img` starting at pixel (pleft, ptop); outside the image is black.

    As the original (design §6.1 step 3, D19, preserved): the PIL box is
    (pleft, ptop, pleft+sw-1, ptop+sh-1), right/bottom exclusive, so the result is
    (sw-1) x (sh-1) pixels. `fix_off_by_one=True` gives the sw x sh crop the labels assume.
    """
    extra = 0 if fix_off_by_one else -1
    return img.crop((pleft, ptop, pleft + sw + extra, ptop + sh + extra))


def crop_resize(img: Image.Image, offsets, size, resample: str = DEFAULT_RESAMPLE,
                fix_off_by_one: bool = False) -> Image.Image:
    """Crop `img` by offsets (pleft, pright, ptop, pbot) and resize to `size` (S or (w, h)) pixels."""
    sw, sh = crop_size(img.width, img.height, offsets)
    crop = crop_with_offsets(img, offsets[0], offsets[2], sw, sh, fix_off_by_one)
    size = (size, size) if np.isscalar(size) else tuple(size)
    return crop.resize((int(size[0]), int(size[1])), resample_filter(resample))


# --------------------------------------------------------------------------------------------
# HSV distortion (design §6.1 step 5)
# --------------------------------------------------------------------------------------------

def rand_scale(rng: np.random.Generator, s: float) -> float:
    """r ~ U(1, s), then r or 1/r by a fair coin (an odd integer in 1..10000 keeps r)."""
    r = float(rng.uniform(1.0, s))
    return r if int(rng.integers(1, 10001)) % 2 else 1.0 / r


def draw_hsv(rng: np.random.Generator, hue: float, saturation: float, exposure: float) -> tuple[float, float, float]:
    """(dhue, dsat, dexp), drawn in that order: dhue ~ U(-hue, hue), dsat/dexp via rand_scale."""
    dhue = float(rng.uniform(-hue, hue))
    return dhue, rand_scale(rng, saturation), rand_scale(rng, exposure)


def hue_shift(h: float, dhue: float) -> float:
    """A hue value 0..255 shifted by dhue*255 and wrapped once modulo 255 (design §6.1 step 5)."""
    h = h + dhue * 255.0
    if h > 255:
        h -= HUE_WRAP
    if h < 0:
        h += HUE_WRAP
    return h


def distort_hsv(hsv: Image.Image, dhue: float, dsat: float, dexp: float) -> Image.Image:
    """Apply the distortion to a PIL "HSV" image: S*dsat, V*dexp, H shifted (hue_shift).

    Each channel goes through a Pillow 256-entry lookup table, which rounds and clips the
    values to 0..255 exactly as the original's `point` calls do.
    """
    if hsv.mode != "HSV":
        raise ValueError(f"expected a PIL 'HSV' image, found mode {hsv.mode!r}")
    h, s, v = hsv.split()
    s = s.point(lambda i: i * dsat)
    v = v.point(lambda i: i * dexp)
    h = h.point(lambda i: hue_shift(i, dhue))
    return Image.merge("HSV", (h, s, v))


def distort_image(img: Image.Image, dhue: float, dsat: float, dexp: float) -> Image.Image:
    """RGB -> PIL HSV -> distort_hsv -> RGB (design §6.1 step 5). Returns a PIL RGB image."""
    return distort_hsv(to_pil(img).convert("HSV"), dhue, dsat, dexp).convert("RGB")


# --------------------------------------------------------------------------------------------
# Labels under the image transforms (design §6.1 step 6, §6.3)
# --------------------------------------------------------------------------------------------

def crop_label_params(offsets, width: int, height: int, shift=(0, 0), size=None) -> tuple[float, float, float, float]:
    """(sx, sy, dx, dy) of the label transform x' = x/sx - dx for a crop and an optional shift.

    sx = sw/width, sy = sh/height, dx = (pleft/width)/sx - shift_x/S, dy likewise, where
    (sw, sh) = crop_size(...) and the shift (pixels of the S x S output, design §6.3) needs `size` S.
    """
    pleft, _, ptop, _ = offsets
    sw, sh = crop_size(width, height, offsets)
    sx, sy = sw / width, sh / height
    dx, dy = (pleft / width) / sx, (ptop / height) / sy
    if shift[0] or shift[1]:
        if size is None:
            raise ValueError("a shift needs the output size S")
        sx_out, sy_out = (size, size) if np.isscalar(size) else size
        dx -= shift[0] / sx_out
        dy -= shift[1] / sy_out
    return sx, sy, dx, dy


def transform_labels(rows, sx: float, sy: float, dx: float, dy: float, *, flip: bool = False,
                     clamp_centroid: bool = True, recompute_ranges: bool = False) -> np.ndarray:
    """Label rows (n, 2K+3) after crop/scale (and flip): x' = x/sx - dx, y' = y/sy - dy.

    design §6.1 step 6: only the centroid (x0, y0) is clamped to [0, 0.999], corners are not
    clamped, class and the x/y range columns are unchanged. design §6.3: `flip` maps x' -> 1 - x'
    (before the clamp) and `recompute_ranges` sets the ranges to max - min of the K points.
    Returns a new float64 array; the input is not modified.
    """
    out = np.array(rows, dtype=np.float64, copy=True).reshape(-1, np.shape(rows)[-1])
    if out.shape[1] < 5 or out.shape[1] % 2 == 0:
        raise ValueError(f"label rows must be (n, 2K+3) wide, found {out.shape[1]} columns")
    pts = out[:, 1:-2].reshape(len(out), (out.shape[1] - 3) // 2, 2)  # view, (n, K, 2); n may be 0
    pts[..., 0] = pts[..., 0] / sx - dx
    pts[..., 1] = pts[..., 1] / sy - dy
    if flip:
        pts[..., 0] = 1.0 - pts[..., 0]
    if clamp_centroid:
        pts[:, 0] = np.clip(pts[:, 0], 0.0, CENTROID_MAX)
    if recompute_ranges:
        out[:, -2:] = pts.max(axis=1) - pts.min(axis=1)
    return out


# --------------------------------------------------------------------------------------------
# Flip and shift (design §6.3)
# --------------------------------------------------------------------------------------------

def flip_lr(img):
    """Left-right mirror of a PIL image or an array (H, W, ...); same type out."""
    if isinstance(img, Image.Image):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.ascontiguousarray(np.asarray(img)[:, ::-1])


def shift_image(img, shift_x: int, shift_y: int, wrap: bool):
    """Move the content of `img` by (shift_x, shift_y) pixels (right/down positive).

    wrap=True: wrap around the edges like the original's `ImageChops.offset` (design §6.3);
    wrap=False: what moves out is lost and the uncovered band is 0 (black / no object).
    Accepts a PIL image or an array (H, W, ...); same type out.
    """
    if isinstance(img, Image.Image):
        if wrap:
            return ImageChops.offset(img, int(shift_x), int(shift_y))
        return Image.fromarray(shift_image(np.asarray(img), shift_x, shift_y, wrap=False))
    arr = np.asarray(img)
    if wrap:
        return np.roll(arr, (int(shift_y), int(shift_x)), axis=(0, 1))
    out = np.zeros_like(arr)
    h, w = arr.shape[:2]
    sx, sy = int(shift_x), int(shift_y)
    if abs(sx) < w and abs(sy) < h:
        out[max(sy, 0):h + min(sy, 0), max(sx, 0):w + min(sx, 0)] = \
            arr[max(-sy, 0):h - max(sy, 0), max(-sx, 0):w - max(sx, 0)]
    return out


# --------------------------------------------------------------------------------------------
# Procedural background (stands in for VOC2012)
# --------------------------------------------------------------------------------------------

def procedural_background(rng: np.random.Generator, width: int = 640, height: int = 480) -> np.ndarray:
    """A cluttered RGB background (height, width, 3) uint8, fully determined by `rng`.

    Smooth colour noise plus random rectangles, ellipses and lines: enough texture that the
    object is not found by colour alone. Stands in for VOC2012 when no background folder is given.
    """
    coarse = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(8, 25))):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = int(rng.integers(0, 3))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == 0:
            x1, y1 = x0 + int(rng.integers(10, width // 3)), y0 + int(rng.integers(10, height // 3))
            cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
        elif kind == 1:
            axes = (int(rng.integers(5, width // 6)), int(rng.integers(5, height // 6)))
            cv2.ellipse(img, (x0, y0), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            x1, y1 = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(img, (x0, y0), (x1, y1), color, int(rng.integers(1, 8)))
    noise = rng.normal(0.0, 8.0, size=img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The fast training path: the same steps and the same label geometry, in cv2 at the output size
# --------------------------------------------------------------------------------------------
# The Pillow path above composites the background at full resolution, then crops, resizes and
# converts to PIL HSV per pixel. The fast path (design D49) resizes the crop rectangle straight to
# the output (one zero-padded copy of the rectangle and one cv2.resize; when the crop shrinks by 2
# or more, against aliasing, an affine warp of the image reduced 2x by pixel-pair averaging, which a
# JPEG decoder does for free with cv2.IMREAD_REDUCED_COLOR_2), composites at the
# (much smaller) output size with a mask copy, and distorts HSV with cv2 lookup tables. The
# resize matches Pillow's pixel-centre convention for the crop rectangle of the Pillow path, so
# the label transform is exactly the same for the same draws; pixels differ only by the
# resampling filter and cv2's HSV rounding.

HALVE_SHRINK = 2  # a crop shrunk by this much or more is reduced 2x first (bilinear alone would alias)


def _wh(size) -> tuple[int, int]:
    """(w, h) of a size given as S or (w, h)."""
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def crop_rect(offsets, width: int, height: int, fix_off_by_one: bool = False) -> tuple[int, int, int, int]:
    """(x0, y0, cw, ch): `crop_with_offsets`'s rectangle in source pixels, at least 1 x 1.

    Top-left (pleft, ptop) (may be negative: padding), (sw-1) x (sh-1) pixels, or sw x sh with
    fix_off_by_one.
    """
    sw, sh = crop_size(width, height, offsets)
    extra = 0 if fix_off_by_one else -1
    return int(offsets[0]), int(offsets[2]), max(sw + extra, 1), max(sh + extra, 1)


def crop_affine(offsets, width: int, height: int, size, fix_off_by_one: bool = False,
                level: int = 0) -> np.ndarray:
    """(2, 3) float64 map from output pixels (u, v) to source pixels of the crop rectangle.

    The rectangle is `crop_rect`'s, resized to `size` (S or (w, h)) with pixel centres matched as
    Pillow (and cv2.resize) do: x = pleft + (u + 0.5) * cw / w - 0.5. `level` = 1 maps into the
    source reduced 2x by `halve` (its pixel i averages source pixels 2i and 2i+1: x' = (x - 0.5) / 2).
    """
    x0, y0, cw, ch = crop_rect(offsets, width, height, fix_off_by_one)
    w, h = _wh(size)
    ax, ay = cw / w, ch / h
    m = np.array([[ax, 0.0, x0 + 0.5 * ax - 0.5], [0.0, ay, y0 + 0.5 * ay - 0.5]])
    if level:
        m[:, 2] -= 0.5
    return m / (2 ** level)


def shrinks_by_half(offsets, width: int, height: int, size) -> bool:
    """True when the crop of a width x height image shrinks by HALVE_SHRINK or more on both axes to `size`."""
    w, h = _wh(size)
    sw, sh = crop_size(width, height, offsets)
    return min(sw / w, sh / h) >= HALVE_SHRINK


def halve(arr: np.ndarray) -> np.ndarray:
    """arr (H, W[, C]) reduced 2x by averaging pixel pairs: (ceil(H/2), ceil(W/2)[, C]), like a JPEG
    decoder's cv2.IMREAD_REDUCED_*_2."""
    H, W = arr.shape[:2]
    return cv2.resize(arr, ((W + 1) // 2, (H + 1) // 2), interpolation=cv2.INTER_AREA)


def inside_rect(m: np.ndarray, width: int, height: int, size) -> tuple[int, int, int, int]:
    """(u0, u1, v0, v1): output pixels [u0, u1) x [v0, v1) whose source centre lies inside the image."""
    w, h = _wh(size)
    u = (np.array([-0.5, width - 0.5]) - m[0, 2]) / m[0, 0]
    v = (np.array([-0.5, height - 0.5]) - m[1, 2]) / m[1, 1]
    clip = lambda a, hi: int(min(max(a, 0), hi))  # noqa: E731
    return clip(np.ceil(u[0] - 1e-9), w), clip(np.ceil(u[1] - 1e-9), w), clip(np.ceil(v[0] - 1e-9), h), \
        clip(np.ceil(v[1] - 1e-9), h)


def padded_crop(arr: np.ndarray, x0: int, y0: int, cw: int, ch: int) -> np.ndarray:
    """arr[y0:y0+ch, x0:x0+cw] (h, w[, C]) with zeros where the rectangle leaves the image.

    A view when the rectangle lies inside the image, else one copy (cv2.copyMakeBorder).
    """
    H, W = arr.shape[:2]
    xa, xb, ya, yb = max(x0, 0), min(x0 + cw, W), max(y0, 0), min(y0 + ch, H)
    if xa >= xb or ya >= yb:  # no overlap at all (not reachable with jitter < 0.5)
        return np.zeros((ch, cw) + arr.shape[2:], arr.dtype)
    pads = (ya - y0, y0 + ch - yb, xa - x0, x0 + cw - xb)  # top, bottom, left, right
    inner = arr[ya:yb, xa:xb]
    if not any(pads):
        return inner
    return cv2.copyMakeBorder(inner, *pads, cv2.BORDER_CONSTANT, value=0)


def fast_crop_resize(arr: np.ndarray, offsets, size, fix_off_by_one: bool = False,
                     interpolation: int = cv2.INTER_LINEAR, source_size=None) -> np.ndarray:
    """`crop_resize` for a uint8 array (H, W[, C]): the same crop rectangle, black outside the image.

    size: S or (w, h). Returns (h, w[, C]) uint8. source_size: None, or (W, H) of the image when
    `arr` is already its 2x reduction (`halve`, or a decoder's cv2.IMREAD_REDUCED_*_2); offsets are
    always in source pixels. cv2.resize of the padded rectangle is about 2x faster than an affine
    warp of the whole image, with the same sample positions (`crop_affine`).
    """
    W, H = source_size if source_size is not None else (arr.shape[1], arr.shape[0])
    w, h = _wh(size)
    if source_size is None and shrinks_by_half(offsets, W, H, (w, h)):
        arr, source_size = halve(arr), (W, H)
    if source_size is not None:
        m = crop_affine(offsets, W, H, (w, h), fix_off_by_one, level=1)
        return cv2.warpAffine(arr, m, (w, h), flags=interpolation | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.resize(padded_crop(arr, *crop_rect(offsets, W, H, fix_off_by_one)), (w, h), interpolation=interpolation)


def hsv_luts(dhue: float, dsat: float, dexp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 lookup tables (256,) for the H, S and V channels of cv2's full-range HSV (H in 0..255)."""
    i = np.arange(256, dtype=np.float64)
    h = i + dhue * 255.0
    h = np.where(h > 255, h - HUE_WRAP, h)
    h = np.where(h < 0, h + HUE_WRAP, h)
    return tuple(np.clip(np.rint(x), 0, 255).astype(np.uint8) for x in (h, i * dsat, i * dexp))


def fast_distort(img: np.ndarray, dhue: float, dsat: float, dexp: float, bgr: bool = False) -> np.ndarray:
    """`distort_image` for a uint8 array (H, W, 3) with cv2 full-range HSV and lookup tables -> RGB (H, W, 3).

    img is RGB, or BGR with bgr=True (the fast path's order: the conversion to RGB then costs nothing
    extra, HSV -> RGB does it). One 3-channel lookup table instead of split, three LUTs and merge.
    """
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL if bgr else cv2.COLOR_RGB2HSV_FULL)
    hsv = cv2.LUT(hsv, np.stack(hsv_luts(dhue, dsat, dexp), axis=-1).reshape(256, 1, 3))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def zero_outside(img: np.ndarray, u0: int, u1: int, v0: int, v1: int) -> np.ndarray:
    """Set img (h, w, ...) to 0 outside the window [u0, u1) x [v0, v1), in place; returns img."""
    img[:v0] = 0
    img[v1:] = 0
    img[:, :u0] = 0
    img[:, u1:] = 0
    return img


def fast_augment(img: np.ndarray, mask: np.ndarray | None, background: np.ndarray | None, offsets, size,
                 fix_off_by_one: bool = False, source_size=None) -> np.ndarray:
    """Background replacement and crop / scale jitter at the output size (design §6.1 steps 2-3).

    img (H, W, 3) and mask (H, W) uint8 (object where mask > 127); background (h, w, 3) uint8 of the
    output size, or None to keep the image's own. source_size: (W, H) when img and mask are 2x
    reductions (see `fast_crop_resize`). Returns (h, w, 3) uint8; outside the source image it is
    black, as the Pillow path's crop padding.
    """
    W, H = source_size if source_size is not None else (img.shape[1], img.shape[0])
    out = fast_crop_resize(img, offsets, size, fix_off_by_one, source_size=source_size)
    if background is None:
        return out
    warped = fast_crop_resize(mask, offsets, size, fix_off_by_one, source_size=source_size)
    not_object = cv2.compare(warped, MASK_THRESHOLD, cv2.CMP_LE)  # 255 where the background shows
    cv2.copyTo(background, not_object, out)  # in place: `out` is ours
    return zero_outside(out, *inside_rect(crop_affine(offsets, W, H, size, fix_off_by_one), W, H, size))


def background_window(pool_image: np.ndarray, rng: np.random.Generator, size) -> np.ndarray:
    """A random window (at least half of each side) of a pooled background, resized to `size`, maybe mirrored.

    pool_image (H, W, 3) uint8; returns (h, w, 3) uint8, a new array. Draws, in order: window width,
    height, left, top, mirror bit.
    """
    H, W = pool_image.shape[:2]
    w, h = _wh(size)
    ww, wh = int(rng.integers(W // 2, W + 1)), int(rng.integers(H // 2, H + 1))
    x0, y0 = int(rng.integers(0, W - ww + 1)), int(rng.integers(0, H - wh + 1))
    out = cv2.resize(pool_image[y0:y0 + wh, x0:x0 + ww], (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.flip(out, 1) if rng.integers(2) else out  # cv2.flip: 40x faster than a strided numpy copy


def write_image(path, img: np.ndarray, params=()) -> None:
    """Encode a cv2 image (BGR (H, W, 3) or grey (H, W), uint8) by the path's extension and write it
    atomically (linemod_format.write_bytes): an interrupted write never leaves half an image."""
    ok, buf = cv2.imencode(Path(path).suffix, img, list(params))
    if not ok:
        raise OSError(f"{path}: cv2.imencode failed")
    write_bytes(path, buf.tobytes())
