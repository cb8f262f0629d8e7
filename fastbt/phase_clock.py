"""Per-phase times of one step, partitioning it, so the phases add up to the step.

`start()` opens the first phase, `lap(name)` closes the current phase under `name` and opens the
next, `stop()` returns {name: seconds}. A name used twice in a step accumulates.

- CPU (`WallClock`): wall clock read at every lap, after synchronizing the device (a no-op on CPU,
  where work is done when the call returns).
- CUDA (`EventClock`, the GPU-only layer): an event per lap on the current stream and one
  synchronization in `stop()`. Times are the device's timeline: a kernel counts in the phase it
  ran in, and time the device spent idle waiting for the host (e.g. for the loader) counts in the
  phase the host was in. `start()` synchronizes, so the step begins with an idle device.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from fastbt.meter import synchronize


class WallClock:
    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        synchronize(self.device)
        self.laps: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.laps[name] += now - self._last
        self._last = now

    def stop(self) -> dict[str, float]:
        return dict(self.laps)


class EventClock:
    def __init__(self, device: torch.device):
        self.device = device

    def _event(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        synchronize(self.device)
        self._marks = [("", self._event())]

    def lap(self, name: str) -> None:
        self._marks.append((name, self._event()))

    def stop(self) -> dict[str, float]:
        synchronize(self.device)
        laps: dict[str, float] = defaultdict(float)
        for (_, begin), (name, end) in zip(self._marks, self._marks[1:]):
            laps[name] += begin.elapsed_time(end) / 1e3  # ms -> s
        return dict(laps)


def phase_clock(device: torch.device) -> WallClock | EventClock:
    return EventClock(device) if device.type == "cuda" else WallClock(device)
