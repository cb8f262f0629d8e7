"""The Barlow Twins loss as a fused, Triton-free custom op, exact on one process or many.

Math. A, B are z1, z2 standardized over the (global) batch of N rows, as BatchNorm1d(affine=False)
does in training mode. With C = A^T B / N (D x D), d = diag(C) = colsum(A * B) / N and
F = sum_ij C_ij^2, the loss is

    L = sum_i (1 - C_ii)^2 + lambd * sum_{i!=j} C_ij^2 = sum_i (1 - d_i)^2 + lambd * (F - |d|^2).

Its gradient is dL/dC = G = 2 lambd C + diag(g), g_i = 2 (1 - lambd) d_i - 2, so
dL/dA = B G^T / N and dL/dB = A G / N. The two modes differ only in how they reach F and B G^T:

- gram:   F = <A A^T, B B^T>_F / N^2 and B C^T = (B B^T) A / N, so
          dL/dA = (2 lambd / N^2) (B B^T) A + B g / N (and A <-> B for dL/dB).
          Never anything D x D. Each rank computes only its n = N / W rows of the two Grams,
          A_r A^T and B_r B^T (n x N), their share <A_r A^T, B_r B^T> of N^2 F, and its rows of
          the gradient, (B_r B^T) A: ~8 n N D = 8 N^2 D / W flops forward + backward.
- direct: C is built D x `block` columns at a time, in the forward (for F) and again in the
          backward (for B C^T and A C), so one process never holds it whole. ~8 N D^2 flops on one
          process; with W ranks each builds its partial A_r^T B_r once: ~6 N D^2 / W.
`auto` takes the smaller per-rank cost (`loss_cost`): flops plus bytes communicated, weighted by
FLOPS_PER_BYTE. On one process that is gram when N <= D.

Precision. Statistics, Grams, C and the loss are fp32 whatever the input dtype, and under
autocast too (it would otherwise reach inside the custom ops); the gradients come back in the
input dtype. `tf32=True` (the default) lets CUDA run the ops' fp32 matmuls on tensor cores in TF32
(10-bit mantissa inputs, fp32 accumulation); it changes nothing on CPU.

Custom ops. The four kernels below (forward and backward of each mode) are `torch.library`
custom ops over already standardized, already communicated fp32 tensors, so that
`torch.compile` keeps them opaque in both its forward and backward graphs. The standardization
and the collectives are plain torch around them, in `barlow_twins_loss`.

Distributed. Each rank computes the loss of the global batch (the same value everywhere) and gets
the gradient of that value with respect to its own rows of z1, z2, which are the matching rows
of the single-process gradient. The collectives are chosen for that:
- standardization all-reduces column sums, forward (mean, variance) and backward (the means of
  dA and dA * A, the SyncBatchNorm formulas), each rank contributing its own rows;
- gram all-gathers z1, z2 in their own dtype (bf16 under autocast: half of fp32's bytes) and
  standardizes the gathered rows with the global statistics, which gives bit for bit the rows
  each rank standardized; the partial sums (this rank's share of F and of diag C) are then
  all-reduced, and that all-reduce's backward is the identity: every rank's loss is the global
  loss, so its gradient with respect to a partial sum is the gradient with respect to the total;
- direct all-reduces C (D x D, held whole here) outside autograd, and the op's backward returns
  this rank's rows of B G^T / N and A G / N from the global C (the official code's construction).
The usual autograd collectives (torch.distributed.nn) would instead sum the W identical gradients
of the gathered or reduced tensor, and give W times these rows.

FLOPs. Each custom op has a formula registered with torch.utils.flop_counter, so FlopCounterMode
(and the profiler built on it) counts the matmuls inside the opaque ops.
"""
import functools
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

