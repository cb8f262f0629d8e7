"""Throughput and data-wait accounting for the loop, with host syncs only at report time.

The loop times the wait for each batch of views with `timed(loader)`. A Meter is also a clock for
the step's seam (the profiler's windows, fastbt.profiling.clocks): `start()` begins a step and its
wait for data, the lap `VIEWS_READY` (the augmented views are ready) ends the wait; every other lap
is ignored, and nothing synchronizes. Everything else between reports counts as compute. `report()`
is the one place that synchronizes with the device, so the interval's wall time covers all the
work queued in it. `NO_CLOCK`, the step's default clock, does nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, TypeVar

import torch

VIEWS_READY = "augmentation"  # the last lap of the input half of a step (the augmented views)
T = TypeVar("T")


class NoClock:
    """The clock a step reports its phases to when nobody measures them: does nothing."""

    def start(self) -> None:
        pass

    def lap(self, name: str) -> None:
        pass


NO_CLOCK = NoClock()


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
        self.began = now
        self.steps = 0
        self.waited = 0.0
        self._wait_began = None

    def restart(self) -> None:
        """Begin a fresh interval (e.g. after compilation or a checkpoint, excluded from rates)."""
        synchronize(self.device)
        self._reset(time.perf_counter())

    def start(self) -> None:
        self._wait_began = time.perf_counter()
        self.steps += 1

    def lap(self, name: str) -> None:
        if name == VIEWS_READY:
            self.waited += time.perf_counter() - self._wait_began

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """Yield what `batches` yields, counting each as a step and the wait for it as data wait."""
        batches = iter(batches)
        while True:
            began = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.steps += 1
            self.waited += time.perf_counter() - began
            yield batch

    def report(self) -> Rates:
        """Rates over the steps since the last report (syncs the device), then restart."""
        synchronize(self.device)
        now = time.perf_counter()
        seconds = max(now - self.began, 1e-9)
        rates = Rates(self.steps, seconds, self.steps * self.pairs_per_step / seconds,
                      min(1.0, self.waited / seconds))
        self._reset(now)
        return rates
