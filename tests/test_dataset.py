"""LINEMOD labels, paths, lists, samples, the multi-scale batch sampler and the loaders (design §3, §6)."""
import os
import pickle
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import dataset as ds
import image_files
import hostile
import image as im
from errors import ImageError
from utils import LINEMOD_OBJECTS, label_row

OBJECT_COLORS = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40)]


def make_linemod(root, objects=("ape",), n=3, size=(64, 48), ext=".png", centre=(0.4, 0.45), radius=0.12):
    """A tiny LINEMOD-layout dataset under root/LINEMOD: a coloured disc per image, its mask and label.

    The label's centroid is the disc centre; the 8 "corners" are the corners of a square around it.
    Returns {object: [image paths relative to root]}; also writes <obj>/train.txt with those paths.
    """
    w, h = size
    rng = np.random.default_rng(0)
    out = {}
    for k, obj in enumerate(objects):
        base = os.path.join(root, "LINEMOD", obj)
        for sub in ("JPEGImages", "labels", "mask"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        cls = LINEMOD_OBJECTS.index(obj) if obj in LINEMOD_OBJECTS else k
        paths = []
        for i in range(n):
            cx, cy, r = centre[0] * w, centre[1] * h, radius * w
            yy, xx = np.mgrid[:h, :w]
            disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r
            img = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
            img[disc] = OBJECT_COLORS[k % len(OBJECT_COLORS)]
            Image.fromarray(img).save(os.path.join(base, "JPEGImages", f"{i:06d}{ext}"))
            Image.fromarray(disc.astype(np.uint8) * 255).save(os.path.join(base, "mask", f"{i:04d}.png"))
            pts = [[cx, cy]] + [[cx + sx * r, cy + sy * r] for sx in (-1, 1) for sy in (-1, 1) for _ in range(2)]
            ds.write_truths(os.path.join(base, "labels", f"{i:06d}.txt"), label_row(np.array(pts), cls, w, h))
            paths.append(f"LINEMOD/{obj}/JPEGImages/{i:06d}{ext}")
        with open(os.path.join(base, "train.txt"), "w") as f:
            f.write("\n".join(paths) + "\n")
        out[obj] = paths
    return out


@pytest.fixture
def small(tmp_path, monkeypatch):
    """Three 64x48 ape images; the current directory is the dataset root."""
    make_linemod(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _black_backgrounds(folder, n=2):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 24)).save(os.path.join(folder, f"bg{i}.jpg"))
    return folder


# -------------------------------------------------------------------------- targets and names

def test_pad_targets():
    rows = np.arange(3 * 21, dtype=np.float64).reshape(3, 21) + 1
    t = ds.pad_targets(rows)
    assert t.shape == (50 * 21,) and t.dtype == np.float64
    np.testing.assert_array_equal(t.reshape(50, 21)[:3], rows)
    assert not t[3 * 21:].any()
    assert ds.pad_targets(np.ones((60, 21))).shape == (1050,)  # at most 50 objects