_BLOCK_ELEMS = 1 << 24  # direct mode builds C in D x block pieces of at most 64 MiB fp32
# How many flops one byte of communication costs, for `auto`: an H100's dense TF32 rate (~5e14/s)
# over NVLink all-reduce bandwidth (~4.5e11 B/s). Across nodes it is ~10x more.
FLOPS_PER_BYTE = 1000


def loss_cost(mode: str, n: int, d: int, world: int, elem_bytes: int = 4) -> tuple[int, int]:
    """(matmul flops, bytes received) per rank per step, forward + backward, for global batch n.

    Bytes: ring all-reduce of S bytes moves 2 (W-1)/W S per rank, all-gather (W-1)/W S; the
    standardization's four 2 x D fp32 all-reduces (both views) are common to both modes.
    """
    rows = n // world
    share = (world - 1) / world
    common = 2 * share * 4 * (4 * 2 * d)
    if mode == "gram":
        flops = 8 * rows * n * d
        comm = share * 2 * n * d * elem_bytes + 2 * share * 4 * (d + 1)
    else:
        flops = (8 if world == 1 else 6) * rows * d * d
        comm = 2 * share * 4 * d * d
    return flops, int(comm + common)


def choose_mode(n: int, d: int, world: int, elem_bytes: int = 4) -> str:
    """gram or direct, whichever costs a rank less: flops + FLOPS_PER_BYTE x bytes."""
    def cost(mode):
        flops, comm = loss_cost(mode, n, d, world, elem_bytes)
        return flops + FLOPS_PER_BYTE * comm
    return "gram" if cost("gram") <= cost("direct") else "direct"


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float, *, scale: float = 1.0,
                      mode: str = "auto", eps: float = 1e-5, group=None, tf32: bool = True) -> Tensor:
    """The Barlow Twins loss of projector outputs z1, z2 (N x D each): a 0-dim fp32 tensor.

    scale * (sum_i (1 - C_ii)^2 + lambd * sum_{i!=j} C_ij^2), C = A^T B / N_global, where A, B
    are z1, z2 standardized like BatchNorm1d(affine=False) in training mode (biased variance,
    eps inside the square root), over the global batch when `group` is a process group.
    mode: "gram", "direct" or "auto" (see the module docstring); the value is the same.
    tf32: allow TF32 tensor-core matmuls (fp32 accumulation) inside the ops on CUDA.

    With a group, every rank must pass the same N (as DDP's sampler with drop_last does). The
    value is the global loss on every rank, and each rank's z1.grad, z2.grad are its rows of the
    single-process gradient on the global batch. DDP then *averages* parameter gradients over the
    W ranks, which gives 1/W of the single-process parameter gradient. Hence:
    - scale=W (dist.get_world_size(group)) under DDP: exactly the single-process parameter
      gradient (the returned value is then W times the loss; divide by W to log it);
    - scale=1 under DDP: the official code's dynamics. It sums C with a plain all_reduce that
      autograd does not see, so its per-rank gradients are these same rows and DDP's averaging
      leaves it with 1/W of the single-process gradient. Equivalently: scale=1/W relative to
      the exact setting.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1, z2 must both be N x D, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if mode not in ("auto", "gram", "direct"):
        raise ValueError(f"mode must be 'auto', 'gram' or 'direct', got {mode!r}")
    world = 1 if group is None else dist.get_world_size(group)
    n, d = z1.shape[0] * world, z1.shape[1]
    if mode == "auto":
        mode = choose_mode(n, d, world, z1.element_size())

    a, mean_a, invstd_a = _Standardize.apply(z1, eps, n, group)  # fp32, this rank's rows
    b, mean_b, invstd_b = _Standardize.apply(z2, eps, n, group)
    if mode == "gram":
        if group is None:
            a_all, b_all = a.detach(), b.detach()
        else:
            a_all = _gather_standardized(z1, mean_a, invstd_a, group)
            b_all = _gather_standardized(z2, mean_b, invstd_b, group)
        share = torch.ops.fastbt.bt_gram(a, b, a_all, b_all, tf32)[0]  # this rank's N^2 F
        sums = _SumOverRanks.apply(torch.cat([share.view(1) / n**2, _diag(a, b, n)]), group)
        loss = _loss(sums[0], sums[1:], lambd)
    else:
        c = None
        if group is not None:
            # outside autograd: the op's backward supplies this rank's rows itself
            with torch.no_grad(), torch.autocast(a.device.type, enabled=False), _tf32(a, tf32):
                c = a.T @ b / n
            dist.all_reduce(c, group=group)
        loss = torch.ops.fastbt.bt_direct(a, b, c, lambd, n, max(1, _BLOCK_ELEMS // d), tf32)
    return loss * scale


class _Standardize(torch.autograd.Function):
    """BatchNorm1d(affine=False), training mode, over the rows of all ranks; fp32 out.

    Written out rather than left to autograd, so that it saves only A (which the op keeps
    anyway) and 1/sigma, and runs its backward in place: the whole loss then peaks at 5 N x D
    fp32 buffers, not 7, and runs 1.8x faster (measured, N=256, D=32768, CPU).
    Forward: A = (z - mean) / sigma, sigma = sqrt(var + eps), var biased. Also returns mean and
    1/sigma (not differentiable), with which other ranks' rows are standardized identically.
    Backward, with means over the global batch:
    dz = (dA - mean(dA) - A mean(dA * A)) / sigma. Each rank holds dA for its own
    rows, so summing the means' partial sums over ranks gives exactly the global ones.
    """

    @staticmethod
    def forward(ctx, z, eps, n, group):
        ctx.n, ctx.group, ctx.dtype = n, group, z.dtype
        mean = _sum_rows(z.float(), group) / n
        a = z.float() - mean
        var = _sum_rows(a.square(), group) / n  # two passes: no cancellation
        invstd = torch.rsqrt(var + eps)
        # In place eagerly (one N x D buffer less). Compiled, out of place: torch 2.11's traced
        # autograd.Function takes an output made by an in-place op for non-differentiable and
        # feeds its backward zeros (all-zero gradients); a compiled graph fuses it anyway.
        a = a * invstd if torch.compiler.is_compiling() else a.mul_(invstd)
        ctx.save_for_backward(a, invstd)
        ctx.mark_non_differentiable(mean, invstd)
        return a, mean, invstd

    @staticmethod
    def backward(ctx, da, _dmean, _dinvstd):
        a, invstd = ctx.saved_tensors
        n, group = ctx.n, ctx.group
        dz = a * (_sum_rows(da * a, group) / -n)
        dz.add_(da).sub_(_sum_rows(da, group) / n).mul_(invstd)
        return dz.to(ctx.dtype), None, None, None


def _sum_rows(x: Tensor, group) -> Tensor:
    """Column sums over the global batch (a plain all_reduce: used inside autograd Functions)."""
    s = x.sum(0)
    if group is not None:
        dist.all_reduce(s, group=group)
    return s


def _gather_standardized(z: Tensor, mean: Tensor, invstd: Tensor, group) -> Tensor:
    """All ranks' rows of z, gathered in z's dtype and standardized as `_Standardize` does (a
    constant for autograd: the gram op's backward gives this rank's rows their whole gradient)."""
    with torch.no_grad():
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, z.detach().contiguous(), group=group)
        return (torch.cat(parts).float() - mean) * invstd


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(sum) of partial sums whose total every rank then uses; backward: identity.

    Every rank's loss is the same global function of the totals, so the gradient with respect to
    this rank's partial sum is the gradient with respect to the total, not W times it.
    """

    @staticmethod
    def forward(ctx, partial, group):
        total = partial.clone()
        if group is not None:
            dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad, None


