"""`fastbt convert` under hostile conditions (issue 11): it never deletes what it did not make,
and a full disk ends it in one line, with the finished shards kept for a rerun.

Conversions that could hang run in a subprocess with a timeout, so a regression fails instead of
hanging the suite. Real disk-full tests use a small tmpfs and skip when it cannot be mounted; the
same failures are also simulated by making a write raise ENOSPC.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastbt.cli import main
from pipelines.sample_images import make_image_folder
from pipelines import manifest
from pipelines.convert import convert
from pipelines.options import Options

REPO = Path(__file__).resolve().parents[1]
HANG = 180  # seconds: an FFCV conversion of 24 tiny images takes ~20 s here (~9 s importing ffcv)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "train"
    make_image_folder(root, classes=("a", "b", "c"), per_class=8, size=(160, 120), natural=True)
    return root


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


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ---- 1: --overwrite replaces only a fastbt dataset -------------------------------------------

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
    line = _one_error_line(capsys.readouterr().err)
    assert "not a fastbt dataset; refusing to replace it" in line
    assert _snapshot(out) == before and not (tmp_path / "out.partial").exists()


def test_overwrite_refuses_a_fastbt_dataset_holding_a_file_it_does_not_list(src, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    (out / "notes").mkdir()
    (out / "notes" / "thesis.txt").write_text("precious")
    before = _snapshot(out)
    assert _cli(src, out) == 2
    assert "notes: not a file of the dataset" in _one_error_line(capsys.readouterr().err)
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


# ---- 2: the swap never deletes a name the user may own ----------------------------------------

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
    from pipelines import convert as convert_module

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


# ---- 3: SRC and OUT must not contain one another ---------------------------------------------

def test_source_inside_the_output_is_refused_and_untouched(src, dataset, tmp_path, capsys):
    ds2 = tmp_path / "ds2"
    shutil.copytree(dataset, ds2)
    shutil.copytree(src, ds2 / "images")  # `fastbt convert ds2/images ds2 --overwrite`
    (tmp_path / "link").symlink_to(ds2)
    before = _snapshot(ds2)
    for source, out in ((ds2 / "images", ds2), (ds2 / "images", tmp_path / "link"),
                        (tmp_path / "link" / "images", ds2)):
        assert _cli(source, out) == 2
        assert "the source is inside" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(ds2) == before


def test_output_or_its_partial_folder_inside_the_source_is_refused(src, tmp_path, capsys):
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    (tmp_path / "alias").symlink_to(copy)
    for source, out in ((copy, copy / "out"), (copy, tmp_path / "alias" / "a" / "out"), (copy, copy)):
        assert _cli(source, out) == 2
        assert "inside the source folder" in _one_error_line(capsys.readouterr().err)
    # OUT.partial is deleted by --overwrite when its settings differ: it must not hold the source
    (tmp_path / "x.partial").mkdir()
    shutil.copytree(src, tmp_path / "x.partial" / "images")
    assert _cli(tmp_path / "x.partial" / "images", tmp_path / "x") == 2
    assert "the source is inside" in _one_error_line(capsys.readouterr().err)
    assert len(list((tmp_path / "x.partial" / "images").rglob("*.JPEG"))) == 24


# ---- 6: a full disk ends the conversion in one line; a rerun resumes ---------------------------

def _run(code: str, timeout: int = HANG) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python; a hang fails the test instead of the suite."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"hung: no exit within {timeout} s\n{err.stderr}")


def _convert_code(src, out, fmt, workers, patch=""):
    return f"""
        import errno, os, sys
        {patch}
        from fastbt.cli import main
        sys.exit(main(["convert", {str(src)!r}, {str(out)!r}, "--format", {fmt!r}, "--max-resolution",
                       "64", "--shard-size", "4", "--workers", "{workers}"]))
    """


def _assert_disk_full(result, partial: Path):
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert f"no space left on device while writing {partial}" in line, line
    assert line.endswith("MB and rerun to resume") and " free " in line, line
    assert not list(partial.rglob("*.tmp"))  # cut-short files are removed at once


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size): a tmpfs at tmp_path/"fs" (remounting changes its size); skips if not allowed."""
    where = tmp_path / "fs"
    where.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        opts = f"remount,size={size}" if mounted else f"size={size}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(size)
        return where

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_dali_conversion_on_a_full_tmpfs_stops_in_one_line_and_resumes(src, tmpfs, workers):
    fs = tmpfs("120k")  # room for about one shard of four ~8 KB images... and some more
    out = fs / "out"
    result = _run(_convert_code(src, out, "dali", workers))
    _assert_disk_full(result, fs / "out.partial")
    tmpfs("16m")
    rerun = _run(_convert_code(src, out, "dali", workers))
    assert rerun.returncode == 0, rerun.stderr
    assert manifest.load(out).num_images == 24


