"""pipelines.source: listing an ImageNet-layout folder and reading every kind of file robustly."""

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.sample_images import broken_jpegs, flat_image, make_image_folder, natural_image
from pipelines import jpeg_check, source
from pipelines.errors import DataError
from pipelines.source import UnreadableImage, fit_within, read_rgb, scan

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


def _natural_jpeg(mode="RGB", **save):
    out = io.BytesIO()
    natural_image((160, 120), np.random.default_rng(3)).convert(mode).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("case", ["cut_in_half", "eoi_mid_scan", "tall_header"])
def test_read_rgb_refuses_a_jpeg_whose_data_ends_before_its_image(tmp_path, case, mode):
    # Before: "eoi_mid_scan" and "tall_header" decoded, gray from the break on, and were kept.
    path = tmp_path / "broken.jpg"
    path.write_bytes(broken_jpegs(_natural_jpeg(mode))[case])
    with pytest.raises(UnreadableImage, match="truncated or corrupt .*(truncated|premature end)"):
        read_rgb(path, 64)


@pytest.mark.parametrize("mode, save", [("RGB", {}), ("RGB", {"progressive": True}), ("L", {}),
                                        ("CMYK", {}), ("RGB", {"subsampling": 0})])
def test_read_rgb_keeps_whole_jpegs_even_when_they_end_in_mid_gray(tmp_path, mode, save):
    path = tmp_path / "whole.jpg"
    path.write_bytes(_natural_jpeg(mode, **save))
    expected = Image.open(path).convert("RGB")  # full size: no draft scaling, no resize
    np.testing.assert_array_equal(np.asarray(read_rgb(path)), np.asarray(expected))
    # An all mid-gray image decodes exactly like the decoder's fill: the second look must keep it.
    Image.new(mode, (40, 30), {"RGB": (128,) * 3, "L": 128, "CMYK": (127,) * 4}[mode]).save(path, "JPEG", **save)
    assert read_rgb(path, 64).size == (40, 30)


def test_without_libturbojpeg_a_gray_last_row_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(jpeg_check, "_turbojpeg", lambda: None)
    path = tmp_path / "broken.jpg"
    path.write_bytes(broken_jpegs(_natural_jpeg())["tall_header"])
    with pytest.raises(UnreadableImage, match="gray fill"):
        read_rgb(path, 64)
    path.write_bytes(_natural_jpeg())
    assert read_rgb(path, 64).size == (64, 48)
