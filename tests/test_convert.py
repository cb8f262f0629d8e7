"""`fastbt convert` / `fastbt inspect` end to end (pipelines.convert): on a folder holding every
kind of odd file, read back with the stock readers (ffcv.loader.Loader and
nvidia.dali.fn.readers.webdataset, CPU); under hostile conditions it never deletes what it did not
make, and a full disk or a killed writer ends it in one line with the finished shards kept.

The two conversions (one per format) are module fixtures; tests that change a dataset copy it first.
Conversions that could hang run in a subprocess with a timeout (checks.run_python). Real disk-full
tests use a small tmpfs and skip when it cannot be mounted; the same failures are also simulated by
making a write raise ENOSPC.
"""

import json
import os
import shutil
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from checks import assert_disk_full, convert_code, one_error_line, run_python
from fastbt.cli import main
from pipelines.sample_images import flat_image, make_image_folder
from pipelines.convert import convert, journal, manifest, shards
from pipelines.convert import driver as convert_module
from pipelines.convert.options import Options
from pipelines.convert.source import fit_within, scan
from pipelines.errors import DataError

R = 32  # max_resolution for every conversion here
OPTIONS = dict(max_resolution=R, jpeg_quality=90, shard_size=4, max_unreadable=0.5)


@dataclass
class OddFolder:
    root: object
    kept: list  # (relative path, label), in the source list's order (the datasets hold a shuffle of it)
    unreadable: dict  # relative path -> words its reason must contain
    ignored: dict


