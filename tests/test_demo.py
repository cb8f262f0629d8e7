"""`fastbt demo`: every output it promises, quickly (a few steps); the real margin, slowly."""

import pytest

from fastbt import demo
from fastbt.cli import main

OUTPUTS = [
    "data/train/disc", "data/val/star", "data/train_ffcv/data.beton", "data/train_ffcv/manifest.json",
    "run/config.yaml", "run/log.jsonl", "run/backbone.pth", "run/curves.png",
    "profile/report.json", "profile/report.md", "profile/phases.png", "profile/throughput.png",
]


def test_a_small_demo_writes_every_output_and_a_summary(tmp_path, monkeypatch, capsys):
    # 40 train and 20 val images of 40 px, batch 16: 2 steps per epoch, 2 epochs, a 2-step profile
    monkeypatch.setattr(demo, "TRAIN_PER_CLASS", 4)
    monkeypatch.setattr(demo, "VAL_PER_CLASS", 2)
    monkeypatch.setattr(demo, "IMAGE_SIZE", 40)
    monkeypatch.setattr(demo, "PROFILE", ["profile.steps=2", "profile.warmup_steps=1"])
    overrides = ["train.batch_size=16", "train.epochs=2", "model.projector=[64,64]", "logging.every_steps=1",
                 "logging.progress_bar=false", "data.workers=1"]
    assert main(["demo", "--out", str(tmp_path), *overrides]) == 0
    for name in OUTPUTS:
        assert (tmp_path / name).exists(), name
    out = capsys.readouterr().out
    for line in ("time", "training speed", "where a step goes", "kNN top-1, val", "curves"):
        assert f"  {line}" in out, line
    assert str(tmp_path / "run" / "curves.png") in out
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert log.count('"knn_top1"') == 2  # the online monitor ran after each epoch
    cfg_text = (tmp_path / "run" / "config.yaml").read_text()
    assert "size: 32" in cfg_text and "resize: 37" in cfg_text  # monitor at the training resolution
    assert demo.foreign_files(tmp_path) == []  # --fresh may delete everything a demo writes

    # a second run skips every stage but evaluation, and gives the same accuracies
    first = out[out.index("kNN top-1"):].splitlines()[0]
    assert main(["demo", "--out", str(tmp_path), *overrides]) == 0
    again = capsys.readouterr().out
    assert "generated" not in again and "converted" not in again
    assert again[again.index("kNN top-1"):].splitlines()[0] == first


@pytest.mark.slow
def test_the_demo_beats_random_init_by_30_points(tmp_path):
    results = demo.run(tmp_path, [])
    margin = results["pretrained"]["top1"] - results["random init"]["top1"]
    assert margin >= 30, results


def test_fresh_deletes_only_a_demo_folder(tmp_path):
    from pipelines.errors import DataError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    (mine / "run").mkdir()
    with pytest.raises(DataError, match="thesis.txt, which no demo wrote"):
        demo.clear(mine)
    assert (mine / "thesis.txt").read_text() == "years of work" and (mine / "run").is_dir()

    previous = tmp_path / "previous"
    for name in demo.DEMO_OUTPUTS:
        (previous / name).mkdir(parents=True)
    demo.clear(previous)
    assert not previous.exists()


def _users_project(root):
    (root / "data/imagenet/train/n01").mkdir(parents=True)
    (root / "data/imagenet/train/n01/img.JPEG").write_bytes(b"my image")
    (root / "run").mkdir()
    (root / "run/notes.txt").write_text("my notes")
    (root / "run/config.yaml").write_text("a demo's")


def _untouched(root):
    return ((root / "data/imagenet/train/n01/img.JPEG").read_bytes() == b"my image"
            and (root / "run/notes.txt").read_text() == "my notes")


def test_fresh_refuses_a_folder_with_a_users_file_at_any_depth(tmp_path):
    from pipelines.errors import DataError

    _users_project(tmp_path)
    with pytest.raises(DataError, match="data/imagenet/train/n01/img.JPEG, run/notes.txt, which no demo"):
        demo.clear(tmp_path)
    assert _untouched(tmp_path)


def test_bad_overrides_are_refused_before_fresh_deletes_anything(tmp_path, capsys):
    _users_project(tmp_path)
    assert main(["demo", "--out", str(tmp_path), "--fresh", "bogus.key=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert _untouched(tmp_path)
    previous = tmp_path / "previous"
    (previous / "run").mkdir(parents=True)
    (previous / "run/log.jsonl").write_text("{}\n")
    assert main(["demo", "--out", str(previous), "--fresh", "bogus.key=1"]) == 2
    assert (previous / "run/log.jsonl").exists()


def test_fresh_deletes_a_demo_folder_holding_only_what_a_demo_writes(tmp_path):
    written = ["data/train/disc/disc_00001.JPEG", "data/val.partial/star/star_00000.JPEG",
               "data/train_ffcv/data.beton", "data/train_ffcv.partial/shards/shard-000001.tar",
               "run/ckpt_000000004.pt", "run/.lock", "run/previous-20260101-000000/log.jsonl",
               "run/tb/events.out.tfevents.1.host", "profile/report.md"]
    for name in written:
        (tmp_path / "demo" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "demo" / name).write_bytes(b"")
    demo.clear(tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_fresh_refuses_a_link_inside_a_demo_folder(tmp_path):
    from pipelines.errors import DataError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.txt").write_text("years of work")
    (tmp_path / "demo/run").mkdir(parents=True)
    (tmp_path / "demo/run/tb").symlink_to(tmp_path / "mine")
    with pytest.raises(DataError, match="run/tb, which no demo wrote"):
        demo.clear(tmp_path / "demo")
    assert (tmp_path / "mine/thesis.txt").exists()