# ---- shared math -------------------------------------------------------------------------

def _no_autocast(op):
    """Autocast reaches inside custom ops (it would run their matmuls in bf16); keep them fp32.
    The last argument of every op is `tf32`: whether CUDA may run them in TF32."""
    @functools.wraps(op)
    def run(*args):
        with torch.autocast(args[0].device.type, enabled=False), _tf32(args[0], args[-1]):
            return op(*args)
    return run


class _tf32:
    """Within: CUDA fp32 matmuls may use TF32 tensor cores (fp32 accumulation) if `allow`."""

    def __init__(self, x: Tensor, allow: bool):
        self.active = x.device.type == "cuda"
        self.want = "tf32" if allow else "ieee"

    def __enter__(self):
        if self.active:
            self.saved = torch.backends.cuda.matmul.fp32_precision
            torch.backends.cuda.matmul.fp32_precision = self.want

    def __exit__(self, *exc):
        if self.active:
            torch.backends.cuda.matmul.fp32_precision = self.saved


def _diag(a: Tensor, b: Tensor, n: int) -> Tensor:
    """diag(A^T B) / N without forming A^T B."""
    return (a * b).sum(0) / n


def _loss(frob2: Tensor, diag: Tensor, lambd: float) -> Tensor:
    """sum_i (1 - d_i)^2 + lambd * (sum_ij C_ij^2 - sum_i d_i^2)."""
    return (1 - diag).square().sum() + lambd * (frob2 - diag.square().sum())