def make_odd_folder(root) -> OddFolder:
    """Every kind of file an ImageNet copy or a user folder holds; see the issue (#4)."""
    rng = np.random.default_rng(1)
    make_image_folder(root, classes=("a_cls", "b_cls", "d_cls"), per_class=3,
                      size=[(64, 48), (40, 60), (20, 16)])
    (root / "c_empty").mkdir()  # a class without images still gets its label

    def img(size=(64, 48)):
        return flat_image(size, rng.integers(30, 226, 3), rng)

    img().convert("CMYK").save(root / "a_cls/cmyk.JPEG", "JPEG")
    img().save(root / "a_cls/png_named.JPEG", "PNG")
    img().save(root / "a_cls/UPPER.JPG", "JPEG")
    (root / "a_cls/sub").mkdir()
    img().save(root / "a_cls/sub/nested.jpeg", "JPEG")
    img().save(root / "a_cls/.hidden.jpg", "JPEG")
    (root / "a_cls/._a_cls_0000.JPEG").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "a_cls/notes.txt").write_text("not an image")
    img().convert("L").save(root / "b_cls/gray.jpg", "JPEG")
    img((1600, 1200)).save(root / "b_cls/big.jpg", "JPEG")  # decoded at 1/8 scale (draft)
    img().convert("RGBA").save(root / "b_cls/rgba.png")
    Image.fromarray(np.full((48, 64), 120 * 257, np.uint16)).save(root / "b_cls/gray16.png")
    jpeg = (root / "a_cls/a_cls_0000.JPEG").read_bytes()
    (root / "b_cls/x_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "b_cls/x_empty.JPEG").write_bytes(b"")
    (root / "b_cls/x_text.jpg").write_text("this is text")
    (root / "b_cls/x_corrupt.jpg").write_bytes(jpeg[:4] + rng.integers(0, 256, 2000, np.uint8).tobytes())
    img().save(root / "d_cls/my photo.v2.jpg", "JPEG")  # spaces and dots in the name
    (root / "d_cls/.cache").mkdir()
    img().save(root / "d_cls/.cache/thumb.jpg", "JPEG")
    (root / "stray.jpg").write_bytes(jpeg)
    (root / ".ipynb_checkpoints").mkdir()

    unreadable = {"b_cls/x_truncated.jpg": "truncated", "b_cls/x_empty.JPEG": "empty file",
                  "b_cls/x_text.jpg": "not an image", "b_cls/x_corrupt.jpg": "corrupt"}
    ignored = {"a_cls/.hidden.jpg": "hidden file", "a_cls/._a_cls_0000.JPEG": "hidden file",
               "a_cls/notes.txt": "not an image extension", "d_cls/.cache/": "hidden folder",
               "stray.jpg": "not inside a class folder", ".ipynb_checkpoints/": "hidden folder"}
    kept = ([("a_cls/" + name, 0) for name in ("UPPER.JPG", "a_cls_0000.JPEG", "a_cls_0001.JPEG",
                                               "a_cls_0002.JPEG", "cmyk.JPEG", "png_named.JPEG",
                                               "sub/nested.jpeg")]
            + [("b_cls/" + name, 1) for name in ("b_cls_0000.JPEG", "b_cls_0001.JPEG", "b_cls_0002.JPEG",
                                                 "big.jpg", "gray.jpg", "gray16.png", "rgba.png")]
            + [("d_cls/" + name, 3) for name in ("d_cls_0000.JPEG", "d_cls_0001.JPEG", "d_cls_0002.JPEG",
                                                 "my photo.v2.jpg")])  # by label, then path
    return OddFolder(root, kept, unreadable, ignored)


def expected_image(path):
    """Size after conversion and mean colour of a source image, computed with plain PIL."""
    with Image.open(path) as img:
        if img.mode.startswith("I;16"):  # 16 bits per pixel: the top 8 are kept
            img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
        return fit_within(img.size, R), np.asarray(img.convert("RGB")).mean((0, 1))


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return make_odd_folder(tmp_path_factory.mktemp("src") / "train")


@pytest.fixture(scope="module")
def converted(odd, tmp_path_factory):
    """One conversion per format, made on first use: {format: manifest}."""
    out, made = tmp_path_factory.mktemp("out"), {}

    def get(fmt):
        if fmt not in made:
            made[fmt] = convert(odd.root, out / fmt, Options(fmt, **OPTIONS), workers=2, progress=False,
                                log=lambda msg: None)
        return made[fmt]
    return get


# ---- what the conversion holds ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["dali", "ffcv"])
def test_manifest_records_counts_classes_and_every_skipped_file_with_its_reason(odd, converted, fmt):
    m = manifest.load(converted(fmt).folder, format=fmt)
    assert m.classes == {"a_cls": 0, "b_cls": 1, "c_empty": 2, "d_cls": 3}
    assert m.images_per_class == {"a_cls": 7, "b_cls": 7, "c_empty": 0, "d_cls": 4}
    assert m.num_images == len(odd.kept) == 18
    skipped = {s["path"]: s for s in m.skipped}
    assert skipped.keys() == odd.unreadable.keys() | odd.ignored.keys()
    for path, words in {**odd.unreadable, **odd.ignored}.items():
        assert words in skipped[path]["reason"]
        assert skipped[path]["kind"] == ("unreadable" if path in odd.unreadable else "ignored")
    assert m.options == {"max_resolution": R, "jpeg_quality": 90, "shard_size": 4, "limit": None,
                         "max_unreadable": 0.5, "seed": 0}
    assert m.fastbt_version and m.source == str(odd.root)
    on_disk = sorted(p.name for p in m.folder.iterdir())
    listed = [f.path for f in m.files] + [f.index for f in m.files if f.index]
    assert on_disk == sorted([manifest.MANIFEST_NAME] + listed)  # no journal, temporary or spool files


def stored_order(odd, m_dali):
    """(relative path, label) of each sample in the datasets' order: from the shards' keys, which
    are positions in the scanned source list. Both formats hold the same JPEGs in the same order
    (test_both_formats_hold_the_same_jpeg_bytes)."""
    samples = scan(odd.root).samples
    keys = [int(s.key) for tar in m_dali.data_paths() for s in shards.shard_samples(tar)]
    order = [(samples[k].path, samples[k].label) for k in keys]
    assert sorted(order, key=lambda x: (x[1], x[0])) == odd.kept and order != odd.kept  # all, shuffled
    return order


def _check_against_sources(odd, order, labels, sizes, means):
    assert list(labels) == [label for _, label in order]
    for (path, _), size, mean in zip(order, sizes, means):
        want_size, want_mean = expected_image(odd.root / path)
        assert tuple(size) == want_size, path
        np.testing.assert_allclose(mean, want_mean, atol=8, err_msg=path)


def test_stock_dali_webdataset_reader_reads_every_image_label_and_size(odd, converted):
    from nvidia.dali import fn, pipeline_def, types

    m = converted("dali")

    @pipeline_def(batch_size=m.num_images, num_threads=1, device_id=None)
    def read():
        jpegs, labels = fn.readers.webdataset(
            paths=[str(p) for p in m.data_paths()], index_paths=[str(p) for p in m.index_paths()],
            ext=["jpg", "cls"], missing_component_behavior="error", name="reader")
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), labels

    pipe = read()
    pipe.build()
    assert pipe.epoch_size("reader") == m.num_images
    images, labels = pipe.run()
    images = [np.asarray(images.at(i)) for i in range(len(images))]
    _check_against_sources(odd, stored_order(odd, m), [int(bytes(labels.at(i))) for i in range(len(labels))],
                           [(im.shape[1], im.shape[0]) for im in images], [im.mean((0, 1)) for im in images])


