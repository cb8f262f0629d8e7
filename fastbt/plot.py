"""curves.png: a run's loss, learning rate, throughput and kNN accuracy, drawn from its log.jsonl.

The loop draws it when a run ends or is preempted; `fastbt plot RUN_DIR` draws it again at any
time, also while the run is still writing (a partly written last line is left out). The log is the
only input: what the picture shows is what the log says. matplotlib (Agg, no pyplot) is imported
here only, when a picture is drawn.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from fastbt import runlog
from fastbt.errors import ConfigError, RunDirError

CURVES = "curves.png"


def by_step(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that hold `key`, one per step (a resumed run logs some steps
    twice: the later record wins), in step order."""
    latest = {r["step"]: r[key] for r in records if key in r and r[key] is not None}
    steps = sorted(latest)
    return steps, [latest[s] for s in steps]


def write_curves(run_dir: str | Path) -> Path:
    """Draw RUN_DIR/curves.png from RUN_DIR/log.jsonl; return its path."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    run_dir = Path(run_dir)
    log = run_dir / "log.jsonl"
    if not log.is_file():
        raise ConfigError(f"{run_dir}: no log.jsonl (not a run directory, or no step logged yet)")
    try:
        records, skipped = runlog.read_valid(log)
    except OSError as err:
        raise ConfigError(f"cannot read {log}: {err.strerror or err}") from None
    if skipped:
        print(f"fastbt: skipped {skipped} malformed line(s) of {log}", file=sys.stderr)
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    (loss_ax, lr_ax), (rate_ax, knn_ax) = fig.subplots(2, 2, sharex=True)

    loss_ax.plot(*by_step(records, "loss"), color="tab:blue")
    loss_ax.set(title="Barlow Twins loss", ylabel="loss")
    lr_ax.plot(*by_step(records, "lr"), color="tab:orange")
    lr_ax.set(title="learning rate (weights)", ylabel="LR")

    # the first report of a (re)started run includes compilation and loader start-up: drawn apart
    measured = [r for r in records if not r.get("includes_warmup")]
    warmup = [r for r in records if r.get("includes_warmup")]
    rate_ax.plot(*by_step(measured, "pairs_per_s"), ".-", color="tab:green", label="pairs/s")
    if warmup:
        rate_ax.plot(*by_step(warmup, "pairs_per_s"), "x", color="tab:gray",
                     label="first report (includes warm-up)")
    rate_ax.set(title="throughput (all processes)", ylabel="pairs/s", xlabel="step")
    rate_ax.legend(fontsize="small")

    steps, top1 = by_step(records, "knn_top1")
    if steps:
        knn_ax.plot(steps, top1, "o-", color="tab:red", label="top-1")
        knn_ax.plot(*by_step(records, "knn_top5"), "s--", color="tab:purple", label="top-5")
        knn_ax.annotate(f"{top1[-1]:.1f}%", (steps[-1], top1[-1]), textcoords="offset points",
                        xytext=(-10, 8), ha="right")
        knn_ax.set_ylim(0, 100)
        knn_ax.legend(fontsize="small")
    else:
        knn_ax.text(0.5, 0.5, "online kNN monitor off\n(eval.knn.every_epochs: 0)", ha="center",
                    va="center", transform=knn_ax.transAxes, color="gray")
    knn_ax.set(title="online kNN accuracy (val)", ylabel="%", xlabel="step")

    for ax in (loss_ax, lr_ax, rate_ax, knn_ax):
        ax.grid(alpha=0.3)
    last = max((r["step"] for r in records), default=0)
    fig.suptitle(f"{'/'.join(run_dir.resolve().parts[-2:])}: {last} steps logged")
    path = run_dir / CURVES
    tmp = run_dir / f".{CURVES}.tmp.png"  # a reader never sees a half-written picture
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    except OSError as err:  # a read-only or immutable run directory, a full disk
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def curves_at_exit(run_dir: str | Path, quiet: bool = False) -> Path | None:
    """write_curves for the loop's end: a run that logged nothing gets no picture, and one that
    cannot be drawn is a warning (none when `quiet`: the run already says why), never a failed run."""
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file() or log.stat().st_size == 0:
        return None
    try:
        return write_curves(run_dir)
    except Exception as err:  # noqa: BLE001 - the run's result must not depend on its picture
        if not quiet:
            print(f"fastbt: could not draw {CURVES} ({type(err).__name__}: {err})", file=sys.stderr)
        return None