@pytest.mark.parametrize("spec, cv2_filter", [
    ("median:5", lambda x: cv2.medianBlur(x, 5)),
    ("gauss:1.5", lambda x: cv2.GaussianBlur(x, (0, 0), 1.5)),
])
def test_a_test_image_is_filtered_before_it_is_resized(small, spec, cv2_filter):
    """input_filter (D69): the image as read, through image.input_filter, then resized."""
    source = np.asarray(Image.open("LINEMOD/ape/JPEGImages/000001.png").convert("RGB"))
    img, _ = ds.listDataset("LINEMOD/ape/train.txt", shape=(32, 24), input_filter=spec)[1]
    filtered = cv2_filter(source)
    expect = np.asarray(Image.fromarray(filtered).resize((32, 24), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal((img.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8), expect)
    assert not np.array_equal(filtered, source)
    with pytest.raises(ValueError, match="expected none, median:K"):
        ds.listDataset("LINEMOD/ape/train.txt", shape=(32, 24), input_filter="median:2")


def test_a_median_takes_away_a_thin_line_and_keeps_an_edge():
    """Why median:5 (D69): a 2 px dark line on a flat object goes, the object's outline stays where it was."""
    img = np.full((40, 40, 3), 200, np.uint8)
    img[:, 20:] = 60  # an edge at x = 20
    img[10:12, :18] = 0  # a 2 px line inside the bright half
    out = im.input_filter(img, "median:5")
    assert np.all(out[:, :18] == 200)  # the line is gone
    np.testing.assert_array_equal(out[:, 19:21], img[:, 19:21])  # the edge has not moved
    blurred = im.input_filter(img, "gauss:2")
    assert blurred[11, 5, 0] < 150 and blurred[20, 19, 0] < 190  # a blur keeps the line and smears the edge
    assert im.input_filter(img, "none") is img


def test_object_name_is_the_grand_parent_folder():
    assert ds.object_name("LINEMOD/duck/JPEGImages/000005.jpg") == "duck"


def test_list_images_recursive(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.PNG", "a/b/z.jpeg", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = [os.path.relpath(p, tmp_path) for p in image_files.list_images(tmp_path)]
    assert found == ["a/b/y.PNG", "a/b/z.jpeg", "a/x.jpg"]
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no .jpg/.jpeg/.png images found"):
        image_files.list_images(tmp_path / "none")


# -------------------------------------------------------------------------- test sample (design §6.2, D17)

def test_test_sample_keeps_all_21_numbers_of_every_object(small):
    rows = np.random.default_rng(1).uniform(0.05, 0.95, size=(3, 21)).round(6)
    rows[:, 0] = [0, 5, 9]
    ds.write_truths("LINEMOD/ape/labels/000001.txt", rows)
    d = ds.listDataset("LINEMOD/ape/train.txt", shape=(32, 24))
    img, target = d[1]
    assert img.shape == (3, 24, 32) and img.dtype == torch.float32
    assert target.shape == (1050,) and target.dtype == torch.float64
    np.testing.assert_allclose(target.numpy().reshape(50, 21)[:3], rows, atol=1e-12)
    assert not target[63:].any()
    source = Image.open("LINEMOD/ape/JPEGImages/000001.png").convert("RGB")
    expect = np.asarray(source.resize((32, 24), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal((img.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8), expect)
    same, _ = ds.PoseDataset("LINEMOD/ape/train.txt", shape=(64, 48))[1]
    original = np.asarray(Image.open("LINEMOD/ape/JPEGImages/000001.png"), np.float32)
    np.testing.assert_array_equal(same.numpy(), original.transpose(2, 0, 1) / 255)


def test_transform_is_applied_to_the_pil_image(small):
    seen = []

    def flip(img):
        seen.append(type(img))
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    d = ds.PoseDataset("LINEMOD/ape/train.txt", shape=(64, 48), transform=flip)
    ref = ds.PoseDataset("LINEMOD/ape/train.txt", shape=(64, 48))
    assert torch.equal(d[0][0], ref[0][0].flip(-1)) and seen == [Image.Image]
    as_tensor = ds.PoseDataset("LINEMOD/ape/train.txt", shape=(64, 48), transform=lambda img: torch.zeros(1))
    assert torch.equal(as_tensor[0][0], torch.zeros(1))


# -------------------------------------------------------------------------- training sample (design §6.1)

def _bright_centroid(img):
    """Centre of mass (x, y) in pixels, pixel centres at +0.5, of the pixels brighter than 0.25."""
    ys, xs = np.nonzero(img.numpy().max(axis=0) > 0.25)
    return xs.mean() + 0.5, ys.mean() + 0.5


def _grey_disc(tmp_path, monkeypatch):
    """One image with a grey disc (object) whose background is replaced by black ones: HSV keeps the
    disc grey, so it is found by brightness after augmentation. Returns the background folder."""
    make_linemod(tmp_path, n=1, size=(64, 48), centre=(0.45, 0.5), radius=0.15)
    monkeypatch.chdir(tmp_path)
    img = np.asarray(Image.open("LINEMOD/ape/JPEGImages/000000.png")).copy()
    mask = np.asarray(Image.open("LINEMOD/ape/mask/0000.png")) > 0
    img[mask] = 200
    Image.fromarray(img).save("LINEMOD/ape/JPEGImages/000000.png")
    return _black_backgrounds(tmp_path / "bg")


def test_training_sample_label_follows_the_object(tmp_path, monkeypatch):
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, bg_dir=_grey_disc(tmp_path, monkeypatch),
                       resample="nearest", fix_crop=True)
    for epoch in range(6):
        d.set_epoch(epoch)
        x, t = d[(0, 96)]
        assert x.shape == (3, 96, 96)
        row = t.numpy().reshape(50, 21)[0]
        cx, cy = _bright_centroid(x)
        assert abs(row[1] * 96 - cx) < 1.0 and abs(row[2] * 96 - cy) < 1.0
        np.testing.assert_array_equal(row[19:], ds.read_truths("LINEMOD/ape/labels/000000.txt")[0, 19:])
        assert not t[21:].any()


def test_training_sample_is_the_documented_pipeline(small):
    """Same seed, epoch, index -> same sample; and it equals the design §6.1 steps run by hand."""
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, seed=7, epoch=2)
    x, t = d[(1, 32)]
    x2, t2 = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, seed=7, epoch=2)[(1, 32)]
    assert torch.equal(x, x2) and torch.equal(t, t2)
    d.set_epoch(3)
    assert not torch.equal(d[(1, 32)][0], x)

    rng = np.random.default_rng([7, 2, 1])
    bg = im.procedural_background(np.random.default_rng([7, 2, 1, 1]), 64, 64)  # at least 64 px a side
    img = im.replace_background(Image.open("LINEMOD/ape/JPEGImages/000001.png"),
                                Image.open("LINEMOD/ape/mask/0001.png"), bg)
    offsets = im.draw_crop_offsets(rng, 64, 48, 0.2)
    out = im.crop_resize(img, offsets, 32)
    rng.integers(1, 10001)  # the unused flip bit
    out = im.distort_image(out, *im.draw_hsv(rng, 0.1, 1.5, 1.5))
    np.testing.assert_array_equal(x.numpy(), np.asarray(out, np.float32).transpose(2, 0, 1) / 255)
    rows = im.transform_labels(ds.read_truths("LINEMOD/ape/labels/000001.txt"), *im.crop_label_params(offsets, 64, 48))
    np.testing.assert_array_equal(t.numpy()[:21], rows[0])


def test_procedural_pool_is_a_seeded_finite_set(small):
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, procedural_pool=2, seed=4)
    first = [d[(i, 32)][0] for i in range(3)]
    for epoch in range(1, 4):
        d.set_epoch(epoch)
        [d[(i, 32)] for i in range(3)]
    assert sorted(k for k, _, _ in d._bg_cache) == [0, 1]  # one cached background per pool slot used
    again = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, procedural_pool=2, seed=4)
    assert all(torch.equal(a, again[(i, 32)][0]) for i, a in enumerate(first))


