#!/usr/bin/env python
"""Measure `fastbt convert` at scale as a user runs it (issue 23): one subprocess, whole process tree.

    nice -n 10 .venv/bin/python scripts/bench_scale.py SRC OUT --format ffcv [--workers W]
        [--kill-at 0.5] [--shard-size S] [--json result.json] [--keep]

Runs `python -m fastbt.cli convert SRC OUT --format F` and records: wall time; CPU ms per image of the
whole process tree (user + system, exact: this process is a child subreaper, so the pool workers
are waited for here even when their parent is killed); peak RSS of the tree (the sum of VmRSS of
every process in it, sampled every 0.1 s: shared pages count once per process, an upper bound);
peak PSS of the tree (sampled each second after the first 5 s; shared pages split between the
processes sharing them: what the tree really holds); peak anonymous RSS of the tree (RssAnon: the
heap, not the mapped files that the page cache can drop); bytes on disk per image (allocated
blocks of OUT); the load average; whether the progress bar
showed images/s and an ETA.

--kill-at F: SIGKILL the whole tree (what preemption or the OOM killer does) once a fraction F of
the shards are journaled, then rerun the same command to completion; the result has both runs and
their sum. Prints one JSON object and a markdown table row; --json also writes the JSON.
CPU time holds on a busy machine; wall time does not: read it beside the load average.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PR_SET_CHILD_SUBREAPER = 36
SAMPLE_S = 0.1
PSS_DENSE, PSS_EVERY = 50, 10  # PSS at every sample for the first 5 s, then once a second
# tqdm's postfix when a rate and the time left are known: "[00:12<00:30, 812.34img/s]"
PROGRESS_WITH_RATE_AND_ETA = re.compile(r"\[\d[\d:]*<(\d[\d:]*), *[\d.]+img/s\]")


def _become_subreaper() -> None:
    """Orphaned descendants (pool workers of a killed convert) are re-parented to us, so we can
    wait for them and their CPU time lands in RUSAGE_CHILDREN."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _descendants() -> list[int]:
    """Every process below this one (we are the subreaper: orphans stay below us)."""
    parent_of = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent_of[int(entry.name)] = int(fields[1])
            except (OSError, IndexError):
                continue
    mine, tree = os.getpid(), set()
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent_of.items():
            if pid not in tree and (ppid == mine or ppid in tree):
                tree.add(pid)
                changed = True
    return sorted(tree)