def test_stock_ffcv_loader_reads_every_image_and_label(odd, converted):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    m = converted("ffcv")
    beton = str(m.data_paths()[0])
    loader = Loader(beton, batch_size=m.num_images, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [CenterCropRGBImageDecoder((16, 16), ratio=1.0)],
                               "label": [IntDecoder()]})
    [(images, labels)] = list(loader)
    meta = Reader(beton).metadata["f0"]  # the stored sizes, as FFCV records them
    _check_against_sources(odd, stored_order(odd, converted("dali")), labels.ravel().tolist(),
                           zip(meta["width"], meta["height"]),
                           images.reshape(len(images), -1, 3).mean(1))


def test_both_formats_hold_the_same_jpeg_bytes(converted):
    from pipelines.ffcv_backend.beton import beton_contents

    dali, ffcv = converted("dali"), converted("ffcv")
    in_shards = []
    for tar in dali.data_paths():
        data = tar.read_bytes()
        in_shards += [data[s.offset:s.offset + s.size] for s in shards.shard_samples(tar)]
    *_, jpeg = beton_contents(ffcv.data_paths()[0])
    assert [jpeg(i) for i in range(ffcv.num_images)] == in_shards


def test_a_shard_with_no_readable_file_writes_nothing(odd, tmp_path):
    job = shards.ShardJob(7, ((0, "b_cls/x_empty.JPEG", 1), (1, "b_cls/x_text.jpg", 1)))
    result = shards.write_shard(job, odd.root, tmp_path, R, 90)
    assert (result.samples, result.bytes, len(result.skipped)) == (0, 0, 2)
    assert list(tmp_path.iterdir()) == []


# ---- failing, resuming, refusing -------------------------------------------------------------

def _dali(odd, out, overwrite=False, **options):
    log = []
    m = convert(odd.root, out, Options("dali", **{**OPTIONS, **options}), workers=2, overwrite=overwrite,
                progress=False, log=log.append)
    return m, log


