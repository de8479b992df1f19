"""The augmentation steps of image.py against design §6.1, §6.3 and §6.4."""
import cv2
import numpy as np
import pytest
from PIL import Image, ImageChops

import image as im


def _rand_img(rng, h=48, w=64):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# -------------------------------------------------------------------------- resampling (design §6.4)

def test_resample_filter_names():
    assert im.resample_filter("bicubic") == Image.Resampling.BICUBIC
    assert im.resample_filter("nearest") == Image.Resampling.NEAREST
    assert im.DEFAULT_RESAMPLE == "bicubic"
    with pytest.raises(ValueError, match="unknown resample filter 'bilinear'"):
        im.resample_filter("bilinear")


# -------------------------------------------------------------------------- background (design §6.1 step 2)

@pytest.mark.parametrize("resample", ["nearest", "bicubic"])
def test_replace_background_keeps_object_and_replaces_background(resample):
    rng = np.random.default_rng(0)
    img = _rand_img(rng)
    bg = _rand_img(rng, 30, 50)  # another size: resized to the image size with the chosen filter
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:45] = 255
    mask[0, 0] = 127  # the lookup mask/255 rounds: 127 -> background, 128 -> object
    mask[0, 1] = 128
    out = np.asarray(im.replace_background(Image.fromarray(img), Image.fromarray(mask), Image.fromarray(bg), resample))
    bg_resized = np.asarray(Image.fromarray(bg).resize((64, 48), im.resample_filter(resample)))
    obj = mask > 127
    np.testing.assert_array_equal(out[obj], img[obj])
    np.testing.assert_array_equal(out[~obj], bg_resized[~obj])
    assert obj.sum() == 20 * 25 + 1


def test_replace_background_is_per_channel_and_checks_size():
    rng = np.random.default_rng(1)
    img, bg = _rand_img(rng), _rand_img(rng)
    mask = np.zeros((48, 64, 3), np.uint8)
    mask[..., 1] = 255  # object in the green channel only
    out = np.asarray(im.replace_background(img, mask, bg))
    np.testing.assert_array_equal(out[..., 1], img[..., 1])
    np.testing.assert_array_equal(out[..., [0, 2]], bg[..., [0, 2]])
    with pytest.raises(ValueError, match="mask is 10x10 but the image is 64x48"):
        im.replace_background(img, np.zeros((10, 10), np.uint8), bg)


# -------------------------------------------------------------------------- crop jitter (design §6.1 step 3)

def test_crop_offsets_range_and_determinism():
    rng = np.random.default_rng(2)
    draws = np.array([im.draw_crop_offsets(rng, 640, 480, 0.2) for _ in range(3000)])
    assert draws[:, :2].min() == -128 and draws[:, :2].max() == 128  # int(0.2*640), inclusive
    assert draws[:, 2:].min() == -96 and draws[:, 2:].max() == 96  # int(0.2*480)
    a = im.draw_crop_offsets(np.random.default_rng(5), 640, 480, 0.2)
    assert a == im.draw_crop_offsets(np.random.default_rng(5), 640, 480, 0.2)
    assert im.crop_size(640, 480, (10, -20, 5, 15)) == (650, 460)


def test_crop_with_offsets_off_by_one_and_black_outside():
    rng = np.random.default_rng(3)
    arr = _rand_img(rng)
    img = Image.fromarray(arr)
    pleft, ptop, sw, sh = -5, 7, 40, 30
    crop = im.crop_with_offsets(img, pleft, ptop, sw, sh)
    assert crop.size == (sw - 1, sh - 1)  # the original's PIL box is right/bottom exclusive (D19)
    fixed = im.crop_with_offsets(img, pleft, ptop, sw, sh, fix_off_by_one=True)
    assert fixed.size == (sw, sh)
    c = np.asarray(fixed)
    np.testing.assert_array_equal(c[:, :5], 0)  # left of the image: black
    np.testing.assert_array_equal(c[:, 5:], arr[ptop:ptop + sh, 0:sw - 5])
    np.testing.assert_array_equal(np.asarray(crop), c[:-1, :-1])


