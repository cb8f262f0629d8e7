"""A view's photometric half on a batch: the table of ops (pipelines.augment.table) applied eagerly
(`apply_view`) or through torch.compile (`compiled_apply_view`), both views of a batch of crop
pairs (`augment_pair`), and `Augment`, what the loader calls: a pure function of (seed, rank,
epoch, batch index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pipelines.augment.ops import normalize, to_float
from pipelines.augment.recipe import IMAGENET_MEAN, IMAGENET_STD, AugSpec, ViewSpec
from pipelines.augment.table import ViewParams, active_ops, params_to, sample_params
from pipelines.order import batch_seed

# On CPU, views are computed this many bytes of float32 input at a time (see apply_view); the
# compiled graph at most COMPILED_CPU_CHUNK_BYTES at a time (see compiled_apply_view).
CPU_CHUNK_BYTES = 2 << 20
COMPILED_CPU_CHUNK_BYTES = 5 << 20


def apply_view(x: Tensor, view: ViewSpec, p: ViewParams,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """The photometric half of `view` with drawn params `p` (on x's device): normalized, in
    `dtype` (the training dtype: bf16 on CUDA, fp32 on CPU), channels-last if x is.

    The table's order, the official transform's: jitter (p), grayscale (p, 3 channels), blur (p),
    solarize (p); then normalize; computed in fp32 whatever `dtype`. Ops whose probability is 0 are skipped
    outright; masks select per sample without loops over samples or data-dependent shapes, so
    the function compiles with fullgraph=True (`compiled_apply_view`), into a few fused loops.
    """
    if torch.compiler.is_compiling():
        return _apply_view_planes(x, view, p, mean, std, dtype)
    if x.device.type == "cpu":
        # Eager CPU ops on a whole batch are bound by faulting in fresh memory for every
        # intermediate; a few images at a time stay in cache (~2x faster at 224 px).
        step = _images_per(CPU_CHUNK_BYTES, x)
        return _in_chunks(_apply_view, step, x, view, p, mean, std, dtype)
    return _apply_view(x, view, p, mean, std, dtype)


def _images_per(chunk_bytes: int, x: Tensor) -> int:
    """How many of x's images fit chunk_bytes as float32 (at least 1)."""
    return max(1, chunk_bytes // (4 * x.shape[1:].numel()))


def _in_chunks(fn, step: int, x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    """fn on x and p step samples at a time, concatenated (in x's memory format)."""
    if len(x) <= step:
        return fn(x, view, p, mean, std, dtype)
    return torch.cat([fn(xc, view, pc, mean, std, dtype) for xc, pc in zip(x.split(step), p.split(step))])

def _apply_view(x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    """The table's ops `view` uses, in order, on float NCHW images; then normalize."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    x = to_float(x)
    for op in active_ops(view):
        x = op.apply(x, view, p)
    x = normalize(x, mean, std)
    return x.to(dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _apply_view_planes(x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    """`_apply_view` for compiled code: the same table of ops on three channel planes.

    Inductor fuses pointwise ops into the loop of their consumer. On a (N, 3, H, W) tensor that
    loop runs over channels too, and every channel-mixing op (gray, hue) makes each channel's
    code recompute all three: 3x the work. On separate planes the three outputs share one loop
    over pixels, and each pixel's chain runs once. The blur is sums of shifted slices (fused);
    the jitter follows COMPILED_SLOTS.
    """
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    chans = list(to_float(x).split(1, dim=1))
    for op in active_ops(view):
        chans = op.apply_planes(chans, view, p)
    chans = [(c - m) / s for c, m, s in zip(chans, mean, std)]
    return _stack_planes(chans, channels_last).to(
        dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _stack_planes(chans: list[Tensor], channels_last: bool) -> Tensor:
    """Three (N, 1, H, W) planes -> (N, 3, H, W), laid out as asked, so the output is written once
    (inductor lays a torch.cat of the planes out channels-last, and NCHW then cost another copy)."""
    planes = [c.squeeze(1) for c in chans]
    if channels_last:
        return torch.stack(planes, dim=-1).permute(0, 3, 1, 2)
    return torch.stack(planes, dim=1)



_compiled_apply_view = None


def compiled_apply_view(x: Tensor, view: ViewSpec, p: ViewParams,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """`apply_view` through torch.compile(fullgraph=True), compiled once per shape and view.

    On CPU the graph runs on equal chunks of the batch (one chunk shape per batch shape, so one
    graph), as the eager path does: each of its loops passes over its whole input, and the buffers
    between them are fresh memory. Interleaved with eager work (as in the bench), 8 images at
    224 px at a time ran ~1.5x faster than a batch of 32 (4: about the same, 16: slower). Each
    chunk goes through the graph in NCHW (`_compiled_cpu_chunk`).
    """
    global _compiled_apply_view
    if _compiled_apply_view is None:
        _compiled_apply_view = torch.compile(apply_view, fullgraph=True, dynamic=False)
    if x.device.type != "cpu":
        return _compiled_apply_view(x, view, p, mean, std, dtype)
    step = _largest_divisor(len(x), _images_per(COMPILED_CPU_CHUNK_BYTES, x))
    return _in_chunks(_compiled_cpu_chunk, step, x, view, p, mean, std, dtype)


def _compiled_cpu_chunk(x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    """The graph on an NCHW copy of a channels-last chunk, its output copied back to channels-last:
    inductor's CPU loops over interleaved (channels-last) pixels ran ~1.5x slower than the NCHW
    graph plus these two eager layout copies (uint8 in, output out)."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return _compiled_apply_view(x, view, p, mean, std, dtype)
    out = _compiled_apply_view(x.contiguous(), view, p, mean, std, dtype)
    return out.contiguous(memory_format=torch.channels_last)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def augment(x: Tensor, view: ViewSpec, generator: torch.Generator,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
            dtype: torch.dtype = torch.float32, compiled: bool = False) -> Tensor:
    """Draw params for x's N samples from `generator` (CPU), move them to x's device, apply."""
    params = sample_params(view, x.shape[0], generator).to(x.device)
    return (compiled_apply_view if compiled else apply_view)(x, view, params, mean, std, dtype)


def augment_pair(x1: Tensor, x2: Tensor, spec: AugSpec, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32, compiled: bool = False) -> tuple[Tensor, Tensor]:
    """Both views of a batch of crop pairs: view 1 then view 2 from the same generator (the
    parameters of both reach the device in one copy)."""
    p1 = sample_params(spec.view1, x1.shape[0], generator)
    p2 = sample_params(spec.view2, x2.shape[0], generator)
    p1, p2 = params_to(x1.device, p1, p2)
    run = compiled_apply_view if compiled else apply_view
    return (run(x1, spec.view1, p1, spec.mean, spec.std, dtype),
            run(x2, spec.view2, p2, spec.mean, spec.std, dtype))


class Augment:
    """The photometric half of the recipe `aug` for a batch of crop pairs: `augment(crops1, crops2,
    epoch, index)` -> (view1, view2), normalized, in `dtype` (the training dtype: bf16 on CUDA;
    None: float32), in the crops' memory format, on their device. Its random parameters are a pure
    function of (seed, rank, epoch, batch index), so a resumed run replays a batch exactly.
    `compiled`: the chain runs as one torch.compile(fullgraph=True) graph per shape."""

    def __init__(self, aug: AugSpec, seed: int = 0, rank: int = 0, dtype: torch.dtype | None = None,
                 compiled: bool = False):
        self.aug, self.seed, self.rank = aug, seed, rank
        self.dtype = dtype or torch.float32
        self.compiled = compiled

    def __call__(self, crops1: Tensor, crops2: Tensor, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, epoch, index))
        return augment_pair(crops1, crops2, self.aug, generator, self.dtype, self.compiled)