def test_training_with_an_int_index_uses_the_fixed_shape(small):
    d = ds.PoseDataset("LINEMOD/ape/train.txt", shape=40, train=True)
    assert d[0][0].shape == (3, 40, 40)


# -------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("victim,kind", [("LINEMOD/ape/JPEGImages/000001.png", "image"),
                                         ("LINEMOD/ape/labels/000001.txt", "label file"),
                                         ("LINEMOD/ape/mask/0001.png", "mask")])
def test_missing_files_fail_at_construction(small, victim, kind):
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=f"{victim}: {kind} not found"):
        ds.PoseDataset("LINEMOD/ape/train.txt", train=True)
    with pytest.warns(UserWarning, match=f"skipping bad sample 1: {victim}: {kind} not found"):
        d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, skip_bad=True)
    assert d.bad_samples == 1
    x, t = d[(1, 32)]  # replaced by the next sample, deterministically
    x2, t2 = d[(2, 32)]
    assert torch.equal(x, x2) and torch.equal(t, t2)


def test_test_mode_does_not_need_masks(small):
    os.remove("LINEMOD/ape/mask/0001.png")
    assert len(ds.PoseDataset("LINEMOD/ape/train.txt")) == 3


def test_unreadable_image_and_bad_labels_at_load_time(small):
    with open("LINEMOD/ape/JPEGImages/000000.png", "wb") as f:
        f.write(b"not an image")
    with open("LINEMOD/ape/labels/000002.txt", "w") as f:
        f.write(" ".join(["0"] + ["0.5"] * 20) + "\n" + " ".join(["0"] + ["0.5"] * 19 + ["nan"]) + "\n")
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True)
    with pytest.raises(ValueError, match=r"000000\.png: cannot read image"):
        d[(0, 32)]
    with pytest.raises(ValueError, match=r"labels/000002\.txt:2: expected finite numbers"):
        d[(2, 32)]
    with pytest.raises(ValueError, match=r"labels/000002\.txt:2"):
        ds.PoseDataset("LINEMOD/ape/train.txt")[2]
    skipping = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, skip_bad=True)
    with pytest.warns(UserWarning) as record:
        x, _ = skipping[(2, 32)]  # 2 is bad, 0 (next, wrapping) is bad too, then 1
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0].startswith("skipping bad sample 2: LINEMOD/ape/labels/000002.txt:2: expected finite numbers")
    assert messages[1].startswith("skipping bad sample 0: LINEMOD/ape/JPEGImages/000000.png: cannot read image")
    assert skipping.bad_samples == 2
    assert torch.equal(x, skipping[(1, 32)][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known-bad samples are not retried, nor warned again
        skipping[(0, 32)]
    assert skipping.bad_samples == 2


def test_mask_of_the_wrong_size(small):
    Image.new("L", (10, 10)).save("LINEMOD/ape/mask/0000.png")
    with pytest.raises(ValueError, match=r"mask/0000\.png: mask is 10x10, expected the image size 64x48"):
        ds.PoseDataset("LINEMOD/ape/train.txt", train=True)[(0, 32)]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_bad_sample_counter_is_shared_by_workers(small, context):
    with open("LINEMOD/ape/JPEGImages/000001.png", "wb") as f:
        f.write(b"garbage")
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, skip_bad=True)
    sampler = ds.MultiScaleBatchSampler(len(d), 1, mode="fixed", fixed_size=32)
    loader = DataLoader(d, batch_sampler=sampler, num_workers=2 if context == "fork" else 1,
                        collate_fn=ds.collate, multiprocessing_context=context)
    assert len(list(loader)) == 3 and d.bad_samples == 1
    copied = pickle.loads(pickle.dumps(d))  # outside a worker start: a snapshot of the counter
    assert copied.bad_samples == 1 and len(copied) == 3


# -------------------------------------------------------------------------- multi-scale (design §6.5)

def _sizes(mode, k_lo, N=100, draws=400):
    rng = np.random.default_rng(0)
    return {ds.multiscale_size(k_lo * N, N, rng, mode) for _ in range(draws)}


def test_multiscale_size_tables():
    N = 100
    rng = np.random.default_rng(0)
    assert ds.multiscale_size(0, N, rng) == 416 and ds.multiscale_size(10 * N - 1, N, rng) == 416
    single = {10: (13, 20), 20: (12, 21), 30: (11, 22), 40: (10, 23), 50: (9, 24), 60: (8, 25), 70: (7, 26),
              500: (7, 26)}
    for k, (lo, hi) in single.items():
        assert _sizes("single", k, N) == {32 * g for g in range(lo, hi + 1)}, k
    assert ds.multiscale_size(20 * N - 1, N, rng, "multi") == 416
    multi = {20: (13, 16), 40: (12, 17), 60: (11, 18), 80: (10, 19), 300: (10, 19)}
    for k, (lo, hi) in multi.items():
        assert _sizes("multi", k, N) == {32 * g for g in range(lo, hi + 1)}, k
    with pytest.raises(ValueError, match="unknown multi-scale mode 'triple'"):
        ds.multiscale_size(0, N, rng, "triple")


def test_batch_sampler_sizes_follow_the_global_seen_count():
    n, bs = 20, 4  # N = 20
    s = ds.MultiScaleBatchSampler(n, bs, seed=3, epoch=1, seen=10 * 20 - 8, mode="single")
    batches = list(s)
    assert len(batches) == len(s) == 5
    assert sorted(i for b in batches for i, _ in b) == list(range(n))
    for b, batch in enumerate(batches):
        sizes = {size for _, size in batch}
        assert len(sizes) == 1  # one size per batch
        seen = 10 * 20 - 8 + b * bs
        size = sizes.pop()
        assert size == 416 if seen < 200 else 416 <= size <= 640 and size % 32 == 0
        assert size == ds.multiscale_size(seen, 20, np.random.default_rng([3, 1, b, 2]), "single")
    assert [size for _, size in batches[0]] == [416] * 4 and [size for _, size in batches[1]] == [416] * 4
    fixed = ds.MultiScaleBatchSampler(n, bs, mode="fixed", fixed_size=320, seen=10 ** 6)
    assert {size for b in fixed for _, size in b} == {320}


def test_batch_sampler_range_draws_each_batch_size_around_the_test_size():
    """mode 'range' (D68): 32 * U{lo/32..hi/32} per batch, from the batch's own stream, every size reachable."""
    s = ds.MultiScaleBatchSampler(400, 2, seed=1, epoch=3, mode="range", size_range=(224, 320))
    sizes = [b[0][1] for b in s]
    assert set(sizes) == {224, 256, 288, 320}  # 200 batches: each of the 4 sizes drawn
    assert all(len({size for _, size in b}) == 1 for b in s)
    assert sizes[:5] == [32 * int(np.random.default_rng([1, 3, b, 2]).integers(7, 11)) for b in range(5)]
    assert sizes == [b[0][1] for b in ds.MultiScaleBatchSampler(400, 2, seed=1, epoch=3, mode="range",
                                                                  size_range=(224, 320))]
    for bad in [None, (224, 300), (320, 224), (0, 32)]:
        with pytest.raises(ValueError, match="size_range must be"):
            ds.MultiScaleBatchSampler(10, 2, mode="range", size_range=bad)


def test_batch_sampler_ranks_share_sizes_and_split_the_data():
    n, bs, world = 23, 3, 2
    ranks = [ds.MultiScaleBatchSampler(n, bs, seed=5, epoch=4, seen=40 * 21, rank=r, world_size=world)
             for r in range(world)]
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == 4  # ceil(23 / 2) = 12 per rank
    assert [b[0][1] for b in b0] == [b[0][1] for b in b1]  # identical sizes on both ranks
    sizes = [b[0][1] for b in b0]
    assert len(set(sizes)) > 1
    for b, size in enumerate(sizes):  # seen counts images of all ranks: seen + b * bs * world
        assert size == ds.multiscale_size(40 * 21 + b * bs * world, 21, np.random.default_rng([5, 4, b, 2]))
    i0 = [i for b in b0 for i, _ in b]
    i1 = [i for b in b1 for i, _ in b]
    assert set(i0) | set(i1) == set(range(n)) and len(i0) + len(i1) == 24  # padded by one repeat
    perm = np.random.default_rng([5, 4]).permutation(n)
    assert i0 == list(np.resize(perm, 24)[0::2]) and i1 == list(np.resize(perm, 24)[1::2])
    other_epoch = ds.MultiScaleBatchSampler(n, bs, seed=5, epoch=5, seen=40 * 21)
    same_epoch = ds.MultiScaleBatchSampler(n, bs, seed=5, epoch=4, seen=40 * 21)
    assert [i for b in other_epoch for i, _ in b] != [i for b in same_epoch for i, _ in b]
    full = list(ds.MultiScaleBatchSampler(n, bs, seed=5, epoch=4, seen=40 * 21, rank=1, world_size=world))
    resumed = ds.MultiScaleBatchSampler(n, bs, seed=5, epoch=4, seen=40 * 21, rank=1, world_size=world, start_batch=3)
    assert list(resumed) == full[3:] and len(resumed) == 1 and resumed.num_batches == 4
    dl = ds.MultiScaleBatchSampler(10, 4, drop_last=True, shuffle=False)
    assert [[i for i, _ in b] for b in dl] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        ds.MultiScaleBatchSampler(10, 4, rank=2, world_size=2)


def test_loader_batches_identical_for_0_and_2_workers(tmp_path, monkeypatch):
    make_linemod(tmp_path, n=6, size=(32, 24))
    monkeypatch.chdir(tmp_path)
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, seed=11)

    def run(workers):
        loader = ds.make_train_loader(d, batch_size=2, epoch=1, seen=70 * 6, workers=workers, mode="single")
        return [(x.clone(), t.clone()) for x, t in loader]

    a, b = run(0), run(2)
    assert len(a) == len(b) == 3
    assert len({x.shape[-1] for x, _ in a}) > 1  # the sizes do change between batches
    for (xa, ta), (xb, tb) in zip(a, b):
        assert xa.shape[0] == 2 and xa.shape[-1] == xa.shape[-2] and xa.shape[-1] % 32 == 0
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
        assert ta.dtype == torch.float64 and ta.shape == (2, 1050)