def _diag_grad(diag: Tensor, lambd: float) -> Tensor:
    """dL/dd_i beyond the 2 lambd C_ii that the off-diagonal formula already gives."""
    return 2 * (1 - lambd) * diag - 2


# ---- gram mode ---------------------------------------------------------------------------
# a, b: this rank's standardized rows (n x D); a_all, b_all: all ranks' (N x D; a, b on one process).

@torch.library.custom_op("fastbt::bt_gram", mutates_args=())
@_no_autocast
def _gram(a: Tensor, b: Tensor, a_all: Tensor, b_all: Tensor,
          tf32: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(<A_r A^T, B_r B^T>, A_r A^T, B_r B^T): this rank's share of N^2 F and its Gram rows,
    kept for the backward."""
    aa, bb = a.float() @ a_all.float().T, b.float() @ b_all.float().T
    return (aa * bb).sum(), aa, bb  # sum() adds pairwise: 3e-8 rel. err. on 4M terms, dot 2e-5


@_gram.register_fake
def _(a, b, a_all, b_all, tf32):
    rows = functools.partial(a.new_empty, a.shape[0], a_all.shape[0], dtype=torch.float32)
    return a.new_empty((), dtype=torch.float32), rows(), rows()


@torch.library.custom_op("fastbt::bt_gram_backward", mutates_args=())
@_no_autocast
def _gram_backward(grad: Tensor, a_all: Tensor, b_all: Tensor, aa: Tensor, bb: Tensor,
                   tf32: bool) -> tuple[Tensor, Tensor]:
    """This rank's rows of d(N^2 F)/dA = 2 (B B^T) A and d/dB = 2 (A A^T) B, times grad."""
    k = 2 * grad
    return (bb * k) @ a_all.float(), (aa * k) @ b_all.float()


@_gram_backward.register_fake
def _(grad, a_all, b_all, aa, bb, tf32):
    return aa.new_empty(aa.shape[0], a_all.shape[1]), bb.new_empty(bb.shape[0], b_all.shape[1])


def _gram_setup(ctx, inputs, output):
    a, b, a_all, b_all, tf32 = inputs
    ctx.mark_non_differentiable(output[1], output[2])  # the Grams are only saved state
    ctx.save_for_backward(a_all, b_all, output[1], output[2])
    ctx.tf32 = tf32


def _gram_autograd(ctx, grad, _grad_aa, _grad_bb):
    return *torch.ops.fastbt.bt_gram_backward(grad, *ctx.saved_tensors, ctx.tf32), None, None, None


_gram.register_autograd(_gram_autograd, setup_context=_gram_setup)


# ---- direct mode -------------------------------------------------------------------------
# c: None on one process (C is built from a, b block by block), or the all-reduced global C, in
# which case a, b are this rank's rows and serve only the backward.

def _c_blocks(a: Tensor, b: Tensor, c: Optional[Tensor], n: int, block: int):
    """(column slice, C[:, slice]) for consecutive blocks of C's columns."""
    for j in range(0, b.shape[1], block):
        cols = slice(j, j + block)
        yield cols, (c[:, cols] if c is not None else a.T @ b[:, cols] / n)


@torch.library.custom_op("fastbt::bt_direct", mutates_args=())
@_no_autocast
def _direct(a: Tensor, b: Tensor, c: Optional[Tensor], lambd: float, n: int,
            block: int, tf32: bool) -> Tensor:
    a, b = a.float(), b.float()
    diag = c.diagonal() if c is not None else _diag(a, b, n)
    frob2 = sum(cj.square().sum() for _, cj in _c_blocks(a, b, c, n, block))
    return _loss(frob2, diag, lambd)


@_direct.register_fake
def _(a, b, c, lambd, n, block, tf32):
    return a.new_empty((), dtype=torch.float32)


@torch.library.custom_op("fastbt::bt_direct_backward", mutates_args=())
@_no_autocast
def _direct_backward(grad: Tensor, a: Tensor, b: Tensor, c: Optional[Tensor], lambd: float,
                     n: int, block: int, tf32: bool) -> tuple[Tensor, Tensor]:
    af, bf = a.float(), b.float()
    diag = c.diagonal() if c is not None else _diag(af, bf, n)
    g = grad * _diag_grad(diag, lambd) / n
    da, db = bf * g, af * g
    k = grad * (2 * lambd / n)
    for cols, cj in _c_blocks(af, bf, c, n, block):  # B C^T = sum_j B[:, j] C[:, j]^T; (A C)[:, j]
        cj = cj * k
        da.addmm_(bf[:, cols], cj.T)
        db[:, cols].addmm_(af, cj)
    return da.to(a.dtype), db.to(b.dtype)


@_direct_backward.register_fake
def _(grad, a, b, c, lambd, n, block, tf32):
    return torch.empty_like(a), torch.empty_like(b)


def _direct_setup(ctx, inputs, output):
    a, b, c, lambd, n, block, tf32 = inputs
    ctx.save_for_backward(a, b, c)
    ctx.args = lambd, n, block, tf32


def _direct_autograd(ctx, grad):
    return *torch.ops.fastbt.bt_direct_backward(grad, *ctx.saved_tensors, *ctx.args), *[None] * 5


_direct.register_autograd(_direct_autograd, setup_context=_direct_setup)


# ---- FLOP formulas (torch.utils.flop_counter; arguments arrive as shapes) --------------------

@register_flop_formula(torch.ops.fastbt.bt_gram)
def _gram_flops(a, b, a_all, b_all, *args, **kwargs) -> int:
    return 2 * 2 * a[0] * a_all[0] * a[1]  # A_r A^T and B_r B^T


@register_flop_formula(torch.ops.fastbt.bt_gram_backward)
def _gram_backward_flops(grad, a_all, b_all, aa, bb, *args, **kwargs) -> int:
    return 2 * 2 * aa[0] * aa[1] * a_all[1]  # (B_r B^T) A and (A_r A^T) B


@register_flop_formula(torch.ops.fastbt.bt_direct)
def _direct_flops(a, b, c, *args, **kwargs) -> int:
    return 0 if c is not None else 2 * a[0] * a[1] * b[1]  # C, unless given


@register_flop_formula(torch.ops.fastbt.bt_direct_backward)
def _direct_backward_flops(grad, a, b, c, *args, **kwargs) -> int:
    rebuild = 0 if c is not None else 2 * a[0] * a[1] * b[1]
    return rebuild + 2 * 2 * a[0] * a[1] * b[1]  # B C^T and A C
