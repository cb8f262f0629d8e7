"""Clocks for the step's seam: the profiled step calls `start()` before asking for a batch and
`lap(name)` after each phase (fastbt.profiling.windows: "input", "augmentation"; fastbt.train.step:
"forward", "loss", "backward", "optimizer"). A lap closes the current phase under `name` and opens
the next, so the phases partition the step; a name used twice in a step accumulates.

- `NO_CLOCK` (fastbt.train.meter): the default, does nothing (pretraining pays nothing for the seam).
- `WallClock` (CPU): the wall clock read at every lap, after synchronizing the device (a no-op on
  CPU, where work is done when the call returns).
- `EventClock` (CUDA, the GPU-only layer): an event per lap on the current stream and one
  synchronization in `stop()`. Times are the device's timeline: a kernel counts in the phase it
  ran in, and time the device spent idle waiting for the host (e.g. for the loader) counts in the
  phase the host was in. `start()` synchronizes, so the step begins with an idle device.

Both also keep `host`: each phase's time as the host saw it (no synchronization), which tells a
wait for the loader apart from the copy to the device.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from fastbt.train.meter import synchronize


class _HostLaps:
    def _start_host(self) -> None:
        self.host: dict[str, float] = defaultdict(float)
        self._host_last = time.perf_counter()

    def _lap_host(self, name: str) -> None:
        now = time.perf_counter()
        self.host[name] += now - self._host_last
        self._host_last = now


class WallClock(_HostLaps):
    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        synchronize(self.device)
        self._start_host()

    def lap(self, name: str) -> None:
        synchronize(self.device)
        self._lap_host(name)

    def stop(self) -> dict[str, float]:
        return dict(self.host)


class EventClock(_HostLaps):
    def __init__(self, device: torch.device):
        self.device = device

    def _event(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        synchronize(self.device)
        self._start_host()
        self._marks = [("", self._event())]

    def lap(self, name: str) -> None:
        self._lap_host(name)
        self._marks.append((name, self._event()))

    def stop(self) -> dict[str, float]:
        synchronize(self.device)
        laps: dict[str, float] = defaultdict(float)
        for (_, begin), (name, end) in zip(self._marks, self._marks[1:]):
            laps[name] += begin.elapsed_time(end) / 1e3  # ms -> s
        return dict(laps)


def phase_clock(device: torch.device) -> WallClock | EventClock:
    return EventClock(device) if device.type == "cuda" else WallClock(device)