def test_test_loader_and_collate(small):
    d = ds.PoseDataset("LINEMOD/ape/train.txt", shape=(32, 24))
    batches = list(ds.make_test_loader(d, batch_size=2))
    assert [x.shape for x, _ in batches] == [(2, 3, 24, 32), (1, 3, 24, 32)]
    np.testing.assert_array_equal(batches[1][1][0].numpy(), d[2][1].numpy())
    with pytest.raises(ValueError, match="must share one size"):
        ds.collate([(torch.zeros(3, 4, 4), torch.zeros(1050)), (torch.zeros(3, 8, 8), torch.zeros(1050))])


@pytest.mark.cuda
def test_pinned_batches_reach_the_gpu(small):
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available: pinned-memory transfer not exercised")
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True)
    x, t = next(iter(ds.make_train_loader(d, batch_size=2, pin_memory=True, mode="fixed", fixed_size=32)))
    assert x.is_pinned() and t.is_pinned()
    assert torch.equal(x.to("cuda", non_blocking=True).cpu(), x)


# -------------------------------------------------------------------------- multi-object sample (design §6.3)

def test_extra_objects_table():
    assert ds.extra_objects("ape", LINEMOD_OBJECTS) == ["can", "cat", "duck", "glue", "holepuncher", "iron", "phone"]
    assert ds.extra_objects("ape", ["cat", "duck", "lamp"]) == ["cat", "duck"]
    assert ds.extra_objects("thing", ["thing", "b", "a"]) == ["a", "b"]