def test_crop_resize_gives_network_size():
    img = Image.fromarray(_rand_img(np.random.default_rng(4)))
    out = im.crop_resize(img, (3, -4, 2, 1), 32, "nearest")
    assert out.size == (32, 32)
    assert im.crop_resize(img, (0, 0, 0, 0), (40, 24)).size == (40, 24)


# -------------------------------------------------------------------------- HSV (design §6.1 step 5)

def test_rand_scale_and_hsv_draws():
    rng = np.random.default_rng(6)
    vals = np.array([im.rand_scale(rng, 1.5) for _ in range(2000)])
    assert vals.min() >= 1 / 1.5 and vals.max() <= 1.5
    assert (vals > 1).mean() == pytest.approx(0.5, abs=0.05)  # the fair coin picks r or 1/r
    dhue, dsat, dexp = im.draw_hsv(np.random.default_rng(7), 0.1, 1.5, 1.5)
    assert -0.1 <= dhue <= 0.1 and 1 / 1.5 <= dsat <= 1.5 and 1 / 1.5 <= dexp <= 1.5


def test_hsv_identity_is_a_plain_round_trip():
    img = Image.fromarray(_rand_img(np.random.default_rng(8)))
    out = im.distort_image(img, 0.0, 1.0, 1.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img.convert("HSV").convert("RGB")))
    diff = np.abs(np.asarray(out).astype(int) - np.asarray(img).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8  # PIL's HSV is 8-bit: nearly the identity


def _hsv(h, s, v):
    arr = np.stack([np.full((2, 3), c, np.uint8) for c in (h, s, v)], axis=-1)
    return Image.fromarray(arr, mode="HSV")


def test_hue_wraps_modulo_255():
    assert im.hue_shift(250, 10 / 255) == pytest.approx(5.0)  # modulo 256 would give 4
    assert im.hue_shift(3, -10 / 255) == pytest.approx(248.0)
    assert im.hue_shift(255, 1 / 255) == pytest.approx(1.0)
    out = np.asarray(im.distort_hsv(_hsv(250, 100, 100), 10 / 255, 1.0, 1.0))
    assert (out[..., 0] == 5).all()
    out = np.asarray(im.distort_hsv(_hsv(3, 100, 100), -10 / 255, 1.0, 1.0))
    assert (out[..., 0] == 248).all()


def test_saturation_and_exposure_scale_and_clip():
    out = np.asarray(im.distort_hsv(_hsv(40, 200, 100), 0.0, 1.5, 0.5))
    assert (out[..., 0] == 40).all() and (out[..., 1] == 255).all() and (out[..., 2] == 50).all()
    with pytest.raises(ValueError, match="expected a PIL 'HSV' image, found mode 'RGB'"):
        im.distort_hsv(Image.new("RGB", (2, 2)), 0, 1, 1)


# -------------------------------------------------------------------------- labels (design §6.1 step 6, §6.3)

def _row(xs, ys, cls=3.0, xr=0.123, yr=0.456):
    pts = np.stack([xs, ys], axis=1).reshape(-1)
    return np.concatenate([[cls], pts, [xr, yr]])


def test_label_transform_matches_hand_computation():
    ow, oh = 640, 480
    offsets = (10, -20, 5, 15)  # pleft, pright, ptop, pbot
    sw, sh = 650, 460
    xs = np.linspace(0.1, 0.9, 9)
    ys = np.linspace(0.2, 0.8, 9)
    rows = np.stack([_row(xs, ys), _row(xs[::-1], ys[::-1], cls=1.0)])
    out = im.transform_labels(rows, *im.crop_label_params(offsets, ow, oh))
    for r, (x_in, y_in) in zip(out, [(xs, ys), (xs[::-1], ys[::-1])]):
        np.testing.assert_allclose(r[1:19:2], (x_in * ow - 10) / sw, rtol=0, atol=1e-12)  # x' = (x*ow - pleft)/sw
        np.testing.assert_allclose(r[2:19:2], (y_in * oh - 5) / sh, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[:, 0], [3.0, 1.0])  # class unchanged
    np.testing.assert_array_equal(out[:, 19:], [[0.123, 0.456]] * 2)  # ranges unchanged (D21)
    np.testing.assert_array_equal(rows[0], _row(xs, ys))  # input untouched


def test_label_transform_clamps_only_the_centroid():
    xs = np.array([0.01, -0.05, 0.02, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9999])
    ys = np.array([0.9995, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.2, 0.5])
    out = im.transform_labels(_row(xs, ys)[None], *im.crop_label_params((64, 0, 0, 0), 640, 480))
    sx = (640 - 64) / 640
    assert out[0, 1] == 0.0  # centroid x pushed left of the image -> clamped to 0
    assert out[0, 2] == 0.999  # centroid y above 0.999 -> clamped
    np.testing.assert_allclose(out[0, 3], (-0.05 * 640 - 64) / (sx * 640))  # corners are not clamped
    np.testing.assert_allclose(out[0, 16], 1.2)
    np.testing.assert_allclose(out[0, 17], (0.9999 * 640 - 64) / (sx * 640))
    free = im.transform_labels(_row(xs, ys)[None], 1, 1, 0, 0, clamp_centroid=False)
    assert free[0, 2] == 0.9995


def test_label_flip_shift_and_recomputed_ranges():
    xs = np.linspace(0.2, 0.6, 9)
    ys = np.linspace(0.3, 0.5, 9)
    sx, sy, dx, dy = im.crop_label_params((0, 0, 0, 0), 640, 480, shift=(52, -26), size=416)
    assert (dx, dy) == (-0.125, 0.0625)  # the shift moves the labels by +shift/S
    out = im.transform_labels(_row(xs, ys)[None], sx, sy, dx, dy, flip=True, recompute_ranges=True)[0]
    np.testing.assert_allclose(out[1:19:2], 1 - (xs + 0.125))
    np.testing.assert_allclose(out[2:19:2], ys - 0.0625)
    np.testing.assert_allclose(out[19:], [0.4, 0.2])
    with pytest.raises(ValueError, match="shift needs the output size"):
        im.crop_label_params((0, 0, 0, 0), 640, 480, shift=(1, 0))


# -------------------------------------------------------------------------- flip / shift (design §6.3)

def test_flip_lr_and_shift_helpers():
    arr = _rand_img(np.random.default_rng(9), 6, 8)
    np.testing.assert_array_equal(np.asarray(im.flip_lr(Image.fromarray(arr))), arr[:, ::-1])
    np.testing.assert_array_equal(im.flip_lr(arr), arr[:, ::-1])
    wrapped = im.shift_image(Image.fromarray(arr), 3, -2, wrap=True)  # the original's ImageChops.offset
    np.testing.assert_array_equal(np.asarray(wrapped), np.roll(arr, (-2, 3), axis=(0, 1)))
    np.testing.assert_array_equal(im.shift_image(arr, 3, -2, wrap=True),
                                  np.asarray(ImageChops.offset(Image.fromarray(arr), 3, -2)))
    padded = im.shift_image(arr, 3, -2, wrap=False)
    np.testing.assert_array_equal(padded[:4, 3:], arr[2:, :5])  # content moved right 3, up 2
    np.testing.assert_array_equal(padded[:, :3], 0)
    np.testing.assert_array_equal(padded[4:], 0)
    assert not im.shift_image(arr, 8, 0, wrap=False).any()
    pil = im.shift_image(Image.fromarray(arr), -1, 1, wrap=False)
    np.testing.assert_array_equal(np.asarray(pil), im.shift_image(arr, -1, 1, wrap=False))


def test_procedural_background_is_deterministic():
    a = im.procedural_background(np.random.default_rng(11), 64, 48)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, im.procedural_background(np.random.default_rng(11), 64, 48))
    assert not np.array_equal(a, im.procedural_background(np.random.default_rng(12), 64, 48))


