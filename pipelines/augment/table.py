"""The photometric half of a view as ONE ordered table of ops, which the eager and the compiled path
both loop over (pipelines.augment.view) and one generic test checks entry by entry against
torchvision.transforms.v2.functional (tests/test_augment.py).

Each `Op` says how to sample its parameters and how to apply them: to float NCHW images in [0, 1]
(eager), to three (N, 1, H, W) channel planes (the compiled path, see `view._apply_view_planes`),
and to one image with torchvision's functional ops (the reference). Every random choice is a
per-sample tensor drawn from a CPU `torch.Generator`, the ops in table order, each its mask first
(`ViewSpec.<probability>`), then its parameters; the same draws happen whatever the probabilities,
so a seed fixes one stream of numbers and gives the same views on any device. An op whose
probability is 0 in a view is skipped outright; otherwise its mask selects per sample.

Adding an op = one entry in OPS (its parameters become fields of `ViewParams`), its probability
and ranges in `ViewSpec` (pipelines.augment.recipe).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pipelines.augment import ops
from pipelines.augment.ops import BRIGHTNESS, CONTRAST, HUE, SATURATION, bcast
from pipelines.augment.recipe import ViewSpec, blur_kernel_size


@dataclass(frozen=True)
class Op:
    """One photometric op of a view, in the table's order.

    name: also its mask parameter (bool, (N,)): the samples it applies to, each with probability
        `getattr(view, probability)`.
    params: its other parameters, fields of ViewParams, drawn by `sample(view, n, draw)` (a tuple
        in this order; `draw` is a `Draws`).
    apply(x, view, p): the op on float NCHW images in [0, 1], masked by p.<name>.
    apply_planes(chans, view, p): the same on three (N, 1, H, W) planes (compiled code: each
        pixel's chain runs once, not once per output channel).
    reference(img, view, p, i): torchvision.transforms.v2.functional on image i (CHW), when p.<name>[i].
    """

    name: str
    probability: str
    params: tuple[str, ...]
    sample: Callable
    apply: Callable
    apply_planes: Callable
    reference: Callable


@dataclass(frozen=True)
class Draws:
    """The random numbers of one view's n samples, from one CPU generator."""

    n: int
    generator: torch.Generator

    def uniform(self, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(self.n, generator=self.generator)

    def coin(self, p: float) -> Tensor:
        return torch.rand(self.n, generator=self.generator) < p

    def permutations(self, k: int) -> Tensor:
        """(n, k): a uniform random permutation of range(k) per sample."""
        return torch.rand(self.n, k, generator=self.generator).argsort(dim=1)


def _factor(strength: float) -> tuple[float, float]:
    return max(0.0, 1 - strength), 1 + strength  # torchvision's ColorJitter range; 1 is identity


# ---- color jitter: brightness, contrast, saturation, hue, each sample in its own order ---------

def _jitter_sample(view: ViewSpec, draw: Draws) -> tuple[Tensor, ...]:
    return (draw.uniform(*_factor(view.brightness)), draw.uniform(*_factor(view.contrast)),
            draw.uniform(*_factor(view.saturation)), draw.uniform(-view.hue, view.hue), draw.permutations(4))


def _jitter(x: Tensor, view: ViewSpec, p) -> Tensor:
    return torch.where(bcast(p.jitter), ops.color_jitter(x, p), x)


def _jitter_planes(chans: list[Tensor], view: ViewSpec, p) -> list[Tensor]:
    jittered = ops.jitter_slots(chans, p, ops.COMPILED_SLOTS, lambda c: ops.luma(*c),
                                lambda c, h: ops.hue_planes(*c, h))
    return [torch.where(bcast(p.jitter), j, c) for j, c in zip(jittered, chans)]


def _jitter_reference(img: Tensor, view: ViewSpec, p, i: int) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    fns = {BRIGHTNESS: (TF.adjust_brightness, p.brightness), CONTRAST: (TF.adjust_contrast, p.contrast),
           SATURATION: (TF.adjust_saturation, p.saturation), HUE: (TF.adjust_hue, p.hue)}
    for op in p.order[i].tolist():
        fn, values = fns[op]
        img = fn(img, float(values[i]))
    return img


# ---- grayscale -----------------------------------------------------------------------------------

def _gray(x: Tensor, view: ViewSpec, p) -> Tensor:
    return torch.where(bcast(p.gray), ops.rgb_to_grayscale(x, 3), x)


def _gray_planes(chans: list[Tensor], view: ViewSpec, p) -> list[Tensor]:
    gray = ops.luma(*chans)
    return [torch.where(bcast(p.gray), gray, c) for c in chans]


def _gray_reference(img: Tensor, view: ViewSpec, p, i: int) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.rgb_to_grayscale(img, 3)


# ---- gaussian blur -------------------------------------------------------------------------------

def _blur_kernels(view: ViewSpec, p, device, dtype) -> Tensor:
    """(N, k) kernels: gaussian for blurred samples, one-hot (identity, exact) for the rest."""
    k = blur_kernel_size(view.blur_sigma[1])
    identity = (torch.arange(k, device=device) == k // 2).to(dtype)
    return torch.where(p.blur[:, None], ops.gaussian_kernel1d(p.sigma.to(dtype), k), identity)


def _blur(x: Tensor, view: ViewSpec, p) -> Tensor:
    return ops.separable_conv(x, _blur_kernels(view, p, x.device, x.dtype))


def _blur_planes(chans: list[Tensor], view: ViewSpec, p) -> list[Tensor]:
    kernel = _blur_kernels(view, p, chans[0].device, chans[0].dtype)
    return [ops.separable_conv_by_shifts(c, kernel) for c in chans]


def _blur_reference(img: Tensor, view: ViewSpec, p, i: int) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.gaussian_blur(img, blur_kernel_size(view.blur_sigma[1]), float(p.sigma[i]))


# ---- solarize ------------------------------------------------------------------------------------

def _threshold(view: ViewSpec, p) -> Tensor:
    """Per sample: the view's threshold, or one no pixel reaches for samples not solarized."""
    return torch.where(p.solarize, view.solarize_threshold, math.inf)


def _solarize(x: Tensor, view: ViewSpec, p) -> Tensor:
    return ops.solarize(x, _threshold(view, p))


def _solarize_planes(chans: list[Tensor], view: ViewSpec, p) -> list[Tensor]:
    threshold = bcast(_threshold(view, p))
    return [torch.where(c >= threshold, 1 - c, c) for c in chans]


def _solarize_reference(img: Tensor, view: ViewSpec, p, i: int) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.solarize(img, view.solarize_threshold)


# ---- the table: the official order (facebookresearch/barlowtwins main.py), then normalize --------

OPS: tuple[Op, ...] = (
    Op("jitter", "jitter_p", ("brightness", "contrast", "saturation", "hue", "order"), _jitter_sample,
       _jitter, _jitter_planes, _jitter_reference),
    Op("gray", "gray_p", (), lambda view, draw: (), _gray, _gray_planes, _gray_reference),
    Op("blur", "blur_p", ("sigma",), lambda view, draw: (draw.uniform(*view.blur_sigma),),
       _blur, _blur_planes, _blur_reference),
    Op("solarize", "solarize_p", (), lambda view, draw: (), _solarize, _solarize_planes, _solarize_reference),
)


def active_ops(view: ViewSpec) -> list[Op]:
    """The table's ops that `view` may apply (probability > 0), in order."""
    return [op for op in OPS if getattr(view, op.probability) > 0]


# ---- the parameters: one field per mask and parameter of the table ------------------------------

def _split(self, size: int) -> list:
    parts = {f.name: getattr(self, f.name).split(size) for f in dataclasses.fields(self)}
    return [ViewParams(**dict(zip(parts, chunk))) for chunk in zip(*parts.values())]


def _to(self, device):
    return params_to(device, self)[0]


ViewParams = dataclasses.make_dataclass(
    "ViewParams", [(name, Tensor) for op in OPS for name in (op.name, *op.params)], frozen=True,
    namespace={"split": _split, "to": _to, "__module__": __name__, "__doc__": (
        "Everything random about one view of N images: for each op of the table its mask (bool, "
        "(N,)) and its parameters ((N,) or (N, k)), drawn for every sample, so the params double as "
        "a record of what `apply_view` did to each sample.")})


def sample_params(view: ViewSpec, n: int, generator: torch.Generator) -> ViewParams:
    """Draw a view's parameters for n samples from a CPU generator: per op of the table, its mask,
    then its parameters (the same draws whatever the probabilities)."""
    draw, fields = Draws(n, generator), {}
    for op in OPS:
        fields[op.name] = draw.coin(getattr(view, op.probability))
        fields.update(zip(op.params, op.sample(view, draw), strict=True))
    return ViewParams(**fields)


def params_to(device, *views: ViewParams) -> list[ViewParams]:
    """Several views' parameters on `device` through one host-to-device copy.

    Every field is packed (as float32: the bools, the 0..3 of `order` and the factors are exact
    there) into the rows of one pinned buffer, copied once without blocking; on the device the
    float fields are views of its rows, the bool and int fields one small kernel each. Per field,
    that was ~25 small copies per step.
    """
    if all(t.device == torch.device(device) for p in views for t in _fields(p)):
        return list(views)
    rows = [t.reshape(len(t), -1).T.float() for p in views for t in _fields(p)]
    packed = _to_device(torch.cat(rows), device).split([len(r) for r in rows])
    fields = iter(packed)
    return [ViewParams(**{f.name: _unpack(next(fields), getattr(p, f.name).dtype)
                          for f in dataclasses.fields(p)}) for p in views]


def _fields(p: ViewParams) -> list[Tensor]:
    return [getattr(p, f.name) for f in dataclasses.fields(p)]


def _unpack(rows: Tensor, dtype: torch.dtype) -> Tensor:
    """(k, N) packed rows -> the field: (N,) for k == 1, else (N, k), in its own dtype."""
    t = rows[0] if len(rows) == 1 else rows.T
    return t if dtype == torch.float32 else t.to(dtype)


def _to_device(t: Tensor, device) -> Tensor:
    # A pinned, non_blocking host-to-GPU copy never waits for the GPU; a pageable one may.
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
