"""What a command wrote: the manifest of an output folder, checked before any file is written (design D60).

The generator, the BOP converter and the label tool write only files they own. Before writing, a
run lists every file it will write (`Outputs.plan`) and `Outputs.check` refuses, naming each file:

- a planned file that exists and that this tool did not write: no manifest entry, another
  tool's entry, or changed since (its size or sha256 differs from the entry);
- without `overwrite`, a planned file that an earlier run of this tool wrote;
- with `overwrite`, replacing or removing one of the run's own inputs.

`Outputs.begin` then removes the files it will replace (with `overwrite`, also this tool's older
files of the same groups that this run no longer writes, unless changed since) and records the
plan as unfinished; `Outputs.finish` records every written file's size and sha256. A run that
ends early inside `Outputs.writing` (an error, Ctrl-C) records the size and sha256 of what it
wrote, still marked unfinished: an unfinished entry is the tool's own only when its file still
matches them, so a run killed outright leaves files that a later run names and never removes.
The manifest is `<root>/ssp_manifest.json`:

    {"format": 1,
     "files": {"cfg/drill.data": {"tool": "make_labels.py", "group": "drill", "bytes": 312, "sha256": "..."},
               "LINEMOD/drill/JPEGImages/000000.jpg": {..., "link": "/photos/a.jpg"},   # a symlink
               "LINEMOD/drill/labels/000001.txt": {..., "unfinished": true}},           # being written
     "runs": {"make_labels.py:drill": {"params": {...}, "finished": true}}}

A manifest names only files inside its own folder: every key is a relative, normalised POSIX path
(no `..`, no absolute path) whose folders do not lead out of the root through a symbolic link.
`read_manifest` refuses any other manifest, naming it and the entry, before anything is removed:
a manifest is a file anyone could have edited, and what it names is what `--overwrite` deletes.

A group is what one `--overwrite` may replace as a whole: an object of the label tool or the
converter (its name), the whole synthetic set of the generator.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from errors import OverwriteError, deferred_interrupts
from linemod_format import write_text

MANIFEST = "ssp_manifest.json"
MANIFEST_FORMAT = 1
MAX_NAMED = 20  # a refusal names this many files, then the folders of the others
HASH_CHUNK = 1 << 20


def read_manifest(root) -> dict:
    """The manifest of `root` (an empty one when there is none).

    OverwriteError naming the manifest for one that cannot be read or is malformed (`files` or
    `runs` not a mapping, an entry not a mapping, a field of the wrong type), and for an entry
    naming a file outside `root` (`entry_problem`): nothing is removed on its word."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "files": {}, "runs": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OverwriteError(f"{path}: not a readable manifest ({exc}); nothing was written") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise OverwriteError(f"{path}: manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
                             f"; this version reads format {MANIFEST_FORMAT}")
    manifest.setdefault("files", {})
    manifest.setdefault("runs", {})
    for key in ("files", "runs"):
        if not isinstance(manifest[key], dict):
            raise OverwriteError(f"{path}: malformed manifest: '{key}' is a {type(manifest[key]).__name__}, "
                                 f"not a mapping; nothing was written or removed")
    folders: dict[str, str] = {}  # the realpath of each folder the entries name, resolved once
    for rel, entry in manifest["files"].items():
        why = entry_problem(root, rel, entry, folders)
        if why:
            raise OverwriteError(f"{path}: refused: the entry {rel!r} {why}; a manifest names only files inside "
                                 f"its own folder, so nothing was written or removed (move the manifest away "
                                 f"if this folder is yours)")
    for name, run in manifest["runs"].items():
        if not (isinstance(run, dict) and isinstance(run.get("params"), dict)
                and isinstance(run.get("finished"), bool)):
            raise OverwriteError(f"{path}: malformed manifest: the run {name!r} is not "
                                 f"{{'params': {{...}}, 'finished': true|false}}; nothing was written or removed")
    return manifest


ENTRY_FIELDS = {"tool": str, "group": str, "bytes": int, "sha256": str, "link": str, "unfinished": bool}


