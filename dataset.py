"""LINEMOD data: label files, path derivation, image lists, training/test samples, multi-scale batches.

Spec design §3 (formats and layout) and §6 (sampling and augmentation). The image-level steps live in
`image.py` and the image-file readers in `image_files.py`; this module puts them together in the
original's order.

A sample is `(image, target)`:
    image  float32 (3, S, S) (test: (3, H, W) of `shape`), RGB in [0, 1], no normalisation;
    target float64 (MAX_OBJECTS * 21,): the label rows of design §3.1, zero padded. An empty slot
    has x0 == 0 (design §3.1); an augmented centroid clamped to x0 = 0 reads as "no object", as in
    the original (D18, preserved).

Randomness: every draw of a training sample comes from `np.random.default_rng([seed, epoch,
index])`, and every batch size from `[seed, epoch, batch, 2]`, so results do not depend on the
number of loader workers or distributed ranks.
"""
from __future__ import annotations

import math
import multiprocessing
from multiprocessing.context import get_spawning_popen
import os
import warnings
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

import image as im
import image_files
from errors import ImageError, InputError
from linemod_format import (IM_HEIGHT, IM_WIDTH, MAX_OBJECTS, NUM_KEYPOINTS, from_occlusion_order, label_path,
                            mask_path, occlusion_label_path, read_label_rows, read_list, write_label_rows)
from utils import LINEMOD_OBJECTS

# design §6.1: hard-coded augmentation constants (the cfg's jitter/hue/saturation/exposure are ignored)
JITTER, HUE, SATURATION, EXPOSURE = 0.2, 0.1, 1.5, 1.5
# design §6.3: multi-object sample
MULTI_JITTER = 0.1
MAX_SHIFT_PX = 80
MAX_OVERLAP = 0.2  # an extra object is pasted if < 20% of its mask overlaps the union
MAX_PASTE_TRIES = 50  # the original retries forever; we give up on that extra object
# design §6.5: multi-scale training; rows (seen < k*N, U{lo..hi} or None = the default size)
DEFAULT_SIZE = 416
SIZE_STEP = 32
SCALE_TABLES = {
    "single": ((10, None), (20, (13, 20)), (30, (12, 21)), (40, (11, 22)), (50, (10, 23)),
               (60, (9, 24)), (70, (8, 25)), (math.inf, (7, 26))),
    "multi": ((20, None), (40, (13, 16)), (60, (12, 17)), (80, (11, 18)), (math.inf, (10, 19))),
}
# design §6.3 step 1: the extra objects pasted around each main object
EXTRA_OBJECTS = {
    "ape": ("can", "cat", "duck", "glue", "holepuncher", "iron", "phone"),
    "benchvise": ("ape", "can", "cat", "driller", "duck", "glue", "holepuncher"),
    "cam": ("ape", "benchvise", "can", "cat", "driller", "duck", "holepuncher"),
    "can": ("ape", "benchvise", "cat", "driller", "duck", "eggbox", "holepuncher"),
    "cat": ("ape", "can", "duck", "glue", "holepuncher", "eggbox", "phone"),
    "driller": ("ape", "benchvise", "can", "cat", "duck", "glue", "holepuncher"),
    "duck": ("ape", "can", "cat", "eggbox", "glue", "holepuncher", "phone"),
    "eggbox": ("ape", "benchvise", "cam", "can", "cat", "duck", "glue", "holepuncher"),
    "glue": ("ape", "benchvise", "cam", "driller", "duck", "eggbox", "holepuncher"),
    "holepuncher": ("benchvise", "cam", "can", "cat", "driller", "duck", "eggbox"),
    "iron": ("ape", "benchvise", "can", "cat", "driller", "duck", "glue"),
    "lamp": ("ape", "benchvise", "can", "driller", "eggbox", "holepuncher", "iron"),
    "phone": ("ape", "benchvise", "cam", "can", "driller", "duck", "holepuncher"),
}
assert set(EXTRA_OBJECTS) == set(LINEMOD_OBJECTS)

PROCEDURAL_MIN_SIZE = 64  # smaller images get a 64 px procedural background, resized down
_BG_STREAM, _SIZE_STREAM = 1, 2  # extra seed words that separate the random streams
FAST_POOL = 64  # procedural backgrounds in the fast path's pool (0.9 MB each)
# design D49: the fast path draws file backgrounds from a pool of decoded images that slides
# through a seeded order of the files, so that a file is decoded once per process and used for
# several samples (a JPEG decode costs about as much as the rest of a sample)
FILE_POOL = 64  # decoded background files held per process (0.9 MB each at 640 x 480)
FILE_POOL_SLIDE = 16  # files that enter (and leave) the pool each epoch: each stays 4 epochs
FILE_POOL_MAX_SIDE = 1024  # larger background files are shrunk to this longer side when decoded


# --------------------------------------------------------------------------------------------
# Label files (the formats live in linemod_format.py)
# --------------------------------------------------------------------------------------------

read_truths = read_label_rows  # the original's names
write_truths = write_label_rows


def pad_targets(rows: np.ndarray, max_objects: int = MAX_OBJECTS) -> np.ndarray:
    """Label rows (n, w) -> the flat zero-padded target (max_objects * w,) float64; extra rows dropped."""
    rows = np.asarray(rows, dtype=np.float64)
    out = np.zeros((max_objects, rows.shape[1]), dtype=np.float64)
    n = min(len(rows), max_objects)
    out[:n] = rows[:n]
    return out.reshape(-1)


# --------------------------------------------------------------------------------------------
# Image lists and folders
# --------------------------------------------------------------------------------------------

def object_name(img_path) -> str:
    """The object of a LINEMOD image: its grand-parent folder (`LINEMOD/ape/JPEGImages/x.jpg` -> 'ape')."""
    return os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(os.fspath(img_path)))))