@pytest.fixture(scope="module")
def multi_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    pools = make_linemod(root, objects=("ape", "cat", "duck"), n=2, size=(640, 480), centre=(0.3, 0.4), radius=0.06)
    return root, {k: [str(root / p) for p in v] for k, v in pools.items()}


def _multi(pools, seed, repro):
    return ds.multi_object_sample(pools["ape"][0], pools, 416, np.random.default_rng(seed),
                                  np.zeros((8, 8, 3), np.uint8), repro_label_bugs=repro)


def test_multi_object_labels_follow_flip_and_shift(multi_root):
    root, pools = multi_root
    flips = 0
    for seed in range(5):
        s, r = _multi(pools, seed, False), _multi(pools, seed, True)
        assert s.image.size == (416, 416) and s.labels.shape[1] == 21 and len(s.masks) == len(s.labels)
        assert s.labels[0, 0] == 0 and set(s.labels[1:, 0]) <= {4.0, 6.0}  # ape first, then cat/duck
        for row, mask in zip(s.labels, s.masks):
            x, y = int(row[1] * 416), int(row[2] * 416)
            assert mask[y, x], f"seed {seed}: centroid ({x}, {y}) outside its object's mask"
            pts = row[1:19].reshape(9, 2)
            np.testing.assert_allclose(row[19:], pts.max(0) - pts.min(0))  # ranges recomputed
        # same draws in both modes: the fixed label is the mirrored reproduction label when flipped
        flipped = not np.isclose(s.labels[0, 1], r.labels[0, 1])
        if flipped:
            np.testing.assert_allclose(s.labels[0, 1:19:2], 1 - r.labels[0, 1:19:2])
            assert not r.masks[0][int(r.labels[0, 2] * 416), int(r.labels[0, 1] * 416)]  # the original's bug
        flips += flipped
    assert 0 < flips < 5


def test_multi_object_dataset(multi_root, monkeypatch):
    root, pools = multi_root
    monkeypatch.chdir(root)
    assert ds.linemod_train_lists(root / "LINEMOD") == pools  # object -> paths of LINEMOD/<obj>/train.txt
    d = ds.MultiObjectDataset("LINEMOD/ape/train.txt", pools, train=True, seed=1)
    x, t = d[(0, 160)]
    assert x.shape == (3, 160, 160)
    rows = t.numpy().reshape(50, 21)
    assert rows[0, 0] == 0 and (rows[:, 1] > 0).sum() >= 2
    bad = dict(pools, cat=pools["cat"] + [str(root / "LINEMOD/cat/JPEGImages/000009.png")])
    with pytest.raises(FileNotFoundError, match=r"000009\.png: image of extra object 'cat' not found"):
        ds.MultiObjectDataset("LINEMOD/ape/train.txt", bad, train=True)


# --------------------------------------------------------------------------------------------
# the fast (cv2) training path (D49)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("fix_crop", [False, True])
def test_fast_path_gives_the_label_transform_of_the_pillow_path(small, size, fix_crop):
    """Same seed, epoch and index: the same crop draws, so the same labels to 1e-6, for every sample."""
    slow = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, seed=3, fix_crop=fix_crop)
    fast = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, seed=3, fix_crop=fix_crop, fast=True)
    for epoch in range(4):
        slow.set_epoch(epoch)
        fast.set_epoch(epoch)
        for i in range(len(slow)):
            xs, ts = slow[(i, size)]
            xf, tf = fast[(i, size)]
            assert xf.shape == xs.shape == (3, size, size) and xf.dtype == torch.float32
            np.testing.assert_allclose(tf.numpy(), ts.numpy(), atol=1e-6)


