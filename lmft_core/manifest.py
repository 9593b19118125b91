"""The manifest: the dataset format every lmft pipeline takes.

A manifest is a CSV file with header ``path,label,domain,split`` and an optional ``video_id``:

- ``path``: the video file, absolute or relative to the manifest's folder;
- ``label``: a class name, required on source rows, optional on target rows (target labels are
  used only for evaluation, never for training, and must be source classes);
- ``domain``: ``source`` or ``target``;
- ``split``: ``train``, ``val`` or ``test``;
- ``video_id``: unique id; default: the path relative to the manifest folder without its suffix.

Class names are the labels as written; their CLIP prompt form replaces ``_`` with spaces
(:func:`prompt_name`). The class list is the sorted set of source labels; a label's index in it is
its ``label_index``.

``python -m lmft_core.manifest PATH`` validates a manifest and prints a summary; on a bad manifest
it lists every problem with its line number and exits non-zero.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lmft_core.files import atomic_write

REQUIRED_COLUMNS = ("path", "label", "domain", "split")
COLUMNS = (*REQUIRED_COLUMNS, "video_id")
DOMAINS = ("source", "target")
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest has problems; ``problems`` lists each one with its line number."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class ManifestRow:
    """One video. ``line`` is its line number in the CSV file (the header is line 1)."""

    line: int
    video_id: str
    path: str  # absolute
    label: str | None
    domain: str
    split: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    rows: tuple[ManifestRow, ...]
    classes: tuple[str, ...]

    def label_index(self, label: str | None) -> int | None:
        return None if label is None else self.classes.index(label)

    def counts(self) -> dict[tuple[str, str], Counter]:
        """(domain, split) -> Counter of labels (``None`` for unlabelled rows)."""
        out: dict[tuple[str, str], Counter] = {}
        for r in self.rows:
            out.setdefault((r.domain, r.split), Counter())[r.label] += 1
        return out

    def summary(self) -> str:
        lines = [f"{self.path}: {len(self.rows)} videos, {len(self.classes)} classes"]
        for (domain, split), labels in sorted(self.counts().items()):
            per_class = ", ".join(f"{k if k is not None else '(unlabelled)'}={v}" for k, v in sorted(labels.items(), key=lambda kv: str(kv[0])))
            lines.append(f"  {domain:6s} {split:5s} {sum(labels.values()):6d}  {per_class}")
        return "\n".join(lines)


def prompt_name(label: str) -> str:
    """The CLIP prompt form of a class name: ``ride_bike`` -> ``ride bike``."""
    return label.replace("_", " ").strip()


def default_video_id(path: str, root: Path) -> str:
    p = Path(path)
    try:
        p = p.relative_to(root)
    except ValueError:
        pass
    return p.with_suffix("").as_posix().lstrip("/")


def load_manifest(path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a manifest; raise :class:`ManifestError` listing every problem at once."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, ["manifest file not found"])
    root = path.resolve().parent
    problems: list[str] = []
    raw: list[tuple[int, dict[str, str]]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a BOM
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(path, [f"line 1: missing column(s) {missing}; header is {header}"])
        reader.fieldnames = header
        for rec in reader:
            raw.append((reader.line_num, {k: (v or "").strip() for k, v in rec.items() if k is not None}))

    rows: list[ManifestRow] = []
    for line, rec in raw:
        domain, split, label, rel = rec["domain"], rec["split"], rec["label"] or None, rec["path"]
        if domain not in DOMAINS:
            problems.append(f"line {line}: unknown domain {domain!r} (expected one of {list(DOMAINS)})")
        if split not in SPLITS:
            problems.append(f"line {line}: unknown split {split!r} (expected one of {list(SPLITS)})")
        if domain == "source" and label is None:
            problems.append(f"line {line}: source row without a label")
        if not rel:
            problems.append(f"line {line}: empty path")
            continue
        abs_path = str(Path(rel) if Path(rel).is_absolute() else root / rel)
        if check_files:
            if not os.path.exists(abs_path):
                problems.append(f"line {line}: file not found: {abs_path}")
            elif not os.path.isfile(abs_path):
                problems.append(f"line {line}: not a regular file: {abs_path}")
            elif not os.access(abs_path, os.R_OK):
                problems.append(f"line {line}: file not readable: {abs_path}")
        video_id = rec.get("video_id") or default_video_id(rel, root)
        rows.append(ManifestRow(line, video_id, abs_path, label, domain, split))

    first_line: dict[str, int] = {}
    for r in rows:
        if r.video_id in first_line:
            problems.append(f"line {r.line}: duplicate video_id {r.video_id!r} (first on line {first_line[r.video_id]})")
        else:
            first_line[r.video_id] = r.line
    classes = tuple(sorted({r.label for r in rows if r.domain == "source" and r.label is not None}))
    for r in rows:
        if r.domain == "target" and r.label is not None and r.label not in classes:
            problems.append(f"line {r.line}: target label {r.label!r} is not a source class")
    for domain in DOMAINS:
        if not any(r.domain == domain for r in rows):
            problems.append(f"domain {domain!r} has no rows")
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path=path, rows=tuple(rows), classes=classes)


def write_manifest(rows: Iterable[Mapping[str, object]], path: str | Path) -> Path:
    """Write rows (mappings with the manifest columns) atomically as a manifest CSV.

    Paths inside the manifest's folder are written relative to it, others absolute; a missing
    ``video_id`` is derived from the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    with atomic_write(path, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for rec in rows:
            p = Path(str(rec["path"]))
            if p.is_absolute():
                try:
                    p = p.resolve().relative_to(root)
                except ValueError:
                    pass
            label = rec.get("label")
            writer.writerow({
                "path": p.as_posix(),
                "label": "" if label is None else label,
                "domain": rec["domain"],
                "split": rec["split"],
                "video_id": rec.get("video_id") or default_video_id(p.as_posix(), root),
            })
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmft_core.manifest", description="Validate an lmft manifest and print a summary.")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--no-check-files", action="store_true", help="do not check that the video files exist")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, check_files=not args.no_check_files)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(manifest.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
