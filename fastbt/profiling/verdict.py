"""What the profile's numbers say: what bounds the run, what to fix first, how long the run takes,
how much of the device's peak the step uses. Pure functions of measured numbers.

Bound: the loader alone delivers L pairs/s, the step alone consumes S pairs/s; the run is
input-bound when L < S and compute-bound otherwise, by the factor max/min. End to end reaches at
most min(L, S); how close it gets says how well loading overlaps with computing.

Reliable: each rate is the median of interleaved repeated windows; the result is flagged
unreliable when a kind's windows spread widely (the machine's load changed under the profile) or
when end to end beats the slower of L and S by more than their spread (impossible when steady).
"""

from __future__ import annotations

INPUT_PHASES = ("data_wait", "host_to_device", "augmentation")
COMPUTE_PHASES = ("forward", "loss", "backward", "optimizer", "grad_comm")
PHASES = INPUT_PHASES + COMPUTE_PHASES

HINTS = {
    "data_wait": "decode + crop (the crop source): more data.workers, or a faster data.backend",
    "host_to_device": "the host-to-device copy: decode on the device (DALI), pinned memory",
    "augmentation": "the photometric augmentation on the device (pipelines/augment/)",
    "forward": "the model's forward: runtime.compile, bf16, channels-last",
    "loss": "the loss op: loss.mode, or a smaller projector",
    "backward": "the model's backward: runtime.compile, bf16, channels-last",
    "optimizer": "the optimizer step (LARS)",
    "grad_comm": "gradient communication: interconnect, DDP bucket size",
}

LARGE_SPREAD = 0.25  # (max - min) / median of a kind's windows above this: noise dominates
POOR_OVERLAP = 0.8  # end to end below this share of min(L, S): loading and computing take turns

# Dense bf16 tensor-core peaks, FLOP/s per GPU, matched in order against the device name.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),  # also GH200
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("V100", 125e12),  # fp16: V100 has no bf16 tensor cores
)


def device_peak(device_name: str | None, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for `dtype` ('bf16' or 'fp32'), where the table knows it."""
    if device_name is None or dtype != "bf16":
        return None
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def reliability(rates: dict[str, float], spreads: dict[str, float]) -> dict:
    """Whether the three median rates (pairs/s; "loader", "step", "end_to_end") can be trusted,
    given each kind's spread ((max - min) / median of its windows), and why not."""
    reasons = [f"the {kind.replace('_', ' ')} windows vary by {spreads[kind]:.0%} (over "
               f"{LARGE_SPREAD:.0%})" for kind in ("loader", "step", "end_to_end")
               if spreads[kind] > LARGE_SPREAD]
    slower = min(("loader", "step"), key=rates.get)
    margin = max(spreads[slower] * rates[slower], spreads["end_to_end"] * rates["end_to_end"])
    if rates["end_to_end"] > rates[slower] + margin:
        reasons.append(f"end to end ({rates['end_to_end']:.1f} pairs/s) exceeds the slower of "
                       f"loader and step ({rates[slower]:.1f}) by more than the spread "
                       f"({margin:.1f})")
    return {"reliable": not reasons, "reasons": reasons}


def judge(loader: float, step: float, end_to_end: float, phases: dict[str, float | None],
          reliable: dict | None = None) -> dict:
    """The verdict from the three rates (pairs/s, per process), the mean phase times and, if
    given, their `reliability`."""
    input_bound = loader < step
    slower, faster = min(loader, step), max(loader, step)
    candidates = {p: phases[p] for p in (INPUT_PHASES if input_bound else COMPUTE_PHASES)
                  if phases.get(p) is not None}
    fix_first = max(candidates, key=candidates.get)
    overlap = end_to_end / slower
    bound = "input" if input_bound else "compute"
    summary = (f"{bound}-bound: the loader alone delivers {loader:.1f} pairs/s, the step alone "
               f"consumes {step:.1f} ({faster / slower:.2f}x); end to end reaches {end_to_end:.1f} "
               f"({overlap:.0%} of the slower). Fix first: {fix_first}, {HINTS[fix_first]}.")
    if overlap < POOR_OVERLAP:
        summary += (" Loading and computing barely overlap: the loader's work runs in line with "
                    "the step (e.g. data.workers=0) or its prefetch is too shallow.")
    if reliable is not None and not reliable["reliable"]:
        summary = ("UNRELIABLE (the machine was too noisy: " + "; ".join(reliable["reasons"])
                   + "; rerun on a quieter machine or with more profile.repeats). " + summary)
    return {"bound": bound, "factor": faster / slower, "overlap": overlap, "fix_first": fix_first,
            "hint": HINTS[fix_first], "summary": summary,
            "reliable": None if reliable is None else reliable["reliable"]}


def project(total_steps: int, pairs_per_step: int, end_to_end: float, step: float) -> dict:
    """Projected wall time of the configured run (every epoch, no compile, checkpoints or eval):
    at the end-to-end rate, and at the step-alone rate (what a loader that keeps up would give)."""
    return {"total_steps": total_steps,
            "seconds": total_steps * pairs_per_step / end_to_end,
            "seconds_at_step_rate": total_steps * pairs_per_step / step}


def step_seconds_per_pair(size: int, start: int, end: int, at_start: float, at_end: float) -> float:
    """Seconds per pair of the step at crop `size`, from the step's measured seconds per pair at the
    schedule's `start` and `end` sizes: linear in the pixel count between them (a step's compute
    scales with pixels; measured at both ends, so only sizes between are interpolated)."""
    if start == end:
        return at_end
    return at_end + (at_start - at_end) * (end ** 2 - size ** 2) / (end ** 2 - start ** 2)


def project_schedule(epoch_sizes: list[int], start: int, end: int, steps_per_epoch: int, pairs_per_step: int,
                     end_to_end: float, step: float, loader: float, step_at_start: float) -> dict:
    """`project` over a progressive-resolution schedule, epoch by epoch at its crop size. Rates
    (pairs/s) are measured at the final size (end to end, step alone, loader alone) and, for the
    step alone, at the `start` size. An epoch at size s takes, per pair:
    - step rate: the step's time at s (`step_seconds_per_pair`);
    - end to end: the measured end-to-end time x max(loader, step at s) / max(loader, step at the
      final size): bound by the slower of the two, the loader's time taken as size-independent
      (decoding dominates it; so the projection is conservative where the loader bounds).
    Also the same run with every epoch at the final size, and the share the schedule saves."""
    loader_s, e2e_s = 1 / loader, 1 / end_to_end

    def step_s(size):
        return step_seconds_per_pair(size, start, end, 1 / step_at_start, 1 / step)

    pairs = steps_per_epoch * pairs_per_step
    seconds = sum(e2e_s * max(loader_s, step_s(s)) / max(loader_s, step_s(end)) for s in epoch_sizes) * pairs
    fixed = len(epoch_sizes) * pairs * e2e_s
    return {"total_steps": len(epoch_sizes) * steps_per_epoch,
            "seconds": seconds,
            "seconds_at_step_rate": sum(step_s(s) for s in epoch_sizes) * pairs,
            "fixed_size_seconds": fixed,
            "saved": 1 - seconds / fixed,
            "epochs_per_size": {str(s): epoch_sizes.count(s) for s in sorted(set(epoch_sizes))}}
