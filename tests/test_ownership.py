"""ownership.py: the manifest of what a tool wrote, and the refusals before it writes (design D60)."""
import json
import os

import pytest

from errors import OverwriteError
from ownership import MANIFEST, MAX_NAMED, Outputs, read_manifest


def write_run(root, tool, group, files: dict, overwrite=False, inputs=()):
    """One tool run: plan `files` ({relative path: text}), check, write, record."""
    out = Outputs(root, tool)
    out.plan([root / rel for rel in files], group)
    out.check(overwrite, inputs=inputs)
    out.begin({"n": len(files)})
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    out.finish()
    return out


def test_the_manifest_records_sizes_hashes_and_the_run(tmp_path):
    write_run(tmp_path, "tool.py", "a", {"cfg/a.data": "x = 1\n", "LINEMOD/a/l.txt": "1\n"})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    entry = manifest["files"]["cfg/a.data"]
    assert entry["tool"] == "tool.py" and entry["group"] == "a" and entry["bytes"] == 6 and len(entry["sha256"]) == 64
    assert manifest["runs"]["tool.py:a"] == {"params": {"n": 2}, "finished": True}


def test_a_file_the_tool_did_not_write_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg/a.data").write_text("the user's\n")
    write_run(tmp_path, "other.py", "b", {"cfg/b.data": "b\n"})
    for overwrite in (False, True):
        with pytest.raises(OverwriteError) as exc:
            write_run(tmp_path, "tool.py", "a", {"cfg/a.data": "x\n", "cfg/b.data": "y\n", "cfg/c.data": "z\n"},
                      overwrite=overwrite)
        message = str(exc.value)
        assert "refused, nothing was written" in message
        assert f"{tmp_path / 'cfg/a.data'} (not written by tool.py)" in message
        assert f"{tmp_path / 'cfg/b.data'} (written by other.py)" in message
    assert (tmp_path / "cfg/a.data").read_text() == "the user's\n" and not (tmp_path / "cfg/c.data").exists()


def test_own_files_need_overwrite_and_an_edited_one_is_never_replaced(tmp_path):
    write_run(tmp_path, "tool.py", "a", {"cfg/a.data": "1\n", "a/1.txt": "1\n"})
    with pytest.raises(OverwriteError, match=r"earlier run of tool.py \(--overwrite replaces them\):\n.*a/1.txt"):
        write_run(tmp_path, "tool.py", "a", {"cfg/a.data": "2\n", "a/1.txt": "2\n"})
    write_run(tmp_path, "tool.py", "a", {"cfg/a.data": "2\n", "a/1.txt": "2\n"}, overwrite=True)
    assert (tmp_path / "cfg/a.data").read_text() == "2\n"
    (tmp_path / "cfg/a.data").write_text("edited by the user\n")
    with pytest.raises(OverwriteError, match=r"cfg/a.data \(changed since tool.py wrote it\)"):
        write_run(tmp_path, "tool.py", "a", {"cfg/a.data": "3\n"}, overwrite=True)
    assert (tmp_path / "cfg/a.data").read_text() == "edited by the user\n"


def test_overwrite_removes_only_its_older_unchanged_files_of_the_same_group(tmp_path):
    write_run(tmp_path, "tool.py", "a", {"a/1.txt": "1\n", "a/2.txt": "2\n", "a/3.txt": "3\n"})
    write_run(tmp_path, "tool.py", "b", {"b/1.txt": "1\n"})
    (tmp_path / "a/3.txt").write_text("edited\n")
    (tmp_path / "a/mine.txt").write_text("the user's\n")
    out = write_run(tmp_path, "tool.py", "a", {"a/1.txt": "new\n"}, overwrite=True)
    assert not (tmp_path / "a/2.txt").exists()  # its own, no longer written: removed
    assert out.kept == ["a/3.txt"] and (tmp_path / "a/3.txt").read_text() == "edited\n"
    assert (tmp_path / "a/mine.txt").is_file() and (tmp_path / "b/1.txt").is_file()
    assert "a/2.txt" not in read_manifest(tmp_path)["files"]


def test_overwrite_never_replaces_or_removes_an_input(tmp_path):
    write_run(tmp_path, "tool.py", "a", {"a/img.jpg": "pixels\n", "a/old.jpg": "old\n"})
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a/img.jpg")
    for inputs in ([tmp_path / "a/img.jpg"], [tmp_path / "link.jpg"], [tmp_path / "a/old.jpg"]):
        with pytest.raises(OverwriteError, match=r"inputs of this run .*\n.*a/(img|old)\.jpg"):
            write_run(tmp_path, "tool.py", "a", {"a/img.jpg": "new\n"}, overwrite=True, inputs=inputs)
    assert (tmp_path / "a/img.jpg").read_text() == "pixels\n" and (tmp_path / "a/old.jpg").is_file()


def test_an_interrupted_run_is_recorded_as_unfinished_and_is_its_own(tmp_path):
    out = Outputs(tmp_path, "tool.py")
    out.plan([tmp_path / "a/1.txt", tmp_path / "a/2.txt"], "a")
    out.check()
    out.begin({"n": 2})
    (tmp_path / "a").mkdir()
    (tmp_path / "a/1.txt").write_text("half")  # then the run is killed
    assert read_manifest(tmp_path)["runs"]["tool.py:a"]["finished"] is False
    with pytest.raises(OverwriteError, match="earlier run of tool.py"):
        write_run(tmp_path, "tool.py", "a", {"a/1.txt": "1\n", "a/2.txt": "2\n"})
    write_run(tmp_path, "tool.py", "a", {"a/1.txt": "1\n", "a/2.txt": "2\n"}, overwrite=True)
    assert (tmp_path / "a/1.txt").read_text() == "1\n"


def test_a_long_refusal_names_the_first_files_and_the_folders_of_the_rest(tmp_path):
    files = {f"d{i % 2}/{i:03d}.txt": "x" for i in range(MAX_NAMED + 5)}
    for rel in files:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("user")
    with pytest.raises(OverwriteError) as exc:
        write_run(tmp_path, "tool.py", "a", files)
    lines = str(exc.value).splitlines()
    # sorted: d0's 13 files and 7 of d1's are named, the other 5 are all in d1
    assert len(lines) == 2 + MAX_NAMED and lines[-1] == f"  ... and 5 more in {tmp_path / 'd1'}"


def test_an_unreadable_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(OverwriteError, match=f"{MANIFEST}: not a readable manifest"):
        Outputs(tmp_path, "tool.py")
    assert os.listdir(tmp_path) == [MANIFEST]