def entry_problem(root, rel, entry, folders: dict | None = None) -> str | None:
    """Why a manifest entry (`rel`: its key, `entry`: its value) is refused, or None.

    A key is a relative, normalised POSIX path inside `root` ('a/b.txt', never '../b', '/b',
    'a/./b', 'a//b' or '.'), and no folder on its way is a symbolic link out of `root`; the
    fields are those of `file_record` plus 'tool', 'group' and 'unfinished', of their types.
    folders: realpaths already resolved ({'': the root's, folder: its}), filled in as it goes."""
    if not isinstance(rel, str) or not rel:
        return "is not a file name"
    if "\\" in rel or "\0" in rel or rel.startswith("/") or posixpath.isabs(rel):
        return "is an absolute path" if rel.startswith("/") else "is not a relative POSIX path"
    parts = rel.split("/")
    if ".." in parts:
        return "leads out of the folder ('..')"
    if posixpath.normpath(rel) != rel or rel == ".":
        return f"is not a normalised path (it would be {posixpath.normpath(rel)!r})"
    if rel == MANIFEST:
        return "is the manifest itself"
    folders = {} if folders is None else folders
    top = folders.get("") or folders.setdefault("", os.path.realpath(root))
    folder = posixpath.dirname(rel)
    if folder not in folders:
        folders[folder] = os.path.realpath(os.path.join(top, folder))
    parent = folders[folder]
    if os.path.commonpath([top, parent]) != top:
        return f"lies behind a symbolic link that leads out of the folder (to {parent})"
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not a mapping"
    wrong = [k for k, kind in ENTRY_FIELDS.items() if k in entry and (not isinstance(entry[k], kind)
                                                                    or (kind is int and isinstance(entry[k], bool)))]
    if wrong:
        return f"has fields of the wrong type: {', '.join(wrong)}"
    return None


def run_record(root, tool: str, group: str) -> dict | None:
    """{'params', 'finished'} of the last run of `tool` for `group` in `root`, or None."""
    return read_manifest(root)["runs"].get(f"{tool}:{group}")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """What the manifest keeps of a written file: its link target, or its size and sha256."""
    if path.is_symlink():
        return {"link": os.readlink(path)}
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def _unchanged(path: Path, entry: dict) -> bool:
    """Does the file still hold what the manifest entry recorded? An unfinished entry without a
    record (its run was killed before it could record what it wrote) never does."""
    if "link" in entry:
        return path.is_symlink() and os.readlink(path) == entry["link"]
    if path.is_symlink() or not path.is_file() or path.stat().st_size != entry.get("bytes"):
        return False
    return sha256(path) == entry.get("sha256")


def _same_file_keys(path) -> set[str]:
    """The names under which a path is the same file: as given (its folder resolved) and fully resolved."""
    path = Path(path)
    return {os.path.join(os.path.realpath(path.parent), path.name), os.path.realpath(path)}


def _name_all(paths: list[str]) -> str:
    """One line per file, the first MAX_NAMED of them; then the count and folders of the others."""
    lines = [f"  {p}" for p in paths[:MAX_NAMED]]
    rest = paths[MAX_NAMED:]
    if rest:
        folders = sorted({str(Path(p.split(" (")[0]).parent) for p in rest})
        lines.append(f"  ... and {len(rest)} more in {', '.join(folders)}")
    return "\n".join(lines)