# --------------------------------------------------------------------------------------------
# Decoded images held in RAM (--cache-images, D67) and tensors
# --------------------------------------------------------------------------------------------

CACHE_RAM_SHARE = 0.5  # --cache-images may take at most this share of the memory free when it starts


@dataclass(frozen=True)
class DecodedImage:
    """A training image decoded once (--cache-images, design D67): `full` (H, W, 3) uint8 BGR, `half`
    its 2x reduction as the JPEG decoder makes it (None for other formats: `image.halve` then), `mask`
    (H, W) uint8 or None. The arrays are read-only: the samples made from them never write into them."""
    full: np.ndarray
    half: np.ndarray | None
    mask: np.ndarray | None

    def image(self, halved: bool) -> np.ndarray:
        """What `image_files.decode_rgb(data, path, halved=halved, bgr=True)` returns for this file, undecoded."""
        if not halved:
            return self.full
        return self.half if self.half is not None else im.halve(self.full)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.full, self.half, self.mask) if a is not None)


def decode_once(path, mask: bool = True, halves: bool = True) -> DecodedImage:
    """Decode a training image (and its mask) for the cache, with the uncached fast path's readers and
    checks, so that its pixels and its errors are the same. halves: keep a JPEG's 2x reduction too
    (the single-object fast path decodes at half size when the crop shrinks 2x, D49)."""
    path = os.fspath(path)
    data, size = image_files.read_sized(path)
    full = image_files.decode_rgb(data, path, bgr=True)
    image_files.check_decoded_size(path, full, size)
    jpeg = data[:2] == image_files.JPEG_SOI
    half = image_files.decode_rgb(data, path, halved=True, bgr=True) if halves and jpeg else None
    arrays = (full, half, image_files.read_gray(mask_path(path), size) if mask else None)
    for a in arrays:
        if a is not None:
            a.setflags(write=False)
    return DecodedImage(*arrays)


def decoded_bytes_estimate(paths: Sequence[str], halves: bool) -> int:
    """The bytes `decode_once` will hold for `paths`, from their headers: BGR image, JPEG half, mask."""
    total = 0
    for path in paths:
        w, h = image_files.image_size(path)
        total += w * h * 4 + (((w + 1) // 2) * ((h + 1) // 2) * 3 if halves else 0)
    return total


def free_memory_bytes() -> int | None:
    """Memory available to this process now (Linux: MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def to_tensor(img) -> torch.Tensor:
    """PIL RGB image or uint8 array (H, W, 3) -> float32 (3, H, W) in [0, 1] (uint8 / 255)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    out = np.empty((arr.shape[2],) + arr.shape[:2], np.float32)
    # per channel plane (cv2.split is contiguous) into one float32 buffer: half the time of a
    # transposed copy then a float division, the same values; numpy beats torch's permute + float
    planes = cv2.split(arr) if 1 < arr.shape[2] <= 4 else [arr[:, :, c] for c in range(arr.shape[2])]
    for c, plane in enumerate(planes):
        np.divide(plane, np.float32(255.0), out=out[c], dtype=np.float32)
    return torch.from_numpy(out)


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    """img (H, W, C) uint8, or a copy area-resized so that its longer side is max_side."""
    H, W = img.shape[:2]
    if max(H, W) <= max_side:
        return img
    scale = max_side / max(H, W)
    size = (max(round(W * scale), 1), max(round(H * scale), 1))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _size_wh(size) -> tuple[int, int]:
    if np.isscalar(size):
        return int(size), int(size)
    w, h = size
    return int(w), int(h)


# --------------------------------------------------------------------------------------------
# Multi-object training sample (design §6.3)
# --------------------------------------------------------------------------------------------

@dataclass
class MultiObjectSample:
    """A composed image (PIL RGB, S x S), its label rows (n, 21) and each object's mask as pasted.

    masks: list of bool (S, S), one per label row (the main object first), before occlusion.
    """
    image: Image.Image
    labels: np.ndarray
    masks: list


def extra_objects(obj: str, available: Sequence[str]) -> list[str]:
    """The objects pasted around `obj` (design §6.3 table), restricted to `available`.

    For an object outside the LINEMOD table: every other available object, sorted.
    """
    available = set(available)
    if obj in EXTRA_OBJECTS:
        return [o for o in EXTRA_OBJECTS[obj] if o in available]
    return sorted(o for o in available if o != obj)


def _augment_object(img, mask, rng: np.random.Generator, size: int, *,
                    jitter: float, resample: str, fix_crop: bool, shift: bool, wrap: bool):
    """Crop jitter + resize (+ shift) + flip of an image and its mask, with the label parameters.

    img: PIL RGB, or a uint8 array (H, W, 3) for the cv2 path (any channel order); mask: PIL or
    uint8 (H, W). Both paths make the same draws, hence the same label transform.
    Returns (image (S, S, 3) uint8 array, mask (S, S) uint8, (sx, sy, dx, dy), flip).
    """
    arrays = isinstance(img, np.ndarray)
    ow, oh = (img.shape[1], img.shape[0]) if arrays else img.size
    offsets = im.draw_crop_offsets(rng, ow, oh, jitter)
    if arrays:
        img = im.fast_crop_resize(img, offsets, size, fix_crop)
        mask = im.fast_crop_resize(mask, offsets, size, fix_crop)
    else:
        img = np.asarray(im.crop_resize(img, offsets, size, resample, fix_crop))
        mask = np.asarray(im.crop_resize(mask, offsets, size, resample, fix_crop))
    shift_xy = (0, 0)
    if shift:
        shift_x = int(rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1))
        shift_xy = (shift_x, int(rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1)))
        img = im.shift_image(img, *shift_xy, wrap=wrap)
        mask = im.shift_image(mask, *shift_xy, wrap=wrap)
    flip = bool(int(rng.integers(1, 10001)) % 2)
    if flip:
        img, mask = im.flip_lr(img), im.flip_lr(mask)
    return img, mask, im.crop_label_params(offsets, ow, oh, shift_xy, size), flip


