"""What a measurement ran on: machine, devices, driver, package versions, git revision.

Package versions come from the installed distributions' metadata (`importlib.metadata`), never by
importing them: `import ffcv` alone takes seconds and DALI initializes CUDA.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "numpy", "numba", "ffcv", "pillow", "fastbt")
DALI_PREFIX = "nvidia-dali"  # nvidia-dali-cuda110, -cuda120, ...: whichever is installed


def collect(device: torch.device) -> dict:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        **(_cuda() if device.type == "cuda" else {}),
        "versions": versions(),
        "git": git_revision(),
    }


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    dali = sorted((d.metadata["Name"], d.version) for d in importlib.metadata.distributions()
                  if (d.metadata["Name"] or "").lower().startswith(DALI_PREFIX))
    found["dali"] = f"{dali[0][1]} ({dali[0][0]})" if dali else None
    return found


def git_revision() -> str | None:
    """HEAD of the checkout fastbt runs from, '+dirty' with uncommitted changes; None outside git."""
    head = _run("git", "-C", str(REPO), "rev-parse", "HEAD")
    if head is None:
        return None
    dirty = _run("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


# ---- GPU-only -----------------------------------------------------------------------------------

def _cuda() -> dict:
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"})
    driver = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") \
        if shutil.which("nvidia-smi") else None
    nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    return {"gpus": gpus, "driver": driver.splitlines()[0] if driver else None,
            "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)}


def _run(*command: str) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
