"""The JSON manifest every converted dataset carries: `<dataset folder>/manifest.json`.

It says what the folder holds (format, options, the class-name -> label map, images per class,
the data files with their sizes and sample counts, the skipped source files and why) and which
fastbt made it. Readers call `load(path)`: it validates the manifest and checks that the data files
it lists are there with the right sizes, and raises DataError naming the file, key or value that is
wrong. `pipelines.convert.verify` goes further and decodes the samples.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.backends import backend, formats
from pipelines.errors import DataError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
# The format marker: {"fastbt": "dataset", "schema": 1, ...}. Manifests written before the marker
# existed are recognised by their schema and fastbt_version keys (with every other key validated).
MARKER_KEY, MARKER = "fastbt", "dataset"


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the dataset folder
    bytes: int
    samples: int
    index: str | None = None  # DALI: the shard's wds2idx index file, relative to the folder


@dataclass(frozen=True)
class Manifest:
    format: str
    options: dict  # max_resolution, jpeg_quality, shard_size, limit, max_unreadable, seed (shard shuffle)
    classes: dict[str, int]  # class name -> label (sorted names -> 0..C-1, as ImageFolder)
    images_per_class: dict[str, int]
    num_images: int
    files: tuple[DataFile, ...]
    skipped: tuple[dict, ...]  # {"path", "reason", "kind": "unreadable" | "ignored"}
    source: str
    fastbt_version: str
    created: str
    schema: int = SCHEMA_VERSION
    folder: Path | None = field(default=None, compare=False)  # where it was read from; not stored

    @property
    def class_names(self) -> list[str]:
        return sorted(self.classes, key=self.classes.get)

    def count(self, kind: str) -> int:
        return sum(1 for s in self.skipped if s["kind"] == kind)

    def data_paths(self) -> list[Path]:
        return [self.folder / f.path for f in self.files]

    def index_paths(self) -> list[Path]:
        return [self.folder / f.index for f in self.files if f.index]

    def to_json(self) -> str:
        d = asdict(self)
        del d["folder"]
        d["files"] = [{k: v for k, v in f.items() if v is not None} for f in d["files"]]
        return json.dumps({MARKER_KEY: MARKER, "schema": d.pop("schema"), **d}, indent=1)


def fastbt_version() -> str:
    try:  # from the installed distribution: pipelines/ never imports fastbt
        return importlib.metadata.version("fastbt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write(folder: Path, manifest: Manifest) -> Path:
    """Write `folder/manifest.json` atomically (temporary name, then rename)."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.to_json() + "\n")
    os.replace(tmp, path)
    return path


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest for a dataset folder, a file inside it (e.g. its .beton), or the manifest itself."""
    path = Path(path)
    if path.is_dir():
        return path / MANIFEST_NAME
    return path if path.name == MANIFEST_NAME else path.parent / MANIFEST_NAME


def read(path: str | os.PathLike) -> Manifest:
    """Parse and validate a manifest; DataError names the file and the key or value at fault."""
    if not os.path.lexists(path):
        raise DataError(f"no such dataset: {path} (nothing there, so no manifest)")
    mpath = manifest_path(path)
    if not mpath.is_file() and mpath != Path(path) and not Path(path).is_dir():
        raise DataError(f"{path}: not a fastbt dataset or its manifest (no {MANIFEST_NAME} beside it)")
    if not mpath.is_file():
        folder = mpath.parent.resolve()  # "." has no name to add ".partial" to
        partial = folder.with_name(folder.name + ".partial") if folder.name else folder
        hint = f"; an unfinished conversion is in {partial}" if folder.name and partial.exists() else ""
        raise DataError(f"{mpath}: no manifest, so {mpath.parent} is not a finished fastbt dataset{hint}")
    try:
        d = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"{mpath}: not valid JSON ({err})") from None
    except OSError as err:
        raise DataError(f"{mpath}: cannot be read ({err.strerror})") from None
    check = _Checker(mpath)
    check.that(isinstance(d, dict), "top level", "is not a JSON object")
    check.that(d.get(MARKER_KEY, MARKER) == MARKER, MARKER_KEY,
               f"is {d.get(MARKER_KEY)!r}; a fastbt dataset manifest says {MARKER!r}")
    check.that(d.get("schema") == SCHEMA_VERSION, "schema",
               f"is {d.get('schema')!r}; this fastbt reads schema {SCHEMA_VERSION}")
    check.that(d.get("format") in formats(), "format", f"is {d.get('format')!r}, expected one of {formats()}")
    classes = check.mapping(d, "classes", int)
    check.that(sorted(classes.values()) == list(range(len(classes))), "classes",
               "labels are not 0..C-1, one per class")
    per_class = check.mapping(d, "images_per_class", int)
    check.that(per_class.keys() == classes.keys(), "images_per_class", "names differ from 'classes'")
    num_images = check.typed(d, "num_images", int)
    check.that(sum(per_class.values()) == num_images, "num_images",
               f"is {num_images} but images_per_class sums to {sum(per_class.values())}")
    files = tuple(_data_file(check, i, f) for i, f in enumerate(check.typed(d, "files", list)))
    check.that(sum(f.samples for f in files) == num_images, "files",
               f"hold {sum(f.samples for f in files)} samples, num_images is {num_images}")
    problem = backend(d["format"]).writer.check_files(files)  # what the format's own files must be
    check.that(problem is None, "files", problem)
    skipped = tuple(check.typed(d, "skipped", list))
    check.that(all(isinstance(s, dict) and {"path", "reason", "kind"} <= s.keys() for s in skipped),
               "skipped", "has an entry without path, reason and kind")
    for key in ("source", "fastbt_version", "created"):
        check.typed(d, key, str)
    options = check.typed(d, "options", dict)
    for key in ("max_resolution", "jpeg_quality"):
        check.that(isinstance(options.get(key), int), f"options.{key}",
                   f"is {options.get(key)!r}, expected int")
    return Manifest(d["format"], options, classes, per_class, num_images,
                    files, skipped, d["source"], d["fastbt_version"], d["created"], folder=mpath.parent)


def _data_file(check: _Checker, i: int, f) -> DataFile:
    where = f"files[{i}]"
    check.that(isinstance(f, dict) and isinstance(f.get("path"), str), where, "has no 'path'")
    for rel in (f["path"], f.get("index")):
        check.that(rel is None or (isinstance(rel, str) and not Path(rel).is_absolute()
                                   and ".." not in Path(rel).parts), where,
                   f"path {rel!r} must be relative and inside the dataset folder")
    for key in ("bytes", "samples"):
        check.that(isinstance(f.get(key), int) and f[key] >= 0, f"{where}.{key}", f"is {f.get(key)!r}")
    return DataFile(f["path"], f["bytes"], f["samples"], f.get("index"))


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def that(self, ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise DataError(f"{self.path}: '{key}' {problem}")

    def typed(self, d: dict, key: str, kind: type):
        self.that(key in d, key, "is missing")
        self.that(isinstance(d[key], kind) and not isinstance(d[key], bool), key,
                  f"is {d[key]!r}, expected {kind.__name__}")
        return d[key]

    def mapping(self, d: dict, key: str, kind: type) -> dict:
        m = self.typed(d, key, dict)
        bad = [k for k, v in m.items() if not isinstance(v, kind) or isinstance(v, bool) or v < 0]
        self.that(not bad, key, f"has bad value {m[bad[0]]!r} for {bad[0]!r}" if bad else "")
        return m


def why_not_replaceable(folder: Path) -> str | None:
    """Why `folder` may not be deleted as a fastbt dataset; None if it may. It may when its
    manifest reads as a fastbt manifest (marker, schema, every key valid) and the folder holds
    nothing but that manifest and the files it lists: never a file a user put there."""
    try:
        m = read(folder)
    except DataError as err:
        return str(err)
    ours = {Path(MANIFEST_NAME)} | {Path(rel) for f in m.files for rel in (f.path, f.index) if rel}
    ours |= {parent for rel in ours for parent in rel.parents}
    others = []
    for dirpath, dirnames, filenames in os.walk(folder):  # symlinks are listed, never followed
        rel = Path(dirpath).relative_to(folder)
        others += [str(rel / name) for name in dirnames + filenames if rel / name not in ours]
    if others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        return f"{folder / sorted(others)[0]}: not a file of the dataset{more}"
    return None


def check_files(m: Manifest) -> dict[Path, str]:
    """Data files that are missing or have the wrong size, each with its problem in one line."""
    problems = {}
    for f in m.files:
        for rel, size in ((f.path, f.bytes), (f.index, None)):
            p = m.folder / rel if rel else None
            if p is None:
                continue
            if not p.is_file():
                problems[p] = f"{p}: missing (listed in {MANIFEST_NAME})"
            elif size is not None and p.stat().st_size != size:
                problems[p] = (f"{p}: {p.stat().st_size} bytes, {MANIFEST_NAME} says {size} "
                               "(truncated or replaced)")
    return problems


def load(path: str | os.PathLike, format: str | None = None) -> Manifest:
    """What loaders call: the validated manifest of a dataset whose files are all present.
    `format` (if given) must match the dataset's."""
    m = read(path)
    if format is not None and m.format != format:
        raise DataError(f"{m.folder}: holds a {m.format} dataset, not {format}")
    problems = list(check_files(m).values())
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    return m
