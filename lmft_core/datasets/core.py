"""The generic benchmark adapter: published folders and split files -> one lmft manifest.

Terms (used by every benchmark module):

- **benchmark**: a named set of domains, classes and split files (UCF-HMDB_full, Daily-DA, ActorShift),
  described by a :class:`Benchmark`; each benchmark module holds one and registers it by name.
- **domain** (of a benchmark): one video collection, e.g. ``ucf101``. An adaptation *direction* picks a
  source and a target domain; their videos become the manifest's ``source`` and ``target`` rows.
- **split file**: a published list of the videos of one domain in one split, one video per line, in the
  benchmark's line format. Its **role** is ``train`` or ``test``; a role is the manifest split of its rows.
- **class table**: the benchmark's class mapping, data in ``data/<benchmark>.csv`` with its source cited:
  the class token a split file writes (``label`` rows) and the original data set's class folder of a
  video (``folder`` rows) -> benchmark class. Target rows keep their label, for evaluation only.

Every problem found (missing root, missing split file or video folder, malformed line, video listed but
absent, ambiguous video name, class that does not map, label contradicting the video's class folder,
video listed twice, two videos with one video id, target class no source video has) is collected and raised at once as a
:class:`DatasetError` whose report gives counts
and first examples per kind. With ``skip_missing`` the rows whose video is absent are left out of the
manifest and written, with their reason, to ``<output>.skipped.csv``; every other problem still fails.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmft_core.files import atomic_write
from lmft_core.manifest import DOMAINS, load_manifest, write_manifest

DATA_DIR = Path(__file__).parent / "data"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".flv", ".mpg", ".mpeg", ".m4v", ".gif")
ROLES = ("train", "test")
# (manifest domain, role): must the split file be there? The source test list is optional.
REQUIRED = {("source", "train"): True, ("source", "test"): False, ("target", "train"): True, ("target", "test"): True}
SKIPPED_COLUMNS = ("split_file", "line", "listed_path", "domain", "split", "label", "reason")
MISSING_VIDEO = "video listed but absent"
EXAMPLES = 5


class DatasetError(ValueError):
    """A benchmark could not be turned into a manifest; ``report`` lists every problem."""

    def __init__(self, report: ProblemReport):
        self.report = report
        super().__init__(report.format())


@dataclass
class ProblemReport:
    """Problems grouped by kind, in the order first seen; each message names its file and line."""

    by_kind: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, message: str) -> None:
        self.by_kind.setdefault(kind, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.by_kind)

    def count(self, kind: str | None = None) -> int:
        return sum(len(v) for k, v in self.by_kind.items() if kind is None or k == kind)

    def format(self, examples: int = EXAMPLES) -> str:
        lines = [f"{self.count()} problem(s):"]
        for kind, messages in self.by_kind.items():
            lines.append(f"  {kind}: {len(messages)}")
            lines.extend(f"    - {m}" for m in messages[:examples])
            if len(messages) > examples:
                lines.append(f"    ... and {len(messages) - examples} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class ClassTable:
    """A benchmark's class mapping (see the module docstring), read from ``data/<name>.csv``."""

    labels: Mapping[tuple[str, str], str]  # (domain or "*", token as written) -> class
    folders: Mapping[tuple[str, str], str]  # (domain, class folder) -> class
    source: Path

    @classmethod
    def load(cls, path: Path) -> ClassTable:
        labels: dict[tuple[str, str], str] = {}
        folders: dict[tuple[str, str], str] = {}
        with path.open(newline="", encoding="utf-8") as f:
            rows = csv.DictReader(line for line in f if line.strip() and not line.lstrip().startswith("#"))
            for n, rec in enumerate(rows, start=2):
                table = {"label": labels, "folder": folders}.get(rec["kind"])
                if table is None or not rec["class"]:
                    raise ValueError(f"{path}: data row {n}: kind must be label or folder and class non-empty: {rec}")
                table[(rec["domain"], rec["key"])] = rec["class"]
        return cls(labels, folders, path)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels.values())))

    def label(self, domain: str, token: str) -> str | None:
        return self.labels.get((domain, token), self.labels.get(("*", token)))

    def folder(self, domain: str, name: str) -> str | None:
        return self.folders.get((domain, name))


