"""Backbone weights from a file, checked against the architecture they are loaded into.

Two kinds of file are read: an exported backbone (`backbone.pth`: a torchvision state_dict without
fc.*, the official torch.hub format) and a fastbt checkpoint (`ckpt_*.pt`: its model's backbone
entries). A classifier's `fc.*` entries, if present, are ignored. Anything else, or weights of
another architecture, is a `WeightsError` that names the file and what does not fit, in one line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fastbt.checkpoint import backbone_state
from fastbt.model import COMMON_ARCHS, build_backbone
from pipelines.errors import DataError


class WeightsError(DataError):
    """A weights file that cannot serve as the backbone asked for (the CLI prints it in one line)."""


def read_backbone_state(path: str | Path) -> dict[str, Tensor]:
    """The backbone's tensors in a weights file, with torchvision's names (fc.* left out)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or pickled code (weights_only refuses)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightsError(f"{path}: not a readable weights file ({type(err).__name__}: "
                           f"{reason[:200]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a fastbt checkpoint
        obj = backbone_state(obj["model"])
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: neither a backbone state_dict nor a fastbt checkpoint")
    state = {k: v for k, v in obj.items() if not k.startswith("fc.")}
    if not state:
        raise WeightsError(f"{path}: holds no backbone weights")
    return state


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
