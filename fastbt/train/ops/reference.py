"""The Barlow Twins loss exactly as the official code writes it: the yardstick for the fused op.

Copied in substance from facebookresearch/barlowtwins main.py (`BarlowTwins.forward`,
`off_diagonal`), single process, plain autograd, computed in the input dtype. The in-place ops
are kept as they are there so that the benchmark measures the official memory footprint.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def off_diagonal(x: Tensor) -> Tensor:
    """A flattened view of the off-diagonal elements of a square matrix (the official helper)."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def reference_loss(z1: Tensor, z2: Tensor, lambd: float, eps: float = 1e-5) -> Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i!=j} C_ij^2 with C = bn(z1)^T bn(z2) / N."""
    def bn(z):  # BatchNorm1d(affine=False) in training mode
        return F.batch_norm(z, None, None, training=True, eps=eps)

    c = bn(z1).T @ bn(z2)
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return on_diag + lambd * off_diag