@dataclass(frozen=True)
class DomainSpec:
    """One domain of a benchmark in its published layout; paths are relative to the benchmark root.

    ``split_files`` maps a role to its default split file (None: no published default, give it on the
    command line). ``class_folders``: every video sits in a folder named after its original class.
    """

    name: str
    title: str
    video_dir: str
    split_files: Mapping[str, str | None]
    class_folders: bool


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its domains, split-file line format and class table.

    ``parse_line`` turns one non-blank split-file line into ``(listed path, class token)`` or raises
    ValueError saying what is wrong. ``name_key``: a listed path that is not a file below the video
    folder is looked up by name anywhere below it (the lists name feature folders or other containers
    than the videos users have): a video matches when ``name_key`` of its file name without suffix equals
    ``name_key`` of the listed name (None: no lookup by name, only the path as written). ``name_rule``
    says in words how names are compared, for messages. ``directions``: the allowed (source, target)
    pairs; None allows any two different domains.
    """

    name: str
    title: str
    citation: str
    domains: tuple[DomainSpec, ...]
    line_format: str
    parse_line: Callable[[str], tuple[str, str]]
    name_key: Callable[[str], str] | None
    name_rule: str = "names compared as written"
    directions: tuple[tuple[str, str], ...] | None = None

    @property
    def class_table(self) -> ClassTable:
        return ClassTable.load(DATA_DIR / f"{self.name}.csv")

    def domain(self, name: str) -> DomainSpec:
        return next(d for d in self.domains if d.name == name)

    def direction_problem(self, source: str, target: str) -> str | None:
        names = [d.name for d in self.domains]
        for side, name in (("source", source), ("target", target)):
            if name not in names:
                return f"unknown {side} domain {name!r}; {self.name} has {names}"
        if source == target:
            return f"source and target are both {source!r}"
        if self.directions is not None and (source, target) not in self.directions:
            allowed = ", ".join(f"{s}->{t}" for s, t in self.directions)
            return f"{self.name} defines the direction(s) {allowed}, not {source}->{target}"
        return None


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} registered twice")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def split_fields(text: str, names: tuple[str, ...], sep: str | None = None) -> list[str]:
    """Split one split-file line into exactly ``len(names)`` fields (whitespace runs when ``sep`` is None)."""
    parts = next(csv.reader([text])) if sep == "," else text.split(sep)
    parts = [p.strip() for p in parts]
    if len(parts) != len(names) or not all(parts):
        raise ValueError(f"expected {len(names)} fields ({', '.join(names)}), got {len(parts)}")
    return parts


def integer_field(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an integer") from None


@dataclass(frozen=True)
class DatasetConfig:
    """One manifest to build: a benchmark, its root, a direction and where to write.

    ``split_files`` overrides the default split file of ``"<side>_<role>"`` (e.g. ``"target_test"``);
    None there leaves the optional source test list out. ``video_dirs`` overrides ``"source"`` or
    ``"target"``'s video folder. Relative overrides are taken from the current directory.
    """

    benchmark: str
    root: Path
    source: str
    target: str
    output: Path
    split_files: Mapping[str, Path | None] = field(default_factory=dict)
    video_dirs: Mapping[str, Path] = field(default_factory=dict)
    skip_missing: bool = False

    def build(self) -> BuildResult:
        return build_manifest(self)


@dataclass(frozen=True)
class BuildResult:
    manifest: Path
    skipped: Path | None
    counts: Mapping[tuple[str, str], int]  # (manifest domain, split) -> videos written
    num_skipped: int


@dataclass
class _Entry:
    """One split-file line on its way to a manifest row (or to the skipped file)."""

    side: str
    domain: str
    split: str
    split_file: Path
    line: int
    listed: str
    label: str | None = None
    path: Path | None = None
    video_dir: Path | None = None

    @property
    def where(self) -> str:
        return f"{self.split_file}:{self.line}"


def same_name(name: str) -> str:
    """The identity name key: list names and file names compared as written."""
    return name


class _VideoFinder:
    """Finds a listed video below one domain's video folder: as written, else (``name_key``) by name."""

    def __init__(self, video_dir: Path, name_key: Callable[[str], str] | None, name_rule: str):
        self.video_dir = video_dir
        self.name_key = name_key
        self.name_rule = name_rule
        self._index: dict[str, list[Path]] | None = None

    def _name_index(self) -> dict[str, list[Path]]:
        """name key -> every video below the folder whose file name (without suffix) has that key."""
        if self._index is None:
            self._index = {}
            for dirpath, _, files in os.walk(self.video_dir, followlinks=True):
                for name in files:
                    p = Path(dirpath) / name
                    if p.suffix.lower() in VIDEO_SUFFIXES:
                        self._index.setdefault(self.name_key(p.stem), []).append(p)
        return self._index

    def find(self, listed: str) -> tuple[Path | None, str, str]:
        """(video, "", "") or (None, problem kind, why): absent (:data:`MISSING_VIDEO`) or ambiguous."""
        exact = Path(listed) if Path(listed).is_absolute() else self.video_dir / listed
        if exact.is_file():
            return exact, "", ""
        if self.name_key is None:
            return None, MISSING_VIDEO, f"no file {exact}"
        name = Path(listed.rstrip("/")).name
        stem = Path(name).stem if Path(name).suffix.lower() in VIDEO_SUFFIXES else name
        hits = self._name_index().get(self.name_key(stem), [])
        if len(hits) == 1:
            return hits[0], "", ""
        if not hits:
            return None, MISSING_VIDEO, f"no video named {stem}.* below {self.video_dir} ({self.name_rule})"
        return None, "ambiguous video name", (f"{len(hits)} videos below {self.video_dir} match {stem} ({self.name_rule}): "
                                              f"{', '.join(sorted(map(str, hits)))}")