class Outputs:
    """The files one run of `tool` writes under `root`, checked and recorded in the root's manifest."""

    def __init__(self, root, tool: str):
        self.root, self.tool = Path(root), tool
        self.manifest = read_manifest(self.root)
        self.planned: dict[str, str] = {}  # relative path -> group
        self.replace: list[str] = []  # planned files of an earlier run of this tool (removed by begin)
        self.stale: list[str] = []  # with overwrite: this tool's older files of these groups, no longer written
        self.kept: list[str] = []  # with overwrite: older files of these groups changed since, left in place

    def rel(self, path) -> str:
        """`path`, a file under the root (`root / ...`), as the manifest's relative POSIX path."""
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))).as_posix()

    def plan(self, paths: Iterable, group: str) -> None:
        """Add files this run will write (paths under the root: `root / 'cfg' / 'x.data'`)."""
        for p in paths:
            self.planned[self.rel(p)] = group

    def why_not_mine(self, rel: str) -> str | None:
        """Why the existing file `rel` is not this tool's to replace, or None when it is."""
        entry = self.manifest["files"].get(rel)
        if entry is None:
            return f"not written by {self.tool}"
        if entry.get("tool") != self.tool:
            return f"written by {entry.get('tool')}"
        if entry.get("unfinished") and "sha256" not in entry and "link" not in entry:
            return (f"left by a run of {self.tool} that was killed before it recorded what it wrote; "
                    f"remove it by hand if it is not yours")
        if not _unchanged(self.root / rel, entry):
            return f"changed since {self.tool} wrote it"
        return None

    def check(self, overwrite: bool = False, inputs: Iterable = ()) -> None:
        """Refuse (OverwriteError naming each file) before anything is written; see the module docstring."""
        foreign, own = [], []
        for rel in sorted(self.planned):
            if os.path.lexists(self.root / rel):
                why = self.why_not_mine(rel)
                (foreign if why else own).append((rel, why))
        stale, kept = [], []
        if overwrite:
            groups = set(self.planned.values())
            for rel, entry in sorted(self.manifest["files"].items()):
                if (entry.get("tool") == self.tool and entry.get("group") in groups and rel not in self.planned
                        and os.path.lexists(self.root / rel)):
                    (kept if self.why_not_mine(rel) else stale).append(rel)
        problems = []
        if foreign:
            problems.append(f"files that {self.tool} did not write (it never replaces them; move them away or "
                            f"choose another --out):\n" + _name_all([f"{self.root / r} ({why})" for r, why in foreign]))
        if own and not overwrite:
            problems.append(f"files of an earlier run of {self.tool} (--overwrite replaces them):\n"
                            + _name_all([str(self.root / r) for r, _ in own]))
        if overwrite:
            input_keys = set().union(*(_same_file_keys(p) for p in inputs))
            hits = [r for r in [r for r, _ in own] + stale if _same_file_keys(self.root / r) & input_keys]
            if hits:
                problems.append("inputs of this run that --overwrite would replace or remove (copy them elsewhere "
                                "first, or choose another --out):\n" + _name_all([str(self.root / r) for r in hits]))
        if problems:
            raise OverwriteError(f"{self.root}: refused, nothing was written; " + "\n".join(problems))
        self.replace, self.stale, self.kept = [r for r, _ in own], stale, kept

    def begin(self, params: dict | None = None) -> None:
        """After `check`: remove the files this run replaces and record the plan as unfinished.

        `params` (what decides the files, e.g. the generator's sizes) are recorded as the groups' run,
        unfinished until `finish`; without them (a run that only adds files) the run record stays."""
        files = self.manifest["files"]
        for rel in self.replace + self.stale:
            (self.root / rel).unlink()
            files.pop(rel, None)
        for rel, group in self.planned.items():
            files[rel] = {"tool": self.tool, "group": group, "unfinished": True}
        if params is not None:
            for group in set(self.planned.values()):
                self.manifest["runs"][f"{self.tool}:{group}"] = {"params": params, "finished": False}
        self._save()

    @contextlib.contextmanager
    def writing(self, params: dict | None = None):
        """`begin(params)`, the block that writes the files, then `finish`; when the block raises
        (an error, Ctrl-C), `record_unfinished` instead, and the exception goes on."""
        self.begin(params)
        with self.recorded():
            yield self
        self.finish()

    @contextlib.contextmanager
    def recorded(self):
        """A block (after `begin`) that writes planned files: when it raises (an error, Ctrl-C), what
        it wrote is recorded (`record_unfinished`) and the exception goes on."""
        try:
            yield self
        except BaseException:
            self.record_unfinished()
            raise

    def record_unfinished(self) -> None:
        """After a run that ended early: record the size and sha256 of each planned file it wrote,
        still unfinished, so that the next run (with overwrite) knows them as its own. Ctrl-C and
        SIGTERM wait until the manifest is saved (a second Ctrl-C during the clean-up)."""
        with deferred_interrupts():
            files = self.manifest["files"]
            for rel, group in self.planned.items():
                path = self.root / rel
                if path.is_symlink() or path.is_file():
                    files[rel] = {"tool": self.tool, "group": group, "unfinished": True, **file_record(path)}
            self._save()

    def finish(self) -> None:
        """Record the size and sha256 of every planned file that was written (the others are dropped)."""
        files = self.manifest["files"]
        for rel, group in self.planned.items():
            path = self.root / rel
            if os.path.lexists(path):
                files[rel] = {"tool": self.tool, "group": group, **file_record(path)}
            else:
                files.pop(rel, None)
        for group in set(self.planned.values()):
            run = self.manifest["runs"].get(f"{self.tool}:{group}")
            if run is not None:
                run["finished"] = True
        self._save()

    def _save(self) -> None:
        write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")
