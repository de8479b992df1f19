"""ownership.py: the manifest of what a tool wrote, and the refusals before it writes (design D60)."""
import json
import os

import pytest

from errors import OverwriteError
from ownership import MANIFEST, MAX_NAMED, Outputs, read_manifest, sha256


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


def test_an_interrupted_run_records_what_it_wrote_as_unfinished_and_its_own(tmp_path):
    out = Outputs(tmp_path, "tool.py")
    out.plan([tmp_path / "a/1.txt", tmp_path / "a/2.txt"], "a")
    out.check()
    with pytest.raises(KeyboardInterrupt), out.writing({"n": 2}):
        (tmp_path / "a").mkdir()
        (tmp_path / "a/1.txt").write_text("half")
        raise KeyboardInterrupt  # Ctrl-C while the run writes
    manifest = read_manifest(tmp_path)
    assert manifest["runs"]["tool.py:a"]["finished"] is False
    assert manifest["files"]["a/1.txt"]["unfinished"] is True and manifest["files"]["a/1.txt"]["bytes"] == 4
    with pytest.raises(OverwriteError, match="earlier run of tool.py"):
        write_run(tmp_path, "tool.py", "a", {"a/1.txt": "1\n", "a/2.txt": "2\n"})
    write_run(tmp_path, "tool.py", "a", {"a/1.txt": "1\n", "a/2.txt": "2\n"}, overwrite=True)
    assert (tmp_path / "a/1.txt").read_text() == "1\n"
    assert read_manifest(tmp_path)["runs"]["tool.py:a"]["finished"] is True


def test_an_unfinished_entry_is_its_own_only_when_its_size_and_hash_say_so(tmp_path):
    """A run killed outright records nothing of what it wrote: the files are named, never removed;
    and a file changed since an interrupted run recorded it is the user's."""
    out = Outputs(tmp_path, "tool.py")
    out.plan([tmp_path / "a/1.txt", tmp_path / "a/2.txt"], "a")
    out.check()
    out.begin({"n": 2})
    (tmp_path / "a").mkdir()
    (tmp_path / "a/1.txt").write_text("half")  # then the run is killed (SIGKILL: no clean-up)
    (tmp_path / "a/2.txt").write_text("the user's\n")  # a file the run never wrote
    for overwrite in (False, True):
        with pytest.raises(OverwriteError, match=r"(?s)a/1.txt \(left by a run of tool.py that was killed before "
                                                 r"it recorded what it wrote.*a/2.txt \(left by"):
            write_run(tmp_path, "tool.py", "a", {"a/1.txt": "1\n", "a/2.txt": "2\n"}, overwrite=overwrite)
    assert (tmp_path / "a/2.txt").read_text() == "the user's\n" and (tmp_path / "a/1.txt").read_text() == "half"
    out = Outputs(tmp_path, "tool.py")
    out.plan([tmp_path / "b/1.txt"], "b")
    out.check()
    with pytest.raises(KeyboardInterrupt), out.writing({"n": 1}):
        (tmp_path / "b").mkdir()
        (tmp_path / "b/1.txt").write_text("half")
        raise KeyboardInterrupt
    (tmp_path / "b/1.txt").write_text("edited")  # same size, another hash
    with pytest.raises(OverwriteError, match=r"b/1.txt \(changed since tool.py wrote it\)"):
        write_run(tmp_path, "tool.py", "b", {"b/1.txt": "1\n"}, overwrite=True)
    assert (tmp_path / "b/1.txt").read_text() == "edited"


@pytest.mark.parametrize("key, why", [
    ("../victim.txt", r"leads out of the folder \('..'\)"),
    ("a/../../victim.txt", r"leads out of the folder"),
    ("/VICTIM", "is an absolute path"),
    ("a/./b.txt", "is not a normalised path"),
    ("a//b.txt", "is not a normalised path"),
    ("link/victim.txt", "lies behind a symbolic link that leads out of the folder"),
    (MANIFEST, "is the manifest itself"),
])
def test_a_manifest_naming_a_file_outside_its_folder_is_refused_and_nothing_is_removed(tmp_path, key, why):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("the user's\n")
    (root / "link").symlink_to(outside)
    key = key.replace("/VICTIM", str(victim))
    entry = {"tool": "tool.py", "group": "a", "unfinished": True}
    if key == "link/victim.txt":  # even with the size and hash of the file behind the link
        entry.update(bytes=victim.stat().st_size, sha256=sha256(victim))
    (root / MANIFEST).write_text(json.dumps({"format": 1, "files": {key: entry}, "runs": {}}))
    with pytest.raises(OverwriteError, match=rf"{MANIFEST}: refused: the entry '.*' {why}.*; a manifest names only "
                                             r"files inside its own folder"):
        write_run(root, "tool.py", "a", {"a/1.txt": "1\n"}, overwrite=True)
    assert victim.read_text() == "the user's\n" and not (root / "a").exists()


@pytest.mark.parametrize("manifest, message", [
    ({"format": 1, "files": ["a.txt"]}, "malformed manifest: 'files' is a list, not a mapping"),
    ({"format": 1, "files": {}, "runs": []}, "malformed manifest: 'runs' is a list, not a mapping"),
    ({"format": 1, "files": {"a.txt": "tool.py"}}, "the entry 'a.txt' is a str, not a mapping"),
    ({"format": 1, "files": {"a.txt": {"tool": "t", "bytes": "12"}}}, "has fields of the wrong type: bytes"),
    ({"format": 1, "files": {}, "runs": {"t:a": {"params": 3}}}, "the run 't:a' is not"),
])
def test_a_malformed_manifest_is_one_error_naming_it(tmp_path, manifest, message):
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(OverwriteError, match=f"{MANIFEST}: .*{message}"):
        Outputs(tmp_path, "tool.py")
    assert os.listdir(tmp_path) == [MANIFEST]


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
