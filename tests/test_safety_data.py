"""Hostile source folders and damaged datasets (issue 11): symlink loops, unlistable folders,
non-UTF-8 names, corrupt .beton headers, tar link members, undecodable JPEGs in a .beton, a bad
image in a DataLoader worker, a mistyped dataset path. Each ends in a listed reason or in a
one-line error (exit 2), never in a traceback, a hang, or silently wrong samples.
"""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pipelines
from fastbt.cli import main
from pipelines.sample_images import make_image_folder
from pipelines import manifest, source
from pipelines.augment import AugSpec
from pipelines.convert import convert
from pipelines.errors import DataError
from pipelines.options import Options

REPO = Path(__file__).resolve().parents[1]
AUG = AugSpec(size=32)


def _convert(src, out, fmt="dali", **options):
    options = {"max_resolution": 64, "shard_size": 4, **options}
    return convert(src, out, Options(fmt, **options), workers=2, progress=False, log=lambda msg: None)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{format: dataset folder} of a small source (3 classes x 4 images)."""
    root = tmp_path_factory.mktemp("data")
    make_image_folder(root / "src", classes=("a", "b", "c"), per_class=4, size=(64, 48))
    return {fmt: _convert(root / "src", root / fmt, fmt).folder for fmt in ("dali", "ffcv")}


# ---- 8: symlink loops and second links -------------------------------------------------------

class _TooLong(Exception):
    """Not an OSError, which os.walk would swallow."""


@contextlib.contextmanager
def _within(seconds: float):
    """Fail, not hang, if the block runs longer (a scan that follows loops grows exponentially)."""
    def too_long(signum, frame):
        raise _TooLong(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # and every second after, until it stops
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_symlink_loops_and_second_links_are_read_once_and_listed(tmp_path):
    src = tmp_path / "src"
    make_image_folder(src, classes=("a", "b", "c"), per_class=4)
    outside = tmp_path / "elsewhere"
    make_image_folder(outside, classes=("x",), per_class=2)
    (src / "a" / "up").symlink_to("..")  # the loop: 200 images became 9,000
    (src / "b" / "self").symlink_to(".")
    (src / "c" / "sub").mkdir()
    (src / "c" / "sub" / "back").symlink_to("../..")
    (src / "a" / "b_again").symlink_to("../b")  # a second link to another class's folder
    (src / "a" / "ext").symlink_to(outside / "x")  # a plain symlinked folder: followed, once
    (src / "b" / "ext_again").symlink_to(outside / "x")

    with _within(30):
        scanned = source.scan(src)
    paths = [s.path for s in scanned.samples]
    assert len(paths) == len(set(paths)) == 14  # 12 + the 2 linked ones, each once
    assert sorted((s.path.split("/")[0], s.label) for s in scanned.samples) == sorted(
        [("a", 0)] * 6 + [("b", 1)] * 4 + [("c", 2)] * 4)
    assert {p for p in paths if "/ext/" in p} == {"a/ext/x_0000.JPEG", "a/ext/x_0001.JPEG"}
    reasons = {s.path: s.reason for s in scanned.ignored}
    assert reasons["a/up/"].startswith("the same folder as ./ (a symlink loop")
    assert reasons["b/self/"].startswith("the same folder as b/")
    assert reasons["c/sub/back/"].startswith("the same folder as ./")
    assert reasons["a/b_again/"].startswith("the same folder as b/")
    assert reasons["b/ext_again/"].startswith("the same folder as a/ext/")

    m = _convert(src, tmp_path / "out")
    assert m.num_images == 14 and m.images_per_class == {"a": 6, "b": 4, "c": 4}
    assert {s["path"] for s in m.skipped if "same folder" in s["reason"]} == {
        "a/up/", "b/self/", "c/sub/back/", "a/b_again/", "b/ext_again/"}


# ---- 10: a folder that cannot be listed --------------------------------------------------------

def _locked(monkeypatch, *names):
    """os.scandir refuses these folders, as for a non-root user without read permission (the
    tests run as root, which permissions do not stop)."""
    real = os.scandir

    def scandir(path="."):
        if Path(path).name in names:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(source.os, "scandir", scandir)


def test_an_unlistable_folder_is_listed_as_unreadable_and_counted(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_image_folder(src, classes=("a", "b", "c"), per_class=4)
    (src / "b" / "locked").mkdir()
    make_image_folder(src / "b" / "locked", classes=("deeper",), per_class=2)
    _locked(monkeypatch, "locked", "c")

    with pytest.raises(DataError, match=r"2 of 10 image files are unreadable .*more than --max-unreadable 0.01"):
        _convert(src, tmp_path / "out")
    m = _convert(src, tmp_path / "out", max_unreadable=0.25)
    unreadable = {s["path"]: s["reason"] for s in m.skipped if s["kind"] == "unreadable"}
    assert unreadable == {"b/locked/": "cannot list folder (PermissionError: Permission denied)",
                          "c/": "cannot list folder (PermissionError: Permission denied)"}
    assert m.classes == {"a": 0, "b": 1, "c": 2} and m.images_per_class == {"a": 4, "b": 4, "c": 0}


def test_an_unlistable_source_root_is_one_clear_error(tmp_path, monkeypatch, capsys):
    src = tmp_path / "locked"
    make_image_folder(src, classes=("a",), per_class=1)
    _locked(monkeypatch, "locked")
    assert main(["convert", str(src), str(tmp_path / "out"), "--format", "dali"]) == 2
    assert "locked: cannot be listed (Permission denied)" in _one_error_line(capsys.readouterr().err)


# ---- 14: names that are not UTF-8 ------------------------------------------------------------

def test_names_that_are_not_utf8_are_converted_and_shown_escaped(tmp_path, capsys):
    src = tmp_path / "src"
    make_image_folder(src, classes=("a",), per_class=2)
    raw = os.fsencode(src)
    make_image_folder(os.fsdecode(raw + b"/caf\xe9"), classes=("\udcff_cls",), per_class=2)  # Latin-1 names
    os.rename(raw + b"/a/a_0000.JPEG", raw + b"/a/\xe9t\xe9.JPEG")
    (Path(os.fsdecode(raw + b"/a/bad\xfe.jpg"))).write_text("not an image")
    cafe = Path(os.fsdecode(raw + b"/caf\xe9"))
    shutil.move(cafe / "\udcff_cls", src / "\udcff_cls")
    cafe.rmdir()

    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--format", "dali", "--max-resolution", "64",
                 "--max-unreadable", "0.5"]) == 0
    assert "converted 4 of 5 image files (1 unreadable" in capsys.readouterr().out
    text = (out / manifest.MANIFEST_NAME).read_bytes().decode("utf-8")  # strict: valid UTF-8
    m = manifest.read(out)
    assert m.classes == {"a": 0, "\\xff_cls": 1} and m.images_per_class == {"a": 2, "\\xff_cls": 2}
    assert [s["path"] for s in m.skipped] == ["a/bad\\xfe.jpg"]
    assert "\\ud" not in text  # no lone surrogates (which strict JSON readers refuse)
    assert main(["inspect", str(out)]) == 0
    assert "verified:" in capsys.readouterr().out


# ---- 11 (data part): a dataset path that is not there ---------------------------------------

@pytest.mark.parametrize("where", ["typo_dir", ".", "/"])
def test_inspect_of_a_missing_or_non_dataset_path_is_one_line(tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", where]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ("no such dataset: typo_dir" in line) if where == "typo_dir" else ("no manifest" in line)


# ---- 13: a corrupt .beton header, tar members that are links -----------------------------------

def _header_patch(beton: Path, field: str, value):
    from ffcv.types import HeaderType

    header = np.fromfile(beton, HeaderType, count=1)
    header[field] = value
    with open(beton, "r+b") as f:
        f.write(header.tobytes())


@pytest.mark.parametrize("change, reason", [
    (lambda b: _header_patch(b, "num_samples", 2**60), "header says 1152921504606846976 samples, more than"),
    (lambda b: _header_patch(b, "num_fields", 60000), "header says 60000 fields"),
    (lambda b: _header_patch(b, "alloc_table_ptr", 2**62), "allocation table at byte 4611686018427387904"),
    (lambda b: _header_patch(b, "version", 7), "format version 7"),
    (lambda b: _poke(b, 24, b"\x4d"), "field type ids [77, 1]"),  # the first field's type id byte
])
def test_inspect_and_loaders_refuse_a_corrupt_beton_header_without_allocating(converted, tmp_path, capsys,
                                                                            change, reason):
    folder = tmp_path / "ds"
    shutil.copytree(converted["ffcv"], folder)
    change(folder / "data.beton")
    assert main(["inspect", str(folder)]) == 2
    assert reason in _one_error_line(capsys.readouterr().err)
    with pytest.raises(DataError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        pipelines.build_loader("ffcv", str(folder), aug=AUG, batch_size=4, device="cpu", workers=1)


def _poke(path: Path, offset: int, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_inspect_reports_a_shard_whose_members_are_links(converted, tmp_path, capsys, link):
    folder = tmp_path / "ds"
    shutil.copytree(converted["dali"], folder)
    tar_path = folder / "shard-000000.tar"
    with tarfile.open(tar_path) as old:
        members = [(m, old.extractfile(m).read()) for m in old]
    target = [m.name for m, _ in members if m.name.endswith(".cls")][1]  # the shard's second label
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as new:
        for m, data in members:
            if m.name == target:
                m = tarfile.TarInfo(m.name)
                m.type, m.linkname = link, "/etc/passwd" if link == tarfile.SYMTYPE else members[1][0].name
                new.addfile(m)
            else:
                new.addfile(m, io.BytesIO(data))
    stored = json.loads((folder / manifest.MANIFEST_NAME).read_text())
    stored["files"][0]["bytes"] = tar_path.stat().st_size  # the manifest agrees: only the tar is odd
    (folder / manifest.MANIFEST_NAME).write_text(json.dumps(stored))
    assert main(["inspect", str(folder)]) == 2
    assert f"member '{target}' is not a regular file" in _one_error_line(capsys.readouterr().err)


# ---- 9: an undecodable JPEG inside a .beton --------------------------------------------------

def test_an_undecodable_jpeg_in_a_beton_stops_training_with_its_sample_index(converted, tmp_path):
    from ffcv.reader import Reader

    folder = tmp_path / "ds"
    shutil.copytree(converted["ffcv"], folder)
    beton = folder / "data.beton"
    _poke(beton, int(Reader(str(beton)).metadata["f0"]["data_ptr"][5]), b"\x00" * 16)  # no JPEG header
    code = f"""
        import pipelines
        from pipelines.augment import AugSpec
        from pipelines.errors import DataError
        crops = pipelines.build_loader("ffcv", {str(folder)!r}, aug=AugSpec(size=32), batch_size=4,
                                       device="cpu", workers=1)
        try:
            for epoch in range(2):
                crops.set_epoch(epoch)
                for view1, view2 in crops:
                    pass
        except DataError as err:
            print("DataError:", err)
        else:
            print("no error")
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:  # in a subprocess: an exception in FFCV's loader thread used to mean waiting forever
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=240, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the FFCV loader hung on an undecodable JPEG")
    assert f"DataError: {beton}: sample 5: the stored JPEG does not decode" in done.stdout, done.stderr


# ---- 15 (data part): a bad image met by a DataLoader worker ------------------------------------

@pytest.mark.parametrize("loader", ["train", "eval"])
def test_a_bad_image_in_a_torchvision_worker_is_one_line_naming_it(tmp_path, loader):
    src = tmp_path / "src"
    make_image_folder(src, classes=("a", "b"), per_class=4)
    bad = src / "b" / "b_0001.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])
    if loader == "train":
        batches = pipelines.build_loader("torchvision", str(src), aug=AUG, batch_size=8, device="cpu", workers=1)
    else:
        batches = pipelines.build_eval_loader("torchvision", str(src), size=32, resize=36, mean=AUG.mean,
                                              std=AUG.std, batch_size=8, device="cpu", workers=1)
    with pytest.raises(DataError) as err:
        for _ in batches:
            pass
    assert str(err.value).startswith(f"{bad}: truncated or corrupt") and "\n" not in str(err.value)