def _memory_bytes(pid: int, file: str, key: str) -> int:
    """A kB line of /proc/PID/status (VmRSS) or smaps_rollup (Pss), in bytes; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _journaled_shards(out: Path) -> int:
    journal = out.with_name(out.name + ".partial") / "journal.jsonl"
    try:
        return sum(1 for line in journal.read_text().splitlines() if '"index"' in line)
    except OSError:
        return 0


def _reap_all() -> None:
    """Wait for every descendant (re-parented orphans included) so their CPU time is counted."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def run_watched(cmd: list[str], stop=None) -> dict:
    """Run `cmd` (in the tree, on its PYTHONPATH) and watch its process tree until it ends, or until
    `stop()` is true: then SIGKILL the whole tree. Wall, exact CPU of the tree, peak RSS and PSS,
    the load average; its stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryFile("w+") as err:
        cpu0, load0, start = children_cpu_s(), os.getloadavg(), time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        peak = peak_pss = peak_anon = ticks = 0
        killed = False
        while proc.poll() is None:
            tree = _descendants()
            peak = max(peak, sum(_memory_bytes(pid, "status", "VmRSS:") for pid in tree))
            # smaps_rollup walks the page tables: 30-40% of a core every 0.1 s on a 5 GB process
            if ticks < PSS_DENSE or ticks % PSS_EVERY == 0:
                peak_pss = max(peak_pss, sum(_memory_bytes(pid, "smaps_rollup", "Pss:") for pid in tree))
            ticks += 1
            peak_anon = max(peak_anon, sum(_memory_bytes(pid, "status", "RssAnon:") for pid in tree))
            if stop is not None and stop():
                for pid in _descendants():
                    os.kill(pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(SAMPLE_S)
        stdout = proc.communicate()[0]
        _reap_all()
        wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu0
        err.seek(0)
        stderr = err.read()
    if not killed and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak / 2**20, 1),
            "peak_pss_mb": round(peak_pss / 2**20, 1), "peak_anon_mb": round(peak_anon / 2**20, 1),
            "loadavg_start": round(load0[0], 2), "loadavg_end": round(os.getloadavg()[0], 2),
            "killed": killed, "stdout": stdout, "stderr": stderr}


def run_convert(src: Path, out: Path, fmt: str, workers: int | None, extra: list[str],
                kill_after_shards: int | None = None) -> dict:
    """One `fastbt convert` subprocess, watched until it ends (or is killed at a shard count)."""
    cmd = [sys.executable, "-m", "fastbt.cli", "convert", str(src), str(out), "--format", fmt, *extra]
    if workers:
        cmd += ["--workers", str(workers)]
    stop = None if kill_after_shards is None else lambda: _journaled_shards(out) >= kill_after_shards
    r = run_watched(cmd, stop)
    stdout, stderr = r.pop("stdout").strip(), r.pop("stderr")
    return {**r, "shards_journaled": _journaled_shards(out) if r["killed"] else None,
            "progress_updates_with_eta": _updates_with_eta(stderr),
            "summary": stdout.splitlines()[-1] if stdout else ""}


def _updates_with_eta(stderr: str) -> int:
    """How many progress-bar updates showed a rate in img/s and a time left above zero."""
    return sum(1 for left in PROGRESS_WITH_RATE_AND_ETA.findall(stderr) if left.strip("0:"))


def disk_bytes(folder: Path) -> tuple[int, int]:
    """(allocated, apparent) bytes of the files under `folder`."""
    allocated = apparent = 0
    for path in folder.rglob("*"):
        if path.is_file():
            st = path.stat()
            allocated, apparent = allocated + st.st_blocks * 512, apparent + st.st_size
    return allocated, apparent


def measure(src: Path, out: Path, fmt: str, workers: int | None, kill_at: float | None,
            extra: list[str]) -> dict:
    if out.exists() or out.with_name(out.name + ".partial").exists():
        raise SystemExit(f"{out}: exists (or its .partial); remove it first")
    runs = []
    if kill_at is not None:
        n_files = sum(1 for p in src.rglob("*") if p.is_file())
        shard_size = int(extra[extra.index("--shard-size") + 1]) if "--shard-size" in extra else 1000
        shards = -(-n_files // shard_size)
        runs.append(run_convert(src, out, fmt, workers, extra, max(1, round(kill_at * shards))))
    runs.append(run_convert(src, out, fmt, workers, extra))
    m = json.loads((out / "manifest.json").read_text())
    n = m["num_images"]
    allocated, apparent = disk_bytes(out)
    cpu, wall = sum(r["cpu_s"] for r in runs), sum(r["wall_s"] for r in runs)
    return {"format": fmt, "n": n, "classes": len(m["classes"]), "workers": workers, "src": str(src),
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cpu_ms_per_image": round(1e3 * cpu / n, 3),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "peak_pss_mb": max(r["peak_pss_mb"] for r in runs),
            "peak_anon_mb": max(r["peak_anon_mb"] for r in runs),
            "bytes_per_image": round(allocated / n), "apparent_bytes_per_image": round(apparent / n),
            "loadavg": max(r["loadavg_end"] for r in runs), "interrupted": kill_at is not None,
            "progress_updates_with_eta": sum(r["progress_updates_with_eta"] for r in runs), "runs": runs,
            "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown_row(r: dict) -> str:
    return (f"| {r['n']:,} | {r['format']}{' (killed at half + resumed)' if r['interrupted'] else ''} | "
            f"{r['wall_s']:.0f} s | {r['cpu_ms_per_image']:.2f} | {r['peak_rss_mb']:.0f} MB | "
            f"{r['bytes_per_image'] / 1e3:.1f} KB | {r['loadavg']:.1f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--format", required=True, choices=("ffcv", "dali"))
    p.add_argument("--workers", type=int)
    p.add_argument("--kill-at", type=float, help="SIGKILL the tree at this fraction of shards, then resume")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--keep", action="store_true", help="keep OUT (default: delete it after measuring)")
    p.add_argument("--shard-size", type=int, help="passed to convert")
    a = p.parse_args(argv)
    extra = ["--shard-size", str(a.shard_size)] if a.shard_size else []
    if a.kill_at is not None and not 0 < a.kill_at < 1:
        p.error(f"--kill-at {a.kill_at}: expected a fraction between 0 and 1")
    _become_subreaper()
    result = measure(a.src.resolve(), a.out.resolve(), a.format, a.workers, a.kill_at, extra)
    if not a.keep:
        shutil.rmtree(a.out)
    text = json.dumps(result)
    if a.json:
        a.json.write_text(text + "\n")
    print(text)
    print("| N | format | wall | CPU ms/img | peak RSS (PSS) of the tree | disk/img | load |")
    print(markdown_row(result))


if __name__ == "__main__":
    main()