def test_ffcv_conversion_without_room_for_the_beton_stops_before_writing_it_and_resumes(src, tmpfs):
    fs = tmpfs("6m")  # the shards fit; the .beton (whole 8 MiB pages) cannot
    out = fs / "out"
    result = _run(_convert_code(src, out, "ffcv", 2))
    _assert_disk_full(result, fs / "out.partial")
    assert "data.beton.tmp" in result.stderr
    shards = list((fs / "out.partial" / "shards").glob("*.tar"))
    assert len(shards) == 6
    tmpfs("64m")
    rerun = _run(_convert_code(src, out, "ffcv", 2))
    assert rerun.returncode == 0, rerun.stderr
    assert "resume: 6 finished shard(s)" in rerun.stdout
    assert manifest.load(out).num_images == 24


NO_PRECHECK = "import pipelines.ffcv_data as f; f.beton_size_bound = lambda *args: 0"


@pytest.mark.parametrize("workers", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_ffcv_writer_filling_a_real_tmpfs_does_not_hang(src, tmpfs, workers):
    fs = tmpfs("6m")  # without the free-space check, ffcv's writer workers hit ENOSPC mid-write
    result = _run(_convert_code(src, fs / "out", "ffcv", workers, patch=NO_PRECHECK))
    _assert_disk_full(result, fs / "out.partial")
    assert len(list((fs / "out.partial" / "shards").glob("*.tar"))) == 6  # kept for the rerun


FULL_PAGE = """
        from ffcv.memory_allocator import MemoryAllocator
        def full(self):
            if self.my_page >= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        MemoryAllocator.flush_page = full
"""
KILLED_WORKER = """
        import signal
        from ffcv.memory_allocator import MemoryAllocator
        def killed(self):
            if self.my_page >= 0:
                os.kill(os.getpid(), signal.SIGKILL)
        MemoryAllocator.flush_page = killed
"""


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ffcv_writer_worker_failing_with_enospc_ends_in_one_line(src, tmp_path, workers):
    result = _run(_convert_code(src, tmp_path / "out", "ffcv", workers, patch=FULL_PAGE))
    _assert_disk_full(result, tmp_path / "out.partial")
    assert "data.beton.tmp" in result.stderr


def test_ffcv_writer_worker_killed_ends_in_one_line(src, tmp_path):
    result = _run(_convert_code(src, tmp_path / "out", "ffcv", 2, patch=KILLED_WORKER))
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert "an FFCV writer process died (signal 9)" in line and "rerun to resume" in line
    assert not (tmp_path / "out.partial" / "data.beton.tmp").exists()


FULL_SHARD = """
        import pipelines.shards as d
        real = d.encode_jpeg
        def encode(img, quality):
            if int(os.environ.get("FULL_AFTER", "0")) <= d.__dict__.setdefault("calls", 0):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            d.calls += 1
            return real(img, quality)
        d.encode_jpeg = encode
"""


def test_dali_shard_writer_failing_with_enospc_ends_in_one_line_and_resumes(src, tmp_path):
    result = _run(_convert_code(src, tmp_path / "out", "dali", 1, patch=FULL_SHARD.replace(
        'os.environ.get("FULL_AFTER", "0")', '"9"')))
    _assert_disk_full(result, tmp_path / "out.partial")
    assert "out.partial/shard-000002" in result.stderr
    rerun = _run(_convert_code(src, tmp_path / "out", "dali", 2))
    assert rerun.returncode == 0 and "resume: 2 finished shard(s)" in rerun.stdout


def test_a_killed_shard_writer_ends_in_one_line_and_resumes(src, tmp_path):
    kill = FULL_SHARD.replace("raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))",
                              "import signal; os.kill(os.getpid(), signal.SIGKILL)")
    result = _run(_convert_code(src, tmp_path / "out", "dali", 2, patch=kill.replace(
        'os.environ.get("FULL_AFTER", "0")', '"5"')), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "a shard writer process died" in _one_error_line(result.stderr)
    rerun = _run(_convert_code(src, tmp_path / "out", "dali", 2))
    assert rerun.returncode == 0 and manifest.load(tmp_path / "out").num_images == 24
