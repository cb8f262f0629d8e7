"""The FFCV backend (pipelines/ffcv_backend/): ffcv sets torch's thread count when imported and
fastbt keeps the caller's (threads); a full disk or a failing writer process ends a conversion in one
line (beton, writer); a corrupt .beton header is refused before anything is allocated and an
undecodable JPEG stops training with its sample index (reader, ops), never a hang."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pipelines
from checks import REPO, assert_disk_full, convert_code, one_error_line, run_python
from fastbt.cli import main
from pipelines.augment import AugSpec
from pipelines.convert import manifest
from pipelines.errors import DataError

AUG = AugSpec(size=32)

# In a fresh process: ffcv is imported there for the first time (this test process may have done it).
CONVERT_THEN_COUNT = """
import sys, torch
torch.set_num_threads(3)
from pipelines.convert import convert
from pipelines.convert.options import Options
convert(sys.argv[1], sys.argv[2], Options("ffcv", max_resolution=40), workers=1, progress=False)
print(torch.get_num_threads())
"""


def test_converting_to_ffcv_keeps_the_callers_torch_threads(images, tmp_path):
    # the demo converts and then trains in one process: it trained on one core when ffcv's import set 1
    done = subprocess.run([sys.executable, "-c", CONVERT_THEN_COUNT, str(images), str(tmp_path / "ffcv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "3"


# ---- the writer half: a full disk or a failing FFCV writer process ends in one line ------------

def test_ffcv_conversion_without_room_for_the_beton_stops_before_writing_it_and_resumes(natural_source, tmpfs):
    fs = tmpfs("6m")  # the shards fit; the .beton (whole 8 MiB pages) cannot
    out = fs / "out"
    result = run_python(convert_code(natural_source, out, "ffcv", 2))
    assert_disk_full(result, fs / "out.partial")
    assert "data.beton.tmp" in result.stderr
    shards = list((fs / "out.partial" / "shards").glob("*.tar"))
    assert len(shards) == 6
    tmpfs("64m")
    rerun = run_python(convert_code(natural_source, out, "ffcv", 2))
    assert rerun.returncode == 0, rerun.stderr
    assert "resume: 6 finished shard(s)" in rerun.stdout
    assert manifest.load(out).num_images == 24


NO_PRECHECK = "import pipelines.ffcv_backend.beton as f; f.beton_size_bound = lambda *args: 0"


@pytest.mark.parametrize("workers", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_ffcv_writer_filling_a_real_tmpfs_does_not_hang(natural_source, tmpfs, workers):
    fs = tmpfs("6m")  # without the free-space check, ffcv's writer workers hit ENOSPC mid-write
    result = run_python(convert_code(natural_source, fs / "out", "ffcv", workers, patch=NO_PRECHECK))
    assert_disk_full(result, fs / "out.partial")
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
def test_ffcv_writer_worker_failing_with_enospc_ends_in_one_line(natural_source, tmp_path, workers):
    result = run_python(convert_code(natural_source, tmp_path / "out", "ffcv", workers, patch=FULL_PAGE))
    assert_disk_full(result, tmp_path / "out.partial")
    assert "data.beton.tmp" in result.stderr


def test_ffcv_writer_worker_killed_ends_in_one_line(natural_source, tmp_path):
    result = run_python(convert_code(natural_source, tmp_path / "out", "ffcv", 2, patch=KILLED_WORKER))
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert "an FFCV writer process died (signal 9)" in line and "rerun to resume" in line
    assert not (tmp_path / "out.partial" / "data.beton.tmp").exists()


# ---- a damaged .beton: a corrupt header, an undecodable JPEG ------------------------------------

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
def test_inspect_and_loaders_refuse_a_corrupt_beton_header_without_allocating(colour_datasets, tmp_path, capsys,
                                                                            change, reason):
    folder = tmp_path / "ds"
    shutil.copytree(colour_datasets[0]["ffcv"], folder)
    change(folder / "data.beton")
    assert main(["inspect", str(folder)]) == 2
    assert reason in one_error_line(capsys.readouterr().err)
    with pytest.raises(DataError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        pipelines.build_loader("ffcv", str(folder), aug=AUG, batch_size=4, device="cpu", workers=1)


def _poke(path: Path, offset: int, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_an_undecodable_jpeg_in_a_beton_stops_training_with_its_sample_index(colour_datasets, tmp_path):
    from ffcv.reader import Reader

    folder = tmp_path / "ds"
    shutil.copytree(colour_datasets[0]["ffcv"], folder)
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