def test_fast_path_crop_matches_the_pillow_crop_geometry():
    """The affine warp samples the Pillow crop rectangle: a one-pixel dot lands on the same output pixel."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[20, 30] = 255
    for offsets in [(0, 0, 0, 0), (5, -7, 3, -2), (-6, 4, -5, 6)]:
        ref = np.asarray(im.crop_resize(Image.fromarray(img), offsets, 64, "bicubic", fix_off_by_one=True))
        out = im.fast_crop_resize(img, offsets, 64, fix_off_by_one=True)
        ref_yx = np.unravel_index(ref[..., 0].argmax(), ref.shape[:2])
        out_yx = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
        assert np.abs(np.subtract(ref_yx, out_yx)).max() <= 1, (offsets, ref_yx, out_yx)


def test_fast_path_sample_label_follows_the_object(tmp_path, monkeypatch):
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, bg_dir=_grey_disc(tmp_path, monkeypatch),
                       fix_crop=True, fast=True, hue=0.0, saturation=1.0, exposure=1.0)
    for epoch in range(6):
        d.set_epoch(epoch)
        x, t = d[(0, 96)]
        row = t.numpy().reshape(50, 21)[0]
        cx, cy = _bright_centroid(x)
        assert abs(row[1] * 96 - cx) < 1.0 and abs(row[2] * 96 - cy) < 1.0


def test_fast_path_background_probability(small):
    keep = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True, bg_prob=0.0)
    assert all(keep.fast_background(i, (32, 32)) is None for i in range(20))
    new = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True)
    bgs = [new.fast_background(i, (32, 24)) for i in range(4)]
    assert all(b.shape == (24, 32, 3) and b.dtype == np.uint8 for b in bgs)
    with pytest.raises(ValueError, match="bg_prob must be in"):
        ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True, bg_prob=1.5)


@pytest.mark.parametrize("fast", [False, True])
def test_an_image_with_an_empty_label_file_trains_as_background(small, fast):
    """An empty label file is legal (pre-flight warns about it): the sample has no object, no crash."""
    open(ds.label_path(ds.read_list("LINEMOD/ape/train.txt")[0]), "w").close()
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=fast)
    x, t = d[(0, 32)]
    assert x.shape == (3, 32, 32) and not t.any()
    assert im.transform_labels(np.zeros((0, 21)), 1.0, 1.0, 0.0, 0.0).shape == (0, 21)


# Labels of the fast path at the start of issue 23 item 6 (seed 7, jitter 0.1, the `small` fixture):
# (epoch, index, S) -> centroid (x0, y0), corner x range (xa, xb), corner y range (ya, yb)
FAST_LABELS_BEFORE = {
    (0, 0, 32): (0.35000000000000003, 0.46666666666666673, 0.21285714285714286, 0.48714285714285716,
                 0.2838095238095238, 0.6495238095238096),
    (2, 1, 96): (0.43529411764705883, 0.4452830188679245, 0.3223529411764706, 0.548235294117647,
                 0.300377358490566, 0.590188679245283),
    (5, 2, 256): (0.4636363636363636, 0.49130434782608695, 0.3472727272727273, 0.5800000000000001,
                  0.32434782608695645, 0.6582608695652173),
}


@pytest.mark.parametrize("bg_prob", [0.0, 1.0])
def test_fast_path_labels_are_those_before_the_speed_up(tmp_path, monkeypatch, bg_prob):
    """The label transform is unchanged to 1e-6, with or without file backgrounds (their own stream)."""
    make_linemod(tmp_path)
    monkeypatch.chdir(tmp_path)
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, seed=7, fast=True, jitter=0.1, bg_prob=bg_prob,
                       bg_dir=_black_backgrounds(tmp_path / "bg"))
    for (epoch, i, size), (cx, cy, xa, xb, ya, yb) in FAST_LABELS_BEFORE.items():
        d.set_epoch(epoch)
        row = d[(i, size)][1].numpy()[:21]
        corners = [(x, y) for x in (xa, xb) for y in (ya, ya, yb, yb)]  # the fixture's square, twice per corner
        expected = [0.0, cx, cy] + [v for xy in corners for v in xy] + [0.24, 0.32]
        np.testing.assert_allclose(row, expected, atol=1e-6)


def _photo_backgrounds(folder, n=5, size=(80, 60)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(2)
    for i in range(n):
        Image.fromarray(im.procedural_background(rng, *size)).save(os.path.join(folder, f"bg{i}.jpg"))
    return folder


def test_fast_path_file_pool_is_seeded_bounded_and_slides(small, monkeypatch):
    monkeypatch.setattr(ds, "FILE_POOL", 3)
    monkeypatch.setattr(ds, "FILE_POOL_SLIDE", 1)
    bg_dir = _photo_backgrounds(small / "bg")
    a = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True, bg_dir=bg_dir, seed=1)
    assert a.file_pool_size == 3 and sorted(a._file_order) == list(range(5))
    pools = []
    for epoch in range(4):
        a.set_epoch(epoch)
        a.warm_background_pool()
        pools.append([a.file_pool_slot(k) for k in range(3)])
        assert set(a._file_cache) <= set(pools[-1]) | set(pools[-2] if epoch else [])
        assert len(a._file_cache) <= ds.FILE_POOL + 1
    assert pools[1][:2] == pools[0][1:] and pools[2][:2] == pools[1][1:]  # one file in, one out per epoch
    # the same seed gives the same samples whatever the cache holds (fresh dataset, warmed one)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True, bg_dir=bg_dir, seed=1, epoch=epoch)
        for i in range(len(a)):
            assert torch.equal(a[(i, 40)][0], b[(i, 40)][0])


def test_to_tensor_is_uint8_over_255():
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = ds.to_tensor(arr)
    expected = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
    assert t.dtype == torch.float32 and t.shape == (3, 5, 7) and np.array_equal(t.numpy(), expected)
    assert ds.to_tensor(arr[:, :, 0]).shape == (1, 5, 7)


def test_header_size_and_half_size_decode(tmp_path):
    """A JPEG decoder's 2x reduction averages the same pixel pairs as image.halve (mean error < 6 of 255
    on a smooth image, 10+ when shifted by a pixel); other formats are halved after a full decode."""
    rng = np.random.default_rng(3)
    img = cv2.normalize(cv2.GaussianBlur(rng.integers(0, 256, (47, 65, 3), dtype=np.uint8), (0, 0), 3),
                        None, 0, 255, cv2.NORM_MINMAX)
    for ext in (".jpg", ".png"):
        path = str(tmp_path / f"x{ext}")
        Image.fromarray(img).save(path, quality=95)
        data = image_files.read_bytes(path)
        assert image_files.encoded_size(data) == (65, 47)
        full, half = image_files.decode_rgb(data, path), image_files.decode_rgb(data, path, halved=True)
        assert full.shape == (47, 65, 3) and half.shape == (24, 33, 3)
        assert np.abs(half.astype(int) - im.halve(full).astype(int))[2:-2, 2:-2].mean() < (6 if ext == ".jpg" else 1e-9)
    assert image_files.encoded_size(b"GIF89a....") is None
    with pytest.raises(FileNotFoundError, match="image not found"):
        image_files.read_bytes(tmp_path / "missing.jpg")


# --------------------------------------------------------------------------------------------
# the image cache (--cache-images, D67): the same samples without decoding every epoch
# --------------------------------------------------------------------------------------------

def _samples(d, keys):
    out = []
    for epoch, i, size in keys:
        d.set_epoch(epoch)
        x, t = d[(i, size)]
        out.append((x.numpy().copy(), t.numpy().copy()))
    return out


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_cached_samples_are_the_decoded_ones_pixel_for_pixel(tmp_path, monkeypatch, ext):
    make_linemod(tmp_path, n=3, size=(128, 96), ext=ext)
    monkeypatch.chdir(tmp_path)
    kw = dict(train=True, seed=5, fast=True, jitter=0.2, bg_prob=0.5, bg_dir=_photo_backgrounds(tmp_path / "bg"))
    plain, cached = ds.PoseDataset("LINEMOD/ape/train.txt", **kw), ds.PoseDataset("LINEMOD/ape/train.txt", **kw)
    held = cached.cache_images()
    assert sorted(cached.decoded) == sorted(cached.paths) and plain.decoded == {}
    entry = cached.decoded[cached.paths[0]]
    assert entry.full.shape == (96, 128, 3) and entry.mask.shape == (96, 128)
    assert (entry.half is not None) == (ext == ".jpg")  # the decoder's own 2x reduction, JPEG only
    assert held == sum(e.nbytes for e in cached.decoded.values())
    with pytest.raises(ValueError, match="read-only"):
        entry.full[0, 0] = 1  # a sample cannot write into the cache
    # size 32 shrinks the crop 2x or more (the half-size decode, D49), 96 does not; two epochs each
    keys = [(e, i, size) for e in (0, 1) for i in range(3) for size in (32, 96)]
    for (xa, ta), (xb, tb) in zip(_samples(plain, keys), _samples(cached, keys)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ta, tb)
    os.remove(cached.paths[0])  # the cache reads no file again
    _samples(cached, keys)


def test_cached_multi_object_samples_are_the_decoded_ones(multi_root, monkeypatch):
    root, pools = multi_root
    monkeypatch.chdir(root)
    plain, cached = (ds.MultiObjectDataset("LINEMOD/ape/train.txt", pools, train=True, seed=2, fast=True)
                     for _ in range(2))
    cached.cache_images()
    extras = {p for paths in pools.values() for p in paths}
    assert set(cached.decoded) == set(cached.paths) | extras  # the extra objects' images too
    assert all(e.half is None for e in cached.decoded.values())  # the composition decodes in full
    keys = [(e, i, 160) for e in (0, 1) for i in range(2)]
    for (xa, ta), (xb, tb) in zip(_samples(plain, keys), _samples(cached, keys)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ta, tb)


def test_image_cache_refuses_more_than_its_share_of_free_memory(small, monkeypatch):
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True)
    need = ds.decoded_bytes_estimate(d.paths, True)
    assert need == 3 * (64 * 48 * 4 + 32 * 24 * 3)  # BGR + mask, and a half in case of JPEG
    monkeypatch.setattr(ds, "free_memory_bytes", lambda: int(need / ds.CACHE_RAM_SHARE) - 1)
    with pytest.raises(ds.InputError, match=r"LINEMOD/ape/train.txt: caching its 3 training images decoded needs"):
        d.cache_images()
    assert d.decoded == {}  # refused before decoding anything
    monkeypatch.setattr(ds, "free_memory_bytes", lambda: int(need / ds.CACHE_RAM_SHARE) + 1)
    d.cache_images()
    assert len(d.decoded) == 3
    with pytest.raises(ValueError, match="serves the fast path"):
        ds.PoseDataset("LINEMOD/ape/train.txt", train=True).cache_images()


def test_a_header_that_disagrees_with_the_decode_is_named(small, monkeypatch):
    """The fast path and the image cache both check the decoded size against the header's (one check)."""
    monkeypatch.setattr(image_files, "encoded_size", lambda data: (64, 40))  # the files are 64x48
    monkeypatch.setattr(image_files, "read_gray", lambda path, size, kind="mask": np.zeros(size[::-1], np.uint8))
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True, jitter=0.0)
    with pytest.raises(ds.InputError, match=r"000000\.png: the image decodes to 64x48, its header says 64x40"):
        d[(0, 64)]  # no jitter: the crop does not shrink 2x, so the image is decoded in full
    with pytest.raises(ds.InputError, match=r"000000\.png: the image decodes to 64x48, its header says 64x40"):
        d.cache_images()


