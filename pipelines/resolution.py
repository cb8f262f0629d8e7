"""Progressive resolution: the crop size of each epoch, a pure function of the epoch number.

FFCV's ResNet recipes (libffcv/ffcv-imagenet, `get_resolution`) and FFCV-SSL train early epochs at
a low resolution and raise it late in training: `start` px up to epoch `ramp_start_epoch`, then a
linear ramp, rounded to a multiple of `multiple` px (few distinct sizes: few compiled graphs), up
to the final size from `ramp_end_epoch` on. The final size is `aug.size`, which is also what
evaluation uses. `start: 0` (the default) turns the schedule off: every epoch at `aug.size`.

Every crop source asks `size_at` in `set_epoch`, so epoch e's crops have the same size in every
run, and a run resumed mid-epoch replays them exactly. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resolution:
    start: int = 0                 # px of the first epochs; 0: off (every epoch at aug.size)
    ramp_start_epoch: int = 0      # the last epoch (0-based) at `start`
    ramp_end_epoch: int = 0        # the first epoch at the final size (aug.size)
    multiple: int = 32             # sizes between are rounded to a multiple of this (FFCV: 32)

    def __post_init__(self):
        problems = [what for ok, what in (
            (self.start >= 0, "start must be >= 0 (0: off)"),
            (self.multiple > 0, "multiple must be > 0"),
            (0 <= self.ramp_start_epoch <= self.ramp_end_epoch,
             "0 <= ramp_start_epoch <= ramp_end_epoch must hold")) if not ok]
        if problems:
            raise ValueError("resolution: " + "; ".join(problems))

    @property
    def on(self) -> bool:
        return self.start > 0


def size_at(schedule: Resolution, final: int, epoch: int) -> int:
    """The crop size of `epoch` (0-based): FFCV's `get_resolution` with min_res = `schedule.start`,
    max_res = `final`. Between the ramp's ends: linear in the epoch, rounded half to even to a
    multiple of `schedule.multiple` (as FFCV's np.round), kept within [start, final]."""
    if not schedule.on or epoch >= schedule.ramp_end_epoch:
        return final
    if epoch <= schedule.ramp_start_epoch:
        return schedule.start
    progress = (epoch - schedule.ramp_start_epoch) / (schedule.ramp_end_epoch - schedule.ramp_start_epoch)
    between = schedule.start + progress * (final - schedule.start)
    size = round(between / schedule.multiple) * schedule.multiple
    return min(max(size, min(schedule.start, final)), max(schedule.start, final))


def sizes(schedule: Resolution, final: int, epochs: int) -> list[int]:
    """The crop size of every epoch of a run of `epochs` epochs."""
    return [size_at(schedule, final, e) for e in range(epochs)]
