"""What a command wrote: the manifest of an output folder, checked before any file is written (design D60).

The generator, the BOP converter and the label tool write only files they own. Before writing, a
run lists every file it will write (`Outputs.plan`) and `Outputs.check` refuses, naming each file:

- a planned file that exists and that this tool did not write: no manifest entry, another
  tool's entry, or changed since (its size or sha256 differs from the entry);
- without `overwrite`, a planned file that an earlier run of this tool wrote;
- with `overwrite`, replacing or removing one of the run's own inputs.

`Outputs.begin` then removes the files it will replace (with `overwrite`, also this tool's older
files of the same groups that this run no longer writes, unless changed since) and records the
plan as unfinished; `Outputs.finish` records every written file's size and sha256. The manifest is
`<root>/ssp_manifest.json`:

    {"format": 1,
     "files": {"cfg/drill.data": {"tool": "make_labels.py", "group": "drill", "bytes": 312, "sha256": "..."},
               "LINEMOD/drill/JPEGImages/000000.jpg": {..., "link": "/photos/a.jpg"},   # a symlink
               "LINEMOD/drill/labels/000001.txt": {..., "unfinished": true}},           # being written
     "runs": {"make_labels.py:drill": {"params": {...}, "finished": true}}}

A group is what one `--overwrite` may replace as a whole: an object of the label tool or the
converter (its name), the whole synthetic set of the generator.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from errors import OverwriteError
from linemod_format import write_text

MANIFEST = "ssp_manifest.json"
MANIFEST_FORMAT = 1
MAX_NAMED = 20  # a refusal names this many files, then the folders of the others
HASH_CHUNK = 1 << 20


def read_manifest(root) -> dict:
    """The manifest of `root` (an empty one when there is none); OverwriteError for an unreadable one."""
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
    return manifest


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
    """Does the file still hold what the manifest entry recorded (an unfinished entry always does)?"""
    if entry.get("unfinished"):
        return True
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