# -------------------------------------------------------------------------- the fast path's helpers (D49)

def _warp_reference(arr, offsets, size, fix_off_by_one):
    """The crop as one affine warp of the whole image (the fast path before issue 23): same sample positions."""
    m = im.crop_affine(offsets, arr.shape[1], arr.shape[0], size, fix_off_by_one)
    return cv2.warpAffine(arr, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@pytest.mark.parametrize("offsets", [(0, 0, 0, 0), (5, 9, 3, 7), (-6, 4, -5, 6), (-12, -9, -8, -3)])
@pytest.mark.parametrize("fix_off_by_one", [False, True])
def test_fast_crop_resize_samples_where_the_warp_did(offsets, fix_off_by_one):
    """cv2.resize of the zero-padded rectangle = the affine warp, except in the one-pixel rim where
    the warp reads the image beyond the rectangle and resize repeats its edge."""
    rng = np.random.default_rng(0)
    arr = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 2)
    out = im.fast_crop_resize(arr, offsets, 80, fix_off_by_one)
    ref = _warp_reference(arr, offsets, 80, fix_off_by_one)
    assert out.shape == ref.shape == (80, 80, 3) and out.dtype == np.uint8
    inner = np.abs(out.astype(int) - ref.astype(int))[2:-2, 2:-2]
    assert inner.max() <= 1


