"""linemod_format.py: label rows, derived paths, image lists, `.data` files, the split, atomic writes (design §3)."""
import os

import numpy as np
import pytest

import dataset
import linemod_format as lf
import utils
from errors import DataCfgError, InputError, LabelError, LayoutError


def _touch_images(root, obj, n):
    folder = root / "LINEMOD" / obj / "JPEGImages"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:06d}.png").write_bytes(b"")


# -------------------------------------------------------------------------- label rows (design §3.1)

def test_write_and_read_label_rows_round_trip(tmp_path):
    rows = np.random.default_rng(0).uniform(-0.2, 1.2, size=(3, 21))
    rows[:, 0] = [0, 4, 12]
    path = tmp_path / "sub" / "a.txt"
    lf.write_label_rows(path, rows)
    first = path.read_text().splitlines()[0].split()
    assert len(first) == 21 and first[0] == "0.000000" and all(len(v.split(".")[1]) == 6 for v in first)
    back = lf.read_label_rows(path)
    assert back.shape == (3, 21) and back.dtype == np.float64
    np.testing.assert_allclose(back, rows, atol=5e-7)
    lf.write_label_rows(path, rows[0])  # a single row
    assert lf.read_label_rows(path).shape == (1, 21)


def test_read_label_rows_empty_blank_lines_and_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert lf.read_label_rows(empty).shape == (0, 21)
    row = " ".join(["0"] + ["0.5"] * 20)
    ok = tmp_path / "ok.txt"
    ok.write_text(f"\n{row}\n\n{row}\n")
    assert lf.read_label_rows(ok).shape == (2, 21)
    short = tmp_path / "short.txt"
    short.write_text(f"{row}\n" + " ".join(["0.5"] * 20) + "\n")
    with pytest.raises(ValueError, match=r"short\.txt:2: expected 21 numbers per object, found 20"):
        lf.read_label_rows(short)
    nan = tmp_path / "nan.txt"
    nan.write_text(" ".join(["0.5"] * 20 + ["nan"]) + "\n")
    with pytest.raises(ValueError, match=r"nan\.txt:1: expected finite numbers, found NaN or inf"):
        lf.read_label_rows(nan)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["0.5"] * 20 + ["x"]) + "\n")
    with pytest.raises(ValueError, match=r"text\.txt:1: expected 21 numbers"):
        lf.read_label_rows(text)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt: label file not found"):
        lf.read_label_rows(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="expected label rows"):
        lf.write_label_rows(tmp_path / "bad.txt", np.zeros((2, 20)))


def test_label_and_mask_paths_from_the_file_name():
    img = "LINEMOD/ape/JPEGImages/000123.jpg"
    assert lf.label_path(img) == "LINEMOD/ape/labels/000123.txt"
    assert lf.mask_path(img) == "LINEMOD/ape/mask/0123.png"
    assert lf.label_path("/d/x/images/001000.png") == "/d/x/labels/001000.txt"
    assert lf.mask_path("/d/x/images/001000.png") == "/d/x/mask/1000.png"
    # a directory named 00foo is left alone (the original's '/00' replacement would break it)
    assert lf.mask_path("00foo/ape/JPEGImages/000123.jpg") == "00foo/ape/mask/0123.png"
    assert lf.label_path("00foo/ape/JPEGImages/000123.jpg") == "00foo/ape/labels/000123.txt"
    assert lf.mask_path("data/00/images/12.jpg") == "data/00/mask/12.png"
    with pytest.raises(ValueError, match="mask path would be the image itself"):
        lf.mask_path("flat/123.png")
    assert lf.occlusion_label_path("LINEMOD/benchvise/JPEGImages/000005.jpg", "ape") == \
        "LINEMOD/ape/labels_occlusion/000005.txt"