def _resolve(override: Path | None, default: str | None, root: Path) -> Path | None:
    if override is not None:
        return Path(override)
    return None if default is None else root / default


def _read_entries(bench: Benchmark, table: ClassTable, side: str, spec: DomainSpec, role: str, split_file: Path,
                  report: ProblemReport) -> list[_Entry]:
    entries = []
    with split_file.open(encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            entry = _Entry(side, spec.name, role, split_file, n, listed="")
            try:
                entry.listed, token = bench.parse_line(text.strip())
            except ValueError as e:
                report.add("malformed line", f"{entry.where}: {e}: {text.strip()!r}")
                continue
            entry.label = table.label(spec.name, token)
            if entry.label is None:
                report.add("class that does not map", f"{entry.where}: class {token!r} is not a {bench.name} class")
            entries.append(entry)
    return entries


def _check_folder(table: ClassTable, spec: DomainSpec, entry: _Entry, report: ProblemReport) -> None:
    """The class folder a found video sits in must map to the label its split file gives it."""
    folder = entry.path.parent.name
    mapped = table.folder(spec.name, folder)
    if mapped is None and spec.class_folders:
        report.add("class that does not map", f"{entry.where}: {entry.path} is in folder {folder!r}, not a {spec.name} class of the benchmark")
    elif mapped is not None and entry.label is not None and mapped != entry.label:
        report.add("label contradicts class folder",
                   f"{entry.where}: listed as {entry.label!r} but {entry.path} is in {folder!r}, which maps to {mapped!r}")


def _write_skipped(entries: list[tuple[_Entry, str]], path: Path) -> Path:
    with atomic_write(path, newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SKIPPED_COLUMNS)
        for e, reason in entries:
            writer.writerow([e.split_file, e.line, e.listed, e.side, e.split, e.label or "", reason])
    return path


def _relative_stem(path: Path, video_dir: Path) -> str:
    try:
        return path.relative_to(video_dir).with_suffix("").as_posix()
    except ValueError:  # listed with an absolute path outside the video folder
        return path.stem


def skipped_path(output: Path) -> Path:
    return output.with_name(output.name + ".skipped.csv")


def build_manifest(cfg: DatasetConfig) -> BuildResult:
    """Build ``cfg.output`` from a benchmark's published layout; raise :class:`DatasetError` on any problem."""
    if cfg.benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {cfg.benchmark!r}; registered: {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[cfg.benchmark]
    table = bench.class_table
    report = ProblemReport()
    root = Path(cfg.root)
    bad_direction = bench.direction_problem(cfg.source, cfg.target)
    if bad_direction:
        report.add("bad direction", bad_direction)
    if not root.is_dir():
        report.add("missing root", f"benchmark root {root} is not a folder")
    if report:
        raise DatasetError(report)

    entries: list[_Entry] = []
    finders: dict[str, _VideoFinder] = {}
    for side, domain in zip(DOMAINS, (cfg.source, cfg.target)):
        spec = bench.domain(domain)
        video_dir = _resolve(cfg.video_dirs.get(side), spec.video_dir, root)
        if video_dir.is_dir():
            finders[side] = _VideoFinder(video_dir, bench.name_key, bench.name_rule)
        else:
            report.add("missing video folder", f"{side} ({domain}) video folder {video_dir} is not a folder")
        for role in ROLES:
            key = f"{side}_{role}"
            given = key in cfg.split_files
            split_file = _resolve(cfg.split_files.get(key), None if given else spec.split_files.get(role), root)
            if split_file is None:
                if REQUIRED[(side, role)] and not given:
                    report.add("missing split file",
                               f"{key}: {bench.name} publishes no default {role} list for {domain}; give --{key.replace('_', '-')}")
                elif REQUIRED[(side, role)]:
                    report.add("missing split file", f"{key}: the {role} list of the {side} domain is required")
                continue
            if not split_file.is_file():
                report.add("missing split file", f"{key} ({domain}): {split_file} not found")
                continue
            entries += _read_entries(bench, table, side, spec, role, split_file, report)

    first_seen: dict[Path, _Entry] = {}
    missing: list[tuple[_Entry, str]] = []
    for e in entries:
        finder = finders.get(e.side)
        if finder is None:
            continue
        e.path, kind, why = finder.find(e.listed)
        if e.path is None:
            report.add(kind, f"{e.where}: {e.listed}: {why}")
            if kind == MISSING_VIDEO:
                missing.append((e, why))
            continue
        e.video_dir = finder.video_dir
        key = e.path.resolve()
        if key in first_seen:
            report.add("video listed twice", f"{e.where}: {e.path} already listed at {first_seen[key].where}")
            continue
        first_seen[key] = e
        _check_folder(table, bench.domain(e.domain), e, report)

    if cfg.skip_missing:
        report.by_kind.pop(MISSING_VIDEO, None)
    if report:
        raise DatasetError(report)

    skipped_ids = {id(e) for e, _ in missing}
    kept = [e for e in entries if id(e) not in skipped_ids]
    counts = Counter((e.side, e.split) for e in kept)
    for side in DOMAINS:
        if not any(s == side for s, _ in counts):
            report.add("empty domain", f"no {side} video is left to write")
    source_classes = {e.label for e in kept if e.side == "source"}
    for label, n in Counter(e.label for e in kept if e.side == "target" and e.label not in source_classes).items():
        report.add("target class without source videos", f"{n} target video(s) of class {label!r}, which no source video has")
    video_ids: dict[str, _Entry] = {}
    for e in kept:  # x.avi beside x.mp4, or same-named videos outside the folder, would collide
        vid = f"{e.domain}/{_relative_stem(e.path, e.video_dir)}"
        if vid in video_ids:
            report.add("duplicate video id", f"{e.where}: {e.path} gets video id {vid!r}, as {video_ids[vid].path} "
                       f"({video_ids[vid].where}) does")
        video_ids[vid] = e
    if report:
        raise DatasetError(report)

    output = Path(cfg.output)
    write_manifest(({"path": e.path.resolve(), "label": e.label, "domain": e.side, "split": e.split, "video_id": vid}
                    for vid, e in video_ids.items()), output)
    load_manifest(output, check_files=False)  # the written file is a valid manifest
    if cfg.skip_missing:
        skipped = _write_skipped(missing, skipped_path(output))
    else:
        skipped = None
        skipped_path(output).unlink(missing_ok=True)  # a side file from an earlier run would no longer be true
    return BuildResult(output, skipped, dict(counts), len(missing))
