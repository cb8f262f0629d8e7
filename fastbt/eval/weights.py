"""Backbone weights from a file, checked against the architecture they are loaded into.

The file (an exported backbone or a fastbt checkpoint) is read by `fastbt.train.checkpoint`; weights of
another architecture are a `WeightsError` that names the file and what does not fit, in one line,
and the architecture they do fit, if any.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fastbt.train.checkpoint import WeightsError, read_backbone_state
from fastbt.train.model import COMMON_ARCHS, build_backbone

__all__ = ["WeightsError", "load_backbone", "mismatch"]


def mismatch(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str | None:
    """What keeps `state` from loading where `expected` is wanted, in a few words; None if it fits."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"{len(missing)} missing tensors (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
    for key, want in expected.items():
        if key in state and state[key].shape != want.shape:
            problems.append(f"{key} has shape {list(state[key].shape)}, expected {list(want.shape)}")
            break
    return "; ".join(problems) or None


def _fitting_arch(state: dict[str, Tensor]) -> str | None:
    for arch in COMMON_ARCHS:  # a few: building each takes a moment, even on the meta device
        with torch.device("meta"):  # shapes only: nothing allocated, nothing initialized for real
            candidate, _ = build_backbone(arch)
        if mismatch(candidate.state_dict(), state) is None:
            return arch
    return None


def load_backbone(path: str | Path, arch: str) -> tuple[nn.Module, int]:
    """A `build_backbone(arch)` network (on CPU) holding the weights of `path`, and its width."""
    state = read_backbone_state(path)
    backbone, width = build_backbone(arch)
    problem = mismatch(backbone.state_dict(), state)
    if problem:
        fits = _fitting_arch(state)
        hint = f"; they fit {fits} (set the architecture to {fits})" if fits else ""
        raise WeightsError(f"{path}: the weights do not fit {arch}: {problem}{hint}")
    backbone.load_state_dict(state)
    return backbone, width