def test_read_list_resolves_against_root_and_ancestors(tmp_path, monkeypatch):
    _touch_images(tmp_path, "ape", 3)
    lst = tmp_path / "LINEMOD" / "ape" / "train.txt"
    lst.write_text("\nLINEMOD/ape/JPEGImages/000000.png\n\n  LINEMOD/ape/JPEGImages/000001.png  \n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    paths = lf.read_list(lst)  # not found from the current directory: found from the list's grand-parent
    names = ("LINEMOD/ape/JPEGImages/000000.png", "LINEMOD/ape/JPEGImages/000001.png")
    assert paths == [str(tmp_path / n) for n in names]
    assert lf.read_list(lst, root=tmp_path) == [os.path.join(str(tmp_path), n) for n in names]
    monkeypatch.chdir(tmp_path)
    assert lf.read_list(lst) == ["LINEMOD/ape/JPEGImages/000000.png", "LINEMOD/ape/JPEGImages/000001.png"]
    # multi-object style: '../LINEMOD/...' relative to a sibling folder of LINEMOD
    multi = tmp_path / "multi" / "cfg"
    multi.mkdir(parents=True)
    (multi / "train_occlusion.txt").write_text("../LINEMOD/ape/JPEGImages/000002.png")
    assert lf.read_list(multi / "train_occlusion.txt") == [str(tmp_path / "LINEMOD/ape/JPEGImages/000002.png")]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.txt: the image list is empty"):
        lf.read_list(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt: image list not found"):
        lf.read_list(tmp_path / "nope.txt")


def test_two_objects_on_one_line_read_as_two_rows(tmp_path):
    """design D40: the original cuts all numbers into rows of 21, so a line may hold whole objects."""
    rows = np.arange(2 * 21, dtype=np.float64).reshape(2, 21) / 100
    rows[:, 0] = [0, 1]  # class ids
    one_line = tmp_path / "one_line.txt"
    one_line.write_text(" ".join(f"{v:.6f}" for v in rows.ravel()) + "\n")
    two_lines = tmp_path / "two_lines.txt"
    lf.write_label_rows(two_lines, rows)
    np.testing.assert_array_equal(lf.read_label_rows(one_line), lf.read_label_rows(two_lines))
    assert lf.read_label_rows(one_line).shape == (2, 21)
    # a line with a partial object is refused even when the file's total is a multiple of 21
    split = tmp_path / "split.txt"
    split.write_text(" ".join(["0.5"] * 20) + "\n" + " ".join(["0.5"] * 22) + "\n")
    with pytest.raises(LabelError, match=r"split\.txt:1: expected 21 numbers per object, found 20"):
        lf.read_label_rows(split)


def test_bad_rows_raise_label_error_naming_file_and_row(tmp_path):
    for text, message in ((" ".join(["0"] + ["0.5"] * 20) + "\n" + " ".join(["0.5"] * 20 + ["inf"]) + "\n",
                           r"inf\.txt:2: expected finite numbers"),
                          (" ".join(["0.5"] * 10), r"short\.txt:1: expected 21 numbers per object, found 10")):
        path = tmp_path / ("inf.txt" if "inf" in text else "short.txt")
        path.write_text(text)
        with pytest.raises(LabelError, match=message) as err:
            lf.read_label_rows(path)
        assert isinstance(err.value, InputError)
    rows = np.zeros((3, 21))
    rows[1, 5] = np.nan
    with pytest.raises(LabelError, match=r"bad\.txt: label row 1 contains NaN or inf"):
        lf.write_label_rows(tmp_path / "bad.txt", rows)
    assert not (tmp_path / "bad.txt").exists()


def test_empty_rows_write_an_empty_file(tmp_path):
    lf.write_label_rows(tmp_path / "e.txt", np.zeros((0, 21)))
    assert (tmp_path / "e.txt").read_text() == ""
    assert lf.read_label_rows(tmp_path / "e.txt").shape == (0, 21)


def test_occlusion_order_round_trip():
    row = np.arange(21, dtype=np.float64)
    occ = lf.to_occlusion_order(row)
    assert occ[0] == 0 and occ[19] == 19 and occ[20] == 20
    np.testing.assert_array_equal(lf.from_occlusion_order(occ), row)
    pts = occ[1:19].reshape(9, 2)
    np.testing.assert_array_equal(pts[list(lf.OCCLUSION_PERM)], row[1:19].reshape(9, 2))


def test_dataset_keeps_the_original_names():
    assert dataset.read_truths is lf.read_label_rows and dataset.write_truths is lf.write_label_rows
    assert utils.read_data_cfg is lf.read_data_cfg


# -------------------------------------------------------------------------- paths (design §3.4, D31)

def test_tools_and_loader_derive_the_same_paths():
    img = "LINEMOD/obj00/JPEGImages/000012.jpg"
    assert lf.label_path(img) == "LINEMOD/obj00/labels/000012.txt"
    assert lf.label_path(img, "labels_occlusion") == "LINEMOD/obj00/labels_occlusion/000012.txt"
    assert lf.mask_path(img) == "LINEMOD/obj00/mask/0012.png"
    assert lf.label_path("elsewhere/000012.jpg") == "elsewhere/000012.txt"  # beside the image, as the original
    assert lf.image_stem(12) == "000012" and lf.mask_stem("012345") == "012345"
    with pytest.raises(LayoutError):
        lf.mask_path("flat/123.png")


# -------------------------------------------------------------------------- .data files (design §3.2)

def test_data_cfg_round_trip_and_errors(tmp_path):
    K = utils.get_camera_intrinsic(320.5, 240.25, 600.0, 601.0)
    items = lf.data_cfg_items("drill", "LINEMOD/drill", 0.123456789, K, 800, 600)
    lf.write_data_cfg(tmp_path / "cfg" / "drill.data", items)
    opts = lf.read_data_cfg(tmp_path / "cfg" / "drill.data")
    assert {k: opts[k] for k, _ in items} == dict(items)
    assert float(opts["diam"]) == 0.123456789
    np.testing.assert_array_equal(utils.camera_from_data_cfg(opts)[0], K)
    for key, value in (("a=b", "1"), ("", "x"), ("name", "two\nlines")):
        with pytest.raises(DataCfgError, match="cannot write the .data entry"):
            lf.write_data_cfg(tmp_path / "bad.data", [(key, value)])
    assert not (tmp_path / "bad.data").exists()
    (tmp_path / "broken.data").write_text("name = x\nno equals here\n")
    with pytest.raises(DataCfgError, match=r"broken\.data:2: expected 'key = value'"):
        lf.read_data_cfg(tmp_path / "broken.data")


# -------------------------------------------------------------------------- split

def test_split_flags_from_sets_and_seeded():
    keys = ["a", "b", "c", "d"]
    np.testing.assert_array_equal(lf.split_flags(keys, 0.5, 0, train={"a", "b"}), [False, False, True, True])
    np.testing.assert_array_equal(lf.split_flags(keys, 0.5, 0, test={"d"}), [False, False, False, True])
    with pytest.raises(LayoutError, match="'d' is in neither tr.txt nor te.txt"):
        lf.split_flags(keys, 0.5, 0, train={"a", "b"}, test={"c"}, lists=("tr.txt", "te.txt"))
    flags = lf.split_flags(keys, 0.25, [7, 2])
    assert flags.sum() == 1 and np.array_equal(flags, lf.split_flags(keys, 0.25, [7, 2]))
    assert lf.split_flags(keys, 0.01, 0).sum() == 1 and lf.split_flags(keys, 0.99, 0).sum() == 3
    with pytest.raises(LayoutError, match="--test-fraction must be in"):
        lf.split_flags(keys, 1.5, 0)


# -------------------------------------------------------------------------- atomic writes

def test_atomic_write_replaces_in_one_step_and_cleans_up(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    with lf.atomic_write(path, "wb") as f:
        f.write(b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="boom"):
        with lf.atomic_write(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"first"  # the old file is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]  # and no temporary file is left
    lf.write_text(tmp_path / "t.txt", "a\nb\n")
    assert (tmp_path / "t.txt").read_bytes() == b"a\nb\n"
    with pytest.raises(ValueError, match="mode must be"):
        with lf.atomic_write(tmp_path / "x", "a"):
            pass


def test_append_text_copy_file_and_write_bytes_replace_whole_files(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    lf.append_text(log, "a,b\r\n")
    lf.append_text(log, "1,2\r\n")
    assert log.read_bytes() == b"a,b\r\n1,2\r\n"  # bytes kept as they are (csv's \r\n)
    inode = log.stat().st_ino
    lf.append_text(log, "3,4\r\n")
    assert log.stat().st_ino != inode  # a new file replaced the old one: never changed in place
    real = lf.os.replace
    monkeypatch.setattr(lf.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        lf.append_text(log, "5,6\r\n")
    monkeypatch.setattr(lf.os, "replace", real)
    assert log.read_bytes() == b"a,b\r\n1,2\r\n3,4\r\n" and sorted(os.listdir(tmp_path)) == ["log.csv"]
    (tmp_path / "target").write_bytes(b"source of a link")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    lf.copy_file(log, tmp_path / "link")  # replaces the link, never writes through it
    assert (tmp_path / "target").read_bytes() == b"source of a link"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_bytes() == log.read_bytes()


def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        lf.write_text(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o644


# -------------------------------------------------------------------------- label values (issue 16)

@pytest.mark.parametrize("change, message", [
    ({0: "-1"}, r"class id -1; expected a whole number >= 0"),
    ({0: "0.5"}, r"class id 0.5; expected a whole number >= 0"),
    ({1: "320"}, r"x0 = 320 is more than 10 image sizes outside the image"),  # pixels, not normalised
    ({8: "-10.5"}, r"y3 = -10.5 is more than 10 image sizes outside"),
    ({20: "480"}, r"x/y range 0.5 480; expected extents of at most 20"),
])
def test_label_values_far_outside_the_image_are_errors(tmp_path, change, message):
    """Labels in pixels or with a negative class were accepted silently (issue 16)."""
    values = ["0"] + ["0.5"] * 20
    for i, v in change.items():
        values[i] = v
    f = tmp_path / "000000.txt"
    f.write_text(" ".join(["0"] + ["0.5"] * 20) + "\n" + " ".join(values) + "\n")
    with pytest.raises(LabelError, match=rf"000000\.txt:2: {message}"):
        lf.read_label_rows(f)
    # corners may leave the image (design §3.1): -9.9 and 10 are legal
    f.write_text(" ".join(["3"] + ["-9.9", "10"] * 9 + ["19.9", "0"]) + "\n")
    assert lf.read_label_rows(f).shape == (1, 21)


def test_binary_label_and_list_files(tmp_path):
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\x00\xff\xfe\x01")
    with pytest.raises(LabelError, match=r"bin\.txt: not a text file"):
        lf.read_label_rows(f)
    with pytest.raises(InputError, match=r"bin\.txt: not a text file"):
        lf.read_list(f)





def test_an_all_zero_row_is_refused_and_oddities_are_found(tmp_path):
    """x0 = 0 marks an empty target slot: the row (and every later one) was silently dropped (issue 25)."""
    f = tmp_path / "z.txt"
    f.write_text(" ".join(["0"] * 21) + "\n")
    with pytest.raises(LabelError, match=r"z\.txt:1: x0 = 0, which marks an empty slot in the targets"):
        lf.read_label_rows(f)
    row = np.r_[0, np.full(18, 0.5), 0.1, 0.1]
    assert not lf.far_outside(row[None])
    row[3] = 5.5  # x1, five image widths to the right
    assert lf.far_outside(row[None])
    assert lf.duplicates(["a/1.jpg", "a/2.jpg", "a/./1.jpg", "a/2.jpg", "a/1.jpg"]) == ["a/./1.jpg", "a/2.jpg"]
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(LabelError, match=r"pipe\.txt: not a regular file"):
        lf.read_label_rows(tmp_path / "pipe.txt")