def test_padded_crop_is_black_outside_the_image():
    arr = np.full((4, 5), 7, np.uint8)
    out = im.padded_crop(arr, -2, 1, 6, 5)
    assert out.shape == (5, 6)
    assert (out[:3, 2:] == 7).all() and not out[:, :2].any() and not out[3:].any()
    assert np.shares_memory(im.padded_crop(arr, 1, 1, 2, 2), arr)  # inside: a view, no copy


def test_halved_crop_keeps_a_dot_where_pillow_puts_it():
    """A crop shrunk 2x or more goes through a 2x reduction; the sample positions still match Pillow's."""
    img = np.zeros((192, 256, 3), np.uint8)
    img[100:102, 150:152] = 255
    for offsets in [(0, 0, 0, 0), (9, -11, 5, -3), (-10, 7, -6, 4)]:
        assert im.shrinks_by_half(offsets, 256, 192, 64)
        ref = np.asarray(im.crop_resize(Image.fromarray(img), offsets, 64, "bicubic", fix_off_by_one=True))
        for out in (im.fast_crop_resize(img, offsets, 64, fix_off_by_one=True),
                    im.fast_crop_resize(im.halve(img), offsets, 64, fix_off_by_one=True, source_size=(256, 192))):
            ys, xs = np.nonzero(out[..., 0] > 20)
            rys, rxs = np.nonzero(ref[..., 0] > 20)
            assert abs(xs.mean() - rxs.mean()) < 0.5 and abs(ys.mean() - rys.mean()) < 0.5, offsets


def test_fast_augment_composites_and_blacks_out_the_padding():
    img = np.full((48, 64, 3), 200, np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    bg = np.full((32, 32, 3), 50, np.uint8)
    out = im.fast_augment(img, mask, bg, (-8, 0, -6, 0), 32, fix_off_by_one=True)
    u0, u1, v0, v1 = im.inside_rect(im.crop_affine((-8, 0, -6, 0), 64, 48, 32, True), 64, 48, 32)
    assert (u0, v0) != (0, 0) and not out[:v0].any() and not out[:, :u0].any()  # padding: black
    assert set(np.unique(out[v0:, u0:])) <= {50, 200} and (out == 200).any() and (out == 50).any()
    assert (bg == 50).all()  # the background is not modified


def test_background_window_is_deterministic_and_mirrors_with_cv2():
    pool = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    a = im.background_window(pool, np.random.default_rng(5), (32, 24))
    b = im.background_window(pool, np.random.default_rng(5), (32, 24))
    assert a.shape == (24, 32, 3) and a.flags.c_contiguous and np.array_equal(a, b)


def test_fast_distort_from_bgr_equals_the_per_channel_tables_from_rgb():
    rng = np.random.default_rng(0)
    for _ in range(10):
        rgb = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
        d = (rng.uniform(-0.1, 0.1), rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5))
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
        ref = cv2.cvtColor(cv2.merge([cv2.LUT(c, lut) for c, lut in zip(cv2.split(hsv), im.hsv_luts(*d))]),
                           cv2.COLOR_HSV2RGB_FULL)
        np.testing.assert_array_equal(im.fast_distort(rgb, *d), ref)
        np.testing.assert_array_equal(im.fast_distort(np.ascontiguousarray(rgb[:, :, ::-1]), *d, bgr=True), ref)
