"""The `fastbt` command line: parse the arguments, then make one call into the package.

Each subcommand is declared by one `_add_<name>` function that sets `func`; heavy imports (torch,
ffcv, DALI) happen inside the handlers so `fastbt --help` stays fast. Errors meant for the user
(bad config, bad data) print as one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from fastbt import __version__
from fastbt.errors import ConfigError, DeviceError, RunDirError, RunStopped
from pipelines.errors import DataError

USER_ERRORS = (ConfigError, DataError, DeviceError, RunDirError)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (overrides of configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override one config value, e.g. train.epochs=100")


def _show_config(args: argparse.Namespace) -> None:
    from fastbt import config

    cfg = config.load(args.config, args.overrides)
    sys.stdout.write(config.to_yaml(cfg))


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config (defaults <- file <- overrides)")
    _add_config_args(p)
    p.set_defaults(func=_show_config)


def _pretrain(args: argparse.Namespace) -> None:
    from fastbt import config
    from fastbt.train import loop

    try:
        cfg = config.load(args.config, args.overrides)
    except ConfigError as err:
        err.same_on_every_rank = True  # every rank reads the same command line and file
        raise
    try:
        loop.pretrain(cfg)
    except (ConfigError, RunDirError):
        raise  # refused (or a full disk, a read-only folder): the run directory stays as it was
    except BaseException:
        _draw_curves(cfg.train.out_dir)  # stopped, crashed or interrupted: the run so far
        raise
    _draw_curves(cfg.train.out_dir)


def _draw_curves(run_dir: str) -> None:
    """RUN_DIR/curves.png from its log, drawn by rank 0 (a failure to draw is only a warning)."""
    from fastbt import plot

    if _rank() == 0:
        plot.curves_at_exit(run_dir)


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain Barlow Twins (one process, or under torchrun)",
                       description="Pretrain from a YAML config. Launch with torchrun for several "
                                   "GPUs or nodes; rerun in the same train.out_dir to resume.")
    _add_config_args(p)
    p.set_defaults(func=_pretrain)


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from fastbt.train import checkpoint

    out = Path(args.out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; name the file to write, e.g. {out / 'resnet50.pth'}")
    _check_writable_file(args.out)  # a missing folder: one line naming it, not our temp file's errno
    if out.exists() and out.resolve() == Path(args.checkpoint).resolve():
        raise DataError(f"{out}: is the checkpoint being exported; name another file")
    try:
        n = checkpoint.export_backbone(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    print(f"wrote {n} backbone tensors (torchvision format, no fc.*) to {args.out}")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's backbone as a torchvision state_dict")
    p.add_argument("checkpoint", help="a fastbt checkpoint (ckpt_*.pt)")
    p.add_argument("out", help="output file, e.g. resnet50.pth")
    p.set_defaults(func=_export)


def _convert(args: argparse.Namespace) -> int:
    import dataclasses

    from fastbt import config
    from pipelines.convert import convert
    from pipelines.convert.options import Options

    flags = {key: getattr(args, key) for key in ("format", "max_resolution", "jpeg_quality", "shard_size",
                                                 "limit", "max_unreadable", "seed", "workers")}
    settings = dataclasses.replace(config.load_convert(args.config, args.overrides),
                                   **{k: v for k, v in flags.items() if v is not None})
    options = Options(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(Options)})
    try:
        convert(args.src, args.out, options, workers=settings.workers, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"\nfastbt convert: interrupted; run the same command again to resume "
              f"(finished shards are kept in {args.out}.partial)", file=sys.stderr)
        return 130
    return 0


def _add_convert(sub) -> None:
    from pipelines.convert import options as c  # standard library only; the config's convert.* defaults

    p = sub.add_parser("convert", help="convert an ImageNet-layout folder to FFCV or DALI format",
                       description="Convert SRC/<class>/<image> into the dataset folder OUT: FFCV "
                                   "(OUT/data.beton) or DALI webdataset shards (OUT/shard-*.tar + "
                                   ".idx), with OUT/manifest.json. Labels are the sorted class-folder "
                                   "names. Rerun the same command to resume an interrupted conversion. "
                                   "Settings are the convert.* keys of the config (--config, "
                                   "convert.key=value overrides); a flag given wins over both.")
    p.add_argument("src", help="ImageNet-layout folder: SRC/<class>/<image>")
    p.add_argument("out", help="dataset folder to create (built in OUT.partial, renamed when done)")
    p.add_argument("overrides", nargs="*", metavar="convert.key=value", help="override a config value")
    p.add_argument("--config", help="YAML config whose convert section to use (default: configs/base.yaml's)")
    p.add_argument("--format", required=True, choices=c.formats())
    p.add_argument("--max-resolution", type=int, metavar="R",
                   help=f"resize so the longest side is at most R (default {c.MAX_RESOLUTION})")
    p.add_argument("--jpeg-quality", type=int, metavar="Q",
                   help=f"JPEG quality of the stored images (default {c.JPEG_QUALITY})")
    p.add_argument("--workers", type=int, metavar="W",
                   help="processes (default: all CPU cores available)")
    p.add_argument("--shard-size", type=int, metavar="S",
                   help=f"images per shard (default {c.SHARD_SIZE}); the unit of parallelism and resume")
    p.add_argument("--limit", type=int, metavar="N",
                   help="convert only N files, evenly spread over the sorted list (quick trials)")
    p.add_argument("--max-unreadable", type=float, metavar="F",
                   help="fail if more than this fraction of image files cannot be decoded "
                        f"(default {c.MAX_UNREADABLE})")
    p.add_argument("--seed", type=int,
                   help=f"seed of the shuffle that spreads the images over the shards (default {c.SEED}; "
                        "recorded in the manifest: the same seed gives the same dataset)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_convert)


def _inspect(args: argparse.Namespace) -> None:
    from pipelines.convert import inspect

    if args.sample is not None and args.sample < 1:
        raise DataError(f"--sample {args.sample}: expected 1 or more images to decode (or leave it out: all)")

    inspect(args.path, sample=args.sample)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="summarize and verify a converted dataset",
                       description="Print a converted dataset's manifest summary and verify it: "
                                   "files present with the listed sizes, sample counts, labels in "
                                   "range, images decode.")
    p.add_argument("path", help="dataset folder (or its manifest.json or data.beton)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="decode N images chosen at random (default: all)")
    p.set_defaults(func=_inspect)


def _eval(args: argparse.Namespace) -> None:
    import json

    from fastbt.eval.setup import eval_setup

    if args.protocol == "knn":
        _check_writable_file(args.out)  # now, not after the whole evaluation
    setup = eval_setup(args.weights, args.config, args.overrides,
                       {"eval.train": args.train, "eval.val": args.val, "model.arch": args.arch})
    cfg = setup.cfg
    print(f"fastbt eval {args.protocol}: {setup.describe()}", flush=True)  # stderr: errors only
    if args.protocol == "knn":
        from fastbt.eval.protocol import knn_eval

        result = knn_eval(cfg, args.weights, out=args.out)
    elif args.protocol == "linear":
        from fastbt.eval.linear import linear_probe

        result = linear_probe(cfg, args.weights, cached=args.cached_features, out_dir=args.out)
    else:
        from fastbt.eval.finetune import finetune

        try:
            result = finetune(cfg, args.weights, percent=_percent(args.train_percent), subset_file=args.subset,
                              out_dir=args.out)
        except (ConfigError, RunDirError) as err:  # settings, subset, directory: every rank reads the same
            err.same_on_every_rank = True
            raise
        if _rank() != 0:
            return  # the first process prints the result
    print(json.dumps(result, indent=1))


def _percent(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--train-percent {text!r}: expected 1, 10 or 100") from None


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="kNN, linear-probe or fine-tuning accuracy of a backbone",
                       description="Evaluate the frozen features of exported weights (backbone.pth) "
                                   "or a checkpoint (ckpt_*.pt) on a labeled train and val set: an "
                                   "image folder or a converted dataset folder. Settings are the "
                                   "eval.* keys of the config (defaults: configs/base.yaml; for "
                                   "weights in a run directory, that run's config.yaml). Center "
                                   "crops default to the resolution the backbone was trained at "
                                   "(the run's aug.size, resized first by 256/224); the resolution "
                                   "used is printed and stored in the result.")
    protocols = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    knn = protocols.add_parser("knn", help="weighted kNN (cosine, eval.knn.k=20, T=0.07), top-1/top-5",
                               description="Weighted kNN of center-crop features; the result goes "
                                           "to <weights>_knn.json beside the weights.")
    linear = protocols.add_parser("linear", help="the official linear probe (100 epochs, SGD, cosine)",
                                  description="Train a linear head on the frozen backbone; "
                                              "checkpoints and log.jsonl in <weights>_linear/ "
                                              "(rerun to resume), the result in <weights>_linear.json.")
    finetune = protocols.add_parser("finetune", help="semi-supervised fine-tuning of the whole network "
                                                     "on 1%%, 10%% or 100%% of the labels (20 epochs)",
                                    description="Fine-tune the backbone and a linear classifier on a "
                                                "label subset (the official recipe); checkpoints and "
                                                "log.jsonl in <weights>_finetune<percent>/ (rerun to "
                                                "resume), the result in <that>.json. Under torchrun: "
                                                "DDP, eval.finetune.batch_size is the global batch.")
    for q in (knn, linear, finetune):
        q.add_argument("--weights", required=True, help="backbone.pth or a fastbt checkpoint ckpt_*.pt")
        q.add_argument("--train", help="labeled train set (default: eval.train)")
        q.add_argument("--val", help="labeled val set (default: eval.val)")
        q.add_argument("--arch", help="backbone architecture: any torchvision classification model "
                                      "(fastbt.train.model.ARCHS), e.g. resnet50 (default: model.arch of "
                                      "the config: the run's, else resnet50)")
        q.add_argument("--config", help="YAML config (default: the config.yaml beside the weights, "
                                        "if any)")
        q.add_argument("overrides", nargs="*", metavar="key.sub=value",
                       help="override a config value, e.g. eval.linear.epochs=10 runtime.device=cuda")
        q.set_defaults(func=_eval)
    knn.add_argument("--out", help="result JSON (default: <weights stem>_knn.json beside the weights)")
    linear.add_argument("--cached-features", action="store_true",
                        help="train on features of center crops extracted once (fast, approximate)")
    linear.add_argument("--out", help="probe directory (default: <weights stem>_linear[_cached] "
                                      "beside the weights); the result goes to OUT.json")
    finetune.add_argument("--train-percent", metavar="1|10|100",
                          help="label the seeded class-balanced draw of this percent of each class "
                               "(eval.finetune.seed; default 100: all)")
    finetune.add_argument("--subset", metavar="FILE",
                          help="label the images a list file names, one a line (the SimCLR 1%%/10%% "
                               "ImageNet lists: n01440764_10026.JPEG = n01440764/n01440764_10026.JPEG)")
    finetune.add_argument("--out", help="directory (default: <weights stem>_finetune<percent> beside the "
                                        "weights); the result goes to OUT.json")


def _check_writable_file(path: str | None) -> None:
    """Refuse, before the work, an output file whose folder is missing or that names a folder."""
    from pathlib import Path

    if path is None:
        return
    if Path(path).is_dir():
        raise DataError(f"{path}: is a folder; name the result file, e.g. {Path(path) / 'knn.json'}")
    if not Path(path).absolute().parent.is_dir():
        raise DataError(f"{path}: its folder {Path(path).absolute().parent} does not exist")


def _read_reports(paths: list[str]) -> list[dict]:
    from fastbt.profiling import report

    reports = []
    for path in paths:
        try:
            r = report.load(path)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read the report {path}: {err}") from None
        if not isinstance(r, dict) or not all(isinstance(r.get(key), dict) for key in ("verdict", "setup")):
            raise DataError(f"{path}: not a fastbt profile report (report.json of `fastbt profile`)")
        reports.append(r)
    return reports


def _profile(args: argparse.Namespace) -> None:
    if args.compare:
        from fastbt.profiling import report

        a, b = _read_reports(args.compare)
        try:
            sys.stdout.write(report.compare(a, b, names=tuple(args.compare)))
        except (KeyError, TypeError) as err:
            raise DataError(f"{args.compare[0]} or {args.compare[1]}: not a complete fastbt profile "
                            f"report (at {err})") from None
        return
    if args.config is None:
        raise ConfigError("give a CONFIG to profile, or --compare A.json B.json")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out}: is a file; profile writes a folder of reports there")
    from fastbt import config
    from fastbt.profiling import sweep, windows

    steps = [f"profile.steps={args.steps}"] if args.steps is not None else []
    overrides = [*args.overrides, *steps]
    cfg = config.load(args.config, overrides)
    if args.sweep:
        sweep.sweep(args.config, overrides, sweep.parse(args.sweep),
                    args.out or f"{cfg.train.out_dir}/profile_sweep", args.one_at_a_time)
    else:
        windows.profile(cfg, args.out or f"{cfg.train.out_dir}/profile")


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="measure throughput: loader vs step vs end to end, per phase",
                       description="Profile the pretraining loop of a config (one process, or under "
                                   "torchrun): the loader alone, the step alone, end to end, the time "
                                   "of each phase of a step, FLOPs and memory; write report.json, "
                                   "report.md and charts. --compare prints two reports side by side; "
                                   "--sweep profiles several settings and ranks them.")
    p.add_argument("config", nargs="?", help="YAML config file (overrides of configs/base.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override one config value")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="measured steps per window (profile.steps)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report folder (default: <train.out_dir>/profile, with --sweep "
                        "<train.out_dir>/profile_sweep)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print two reports side by side with the ratios B/A, and exit")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="profile each value of a config key (repeat for more keys: every "
                        "combination); ranks them by end-to-end pairs/s in DIR/sweep.md")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="with --sweep: the config as given, then each swept value alone")
    p.set_defaults(func=_profile)


def _demo(args: argparse.Namespace) -> None:
    from fastbt import demo

    demo.run(args.out, args.overrides, fresh=args.fresh)


def _add_demo(sub) -> None:
    from fastbt import demo  # its heavy imports happen when it runs

    p = sub.add_parser("demo", help=f"the whole job on a generated dataset, on CPU ({demo.EXPECTED})",
                       description=demo.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override the demo config")
    p.add_argument("--out", default="runs/demo", help="where everything goes (default %(default)s)")
    p.add_argument("--fresh", action="store_true", help="delete --out first and start over")
    p.set_defaults(func=_demo)


def _plot(args: argparse.Namespace) -> None:
    from fastbt import plot

    given = Path(args.run_dir)  # the run directory, or its log
    run_dir = given.parent if given.name == "log.jsonl" and given.is_file() else given
    print(f"wrote {plot.write_curves(run_dir)}")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw a run's curves (loss, LR, pairs/s, kNN) into curves.png",
                       description="Draw RUN_DIR/curves.png from RUN_DIR/log.jsonl: loss and learning "
                                   "rate per step, pairs/s, and kNN top-1/top-5 per evaluation when "
                                   "the online monitor is on. Works while the run is still going; "
                                   "pretraining draws it by itself when it ends or is preempted.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.out_dir) or its log.jsonl")
    p.set_defaults(func=_plot)


# Subcommands, in the order `--help` lists them.
SUBCOMMANDS = [_add_demo, _add_config, _add_pretrain, _add_plot, _add_export, _add_convert, _add_inspect,
               _add_eval, _add_profile]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastbt", description="Fast Barlow Twins self-supervised pretraining.")
    parser.add_argument("--version", action="version", version=f"fastbt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


_PYTHON_FORMATWARNING = warnings.formatwarning
_OUR_CODE = tuple(str(Path(__file__).resolve().parents[1] / package) + os.sep
                  for package in ("fastbt", "pipelines"))


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """fastbt's own warnings (a damaged checkpoint skipped, ...) in one line, like its other
    messages; Python's format adds a second line echoing the source line that warned."""
    if str(Path(filename).resolve()).startswith(_OUR_CODE):
        return f"fastbt: warning: {message}\n"
    return _PYTHON_FORMATWARNING(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as err:
        if not (getattr(err, "same_on_every_rank", False) and _rank() > 0):  # rank 0 says it once
            print(f"fastbt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"fastbt {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C in pretraining, or one before its loop
        print(f"fastbt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