def _read_object(path, fast: bool, decoded: Mapping[str, DecodedImage] | None = None):
    """(image, mask) of a training image: PIL (the Pillow path) or uint8 BGR (H, W, 3) and (H, W) (cv2
    path; from `decoded` when it holds the file, D67)."""
    cached = decoded.get(path) if decoded else None
    if cached is not None:
        return cached.full, cached.mask
    if fast:
        img = image_files.decode_rgb(image_files.read_bytes(path), path, bgr=True)
        return img, image_files.read_gray(mask_path(path), (img.shape[1], img.shape[0]))
    img = image_files.load_image(path)
    return img, image_files.load_mask(mask_path(path), img.size)


def multi_object_sample(img_path, extra_paths: Mapping[str, Sequence[str]], size: int,
                        rng: np.random.Generator, background, *, jitter: float = MULTI_JITTER,
                        resample: str = im.DEFAULT_RESAMPLE, fix_crop: bool = False,
                        repro_label_bugs: bool = False, max_tries: int = MAX_PASTE_TRIES,
                        fast: bool = False, decoded: Mapping[str, DecodedImage] | None = None) -> MultiObjectSample:
    """The design §6.3 training sample: the main object plus non-overlapping extra objects on a background.

    img_path: main image (its object = grand-parent folder); extra_paths: object name -> its
    training image paths; size: S pixels; background: any-size RGB image (PIL or uint8 array);
    with fast, an (S, S, 3) uint8 array in BGR order.
    Main object: crop jitter, resize to S, shift by U{-80..80} px, flip. Extras (table of
    design §6.3, shuffled): crop jitter, resize, flip; pasted when < 20% of their mask (> 200) overlaps
    the union mask, else another image is drawn (at most `max_tries` per object, then it is left
    out). The main object is pasted again on top, then the background fills the rest.
    Labels: main file's rows, then each extra's first row; ranges recomputed.
    Default (bugs fixed): the shift pads with black (no wrap) and labels follow the flip
    (x -> 1 - x). `repro_label_bugs=True`: wrap-around shift, labels ignore the flip (D20).
    fast: the cv2 path (decode, crop and resize with cv2, arrays throughout, D63): the same draws,
    hence the same labels; `image` is then a uint8 BGR array (S, S, 3). decoded: path -> its arrays
    decoded once (the fast path's image cache, D67).
    """
    fixed = not repro_label_bugs
    S = int(size)
    main_img, main_mask = _read_object(img_path, fast, decoded)
    main_rows = read_label_rows(label_path(img_path))

    extras = extra_objects(object_name(img_path), [k for k, v in extra_paths.items() if len(v)])
    rng.shuffle(extras)

    img, mask, params, flip = _augment_object(main_img, main_mask, rng, S, jitter=jitter, resample=resample,
                                              fix_crop=fix_crop, shift=True, wrap=not fixed)
    main_m = mask > im.MASK_THRESHOLD
    main_img_arr = np.where(main_m[:, :, None], img, 0).astype(np.uint8)
    labels = [im.transform_labels(main_rows, *params, flip=flip and fixed, recompute_ranges=True)]
    masks = [main_m] * len(labels[0])
    union = main_m.copy()
    composite = main_img_arr.copy()

    for obj in extras:
        pool = extra_paths[obj]
        for _ in range(max_tries):
            path = pool[int(rng.integers(len(pool)))]
            x_img, x_mask = _read_object(path, fast, decoded)
            x_rows = read_label_rows(label_path(path))[:1]
            if fast:
                x_img = np.where(im.binary_mask(x_mask), x_img, 0).astype(np.uint8)
            else:
                x_img = Image.fromarray(np.where(im.binary_mask(x_mask), np.asarray(x_img), 0).astype(np.uint8))
            a_img, a_mask, x_params, x_flip = _augment_object(x_img, x_mask, rng, S, jitter=jitter, resample=resample,
                                                              fix_crop=fix_crop, shift=False, wrap=False)
            new = a_mask > im.OVERLAP_MASK_THRESHOLD
            if not new.any() or len(x_rows) == 0:
                continue
            if (new & union).sum() / new.sum() < MAX_OVERLAP:
                obj_m = a_mask > im.MASK_THRESHOLD
                union |= obj_m
                composite[obj_m] = a_img[obj_m]
                labels.append(im.transform_labels(x_rows, *x_params, flip=x_flip and fixed, recompute_ranges=True))
                masks.append(obj_m)
                break

    composite[main_m] = main_img_arr[main_m]
    if fast:
        out = np.where(union[:, :, None], composite, background)
    else:
        out = im.replace_background(composite, union.astype(np.uint8) * 255, background, resample)
    return MultiObjectSample(out, np.concatenate(labels, axis=0), masks)


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------

def _shared_counter(value: int = 0):
    """An int in shared memory that loader workers (fork or spawn) inherit: `.value`."""
    return multiprocessing.RawValue("q", value)


