"""Run scripts/gpu_stages.py's stages under one global deadline; see docs/gpu.md.

    python scripts/gpu_check.py [--dry-run] [--deadline S] OUT_DIR   (scripts/gpu_check.sh calls it)

The stages run in order in a worker process (one import of torch for all of them). Each stage
announces itself; a stage past its own limit (capped by the deadline) has the worker's process
group killed, is recorded "timed out", and a new worker goes on from the next stage. Each stage's
record goes to OUT_DIR/results.jsonl the moment it ends, and OUT_DIR/summary.md is rewritten:
a table of the stages, then three lines: does it work, how fast against the goal, what bounds it.
The worker's output goes to the terminal and to OUT_DIR/gpu_check.log; the worker saves torch's
compile cache artifacts to OUT_DIR/compile_cache*.bin where the torch version has them.
Exit 0 when the smoke stage passed, 1 when it did not.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

MARK = "@@gpu_check "  # the worker's protocol lines: MARK + JSON
MIN_STAGE_S = 5  # a stage with less time than this left is skipped: out of time
MAX_FILE_BYTES = 15 << 20  # what comes back from the GPU machine: 16 MiB per file at most
DEFAULT_DEADLINE_S = 480


def main() -> int:
    began = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="CPU, a tiny model, small sizes")
    ap.add_argument("--deadline", type=float, default=float(os.environ.get("GPU_CHECK_DEADLINE", DEFAULT_DEADLINE_S)),
                    help="seconds for all stages (default: $GPU_CHECK_DEADLINE or 480)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # the worker: from this stage on
    ap.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        return work(args)
    return drive(args, began)


# ---- the driver ---------------------------------------------------------------------------------

class Driver:
    def __init__(self, args, began: float):
        from gpu_stages import STAGES  # imports torch: a minute on a busy machine, within the deadline
        self.names = list(STAGES)
        self.args, self.out = args, args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.jsonl"
        self.results.write_text("")
        self.log = open(self.out / "gpu_check.log", "a", buffering=1)
        self.records: list[dict] = []
        self.began = began
        self.deadline = self.began + args.deadline
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def record(self, record: dict) -> None:
        self.records.append(record)
        with open(self.results, "a") as f:
            f.write(json.dumps(record) + "\n")
        write_atomically(self.out / "summary.md", summary(self.records, self.args.dry_run, self.started))
        print(f"gpu_check: {record['stage']}: {record['status']} ({record['seconds']} s)", flush=True)

    def echo(self, line: str) -> None:
        print(line, flush=True)
        if self.log.tell() < MAX_FILE_BYTES:
            self.log.write(line + "\n")

    def run_worker(self, first: int, scratch: Path) -> int:
        """Run stages from `first` in one worker; the index of the next stage to run."""
        cmd = [sys.executable, "-u", __file__, str(self.out), "--worker", str(first), "--scratch", str(scratch),
               *(["--dry-run"] if self.args.dry_run else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        current, started, ends, pending = None, time.monotonic(), self.deadline, b""
        index = first
        while True:
            if not selector.select(timeout=max(0.0, ends - time.monotonic())):
                return self.time_out(proc, current, started, index)
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if not text.startswith(MARK):
                    self.echo(text)
                    continue
                message = json.loads(text[len(MARK):])
                if "start" in message:
                    current, started = message["start"], time.monotonic()
                    ends = min(self.deadline, started + self.limit(current))
                else:
                    self.record(message)
                    current, ends, index = None, self.deadline, index + 1
        rc = proc.wait()
        if (rc in (0, 3) and current is None) or index >= len(self.names):
            return len(self.names)  # all done (maybe a crash at exit), or the smoke stage failed
        self.record({"stage": current or self.names[index], "status": "failed",
                     "seconds": round(time.monotonic() - started, 1),
                     "error": f"the worker exited with {rc} inside the stage"})
        return index + 1

    def limit(self, name: str) -> float:
        """The stage's own limit (gpu_stages.LIMITS, sized for the GPU; the dry run has only the
        deadline: a cold CPU compile on a busy 2-core machine takes minutes); the deadline caps it."""
        from gpu_stages import LIMITS
        return self.args.deadline if self.args.dry_run and name in LIMITS else LIMITS.get(name, self.args.deadline)

    def time_out(self, proc, current, started: float, index: int) -> int:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if current is None:
            return index  # the deadline passed between stages: the caller skips the rest
        self.record({"stage": current, "status": "timed out", "seconds": round(time.monotonic() - started, 1),
                     "limit_s": round(min(self.limit(current), self.deadline - started), 1)})
        return index + 1


def drive(args, began: float) -> int:
    driver = Driver(args, began)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        index = 0
        while index < len(driver.names) and not smoke_failed(driver.records):
            if driver.deadline - time.monotonic() < MIN_STAGE_S:
                break
            index = driver.run_worker(index, Path(scratch))
    for name in driver.names[index:]:
        if smoke_failed(driver.records):
            break
        driver.record({"stage": name, "status": "skipped", "seconds": 0,
                       "reason": f"out of time (deadline {args.deadline:g} s)"})
    print((driver.out / "summary.md").read_text(), flush=True)
    smoke = [r for r in driver.records if r["stage"] == "smoke"]
    return 0 if smoke and smoke[0]["status"] == "ok" else 1


def smoke_failed(records: list[dict]) -> bool:
    return any(r["stage"] == "smoke" and r["status"] != "ok" for r in records)


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


# ---- the worker ---------------------------------------------------------------------------------

def work(args) -> int:
    """Run the stages from index args.worker on; exit 3 when the smoke stage failed."""
    from gpu_stages import DRY, GPU, STAGES, Skipped
    sizes = DRY if args.dry_run else GPU
    use_compile_backend(sizes.compile_backend)
    if sizes.threads:
        import torch
        torch.set_num_threads(sizes.threads)
    for name in list(STAGES)[args.worker:]:
        print(MARK + json.dumps({"start": name}), flush=True)
        began = time.perf_counter()
        try:
            record = {"status": "ok", **STAGES[name](sizes, args.scratch)}
        except Skipped as why:
            record = {"status": "skipped", "reason": str(why)}
        except Exception as err:  # a failed stage is a result: record it and go on
            traceback.print_exc()
            record = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:500]}
        record = {"stage": name, "status": record.pop("status"),
                  "seconds": round(time.perf_counter() - began, 1), **record}
        save_compile_cache(args.out, args.worker)
        print(MARK + json.dumps(record, default=str), flush=True)
        if name == "smoke" and record["status"] != "ok":
            return 3
    return 0


def use_compile_backend(backend: str) -> None:
    """Make every `torch.compile` in this process use `backend`. The dry run uses aot_eager: dynamo's
    capture and AOT autograd, where graph breaks, recompiles and the custom ops' fake and autograd
    registrations can fail as they would on the GPU, without inductor's CPU code generation, which
    the GPU does not run (it generates Triton kernels) and which took 6.5 minutes for the tiny step
    alone on a busy 2-core machine."""
    if backend != "inductor":
        import functools

        import torch
        torch.compile = functools.partial(torch.compile, backend=backend)


def save_compile_cache(out: Path, first: int) -> None:
    """torch.compiler.save_cache_artifacts (torch 2.11+): a later run can load them and skip most
    of the compilation. One file per worker; skipped when it would not come back (too large)."""
    torch = sys.modules.get("torch")  # no torch imported: nothing compiled
    save = getattr(torch.compiler, "save_cache_artifacts", None) if torch else None
    try:
        saved = save() if save else None
    except Exception as err:  # the cache is a bonus: never a reason to fail the run
        print(f"gpu_check: compile cache not saved: {type(err).__name__}: {err}", flush=True)
        return
    if saved and len(saved[0]) <= MAX_FILE_BYTES:
        write_bytes_atomically(out / f"compile_cache{'' if first == 0 else f'_{first}'}.bin", saved[0])


def write_bytes_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# ---- the summary --------------------------------------------------------------------------------

def summary(records: list[dict], dry_run: bool, started: str) -> str:
    env = next((r for r in records if r["stage"] == "env"), {})
    where = "dry run on the CPU (tiny model, small sizes: figures prove the code runs, not speed)" \
        if dry_run else f"on {env.get('gpu', 'the GPU')}"
    lines = [f"# fastbt gpu_check, {where}", "",
             f"started {started}; git {env.get('git')}; python {env.get('python')}; torch {env.get('torch')}, "
             f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, triton {env.get('triton')}; "
             f"ffcv {'yes' if env.get('ffcv') else 'no'}, DALI {'yes' if env.get('dali') else 'no'}", "",
             "| stage | status | seconds | figures |", "|---|---|---:|---|"]
    for r in records:
        figures = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("stage", "status", "seconds"))
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']} | {figures[:400]} |")
    return "\n".join([*lines, "", works(records), speed(records, dry_run), bound(records)]) + "\n"


def works(records: list[dict]) -> str:
    smoke = next((r for r in records if r["stage"] == "smoke"), None)
    if smoke is None:
        return "Works: not known yet (the smoke stage has not ended)."
    if smoke["status"] != "ok":
        return f"Works: NO: the smoke stage {smoke['status']}: {smoke.get('error', '')}"
    bad = [f"{r['stage']} {r['status']}" for r in records if r["status"] in ("failed", "timed out")]
    ok = sum(r["status"] == "ok" for r in records)
    return (f"Works: yes: a train step ran without host syncs; {ok} of {len(records)} "
            f"stages ok" + (f"; {', '.join(bad)}" if bad else "") + ".")


def speed(records: list[dict], dry_run: bool) -> str:
    steps = [r for r in records if r["stage"] in ("step_eager", "step_compiled") and r["status"] == "ok"]
    if not steps:
        return "Speed: not measured (no step stage ended ok)."
    best = max(steps, key=lambda r: r["pairs_per_s"])
    from gpu_stages import GOALS
    rate = best["pairs_per_s"]
    return (f"Speed: {rate:,.0f} pairs/s per device ({best['stage']}, batch {best['batch']}, "
            f"{best['ms_per_step']} ms/step): {rate / GOALS[0]:.0%} of the {GOALS[0]:,} goal, "
            f"{rate / GOALS[1]:.0%} of {GOALS[1]:,}" + (" (dry run: not a measurement)." if dry_run else "."))


def bound(records: list[dict]) -> str:
    ends = [r for r in records if r["stage"].startswith("end_to_end") and r["status"] == "ok"]
    if not ends:
        return "Bound: not known (no end-to-end stage ended ok)."
    return "Bound: " + "; ".join(f"{r['backend']}: {r['verdict']}" for r in ends)


if __name__ == "__main__":
    sys.exit(main())
