"""The profile's report: report.json (everything), report.md (tables), phases.png and
throughput.png (charts); and `compare`, two reports side by side with ratios.

Everything here reads the results dict `fastbt.profiling.windows.measure` returns, or its JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastbt.profiling.verdict import PHASES

PHASE_NAMES = {"data_wait": "data wait", "host_to_device": "host-to-device",
               "augmentation": "augmentation", "forward": "forward", "loss": "loss op",
               "backward": "backward", "optimizer": "optimizer", "grad_comm": "gradient communication"}
WINDOW_NAMES = {"loader": "loader alone", "step": "step alone", "end_to_end": "end to end"}
SCHEDULE_WINDOW_NAMES = {"step_start": "step alone, start size"}  # with a resolution schedule
GIB = 2 ** 30


def write(results: dict, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "report.md").write_text(markdown(results))
    charts(results, out_dir)


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# ---- report.md ----------------------------------------------------------------------------------

def markdown(r: dict) -> str:
    sections = (_verdict, _throughput, _phases, _compute, _environment)
    return "\n\n".join("\n".join(section(r)) for section in sections) + "\n"


def _verdict(r: dict) -> list[str]:
    setup, proj = r["setup"], r["projection"]
    return [f"# fastbt profile: {r['label']}", "",
            f"{r['created']} · git {r['environment']['git'] or 'n.a.'} · {setup['per_device_batch']} "
            f"pairs per process per step · details in report.json", "",
            "## Verdict", "", r["verdict"]["summary"], "",
            f"Projected wall time for {setup['epochs']} epochs of {setup['dataset_size']} images "
            f"({proj['total_steps']} steps): {_hours(proj['seconds'])} at the end-to-end rate, "
            f"{_hours(proj['seconds_at_step_rate'])} at the step-alone rate (compilation, "
            f"checkpoints and evaluation not included).", *_schedule(r)]


def _schedule(r: dict) -> list[str]:
    """The progressive-resolution lines, when the profiled config has a schedule."""
    proj, windows = r["projection"], r["windows"]
    if "start_size" not in proj:
        return []
    start, end = proj["start_size"], proj["end_size"]
    epochs = ", ".join(f"{n} at {size} px" for size, n in proj["epochs_per_size"].items())
    return ["", f"Progressive resolution ({epochs}): the step alone takes "
                f"{_num(windows['step_start']['pairs_per_s'])} pairs/s at {start} px and "
                f"{_num(windows['step']['pairs_per_s'])} at {end} px "
                f"({windows['step_start']['pairs_per_s'] / windows['step']['pairs_per_s']:.2f}x); loader and "
                f"end to end were measured at {end} px. Over the schedule the run is projected to take "
                f"{_hours(proj['seconds'])}, against {_hours(proj['fixed_size_seconds'])} with every epoch "
                f"at {end} px ({proj['saved']:.0%} saved; sizes between are interpolated in pixels, "
                f"the loader taken as size-independent: fastbt/profiling/verdict.py project_schedule)."]


def _throughput(r: dict) -> list[str]:
    windows, load = r["windows"], r["load_average"]
    lines = ["## Throughput (pairs/s)", "",
             "| | per process, median | spread | min - max | all processes | warm-up, s "
             "| of which the first step, s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, title in {**WINDOW_NAMES, **SCHEDULE_WINDOW_NAMES}.items():
        if name not in windows:
            continue
        w = windows[name]
        lines.append(f"| {title} | {_num(w['pairs_per_s'])} | {w['spread']:.0%} "
                     f"| {_num(min(w['pairs_per_s_each']))} - {_num(max(w['pairs_per_s_each']))} "
                     f"| {_num(r['global_pairs_per_s'][name])} "
                     f"| {_num(w['warmup_s'])} | {_num(w['first_step_s'])} |")
    step = windows["step"]
    lines += ["", f"Each kind: {step['warmup_steps']} warm-up step(s) (compilation, worker start, "
                  f"JIT; excluded from the rates), then {step['repeats']} windows of "
                  f"{step['steps']} steps, interleaved with the other kinds (step, loader, end to "
                  f"end, step, ...; each loader window after unmeasured steps that drain what the "
                  f"workers prefetched meanwhile); the median window is reported, the "
                  f"spread is (max - min) / median. End to end, the loop waited for data "
                  f"{windows['end_to_end']['data_wait_frac']:.0%} of the time.",
              "", f"Load average (1, 5, 15 min; {load['cpus']} CPUs): "
                  f"{_loads(load['start'])} at the start, {_loads(load['end'])} at the end. "
                  + ("Reliable: the windows agree." if r["reliability"]["reliable"] else
                     "**Unreliable:** " + "; ".join(r["reliability"]["reasons"]) + ".")]
    if r["setup"]["world_size"] > 1:
        lines.append("End to end, per rank: "
                     + ", ".join(_num(v) for v in r["per_rank_end_to_end_pairs_per_s"]))
    return lines


def _loads(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _phases(r: dict) -> list[str]:
    step_s, sum_s = r["phase_step_s"], r["phase_sum_s"]
    lines = ["## Where a step's time goes (end to end, ms per step)", "",
             "| phase | ms | share |", "|---|---:|---:|"]
    for phase in PHASES:
        t = r["phases"][phase]
        lines.append(f"| {PHASE_NAMES[phase]} | n.a. | {r['phase_notes'][phase]} |" if t is None
                     else f"| {PHASE_NAMES[phase]} | {_num(t * 1e3)} | {t / step_s:.0%} |")
    unsynced_s = r["setup"]["per_device_batch"] / r["windows"]["end_to_end"]["pairs_per_s"]
    return lines + [
        f"| **sum** | {_num(sum_s * 1e3)} | {sum_s / step_s:.0%} |", "",
        f"The phases partition each step: they sum to {sum_s / step_s:.1%} of the "
        f"{_num(step_s * 1e3)} ms step measured around them (tolerance ±{r['phase_tolerance']:.0%}). "
        f"The end-to-end window, timed without per-phase synchronization, took "
        f"{_num(unsynced_s * 1e3)} ms a step."]


def _compute(r: dict) -> list[str]:
    f, mem, setup = r["flops"], r["memory"], r["setup"]
    if f["device_peak"]:
        mfu = (f"MFU {f['mfu_step']:.1%} (step alone), {f['mfu_end_to_end']:.1%} (end to end) of "
               f"{_num(f['device_peak'] / 1e12)} TFLOP/s")
    else:
        device = setup["device_name"] or setup["device"]
        mfu = f"MFU n.a. (no {setup['precision']} peak known for {device})"
    device_memory = ""
    if "device_peak_allocated_bytes" in mem:
        device_memory = (f"; device peak {mem['device_peak_allocated_bytes'] / GIB:.2f} GiB allocated, "
                         f"{mem['device_peak_reserved_bytes'] / GIB:.2f} GiB reserved")
    return ["## Compute and memory", "",
            f"- model FLOPs per pair (forward + backward, both views; the loss op not counted): "
            f"{_num(f['per_pair'] / 1e9)} GFLOP",
            f"- achieved: {_num(f['step_per_s'] / 1e12)} TFLOP/s step alone, "
            f"{_num(f['end_to_end_per_s'] / 1e12)} TFLOP/s end to end, per process; {mfu}",
            f"- memory: host peak RSS {mem['host_peak_rss_bytes'] / GIB:.2f} GiB (this process; "
            f"loader workers not counted){device_memory}"]


def _environment(r: dict) -> list[str]:
    env = r["environment"]
    if "gpus" in env:
        devices = ", ".join(f"{g['name']} ({g['memory_bytes'] / GIB:.0f} GiB)" for g in env["gpus"])
        driver = (f"| driver, CUDA, cuDNN, NCCL | {env['driver']}, {env['cuda_runtime']}, "
                  f"{env['cudnn']}, {env['nccl']} |")
    else:
        devices = f"{env['device']} ({env['cpus']} CPUs, {env['torch_threads']} torch threads)"
        driver = "| driver | n.a. (no GPU) |"
    versions = ", ".join(f"{k} {v or 'n.a.'}" for k, v in env["versions"].items())
    return ["## Environment", "", "| | |", "|---|---|", f"| devices | {devices} |", driver,
            f"| versions | {versions} |",
            f"| host | {env['host']}, {env['platform']}, Python {env['python']} |",
            f"| processes | {r['setup']['world_size']} |", "",
            "Charts: phases.png (phase times per step), throughput.png (loader vs step vs end to end)."]


def _num(v: float | None) -> str:
    if v is None:
        return "n.a."
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


# ---- charts -------------------------------------------------------------------------------------

def charts(r: dict, out_dir: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    steps = r["phase_steps"]
    rows = [f"step {i + 1}" for i in range(len(steps))] + ["mean"]
    fig = Figure(figsize=(8, 1.2 + 0.3 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    left = [0.0] * len(rows)
    for phase in PHASES:
        if r["phases"][phase] is None:
            continue
        ms = [s[phase] * 1e3 for s in steps] + [r["phases"][phase] * 1e3]
        ax.barh(rows, ms, left=left, label=PHASE_NAMES[phase])
        left = [a + b for a, b in zip(left, ms)]
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.set_title(f"Phases of a step: {r['label']}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(rows) < 6 else -0.1), ncol=4,
              fontsize="small")
    fig.savefig(out_dir / "phases.png", dpi=100)

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    windows = [r["windows"][name] for name in WINDOW_NAMES]
    rates = [w["pairs_per_s"] for w in windows]
    error = [[rate - min(w["pairs_per_s_each"]) for rate, w in zip(rates, windows)],
             [max(w["pairs_per_s_each"]) - rate for rate, w in zip(rates, windows)]]
    bars = ax.bar(list(WINDOW_NAMES.values()), rates, yerr=error, capsize=4,
                  color=["tab:blue", "tab:orange", "tab:green"])
    ax.bar_label(bars, labels=[_num(v) for v in rates])
    ax.set_ylabel("pairs/s per process (median, min - max)")
    ax.set_title(f"{r['verdict']['bound']}-bound: {r['label']}", fontsize="medium")
    fig.savefig(out_dir / "throughput.png", dpi=100)


# ---- compare ------------------------------------------------------------------------------------

# (row, dotted key in report.json, scale)
COMPARED = (
    ("loader alone, pairs/s (all processes)", "global_pairs_per_s.loader", 1),
    ("step alone, pairs/s (all processes)", "global_pairs_per_s.step", 1),
    ("end to end, pairs/s (all processes)", "global_pairs_per_s.end_to_end", 1),
    ("end to end, spread of the windows", "windows.end_to_end.spread", 1),
    *((f"{PHASE_NAMES[p]}, ms/step", f"phases.{p}", 1e3) for p in PHASES),
    ("step (breakdown), ms", "phase_step_s", 1e3),
    ("compile + first step, s", "windows.step.first_step_s", 1),
    ("model GFLOP per pair", "flops.per_pair", 1e-9),
    ("end to end, TFLOP/s per process", "flops.end_to_end_per_s", 1e-12),
    ("MFU, end to end", "flops.mfu_end_to_end", 1),
    ("device peak allocated, GiB", "memory.device_peak_allocated_bytes", 1 / GIB),
    ("host peak RSS, GiB", "memory.host_peak_rss_bytes", 1 / GIB),
    ("projected wall time, h", "projection.seconds", 1 / 3600),
)


def compare(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two reports side by side, as a Markdown table, with the ratio B/A of every number."""
    lines = [f"A: {names[0]}: {a['label']}", f"B: {names[1]}: {b['label']}", "",
             "| | A | B | B/A |", "|---|---:|---:|---:|",
             f"| verdict | {a['verdict']['bound']}-bound | {b['verdict']['bound']}-bound | |",
             f"| fix first | {a['verdict']['fix_first']} | {b['verdict']['fix_first']} | |",
             f"| reliable | {_reliable(a)} | {_reliable(b)} | |"]
    for row, key, scale in COMPARED:
        va, vb = _get(a, key), _get(b, key)
        ratio = f"{vb / va:.2f}x" if va and vb is not None else "n.a."
        lines.append(f"| {row} | {_num(_scaled(va, scale))} | {_num(_scaled(vb, scale))} | {ratio} |")
    return "\n".join(lines) + "\n"


def _reliable(r: dict) -> str:
    """yes / no from the report's reliability; n.a. for reports made before it was measured."""
    return {True: "yes", False: "no"}.get(r.get("reliability", {}).get("reliable"), "n.a.")


def _scaled(v: float | None, scale: float) -> float | None:
    return None if v is None else v * scale


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree
