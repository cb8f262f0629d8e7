"""curves.png from a run's log.jsonl, `fastbt plot`, and the optional TensorBoard copy of the log."""

import errno
import importlib.util
import json
import sys

import pytest
from PIL import Image

from fastbt import plot, runlog
from fastbt.cli import main
from fastbt.config import ConfigError

RECORDS = [
    {"step": 5, "epoch": 0.5, "loss": 300.0, "lr": 0.2, "pairs_per_s": 40.0, "includes_warmup": True},
    {"step": 10, "epoch": 1.0, "loss": 250.0, "lr": 0.4, "pairs_per_s": 90.0, "includes_warmup": False},
    {"step": 10, "epoch": 1, "knn_top1": 30.0, "knn_top5": 70.0},
    {"step": 15, "epoch": 1.5, "loss": 220.0, "lr": 0.3, "pairs_per_s": 95.0, "includes_warmup": False},
    {"step": 20, "epoch": 2.0, "loss": 200.0, "lr": 0.1, "pairs_per_s": 93.0, "includes_warmup": False},
    {"step": 20, "epoch": 2, "knn_top1": 45.0, "knn_top5": 85.0},
]


def write_log(run_dir, records, tail=""):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_partly_written_last_line_is_left_out_and_a_complete_one_kept(tmp_path):
    write_log(tmp_path, RECORDS, tail='{"step": 25, "lo')  # the loop is writing it right now
    assert runlog.read(tmp_path / "log.jsonl") == RECORDS
    write_log(tmp_path, RECORDS, tail='{"step": 25}')  # complete, only its newline is missing
    assert runlog.read(tmp_path / "log.jsonl") == [*RECORDS, {"step": 25}]
    write_log(tmp_path, RECORDS[:1], tail='{"step": 25, "lo\n' + json.dumps(RECORDS[1]) + "\n")
    with pytest.raises(json.JSONDecodeError):  # damage inside the log is not hidden
        runlog.read(tmp_path / "log.jsonl")


def test_by_step_keeps_the_later_record_of_a_step_logged_twice_by_a_resume():
    records = [{"step": 5, "loss": 9.0}, {"step": 10, "loss": 8.0}, {"step": 5, "loss": 7.0},
               {"step": 10, "knn_top1": 50.0}]
    assert plot.by_step(records, "loss") == ([5, 10], [7.0, 8.0])
    assert plot.by_step(records, "knn_top1") == ([10], [50.0])


@pytest.fixture
def drawn(monkeypatch):
    """The figures write_curves saves, to check what they hold."""
    from matplotlib.figure import Figure

    figures, real = [], Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def xy(line):
    return [tuple(point) for point in line.get_xydata().tolist()]


def test_plot_draws_a_readable_picture_of_a_running_run(tmp_path, capsys, drawn):
    write_log(tmp_path / "run", RECORDS, tail='{"step": 25, "lo')
    assert main(["plot", str(tmp_path / "run")]) == 0
    (fig,) = drawn
    loss_ax, lr_ax, rate_ax, knn_ax = fig.axes
    assert xy(loss_ax.lines[0]) == [(5, 300.0), (10, 250.0), (15, 220.0), (20, 200.0)]
    assert xy(lr_ax.lines[0]) == [(5, 0.2), (10, 0.4), (15, 0.3), (20, 0.1)]
    measured, warmup = rate_ax.lines  # the first report (includes warm-up) drawn apart
    assert xy(measured) == [(10, 90.0), (15, 95.0), (20, 93.0)] and xy(warmup) == [(5, 40.0)]
    assert [xy(line) for line in knn_ax.lines] == [[(10, 30.0), (20, 45.0)], [(10, 70.0), (20, 85.0)]]
    path = tmp_path / "run" / "curves.png"
    assert capsys.readouterr().out.strip() == f"wrote {path}"
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size == (1000, 650)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["curves.png", "log.jsonl"]  # no temp


def test_a_run_without_the_knn_monitor_still_gets_its_curves(tmp_path, drawn):
    write_log(tmp_path, [r for r in RECORDS if "loss" in r])
    assert plot.write_curves(tmp_path) == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    (fig,) = drawn
    assert xy(fig.axes[0].lines[0]) == [(5, 300.0), (10, 250.0), (15, 220.0), (20, 200.0)]
    knn_ax = fig.axes[3]
    assert not knn_ax.lines and "online kNN monitor off" in knn_ax.texts[0].get_text()