def test_image_cache_names_a_bad_file_or_skips_it(small):
    Image.new("L", (10, 10)).save("LINEMOD/ape/mask/0001.png")  # the mask of image 1 has the wrong size
    with pytest.raises(ImageError, match=r"0001\.png: mask is 10x10, expected the image size 64x48"):
        ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True).cache_images()
    d = ds.PoseDataset("LINEMOD/ape/train.txt", train=True, fast=True, skip_bad=True)
    with pytest.warns(UserWarning, match="skipping bad sample 1"):
        d.cache_images()
    assert d.bad_samples == 1 and len(d.decoded) == 2
    assert d[(1, 32)][1].numpy()[1] == d[(2, 32)][1].numpy()[1]  # sample 1 is replaced by the next good one


# --------------------------------------------------------------------------------------------
# issue 25: hostile images are named errors, from the header, before any pixel is decoded
# --------------------------------------------------------------------------------------------

def test_hostile_images_are_image_errors_from_their_headers(tmp_path):
    bomb = hostile.bomb_png(tmp_path / "bomb.png")
    for read in (image_files.read_header, image_files.load_image, image_files.image_size):
        with pytest.raises(ImageError, match=r"bomb\.png: image is (too large to decode|20000x20000 pixels)"):
            read(bomb)
    with pytest.raises(ImageError, match=rf"big\.png: image is 9000x9000 pixels, more than the "
                                         rf"{image_files.MAX_IMAGE_PIXELS:,}"):
        image_files.read_header(hostile.bomb_png(tmp_path / "big.png", 9000))  # under Pillow's limit, over ours
    deep = hostile.png16(tmp_path / "deep.png")
    assert image_files.read_header(deep).mode.startswith("I")
    with pytest.raises(ImageError, match=r"deep\.png: image has 16 or 32 bits per sample \(Pillow mode I"):
        image_files.load_image(deep)  # Pillow's convert('RGB') gave white
    pipe = hostile.fifo(tmp_path / "pipe.jpg")
    for read in (image_files.read_header, image_files.load_image, image_files.read_bytes,
                 lambda p: image_files.read_gray(p, (8, 6))):
        with pytest.raises(ImageError, match=r"pipe\.jpg: (image|mask) is not a regular file"):
            read(pipe)  # opening it waited forever for a writer
    with pytest.raises(FileNotFoundError, match=r"none\.jpg: image not found"):
        image_files.read_header(tmp_path / "none.jpg")