class PoseDataset(Dataset):
    """LINEMOD images with their labels, for training (design §6.1) or testing (design §6.2).

    source: a list file (see `read_list`) or a sequence of image paths.
    shape: the test size (w, h) or S (default 416); also the training size when an int index is given.
    train: augment (background from the mask, crop/scale jitter, HSV) and return S x S images.
    transform: optional callable on the PIL image before conversion to a tensor (may return a tensor).
    bg_dir / bg_file_names: background pool (a folder searched recursively, e.g. VOC2012
    JPEGImages, or a list of files); without one, `image.procedural_background` seeded per sample,
    or, with `procedural_pool=K`, a uniform pick among K procedural backgrounds seeded by
    (seed, k) and cached per process (about 2x faster loading; K * 0.9 MB per worker at 640x480).
    seed, epoch: the random stream of sample i is default_rng([seed, epoch, i]); `set_epoch`.
    resample: 'bicubic' (default) or 'nearest' (Pillow < 7, strict reproduction), design §6.4.
    input_filter: test images go through this filter ('none', 'median:K', 'gauss:SIGMA') at the size
        they are read, before they are resized (`image.input_filter`, D69); training samples never do.
    fix_crop: crop sw x sh instead of the original's (sw-1) x (sh-1) (D19).
    fast: the cv2 training path (`fast_train_sample`): the same draws and label transform, about
    10x less work per sample; backgrounds come from a pool of `procedural_pool` (default
    FAST_POOL) procedural images, or from a pool of FILE_POOL decoded `bg_dir` files that slides
    through them over the epochs (design D49), as random windows at the output size.
    bg_prob: probability that a training sample gets a new background (the original: 1).
    skip_bad: a missing/unreadable file or a bad label line gives a warning naming it, counts in
    `bad_samples`, and the sample is replaced by the next good index; otherwise it raises.
    shuffle: shuffle the list once at construction with `seed` (the original's default is
    applied by the sampler instead; kept for the original's signature).

    `dataset[i]` (test or fixed size) or `dataset[(i, S)]` (from MultiScaleBatchSampler) ->
    (image float32 (3, H, W) in [0, 1], target float64 (max_num_gt * 21,)).
    """

    def __init__(self, source, shape=DEFAULT_SIZE, *, train: bool = False, transform: Callable | None = None,
                 bg_dir=None, bg_file_names: Sequence[str] | None = None, seed: int = 0, epoch: int = 0,
                 resample: str = im.DEFAULT_RESAMPLE, fix_crop: bool = False, skip_bad: bool = False,
                 shuffle: bool = False, root=None, procedural_pool: int = 0,
                 jitter: float = JITTER, hue: float = HUE,
                 saturation: float = SATURATION, exposure: float = EXPOSURE,
                 max_num_gt: int = MAX_OBJECTS, num_keypoints: int = NUM_KEYPOINTS,
                 fast: bool = False, bg_prob: float = 1.0, input_filter: str = "none"):
        if isinstance(source, (str, os.PathLike)):
            self.source = os.fspath(source)
            self.paths = read_list(source, root)
        else:
            self.source = "<image list>"
            self.paths = [os.fspath(p) for p in source]
            if not self.paths:
                raise ValueError("the image list is empty")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, found {seed}")
        im.resample_filter(resample)  # validate early
        self.shape = _size_wh(shape)
        self.train, self.transform = train, transform
        self.seed, self.epoch = int(seed), int(epoch)
        self.resample, self.fix_crop, self.skip_bad = resample, fix_crop, skip_bad
        im.parse_input_filter(input_filter)  # validate early
        self.input_filter = input_filter
        self.jitter, self.hue, self.saturation, self.exposure = jitter, hue, saturation, exposure
        self.max_num_gt = max_num_gt
        self.label_width = 2 * num_keypoints + 3
        if shuffle:
            order = np.random.default_rng([self.seed]).permutation(len(self.paths))
            self.paths = [self.paths[i] for i in order]
        if bg_file_names is not None:
            self.bg_files = [os.fspath(p) for p in bg_file_names]
        else:
            self.bg_files = image_files.list_images(bg_dir) if bg_dir is not None else []
        self.fast = bool(fast)
        if not 0.0 <= bg_prob <= 1.0:
            raise ValueError(f"bg_prob must be in [0, 1], found {bg_prob}")
        self.bg_prob = float(bg_prob)
        self.procedural_pool = int(procedural_pool) or (FAST_POOL if self.fast else 0)
        self._bg_cache: dict = {}
        # the fast path's file pool (design D49): a seeded order of the files, and the decoded ones
        self._file_order = np.random.default_rng([self.seed, _BG_STREAM]).permutation(len(self.bg_files))
        self._file_cache: dict[int, np.ndarray] = {}
        self._bad: set[int] = set()
        self._bad_count = _shared_counter()
        self.decoded: dict[str, DecodedImage] = {}  # path -> its decoded arrays (`cache_images`, D67)
        self._check_files()

    # -- bookkeeping ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the random streams of this epoch (call before building the epoch's loader)."""
        self.epoch = int(epoch)

    @property
    def bad_samples(self) -> int:
        """How many bad samples were met so far (up-front checks and loads, in all loader workers)."""
        return int(self._bad_count.value)

    def __getstate__(self):
        state = self.__dict__.copy()
        if get_spawning_popen() is None:  # a plain pickle or deepcopy: a snapshot of the counter
            state["_bad_count"] = self.bad_samples
        return state

    def __setstate__(self, state):
        if isinstance(state["_bad_count"], int):
            state["_bad_count"] = _shared_counter(state["_bad_count"])
        self.__dict__.update(state)

    def files_of(self, index: int) -> dict[str, str]:
        """The files sample `index` reads: image, label and (training) mask."""
        path = self.paths[index]
        files = {"image": path, "label file": label_path(path)}
        if self.train:
            files["mask"] = mask_path(path)
        return files

    def _check_files(self) -> None:
        """Check that every file exists and is a regular file (a FIFO would hang a reader), so that
        errors come before training starts."""
        missing = []
        error = FileNotFoundError  # the kind of the first problem: missing, or not a regular file
        for i in range(len(self.paths)):
            try:
                files = self.files_of(i)
            except ValueError as e:
                missing.append((i, str(e)))
                continue
            for kind, f in files.items():
                if not os.path.isfile(f):
                    there = os.path.exists(f)
                    if not missing and there:
                        error = ImageError
                    what = "is not a regular file (a folder, FIFO or device)" if there else "not found"
                    missing.append((i, f"{f}: {kind} {what} (sample {i} of {self.source})"))
                    break
        if not missing:
            return
        if not self.skip_bad:
            more = f" (and {len(missing) - 1} more samples with missing files)" if len(missing) > 1 else ""
            raise error(missing[0][1] + more)
        for i, msg in missing:
            self._mark_bad(i, msg)
        if len(missing) == len(self.paths):
            raise FileNotFoundError(f"{self.source}: every sample has a missing file, e.g. {missing[0][1]}")

    def _mark_bad(self, index: int, reason) -> None:
        self._bad.add(index)
        self._bad_count.value += 1  # no lock (works with fork and spawn workers); bad samples are rare
        warnings.warn(f"skipping bad sample {index}: {reason}", stacklevel=3)

    # -- samples ----------------------------------------------------------------------------
    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            index, size = int(item[0]), item[1]
        else:
            index, size = int(item), None
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        index %= n
        for attempt in range(n):
            j = (index + attempt) % n
            if j in self._bad:
                continue
            try:
                return self._load(j, size)
            except (OSError, ValueError) as e:
                if not self.skip_bad:
                    raise
                self._mark_bad(j, e)
        raise RuntimeError(f"{self.source}: every sample is bad ({self.bad_samples} bad samples)")

    def _load(self, index: int, size):
        if self.train:
            sample = self.fast_train_sample if self.fast else self.train_sample
            img, rows = sample(index, _size_wh(size if size is not None else self.shape))
        else:
            img, rows = self.test_sample(index, _size_wh(size) if size is not None else self.shape)
        if self.transform is not None:
            img = self.transform(img)
        tensor = img if isinstance(img, torch.Tensor) else to_tensor(img)
        return tensor, torch.from_numpy(pad_targets(rows, self.max_num_gt))

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of training sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def background(self, index: int, rng: np.random.Generator, size: tuple[int, int]):
        """A background for sample `index`: a uniform pick from the pool, or procedural of `size` (w, h) or more."""
        if self.bg_files:
            return image_files.load_image(self.bg_files[int(rng.integers(len(self.bg_files)))], "background image")
        # procedural_background needs >= 36 px a side; replace_background resizes it to the image
        w, h = max(size[0], PROCEDURAL_MIN_SIZE), max(size[1], PROCEDURAL_MIN_SIZE)
        if self.procedural_pool <= 0:
            return im.procedural_background(np.random.default_rng([self.seed, self.epoch, index, _BG_STREAM]), w, h)
        key = (int(rng.integers(self.procedural_pool)), w, h)
        if key not in self._bg_cache:
            self._bg_cache[key] = im.procedural_background(np.random.default_rng([self.seed, key[0], _BG_STREAM]), w, h)
        return self._bg_cache[key]

    def pool_background(self, k: int, bgr: bool = False) -> np.ndarray:
        """Procedural background k of the pool (IM_HEIGHT / 2, IM_WIDTH / 2, 3) uint8 RGB (BGR for the
        fast path, whose images stay in cv2's order until the colour step), cached in this process."""
        key = ("pool", k, bgr)
        if key not in self._bg_cache:  # made at 640 x 480, kept at half size: windows of it are resized anyway
            rng = np.random.default_rng([self.seed, k, _BG_STREAM])
            pool = cv2.pyrDown(im.procedural_background(rng, IM_WIDTH, IM_HEIGHT))
            self._bg_cache[key] = cv2.cvtColor(pool, cv2.COLOR_RGB2BGR) if bgr else pool
        return self._bg_cache[key]

    def warm_background_pool(self) -> None:
        """Make the fast path's background pool of this epoch now, so that loader workers inherit it (fork).

        `make_train_loader` calls it after `set_epoch`; with files, only the FILE_POOL_SLIDE files
        new to the epoch are decoded.
        """
        if not self.fast:
            return
        if self.bg_files:
            for k in range(self.file_pool_size):
                self.file_background(self.file_pool_slot(k))
        else:
            for k in range(self.procedural_pool):
                self.pool_background(k, bgr=True)

    cache_halves = True  # the single-object fast path decodes at half size when the crop shrinks 2x (D49)

    def cache_paths(self) -> list[str]:
        """The image files the fast path reads (the multi-object sample adds its extra objects')."""
        return [p for i, p in enumerate(self.paths) if i not in self._bad]

    def cache_images(self) -> int:
        """Decode every training image the fast path reads, and its mask, into RAM now (design D67):
        loader workers forked after this share the read-only arrays (spawned workers get a copy).
        The samples are the same, pixel for pixel. Returns the bytes held. InputError, before decoding
        anything, when they need more than CACHE_RAM_SHARE of the free memory; a bad file raises as
        a sample would (with skip_bad: a warning, and the sample is skipped)."""
        if not (self.train and self.fast):
            raise ValueError("the image cache serves the fast path's training samples (train=True, fast=True)")
        paths = [p for p in self.cache_paths() if p not in self.decoded]
        need, free = decoded_bytes_estimate(paths, self.cache_halves), free_memory_bytes()
        if free is not None and need > CACHE_RAM_SHARE * free:
            raise InputError(f"{self.source}: caching its {len(paths)} training images decoded needs "
                             f"{need / 2**30:.2f} GiB, more than {CACHE_RAM_SHARE:.0%} of the {free / 2**30:.2f} GiB "
                             "of free memory; train without the image cache")
        index = {p: i for i, p in enumerate(self.paths)}
        for path in paths:
            try:
                self.decoded[path] = decode_once(path, halves=self.cache_halves)
            except (OSError, ValueError) as e:
                if not self.skip_bad or path not in index:
                    raise
                self._mark_bad(index[path], e)
        return sum(d.nbytes for d in self.decoded.values())

    @property
    def file_pool_size(self) -> int:
        """Background files in the fast path's pool: FILE_POOL, or all files when there are fewer."""
        return min(FILE_POOL, len(self.bg_files))

    def file_pool_slot(self, k: int) -> int:
        """The index in `bg_files` of slot k of this epoch's pool.

        The pool is a window of FILE_POOL files of a permutation seeded by `seed` (cyclic), moved by
        FILE_POOL_SLIDE files per epoch: every file is used, each for FILE_POOL / FILE_POOL_SLIDE epochs.
        """
        return int(self._file_order[(self.epoch * FILE_POOL_SLIDE + k) % len(self._file_order)])

    def file_background(self, j: int) -> np.ndarray:
        """Background file j decoded (H, W, 3) uint8 RGB, longer side <= FILE_POOL_MAX_SIDE, cached.

        The cache is bounded by the pool: before a file is added to a full cache, the files that
        have left this epoch's pool are dropped (so at most FILE_POOL + 1 are held).
        """
        cache = self._file_cache
        if j not in cache:
            if len(cache) >= self.file_pool_size:
                pool = {self.file_pool_slot(k) for k in range(self.file_pool_size)}
                for old in [i for i in cache if i not in pool]:
                    del cache[old]
            data = image_files.read_bytes(self.bg_files[j], "background image")
            img = image_files.decode_rgb(data, self.bg_files[j], "background image", bgr=True)
            cache[j] = _shrink(img, FILE_POOL_MAX_SIDE)
        return cache[j]

    def fast_background(self, index: int, size: tuple[int, int], always: bool = False) -> np.ndarray | None:
        """The fast path's background (h, w, 3) uint8 for sample `index`, or None (keep the image's own).

        Drawn from its own stream, so the sample's main stream (crop, flip bit, HSV) is the Pillow path's.
        always: a background whatever bg_prob (the multi-object sample masks its image).
        """
        rng = np.random.default_rng([self.seed, self.epoch, index, _BG_STREAM])
        if not always and self.bg_prob < 1.0 and rng.random() >= self.bg_prob:
            return None
        if self.bg_files:
            pool_image = self.file_background(self.file_pool_slot(int(rng.integers(self.file_pool_size))))
        else:
            pool_image = self.pool_background(int(rng.integers(self.procedural_pool)), bgr=True)
        return im.background_window(pool_image, rng, size)  # BGR, as the fast path's image

    def fast_train_sample(self, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The design §6.1 sample by the cv2 path: (uint8 (h, w, 3), label rows (n, 21)).

        Same random draws as `train_sample` without a pool, hence the same crop and label transform.
        """
        path = self.paths[index]
        rng = self.rng(index)
        cached = self.decoded.get(path)
        if cached is None:
            data, (w0, h0) = image_files.read_sized(path)
        else:
            h0, w0 = cached.full.shape[:2]
        rows = read_truths(label_path(path), self.label_width)
        bg = self.fast_background(index, size)
        offsets = im.draw_crop_offsets(rng, w0, h0, self.jitter)
        halved = im.shrinks_by_half(offsets, w0, h0, size)  # then decode at half size (D49)
        if cached is None:
            img = image_files.decode_rgb(data, path, halved=halved, bgr=True)  # BGR until the colour step
            if not halved:
                image_files.check_decoded_size(path, img, (w0, h0))
            mask = image_files.read_gray(mask_path(path), (w0, h0)) if bg is not None else None
        else:
            img, mask = cached.image(halved), cached.mask if bg is not None else None
        if halved and mask is not None:
            mask = im.halve(mask)
        out = im.fast_augment(img, mask, bg, offsets, size, self.fix_crop, source_size=(w0, h0) if halved else None)
        rng.integers(1, 10001)  # the flip bit the original draws and never applies (D20)
        out = im.fast_distort(out, *im.draw_hsv(rng, self.hue, self.saturation, self.exposure), bgr=True)  # -> RGB
        return out, im.transform_labels(rows, *im.crop_label_params(offsets, w0, h0))

    def train_sample(self, index: int, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
        """The design §6.1 sample: (PIL RGB of `size` (w, h), label rows (n, 21))."""
        path = self.paths[index]
        rng = self.rng(index)
        img = image_files.load_image(path)
        mask = image_files.load_mask(mask_path(path), img.size)
        rows = read_label_rows(label_path(path), self.label_width)
        bg = self.background(index, rng, img.size)
        img = im.replace_background(img, mask, bg, self.resample)
        offsets = im.draw_crop_offsets(rng, img.width, img.height, self.jitter)
        out = im.crop_resize(img, offsets, size, self.resample, self.fix_crop)
        rng.integers(1, 10001)  # design §6.1 step 4: a flip bit is drawn but never applied (D20)
        out = im.distort_image(out, *im.draw_hsv(rng, self.hue, self.saturation, self.exposure))
        return out, im.transform_labels(rows, *im.crop_label_params(offsets, img.width, img.height))

    def label_rows(self, index: int) -> np.ndarray:
        """The label rows (n, 21) of test sample `index` (design §3.1): its `labels/` file. The
        occlusion test set reads another file through this hook (`OcclusionTestSet`)."""
        return read_label_rows(label_path(self.paths[index]), self.label_width)

    def test_sample(self, index: int, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
        """The design §6.2 sample, keeping all 21 numbers of every object (D17)."""
        path = self.paths[index]
        rows = self.label_rows(index)
        img = image_files.load_image(path)
        if self.input_filter != "none":
            img = Image.fromarray(im.input_filter(np.asarray(img), self.input_filter))
        if img.size != size:
            img = img.resize(size, im.resample_filter(self.resample))
        return img, rows


listDataset = PoseDataset  # the original's name


class OcclusionTestSet(PoseDataset):
    """Test scenes of one object (design §3.4, §9.6): the images of its test list, its label rows from
    `<obj>/labels_occlusion/`, re-ordered to the design §9.2 corner order unless reorder=False.

    `dataset[i]` -> (image float32 (3, H, W), target float64 (50*21,)) like the single-object test
    set: only the label file and the corner order differ (`label_rows`).
    """

    def __init__(self, source, obj: str, shape, reorder: bool = True, **kw):
        self.obj, self.reorder = obj, reorder
        super().__init__(source, shape, train=False, **kw)

    def files_of(self, index: int) -> dict[str, str]:
        path = self.paths[index]
        return {"image": path, "label file": occlusion_label_path(path, self.obj)}

    def label_rows(self, index: int) -> np.ndarray:
        rows = read_label_rows(occlusion_label_path(self.paths[index], self.obj), self.label_width)
        if self.reorder and len(rows):
            rows = np.stack([from_occlusion_order(r) for r in rows])
        return rows


class MultiObjectDataset(PoseDataset):
    """Training images of a main object composed with extra objects (design §6.3).

    extra_paths: object name -> its training image paths (the original reads
    `LINEMOD/<obj>/train.txt`; see `linemod_train_lists`). repro_label_bugs: see
    `multi_object_sample`. Test mode is the single-object test sample.
    """

    def __init__(self, source, extra_paths: Mapping[str, Sequence[str]], shape=DEFAULT_SIZE, *,
                 repro_label_bugs: bool = False, jitter: float = MULTI_JITTER, **kw):
        self.extra_paths = {k: [os.fspath(p) for p in v] for k, v in extra_paths.items()}
        self.repro_label_bugs = repro_label_bugs
        super().__init__(source, shape, jitter=jitter, **kw)
        for obj, paths in self.extra_paths.items():
            for p in paths:
                for kind, f in (("image", p), ("mask", mask_path(p)), ("label file", label_path(p))):
                    if not os.path.exists(f):
                        raise FileNotFoundError(f"{f}: {kind} of extra object {obj!r} not found")

    cache_halves = False  # the composition decodes its objects in full

    def cache_paths(self) -> list[str]:
        extras = [p for paths in self.extra_paths.values() for p in paths]
        return list(dict.fromkeys(super().cache_paths() + extras))

    def train_sample(self, index: int, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
        if size[0] != size[1]:
            raise ValueError(f"the multi-object sample is square; found size {size}")
        rng = self.rng(index)
        bg = self.background(index, rng, size)
        s = multi_object_sample(self.paths[index], self.extra_paths, size[0], rng, bg, jitter=self.jitter,
                                resample=self.resample, fix_crop=self.fix_crop,
                                repro_label_bugs=self.repro_label_bugs)
        return s.image, s.labels

    def fast_train_sample(self, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The design §6.3 sample by the cv2 path (D63): the same draws and labels as `train_sample`,
        a pooled background window (its own stream), then the fast recipe's HSV step -> RGB."""
        if size[0] != size[1]:
            raise ValueError(f"the multi-object sample is square; found size {size}")
        rng = self.rng(index)
        bg = self.fast_background(index, size, always=True)
        s = multi_object_sample(self.paths[index], self.extra_paths, size[0], rng, bg, jitter=self.jitter,
                                resample=self.resample, fix_crop=self.fix_crop,
                                repro_label_bugs=self.repro_label_bugs, fast=True, decoded=self.decoded)
        out = im.fast_distort(s.image, *im.draw_hsv(rng, self.hue, self.saturation, self.exposure), bgr=True)
        return out, s.labels


def linemod_train_lists(linemod_dir, names: Sequence[str] | None = None,
                        list_name: str = "train.txt") -> dict[str, list[str]]:
    """object name -> image paths of `<linemod_dir>/<obj>/train.txt`, for every object that has one."""
    linemod_dir = os.fspath(linemod_dir)
    names = sorted(os.listdir(linemod_dir)) if names is None else names
    out = {}
    for obj in names:
        lst = os.path.join(linemod_dir, obj, list_name)
        if os.path.isfile(lst):
            out[obj] = read_list(lst, root=os.path.dirname(os.path.abspath(linemod_dir)))
    return out


# --------------------------------------------------------------------------------------------
# Multi-scale batches (design §6.5, D32)
# --------------------------------------------------------------------------------------------

def multiscale_size(seen: int, N: int, rng: np.random.Generator, mode: str = "single") -> int:
    """The input size S for a batch after `seen` images, with N = (num_samples // batch) * batch.

    design §6.5: the first row of the mode's table with seen < k*N gives 416 or 32 * U{lo..hi}.
    The draw (one rng.integers call) happens only on a random row.
    """
    if mode not in SCALE_TABLES:
        raise ValueError(f"unknown multi-scale mode {mode!r}; expected one of {sorted(SCALE_TABLES)} or 'fixed'")
    for k, bounds in SCALE_TABLES[mode]:
        if seen < k * N:
            if bounds is None:
                return DEFAULT_SIZE
            return SIZE_STEP * int(rng.integers(bounds[0], bounds[1] + 1))
    raise AssertionError("unreachable: the last row is unbounded")


class MultiScaleBatchSampler(Sampler):
    """Batches of `(index, S)` pairs sharing one input size S (design §6.5).

    The epoch's order is default_rng([seed, epoch]).permutation (or 0..n-1 without shuffle),
    padded by repetition to a multiple of world_size; rank r takes every world_size-th index
    from r (like DistributedSampler). Global batch b's size comes from the images seen before
    it, `seen + b * batch_size * world_size`, drawn with default_rng([seed, epoch, b, 2]): the
    same on every rank and whatever the number of workers. mode: 'single', 'multi' (design §6.5
    tables), 'fixed' (always fixed_size) or 'range' (32 * U{lo/32..hi/32} for size_range (lo, hi),
    multiples of 32: multi-scale around the test size, D68). The last incomplete batch is kept unless drop_last.
    start_batch: resume an interrupted epoch: batches 0..start_batch-1 are skipped, the others
    are exactly those of a full pass; len() counts the remaining batches, `num_batches` all.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, epoch: int = 0, seen: int = 0,
                 mode: str = "single", fixed_size: int = DEFAULT_SIZE, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False, start_batch: int = 0,
                 size_range: tuple[int, int] | None = None):
        if num_samples <= 0 or batch_size <= 0:
            raise ValueError(f"num_samples and batch_size must be positive, found {num_samples} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, found {rank}")
        if mode not in ("fixed", "range") and mode not in SCALE_TABLES:
            raise ValueError(f"unknown multi-scale mode {mode!r}; expected 'single', 'multi', 'fixed' or 'range'")
        if mode == "range":
            lo, hi = size_range or (0, -1)
            if not (SIZE_STEP <= lo <= hi and lo % SIZE_STEP == 0 and hi % SIZE_STEP == 0):
                raise ValueError(f"size_range must be (lo, hi), multiples of {SIZE_STEP} with lo <= hi, "
                                 f"found {size_range}")
        self.size_range = size_range
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.seed, self.epoch, self.seen = int(seed), int(epoch), int(seen)
        self.mode, self.fixed_size, self.shuffle = mode, int(fixed_size), shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.start_batch = int(start_batch)

    def set_epoch(self, epoch: int, seen: int | None = None) -> None:
        self.epoch = int(epoch)
        if seen is not None:
            self.seen = int(seen)

    @property
    def N(self) -> int:
        """(num_samples // batch_size) * batch_size, the design §6.5 unit of `seen`."""
        return (self.num_samples // self.batch_size) * self.batch_size

    def shard(self) -> np.ndarray:
        """This rank's indices for the epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = math.ceil(self.num_samples / self.world_size) * self.world_size
        order = np.resize(order, total)  # repeats from the start, like DistributedSampler's padding
        return order[self.rank:total:self.world_size]

    def size_of_batch(self, b: int) -> int:
        """Input size of global batch b of the epoch."""
        if self.mode == "fixed":
            return self.fixed_size
        seen = self.seen + b * self.batch_size * self.world_size
        rng = np.random.default_rng([self.seed, self.epoch, b, _SIZE_STREAM])
        if self.mode == "range":
            lo, hi = self.size_range
            return SIZE_STEP * int(rng.integers(lo // SIZE_STEP, hi // SIZE_STEP + 1))
        return multiscale_size(seen, self.N, rng, self.mode)

    @property
    def num_batches(self) -> int:
        """Batches of a full epoch on this rank."""
        per_rank = math.ceil(self.num_samples / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __len__(self) -> int:
        return max(self.num_batches - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        shard = self.shard()
        for b in range(self.start_batch, self.num_batches):
            idx = shard[b * self.batch_size:(b + 1) * self.batch_size]
            size = self.size_of_batch(b)
            yield [(int(i), size) for i in idx]


# --------------------------------------------------------------------------------------------
# Loaders (design §6.6)
# --------------------------------------------------------------------------------------------

def collate(batch):
    """Stack samples: images (B, 3, H, W) float32 (all of one size) and targets (B, 50*21) float64."""
    shapes = {tuple(b[0].shape) for b in batch}
    if len(shapes) != 1:
        raise ValueError(f"collate: the images of a batch must share one size, found {sorted(shapes)}")
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def make_train_loader(dataset: PoseDataset, batch_size: int, seed: int | None = None, epoch: int = 0, seen: int = 0,
                      workers: int = 0, mode: str = "single", rank: int = 0, world_size: int = 1,
                      pin_memory: bool | None = None, fixed_size: int = DEFAULT_SIZE, shuffle: bool = True,
                      drop_last: bool = False, start_batch: int = 0,
                      size_range: tuple[int, int] | None = None) -> DataLoader:
    """A training DataLoader for one epoch: MultiScaleBatchSampler batches, dataset.set_epoch(epoch).

    seed defaults to dataset.seed (it drives the shuffle and the sizes; the dataset's seed drives
    the augmentation). `seen` = images seen before this epoch, over all ranks (e.g. model.seen).
    pin_memory defaults to torch.cuda.is_available() (the original pins, design §6.6).
    start_batch: skip the epoch's first batches (resume); len(loader) counts the remaining ones,
    loader.batch_sampler.num_batches the whole epoch. size_range: (lo, hi) of mode 'range'.
    """
    seed = dataset.seed if seed is None else seed
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    dataset.set_epoch(epoch)
    dataset.warm_background_pool()  # in this process, before the workers start: they inherit it (fork)
    sampler = MultiScaleBatchSampler(len(dataset), batch_size, seed, epoch, seen, mode=mode, fixed_size=fixed_size,
                                     shuffle=shuffle, rank=rank, world_size=world_size, drop_last=drop_last,
                                     start_batch=start_batch, size_range=size_range)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory)


def make_test_loader(dataset: PoseDataset, batch_size: int = 1, workers: int = 0,
                     pin_memory: bool | None = None) -> DataLoader:
    """A test DataLoader: fixed size (dataset.shape), list order, every sample once (design §6.6)."""
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory)
