"""pipelines.convert.source: listing an ImageNet-layout folder and reading every kind of file
robustly; hostile folders (symlink loops, unlistable folders, non-UTF-8 names) end in a listed reason
or one error line, converted as far as they can be."""

import contextlib
import errno
import os
import shutil
import signal
from pathlib import Path

import io

import numpy as np
import pytest
from PIL import Image

from checks import one_error_line
from fastbt.cli import main
from pipelines.sample_images import broken_jpegs, flat_image, make_image_folder, natural_image
from pipelines.convert import convert, jpeg_check, manifest, source
from pipelines.convert.options import Options
from pipelines.convert.source import UnreadableImage, fit_within, read_rgb, scan
from pipelines.errors import DataError

RNG = np.random.default_rng(0)
COLOR = (200, 90, 40)


def _jpeg_bytes(tmp_path, size=(64, 48)):
    path = tmp_path / "ok.jpg"
    flat_image(size, COLOR, RNG).save(path, "JPEG", quality=90)
    return path.read_bytes()


@pytest.mark.parametrize("size, max_side, expected", [
    ((500, 375), 256, (256, 192)), ((375, 500), 256, (192, 256)), ((40, 60), 32, (21, 32)),
    ((20, 16), 32, (20, 16)),  # never enlarged
    ((5000, 3), 256, (256, 1)),  # never zero
    ((500, 375), None, (500, 375))])
def test_fit_within_bounds_the_longest_side(size, max_side, expected):
    assert fit_within(size, max_side) == expected


def test_scan_labels_sorted_class_folders_and_lists_what_it_passes_over(tmp_path):
    make_image_folder(tmp_path, classes=("b", "a", "c"), per_class=2, size=(8, 8))
    (tmp_path / "a" / "deep" / "deeper").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "deeper" / "x.PNG").write_bytes(b"")  # nested, upper-case: a candidate
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "a" / ".cache").mkdir()
    (tmp_path / "a" / ".cache" / "y.jpg").write_bytes(b"")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # torchvision would make this a class; we do not
    (tmp_path / "stray.jpg").write_bytes(b"")

    src = scan(tmp_path)

    assert src.classes == ("a", "b", "c") and src.class_to_idx == {"a": 0, "b": 1, "c": 2}
    assert [(s.path, s.label) for s in src.samples] == [
        ("a/a_0000.JPEG", 0), ("a/a_0001.JPEG", 0), ("a/deep/deeper/x.PNG", 0),
        ("b/b_0000.JPEG", 1), ("b/b_0001.JPEG", 1), ("c/c_0000.JPEG", 2), ("c/c_0001.JPEG", 2)]
    assert {(s.path, s.reason) for s in src.ignored} == {
        (".ipynb_checkpoints/", "hidden folder"), ("stray.jpg", "not inside a class folder"),
        ("a/notes.txt", "not an image extension (.txt)"), ("a/.hidden.jpg", "hidden file"),
        ("a/.cache/", "hidden folder")}
    assert all(s.kind == "ignored" for s in src.ignored)


def test_scan_limit_spreads_over_every_class(tmp_path):
    make_image_folder(tmp_path, classes=("a", "b", "c", "d"), per_class=5, size=(8, 8))
    src = scan(tmp_path, limit=8)
    assert len(src.samples) == 8
    assert sorted({s.label for s in src.samples}) == [0, 1, 2, 3]


@pytest.mark.parametrize("layout, message", [
    (None, "not a directory"), ("files only", "no class folders")])
def test_scan_rejects_a_folder_without_classes(tmp_path, layout, message):
    root = tmp_path / "src"
    if layout:
        root.mkdir()
        (root / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        scan(root)


# ---- reading: every readable kind becomes RGB at the right size ------------------------------

def _write(kind, path):
    img = flat_image((64, 48), COLOR, RNG)
    if kind == "cmyk":
        img.convert("CMYK").save(path, "JPEG", quality=95)
    elif kind == "png_named_jpeg":
        img.save(path, "PNG")
    elif kind == "grayscale":
        img.convert("L").save(path, "JPEG")
    elif kind == "rgba":
        img.convert("RGBA").save(path, "PNG")
    elif kind == "palette":
        img.convert("P").save(path, "PNG", transparency=0)
    elif kind == "gray16":
        Image.fromarray(np.full((48, 64), 150 * 257, np.uint16)).save(path)
    else:
        img.save(path, "JPEG")


@pytest.mark.parametrize("kind, name, mean", [
    ("jpeg", "a.jpg", COLOR), ("jpeg", "UPPER.JPEG", COLOR), ("cmyk", "cmyk.JPEG", COLOR),
    ("png_named_jpeg", "png.JPEG", COLOR), ("grayscale", "gray.jpg", None), ("rgba", "rgba.png", COLOR),
    ("palette", "pal.png", None), ("gray16", "g16.png", (150, 150, 150))])
def test_read_rgb_turns_every_readable_kind_into_rgb(tmp_path, kind, name, mean):
    _write(kind, tmp_path / name)
    img = read_rgb(tmp_path / name, max_side=32)
    assert img.mode == "RGB" and img.size == (32, 24)
    if mean is not None:
        np.testing.assert_allclose(np.asarray(img).mean((0, 1)), mean, atol=6)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"), (b"hello, not an image", "not an image"),
    ("truncated", "truncated or corrupt"), ("garbage_after_soi", "truncated or corrupt")])
def test_read_rgb_names_the_reason_a_file_is_unreadable(tmp_path, content, reason):
    jpeg = _jpeg_bytes(tmp_path)
    garbage = RNG.integers(0, 256, 3000, np.uint8).tobytes()
    made = {"truncated": jpeg[: len(jpeg) // 2], "garbage_after_soi": jpeg[:4] + garbage}
    content = made.get(content, content)
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        read_rgb(path, 32)


def test_read_rgb_reports_a_missing_file_as_unreadable(tmp_path):
    with pytest.raises(UnreadableImage, match="cannot open"):
        read_rgb(tmp_path / "gone.jpg", 32)


def test_huge_jpeg_is_decoded_at_reduced_scale_and_huge_png_refused(tmp_path, monkeypatch):
    # Scaled down: PIL's bomb limit at 1 Mpx and ours at 0.5 Mpx, against 2000x1500 images.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)
    monkeypatch.setattr(source, "MAX_DECODED_PIXELS", 500_000)
    big = flat_image((2000, 1500), COLOR, RNG)
    big.save(tmp_path / "big.jpg", "JPEG")
    big.save(tmp_path / "big.png", "PNG")

    assert read_rgb(tmp_path / "big.jpg", 256).size == (256, 192)  # decoded at 1/4: 500x375
    with pytest.raises(UnreadableImage, match="too large: 2000x1500"):
        read_rgb(tmp_path / "big.png", 256)
    assert Image.MAX_IMAGE_PIXELS == 500_000  # PIL's own limit is restored after opening


# ---- hostile folders: symlink loops and second links, unlistable folders, non-UTF-8 names --------

def _convert(src, out, fmt="dali", **options):
    options = {"max_resolution": 64, "shard_size": 4, **options}
    return convert(src, out, Options(fmt, **options), workers=2, progress=False, log=lambda msg: None)


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
    assert "locked: cannot be listed (Permission denied)" in one_error_line(capsys.readouterr().err)


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
