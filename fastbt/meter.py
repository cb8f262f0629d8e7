"""Throughput and data-wait accounting for the loop, with host syncs only at report time.

The loop calls `data_wait_start()` before asking the loader for a batch and `data_wait_end()` once
it has it; everything else between reports counts as compute. `report()` is the one place that
synchronizes with the device, so the interval's wall time covers all the work queued in it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Rates:
    steps: int
    seconds: float
    pairs_per_s: float  # this process
    data_wait_frac: float  # share of the interval spent waiting for the loader


class Meter:
    def __init__(self, device: torch.device, pairs_per_step: int):
        self.device = device
        self.pairs_per_step = pairs_per_step
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start = now
        self.steps = 0
        self.waited = 0.0
        self._wait_began = None

    def restart(self) -> None:
        """Begin a fresh interval (e.g. after compilation or a checkpoint, excluded from rates)."""
        synchronize(self.device)
        self._reset(time.perf_counter())

    def data_wait_start(self) -> None:
        self._wait_began = time.perf_counter()

    def data_wait_end(self) -> None:
        self.waited += time.perf_counter() - self._wait_began
        self.steps += 1

    def report(self) -> Rates:
        """Rates over the steps since the last report (syncs the device), then restart."""
        synchronize(self.device)
        now = time.perf_counter()
        seconds = max(now - self.start, 1e-9)
        rates = Rates(self.steps, seconds, self.steps * self.pairs_per_step / seconds,
                      min(1.0, self.waited / seconds))
        self._reset(now)
        return rates