def test_exif_rotation_is_read_and_refused_the_same_way_for_training_and_testing(tmp_path):
    """The fast loader ignored the EXIF rotation as Pillow does; the pre-flights now refuse it (D61)."""
    turned = hostile.rotated_jpeg(tmp_path / "turned.jpg", size=(8, 6), orientation=6)
    header = image_files.read_header(turned)
    assert (header.size, header.orientation) == ((8, 6), 6)
    rgb = image_files.decode_rgb(image_files.read_bytes(turned), turned)
    assert image_files.load_image(turned).size == rgb.shape[1::-1] == (8, 6)  # both the stored pixels
    with pytest.raises(ImageError, match=r"turned\.jpg: image has EXIF orientation 6 \(stored rotated or mirrored\)"):
        image_files.check_image_header(turned)
    plain = hostile.rgb(tmp_path / "plain.png", size=(8, 6))
    assert image_files.check_image_header(plain, size=(8, 6)).orientation == 1
    with pytest.raises(ImageError, match=r"plain\.png: image is 8x6, expected 640x480 \(the \.data size\)"):
        image_files.check_image_header(plain, size=(640, 480), size_from="the .data size")


def test_a_mask_of_another_size_and_a_fifo_in_a_list_are_named(small):
    ds.PoseDataset("LINEMOD/ape/train.txt", train=True)
    os.remove("LINEMOD/ape/labels/000001.txt")
    os.mkfifo("LINEMOD/ape/labels/000001.txt")
    with pytest.raises(ImageError, match=r"000001\.txt: label file is not a regular file .*\(sample 1 of"):
        ds.PoseDataset("LINEMOD/ape/train.txt", train=True)
    os.remove("LINEMOD/ape/labels/000001.txt")
    with pytest.raises(ImageError, match=r"0000\.png: mask is 8x6, expected the image size"):
        hostile.rgb("LINEMOD/ape/mask/0000.png", size=(8, 6))
        image_files.read_gray("LINEMOD/ape/mask/0000.png", image_files.image_size("LINEMOD/ape/JPEGImages/000000.png"))