def test_plot_of_a_folder_without_a_log_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no log.jsonl" in err and str(tmp_path) in err
    assert plot.curves_at_exit(tmp_path) is None  # the loop's call: nothing logged, no picture


def test_tensorboard_gets_the_same_scalars_as_the_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = runlog.RunLog(tmp_path / "log.jsonl", tensorboard_dir=tmp_path / "tb")
    for record in RECORDS:
        log.write(record)
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    for key in ("loss", "lr", "pairs_per_s", "epoch", "knn_top1", "knn_top5", "includes_warmup"):
        want = [(r["step"], r[key]) for r in RECORDS if key in r and not isinstance(r[key], bool)]
        got = [(e.step, e.value) for e in events.Scalars(key)] if want else []
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want]), key  # stored as float32
    assert "includes_warmup" not in events.Tags()["scalars"] and "step" not in events.Tags()["scalars"]
    assert runlog.read(tmp_path / "log.jsonl") == RECORDS


def test_tensorboard_asked_for_but_not_installed_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if missing
    with pytest.raises(ConfigError, match=r"logging.tensorboard is true .* pip install 'fastbt\[tensorboard\]'"):
        runlog.RunLog(tmp_path / "log.jsonl", tensorboard_dir=tmp_path / "tb")
    runlog.RunLog(None, tensorboard_dir=tmp_path / "tb")  # ranks that do not log need nothing
    assert not (tmp_path / "tb").exists()


def test_a_preempted_run_draws_its_curves_and_mirrors_its_log_to_tensorboard(images, tiny, tmp_path,
                                                                              monkeypatch):
    import os
    import signal

    from fastbt import config, loop
    from fastbt.step import TrainStep

    tensorboard = importlib.util.find_spec("tensorboard") is not None
    calls = {"n": 0}
    real_call = TrainStep.__call__

    def preempted_at_step_3(self, view1, view2):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler sets its flag: no exit here
        return real_call(self, view1, view2)

    monkeypatch.setattr(TrainStep, "__call__", preempted_at_step_3)
    run_dir = tmp_path / "run"
    cfg = config.load(None, [*tiny, f"data.path={images}", f"train.out_dir={run_dir}", "train.epochs=2",
                             f"logging.tensorboard={str(tensorboard).lower()}"])
    loop.pretrain(cfg)
    assert not (run_dir / "backbone.pth").exists()  # stopped early, at the report after step 3
    assert [r["step"] for r in runlog.read(run_dir / "log.jsonl")] == [1, 2, 3]
    with Image.open(run_dir / "curves.png") as image:
        assert image.format == "PNG"
    if tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tb"))
        events.Reload()
        assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]


# ---- a damaged log, a folder that cannot be written

GOOD = [{"step": 5, "loss": 300.0, "lr": 0.2, "pairs_per_s": 40.0},
        {"step": 10, "loss": 250.0, "lr": 0.4, "pairs_per_s": 90.0}]
BAD = [b"\x89PNG\x00\xff\xfe binary", b'{"step": 6, "loss": NaN}', b'{"step": 7, "loss": "high"}',
       b'{"step": 8, "lr": [1, 2]}', b'{"loss": 1.0}', b'{"step": 9, "lo', b'[1, 2]',
       b'{"step": "9", "loss": 1.0}', b'{"step": true, "loss": 1.0}']


def write_lines(run_dir, lines):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def test_plot_skips_malformed_lines_says_how_many_and_draws_the_rest(tmp_path, capsys, drawn):
    good = [json.dumps(r).encode() for r in GOOD]
    write_lines(tmp_path / "run", [good[0], *BAD, good[1]])
    assert main(["plot", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err == f"fastbt: skipped {len(BAD)} malformed line(s) of {tmp_path / 'run' / 'log.jsonl'}\n"
    (fig,) = drawn
    assert xy(fig.axes[0].lines[0]) == [(5, 300.0), (10, 250.0)]


def test_read_valid_does_not_count_a_last_line_still_being_written(tmp_path):
    (tmp_path / "log.jsonl").write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"step": 10, "lo')
    assert runlog.read_valid(tmp_path / "log.jsonl") == ([GOOD[0]], 0)


def test_plot_into_a_run_directory_it_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    write_lines(tmp_path / "run", [json.dumps(r).encode() for r in GOOD])

    def read_only(self, *args, **kwargs):  # what an immutable (chattr +i) or read-only folder gives
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(Figure, "savefig", read_only)
    assert main(["plot", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {tmp_path / 'run' / 'curves.png'}: Operation not permitted" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.jsonl"]