def test_too_many_unreadable_files_fail_with_the_list_and_a_rerun_can_accept_them(odd, tmp_path, capsys):
    with pytest.raises(DataError, match=r"4 of 22 image files are unreadable \(18.2%, more than"):
        _dali(odd, tmp_path / "out", max_unreadable=0.01)
    err = capsys.readouterr().err
    assert all(path in err for path in odd.unreadable)
    listed = (tmp_path / "out.partial" / convert_module.UNREADABLE_LIST).read_text()
    assert sorted(line.split("\t")[0] for line in listed.splitlines()) == sorted(odd.unreadable)
    assert not (tmp_path / "out").exists()

    m, log = _dali(odd, tmp_path / "out", max_unreadable=0.2)  # the threshold is not part of the plan
    assert "resume: 6 finished shard(s)" in log[0] and m.num_images == 18


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "src" / "cls").mkdir(parents=True)
    (tmp_path / "src" / "cls" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of its 1 image files could be read"):
        convert(tmp_path / "src", tmp_path / "out", Options("dali"), workers=1, progress=False)


def test_an_interrupted_dali_conversion_resumes_keeping_finished_shards(odd, converted, tmp_path,
                                                                        monkeypatch):
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    real_append, calls = journal.append, []

    def interrupt_at_the_third_shard(journal, record):
        calls.append(record)
        if len(calls) == 4:  # the plan, two shards, then Ctrl-C
            raise KeyboardInterrupt
        real_append(journal, record)

    monkeypatch.setattr(journal, "append", interrupt_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _dali(odd, out)
    monkeypatch.undo()
    assert not out.exists()
    finished = [r["index"] for r in calls[1:3]]
    before = {i: os.stat(partial / f"shard-{i:06d}.tar") for i in finished}

    (partial / "shard-000099.tar.tmp").write_bytes(b"half-written")  # as a killed worker leaves it
    m, log = _dali(odd, out)

    assert "resume: 2 finished shard(s)" in log[0]
    for i, st in before.items():  # kept, not rewritten
        after = os.stat(out / f"shard-{i:06d}.tar")
        assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    reference = converted("dali")  # an uninterrupted conversion: identical shards
    assert [f.path for f in m.files] == [f.path for f in reference.files]
    for f in m.files:
        assert (out / f.path).read_bytes() == (reference.folder / f.path).read_bytes()
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_resume_redoes_a_finished_shard_that_no_longer_verifies(odd, tmp_path):
    partial = tmp_path / "out.partial"
    with pytest.raises(DataError):  # stop after the shards, before the dataset is finished
        _dali(odd, tmp_path / "out", max_unreadable=0.01)
    with open(partial / "shard-000001.tar", "r+b") as f:
        f.truncate(1000)
    m, log = _dali(odd, tmp_path / "out")
    assert any("redoing shard 1" in line and "truncated" in line for line in log)
    assert "resume: 5 finished shard(s)" in log[1]
    assert manifest.load(m.folder).num_images == 18


def test_resume_refuses_other_settings_unless_overwrite(odd, tmp_path):
    with pytest.raises(DataError):
        _dali(odd, tmp_path / "out", max_unreadable=0.01)
    with pytest.raises(DataError, match="other settings .*max_resolution 32 -> 48"):
        _dali(odd, tmp_path / "out", max_resolution=48)
    m, _ = _dali(odd, tmp_path / "out", max_resolution=48, overwrite=True)
    assert m.options["max_resolution"] == 48


def test_an_existing_output_is_replaced_only_with_overwrite(odd, converted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(converted("dali").folder, out)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        _dali(odd, out)
    m, _ = _dali(odd, out, overwrite=True, limit=5)
    assert m.options["limit"] == 5 and not (tmp_path / "out.old").exists()

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a fastbt dataset; refusing to replace it"):
        convert(odd.root, foreign, Options("dali"), overwrite=True, progress=False)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_manifest_read_names_the_key_at_fault(converted, tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(converted("dali").folder, folder)
    path = folder / manifest.MANIFEST_NAME
    good = json.loads(path.read_text())
    for change, message in [({"schema": 99}, "'schema' is 99"),
                            ({"format": "tfrecord"}, "'format' is 'tfrecord'"),
                            ({"num_images": 17}, "'num_images' is 17 but images_per_class sums to 18"),
                            ({"classes": {**good["classes"], "a_cls": 9}}, "labels are not 0..C-1")]:
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(DataError, match=message):
            manifest.read(folder)
    path.write_text(json.dumps(good))
    with pytest.raises(DataError, match="holds a dali dataset, not ffcv"):
        manifest.load(folder, format="ffcv")
    with pytest.raises(DataError, match="no manifest"):
        manifest.read(tmp_path)


# ---- the command line: convert, inspect ------------------------------------------------------

def test_cli_convert_prints_a_one_line_summary_and_refuses_to_overwrite(odd, tmp_path, capsys):
    args = ["convert", str(odd.root), str(tmp_path / "out"), "--format", "dali", "--max-resolution", "32",
            "--shard-size", "8", "--workers", "2", "--max-unreadable", "0.5"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "note: 1 class folder(s) without a readable image keep their label: c_empty"
    assert len(out) == 2 and out[1].startswith("converted 18 of 22 image files (4 unreadable, 6 other")
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["dali", "ffcv"])
def test_inspect_verifies_a_good_dataset(converted, capsys, fmt):
    assert main(["inspect", str(converted(fmt).folder)]) == 0
    out = capsys.readouterr().out
    assert f"{fmt} dataset, 18 images in 4 classes" in out
    assert "verified:" in out and "18 labels in 0..3" in out and "18 image(s) decoded" in out


def test_inspect_catches_a_truncated_beton(converted, tmp_path, capsys):
    folder = tmp_path / "ds"
    shutil.copytree(converted("ffcv").folder, folder)
    beton = folder / "data.beton"
    os.truncate(beton, beton.stat().st_size - 100)
    assert main(["inspect", str(beton), "--sample", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.beton" in err and "truncated" in err


def test_inspect_catches_a_missing_shard(converted, tmp_path, capsys):
    folder = tmp_path / "ds"
    shutil.copytree(converted("dali").folder, folder)
    (folder / "shard-000002.tar").unlink()
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard-000002.tar: missing" in err


def test_inspect_catches_a_corrupt_image_inside_a_shard(converted, tmp_path, capsys):
    folder = tmp_path / "ds"
    shutil.copytree(converted("dali").folder, folder)
    tar = folder / "shard-000000.tar"
    first = shards.shard_samples(tar)[0]
    with open(tar, "r+b") as f:  # same size, broken JPEG header
        f.seek(first.offset)
        f.write(b"\x00" * 64)
    assert main(["inspect", str(folder)]) == 2
    assert "does not decode" in capsys.readouterr().err


# ---- what --overwrite may replace, and where OUT may be (never what fastbt did not make) --------

@pytest.fixture(scope="module")
def src(natural_source):
    return natural_source


def _convert(src, out, fmt="dali", overwrite=True, **options):
    return convert(src, out, Options(fmt, max_resolution=64, shard_size=4, **options), workers=2,
                   overwrite=overwrite, progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def dataset(src, tmp_path_factory):
    """A finished DALI dataset to copy: a folder fastbt may replace."""
    return _convert(src, tmp_path_factory.mktemp("ds") / "ds").folder


def _cli(src, out, *flags):
    return main(["convert", str(src), str(out), "--format", "dali", "--max-resolution", "64",
                 "--shard-size", "4", "--workers", "2", "--overwrite", *flags])


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("content", [
    {"manifest.json": '{"name": "x"}', "thesis.txt": "precious"},  # a manifest, not ours
    {"manifest.json": "not json at all", "thesis.txt": "precious"},
    {"manifest.json": '{"fastbt": "model", "schema": 1}'},  # another marker
])
def test_overwrite_refuses_a_folder_whose_manifest_is_not_a_fastbt_manifest(src, tmp_path, capsys, content):
    out = tmp_path / "out"
    out.mkdir()
    for name, text in content.items():
        (out / name).write_text(text)
    before = _snapshot(out)
    assert _cli(src, out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not a fastbt dataset; refusing to replace it" in line
    assert _snapshot(out) == before and not (tmp_path / "out.partial").exists()


def test_overwrite_refuses_a_fastbt_dataset_holding_a_file_it_does_not_list(src, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    (out / "notes").mkdir()
    (out / "notes" / "thesis.txt").write_text("precious")
    before = _snapshot(out)
    assert _cli(src, out) == 2
    assert "notes: not a file of the dataset" in one_error_line(capsys.readouterr().err)
    assert _snapshot(out) == before


def test_manifests_carry_the_marker_and_old_unmarked_ones_are_still_read_and_replaced(src, dataset, tmp_path):
    stored = json.loads((dataset / manifest.MANIFEST_NAME).read_text())
    assert (stored[manifest.MARKER_KEY], stored["schema"]) == (manifest.MARKER, manifest.SCHEMA_VERSION)
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    del stored[manifest.MARKER_KEY]  # as written before the marker existed
    (old / manifest.MANIFEST_NAME).write_text(json.dumps(stored))
    assert manifest.read(old).num_images == 24
    assert _convert(src, old, limit=5).num_images == 5


def test_overwrite_leaves_a_users_out_old_and_leaves_no_temporary_folder(src, dataset, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    (tmp_path / "out.old").mkdir()
    (tmp_path / "out.old" / "thesis.txt").write_text("precious")
    (tmp_path / "out.replaced").write_text("also mine")
    m = _convert(src, out, limit=6)
    assert m.num_images == 6 and manifest.load(out).num_images == 6
    assert (tmp_path / "out.old" / "thesis.txt").read_text() == "precious"
    assert (tmp_path / "out.replaced").read_text() == "also mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old", "out.replaced"]


def test_out_changed_during_the_conversion_is_not_replaced(src, dataset, tmp_path, monkeypatch):
    from pipelines.convert import driver as convert_module

    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    real_build = convert_module._build

    def user_adds_a_file(*args, **kwargs):
        result = real_build(*args, **kwargs)
        (out / "thesis.txt").write_text("written while converting")
        return result

    monkeypatch.setattr(convert_module, "_build", user_adds_a_file)
    with pytest.raises(convert_module.DataError, match="thesis.txt: not a file of the dataset"):
        _convert(src, out)
    assert (out / "thesis.txt").exists() and (tmp_path / "out.partial" / manifest.MANIFEST_NAME).exists()


def test_source_inside_the_output_is_refused_and_untouched(src, dataset, tmp_path, capsys):
    ds2 = tmp_path / "ds2"
    shutil.copytree(dataset, ds2)
    shutil.copytree(src, ds2 / "images")  # `fastbt convert ds2/images ds2 --overwrite`
    (tmp_path / "link").symlink_to(ds2)
    before = _snapshot(ds2)
    for source, out in ((ds2 / "images", ds2), (ds2 / "images", tmp_path / "link"),
                        (tmp_path / "link" / "images", ds2)):
        assert _cli(source, out) == 2
        assert "the source is inside" in one_error_line(capsys.readouterr().err)
    assert _snapshot(ds2) == before


def test_output_or_its_partial_folder_inside_the_source_is_refused(src, tmp_path, capsys):
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    (tmp_path / "alias").symlink_to(copy)
    for source, out in ((copy, copy / "out"), (copy, tmp_path / "alias" / "a" / "out"), (copy, copy)):
        assert _cli(source, out) == 2
        assert "inside the source folder" in one_error_line(capsys.readouterr().err)
    # OUT.partial is deleted by --overwrite when its settings differ: it must not hold the source
    (tmp_path / "x.partial").mkdir()
    shutil.copytree(src, tmp_path / "x.partial" / "images")
    assert _cli(tmp_path / "x.partial" / "images", tmp_path / "x") == 2
    assert "the source is inside" in one_error_line(capsys.readouterr().err)
    assert len(list((tmp_path / "x.partial" / "images").rglob("*.JPEG"))) == 24


# ---- a full disk or a killed writer ends the conversion in one line; a rerun resumes ------------

@pytest.mark.parametrize("workers", [1, 2])
def test_dali_conversion_on_a_full_tmpfs_stops_in_one_line_and_resumes(src, tmpfs, workers):
    fs = tmpfs("120k")  # room for about one shard of four ~8 KB images... and some more
    out = fs / "out"
    result = run_python(convert_code(src, out, "dali", workers))
    assert_disk_full(result, fs / "out.partial")
    tmpfs("16m")
    rerun = run_python(convert_code(src, out, "dali", workers))
    assert rerun.returncode == 0, rerun.stderr
    assert manifest.load(out).num_images == 24


FULL_SHARD = """
        import pipelines.convert.shards as d
        real = d.encode_jpeg
        def encode(img, quality):
            if int(os.environ.get("FULL_AFTER", "0")) <= d.__dict__.setdefault("calls", 0):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            d.calls += 1
            return real(img, quality)
        d.encode_jpeg = encode
"""


def test_dali_shard_writer_failing_with_enospc_ends_in_one_line_and_resumes(src, tmp_path):
    result = run_python(convert_code(src, tmp_path / "out", "dali", 1, patch=FULL_SHARD.replace(
        'os.environ.get("FULL_AFTER", "0")', '"9"')))
    assert_disk_full(result, tmp_path / "out.partial")
    assert "out.partial/shard-000002" in result.stderr
    rerun = run_python(convert_code(src, tmp_path / "out", "dali", 2))
    assert rerun.returncode == 0 and "resume: 2 finished shard(s)" in rerun.stdout


def test_a_killed_shard_writer_ends_in_one_line_and_resumes(src, tmp_path):
    kill = FULL_SHARD.replace("raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))",
                              "import signal; os.kill(os.getpid(), signal.SIGKILL)")
    # the default hang limit (HANG): 60 s timed out once at load ~10 without hanging
    result = run_python(convert_code(src, tmp_path / "out", "dali", 2, patch=kill.replace(
        'os.environ.get("FULL_AFTER", "0")', '"5"')))
    assert result.returncode == 2, result.stderr
    assert "a shard writer process died" in one_error_line(result.stderr)
    rerun = run_python(convert_code(src, tmp_path / "out", "dali", 2))
    assert rerun.returncode == 0 and manifest.load(tmp_path / "out").num_images == 24


@pytest.mark.parametrize("where", ["typo_dir", ".", "/"])
def test_inspect_of_a_missing_or_non_dataset_path_is_one_line(tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", where]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("no such dataset: typo_dir" in line) if where == "typo_dir" else ("no manifest" in line)


# ---- one conversion per OUT; an unfinished one that recorded nothing --------------------------

def test_a_conversion_into_an_out_another_is_writing_is_refused_touching_nothing(odd, tmp_path):
    from pipelines import folder_lock

    partial = tmp_path / "out.partial"
    held = folder_lock.hold(partial, convert_module.LOCK_NAME)  # as a conversion in progress holds it
    try:
        (partial / "shard-000003.tar.tmp").write_bytes(b"in flight")
        with pytest.raises(DataError, match=rf"out: another fastbt convert is writing it \(PID {os.getpid()} on "):
            _dali(odd, tmp_path / "out")
        assert sorted(p.name for p in partial.iterdir()) == [".lock", "shard-000003.tar.tmp"]
    finally:
        held.close()
    m, _ = _dali(odd, tmp_path / "out")  # the lock gone, the conversion runs
    assert m.num_images == 18 and not (tmp_path / "out" / convert_module.LOCK_NAME).exists()


@pytest.mark.parametrize("fmt", ["dali", "ffcv"])
def test_a_journal_cut_short_before_its_plan_counts_as_no_journal(odd, tmp_path, fmt):
    partial = tmp_path / "out.partial"
    (partial / "shards").mkdir(parents=True)  # as a full disk at the start leaves them
    (partial / convert_module.JOURNAL_NAME).write_bytes(b"" if fmt == "dali" else b'{"plan": {"sou')
    m = convert(odd.root, tmp_path / "out", Options(fmt, **OPTIONS), workers=1, progress=False,
                log=lambda msg: None)
    assert m.num_images == 18


def test_an_out_whose_parent_cannot_be_written_is_one_line(odd, capsys):
    parent = "/sys"  # even root cannot create a folder here
    if not os.path.isdir(parent) or os.access(parent, os.W_OK) and os.geteuid() != 0:
        pytest.skip("needs a folder no one can create entries in")
    args = ["convert", str(odd.root), f"{parent}/fastbt_out", "--format", "dali", "--max-unreadable", "0.5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot create {parent}/fastbt_out.partial" in err


def _images_for_a_race(root):
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(300):  # 1200 files: a conversion takes seconds here
            flat_image((160, 120), rng.integers(30, 226, 3), rng).save(root / f"c{c}/{i}.JPEG", quality=90)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dali", "ffcv"])
def test_two_conversions_into_one_out_started_apart_one_refused_the_other_intact(tmp_path, fmt):
    import subprocess
    import sys
    import time

    src, out = tmp_path / "big", tmp_path / "OUT"
    _images_for_a_race(src)
    cmd = [sys.executable, "-m", "fastbt.cli", "convert", str(src), str(out), "--format", fmt,
           "--workers", "2", "--shard-size", "20", "--max-resolution", "64"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "OUT.partial" / convert_module.LOCK_NAME
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().startswith("PID")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the first is writing shards
    assert first.poll() is None, "the first conversion ended before the second started: make it bigger"
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    first_out, first_err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and str(out) in second.stderr
    assert f"PID {first.pid} on" in second.stderr
    assert first.returncode == 0, first_err[-2000:]
    m = manifest.load(out)
    assert m.num_images == 1200
    assert main(["inspect", str(out)]) == 0  # every file as the manifest lists it, every image decodes
    assert sorted(p.name for p in out.iterdir()) == sorted([manifest.MANIFEST_NAME, *(
        name for f in m.files for name in (f.path, f.index) if name)])


def test_a_file_name_with_a_newline_stays_on_one_line_in_messages_and_the_unreadable_list(tmp_path, capsys):
    src = tmp_path / "src"
    make_image_folder(src, classes=("a", "b"), per_class=2)
    (src / "a" / "bad\nname.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="1 of 5 image files are unreadable"):
        convert(src, tmp_path / "out", Options("dali", max_unreadable=0.0), workers=1, progress=False)
    listing = (tmp_path / "out.partial" / convert_module.UNREADABLE_LIST).read_text().splitlines()
    assert len(listing) == 1 and listing[0].startswith("a/bad\\nname.jpg\t")
    err = capsys.readouterr().err.splitlines()
    assert any(line.endswith("a/bad\\nname.jpg: not an image") or "a/bad\\nname.jpg:" in line for line in err)


def test_jpegs_whose_data_ends_before_the_image_are_unreadable_not_converted_gray(tmp_path, capsys):
    # Before the fix the EOI-mid-scan and tall-header files were converted (gray from the break on).
    from pipelines.sample_images import broken_jpegs, natural_image
    root = tmp_path / "src"
    make_image_folder(root, classes=("a", "b"), per_class=1, natural=True, size=(96, 72))
    photo = natural_image((96, 72), np.random.default_rng(5))
    photo.save(root / "a/progressive.jpg", "JPEG", progressive=True)
    photo.convert("CMYK").save(root / "b/cmyk.jpg", "JPEG")
    photo.convert("L").save(root / "b/gray.jpg", "JPEG")
    broken = broken_jpegs((root / "a/a_0000.JPEG").read_bytes())
    for name, data in broken.items():
        (root / f"b/{name}.jpg").write_bytes(data)
    reasons = {f"b/{name}.jpg": why for name, why in [("cut_in_half", "truncated"),
               ("eoi_mid_scan", "premature end"), ("tall_header", "premature end")]}

    with pytest.raises(DataError, match=r"3 of 8 image files are unreadable"):
        convert(root, tmp_path / "out", Options("dali", **{**OPTIONS, "max_unreadable": 0.3}), workers=1,
                progress=False, log=lambda msg: None)
    listed = dict(line.split("\t") for line in
                  (tmp_path / "out.partial" / convert_module.UNREADABLE_LIST).read_text().splitlines())
    assert listed.keys() == reasons.keys() and all(reasons[p] in listed[p] for p in reasons)

    m = convert(root, tmp_path / "out", Options("dali", **{**OPTIONS, "max_unreadable": 0.5}), workers=1,
                progress=False, log=lambda msg: None)
    assert m.num_images == 5 and m.images_per_class == {"a": 2, "b": 3}
    skipped = {s["path"]: s["reason"] for s in m.skipped if s["kind"] == "unreadable"}
    assert skipped.keys() == reasons.keys() and all(reasons[p] in skipped[p] for p in reasons)


def test_inspect_reports_a_stored_jpeg_whose_data_ends_before_the_image(converted, tmp_path, capsys):
    # Before the fix inspect decoded it (gray from the break on) and verified the dataset.
    from pipelines.sample_images import broken_jpegs
    folder = tmp_path / "ds"
    shutil.copytree(converted("dali").folder, folder)
    tar = folder / "shard-000000.tar"
    first = shards.shard_samples(tar)[0]
    with open(tar, "r+b") as f:
        whole = os.pread(f.fileno(), first.size, first.offset)
        cut = broken_jpegs(whole)["eoi_mid_scan"]
        f.seek(first.offset)
        f.write(cut + bytes(first.size - len(cut)))  # same size: the index and manifest still agree
    assert main(["inspect", str(folder)]) == 2
    assert "premature end" in capsys.readouterr().err


@pytest.mark.parametrize("line", [b'{"format": "dali"}', b"[1, 2]", b"7", b'"plan"'])
def test_a_journal_line_that_is_json_but_no_record_counts_as_torn(odd, tmp_path, line):
    partial = tmp_path / "out.partial"
    (partial / "shards").mkdir(parents=True)
    (partial / convert_module.JOURNAL_NAME).write_bytes(line + b"\n")
    m = convert(odd.root, tmp_path / "out", Options("dali", **OPTIONS), workers=1, progress=False,
                log=lambda msg: None)
    assert m.num_images == 18


TORCH_AT_FORK = """
        import pipelines.convert.pool as pool
        real = pool.ShardWriters.__enter__
        def spy(self):
            print("torch imported when the writers fork:", "torch" in sys.modules)
            return real(self)
        pool.ShardWriters.__enter__ = spy
"""

# What the main process holds per source image (~150 bytes: ~200 MB at ImageNet scale), made large
# here at once: 300 MB, resident, allocated when the scan returns; and the largest writer's RSS,
# read each time a finished shard is journaled.
RECORDS_AFTER_SCAN = """
        import pipelines.convert.driver as driver, pipelines.convert.journal as journal
        real_scan, real_append = driver.scan, journal.append
        def scan(*args, **kwargs):
            global records
            records = b"x" * (300 << 20)
            return real_scan(*args, **kwargs)
        def append(path, line):
            me, sizes = str(os.getpid()), [0]
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    status = open(f"/proc/{pid}/status").read()
                except OSError:
                    continue
                if f"\\nPPid:\\t{me}\\n" in status:
                    sizes.append(int(status.split("VmRSS:")[1].split()[0]) >> 10)
            print("largest writer RSS MB:", max(sizes), flush=True)
            return real_append(path, line)
        driver.scan, journal.append = scan, append
"""


def test_the_shard_writers_do_not_inherit_what_the_main_process_holds_per_image(src, tmp_path):
    result = run_python(convert_code(src, tmp_path / "out", "dali", 2, patch=RECORDS_AFTER_SCAN))
    assert result.returncode == 0, result.stderr
    sizes = [int(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("largest writer")]
    assert len(sizes) >= 6 and 0 < max(sizes) < 150, sizes  # forked after the scan: > 300 MB each


@pytest.mark.parametrize("fmt", ["dali", "ffcv"])
def test_the_shard_writers_fork_from_a_process_without_torch(src, tmp_path, fmt):
    # each forked writer inherits what the main process imported: torch was ~380 MB of RSS per
    # writer (docs/scale.md), ~25 GB summed over a 64-core node's writers, for nothing they use
    result = run_python(convert_code(src, tmp_path / "out", fmt, 2, patch=TORCH_AT_FORK))
    assert result.returncode == 0, result.stderr
    assert "torch imported when the writers fork: False" in result.stdout, result.stdout
