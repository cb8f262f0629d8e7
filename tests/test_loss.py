"""The fused Barlow Twins loss against the official formula, its custom-op contracts, compile.

The reference runs in float64 on the very values the fused op sees (bf16 views are rounded
first), so it stands for the truth. Errors are norm-wise: |x - ref| over the loss or a whole
gradient. Bounds:
- loss: 1e-5 relative, any input dtype (all of the fused math is fp32, on the same values);
- gradients: 1e-5 relative for fp32 inputs; bf16 inputs get their gradients back in bf16, one
  more rounding, so 2^-8 (bf16's unit roundoff) + 1e-5.
- N = 2 is ill-conditioned, in any implementation: a 2-row column standardizes to +-1 whatever
  its values, so only BatchNorm's eps lets a gradient through, 1e-2 to 1e-5 of the gradient
  entering BatchNorm's backward. fp32 rounding of that incoming gradient then limits the result
  (the official formula in fp32 misses by up to 3e-3), so for N = 2 the 1e-5 is relative to the
  incoming gradient (dL/dA / sigma), captured from the reference.
"""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import AotEagerAndRecordGraphs
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from fastbt.config import LossConfig
from fastbt.train.ops import barlow_twins_loss, reference_loss
from fastbt.train.ops import xcorr

LAMBD = LossConfig().lambd  # the paper's
ROUNDING = {torch.float32: 0.0, torch.bfloat16: 2**-8}  # of the gradients returned


def make_views(n, d, dtype=torch.float32, seed=0, device="cpu"):
    """Two correlated views with per-column offsets and scales (standardization has work to do).

    z2 = +-z1 + noise, the sign alternating by column, so that the diagonal terms are neither all
    near 0 nor all near 4: a loss that is a near-total cancellation has no meaningful relative
    error in any precision (with N=2 every C_ij is +-1).
    """
    g = torch.Generator().manual_seed(seed)
    offset, spread = torch.randn(d, generator=g), torch.rand(d, generator=g) * 3 + 0.1
    z1 = torch.randn(n, d, generator=g) * spread + offset
    sign = 1 - 2 * (torch.arange(d) % 2 == 0).float()  # -1, +1, -1, ...
    z2 = sign * z1 + torch.randn(n, d, generator=g) * spread
    return z1.to(device, dtype), z2.to(device, dtype)


def loss_and_grads(fn, z1, z2, **kw):
    z1, z2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    loss = fn(z1, z2, **kw)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


@functools.lru_cache(maxsize=None)
def reference(n, d, dtype):
    """float64 reference on the dtype-rounded views: views, (loss, grads), incoming grads."""
    z1, z2 = make_views(n, d, dtype)
    with IncomingGrads() as incoming:
        want = loss_and_grads(reference_loss, z1.double(), z2.double(), lambd=LAMBD)
    return (z1, z2), want, incoming.grads


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def assert_close(got, want, tol_loss=1e-5, tol_grad=1e-5):
    (loss, g1, g2), (ref_loss, ref_g1, ref_g2) = got, want
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert rel_err(loss, ref_loss) <= tol_loss
    assert rel_err(g1, ref_g1) <= tol_grad
    assert rel_err(g2, ref_g2) <= tol_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["gram", "direct"])
@pytest.mark.parametrize("d", [1, 16, 2048])
@pytest.mark.parametrize("n", [2, 8, 256])
def test_matches_reference(n, d, mode, dtype):
    (z1, z2), (ref_loss, *ref_grads), incoming = reference(n, d, dtype)
    loss, *grads = loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD, mode=mode)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert rel_err(loss, ref_loss) <= 1e-5
    for grad, ref, inc in zip(grads, ref_grads, incoming):
        assert grad.dtype == dtype
        basis = ref if n > 2 else inc  # see the module docstring
        err = (grad.double() - ref).norm()
        assert err <= ROUNDING[dtype] * ref.norm() + 1e-5 * basis.norm()


def test_direct_mode_in_uneven_column_blocks(monkeypatch):
    monkeypatch.setattr(xcorr, "_BLOCK_ELEMS", 16 * 5)  # D=16 -> blocks of 5, 5, 5, 1 columns
    (z1, z2), want, _ = reference(8, 16, torch.float32)
    assert_close(loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD, mode="direct"), want)


def test_auto_picks_the_cheaper_form():
    with OpRecorder() as ops:
        barlow_twins_loss(*make_views(8, 16), LAMBD, mode="auto")  # N <= D
        barlow_twins_loss(*make_views(16, 8), LAMBD, mode="auto")
    assert ops.names == ["fastbt.bt_gram.default", "fastbt.bt_direct.default"]


def test_scale_and_lambd():
    z1, z2 = make_views(8, 16)
    for mode in ("gram", "direct"):
        loss, g1, g2 = loss_and_grads(barlow_twins_loss, z1, z2, lambd=0.1, scale=0.25, mode=mode)
        ref_loss, r1, r2 = loss_and_grads(reference_loss, z1.double(), z2.double(), lambd=0.1)
        assert_close((loss, g1, g2), (ref_loss * 0.25, r1 * 0.25, r2 * 0.25))


@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_constant_column_is_finite(mode):
    z1, z2 = make_views(8, 16)
    z1[:, 3] = 2.5  # zero variance: BN maps it to 0, and so must we (no 0/0)
    got = loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD, mode=mode)
    assert all(t.isfinite().all() for t in got)
    assert_close(got, loss_and_grads(reference_loss, z1.double(), z2.double(), lambd=LAMBD))


@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_autocast_stays_outside_the_op(mode):
    z1, z2 = make_views(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would make the op's matmuls bf16
        got = loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD, mode=mode)
    assert_close(got, loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD, mode=mode), 1e-7, 1e-7)


def test_rejects_bad_arguments():
    z1, z2 = make_views(8, 16)
    with pytest.raises(ValueError, match="mode"):
        barlow_twins_loss(z1, z2, LAMBD, mode="fast")
    with pytest.raises(ValueError, match="N x D"):
        barlow_twins_loss(z1, z2[:, :8], LAMBD)


def op_samples(dtype):
    """(op, args) for each custom op, small: opcheck runs each many times."""
    a, b = (t.requires_grad_() for t in make_views(6, 5, dtype))
    c = (a.detach().float().T @ b.detach().float()) / 6
    ops = torch.ops.fastbt
    aa, bb = a.detach().float() @ a.detach().float().T, b.detach().float() @ b.detach().float().T
    grad = torch.tensor(1.5)
    return [
        (ops.bt_gram.default, (a, b, a.detach(), b.detach(), True)),
        (ops.bt_direct.default, (a, b, None, 0.0051, 6, 2, True)),
        (ops.bt_direct.default, (a, b, c, 0.0051, 6, 2, False)),
        (ops.bt_gram_backward.default, (grad, a.detach(), b.detach(), aa, bb, True)),
        (ops.bt_direct_backward.default, (grad, a.detach(), b.detach(), None, 0.0051, 6, 2, True)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype):
    for op, args in op_samples(dtype):
        torch.library.opcheck(op, args)


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")  # the recording backend's
@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_compile_fullgraph_keeps_the_op_opaque(mode):
    backend = AotEagerAndRecordGraphs()
    compiled = torch.compile(functools.partial(barlow_twins_loss, lambd=LAMBD, mode=mode),
                             backend=backend, fullgraph=True)
    z1, z2 = make_views(8, 16)
    assert_close(loss_and_grads(compiled, z1, z2),
                 loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD, mode=mode), 1e-6, 1e-6)
    (fw,), (bw,) = backend.fw_graphs, backend.bw_graphs
    fw_ops, bw_ops = graph_ops(fw), graph_ops(bw)
    assert f"fastbt.bt_{mode}.default" in fw_ops
    assert f"fastbt.bt_{mode}_backward.default" in bw_ops
    assert not {"aten.mm.default", "aten.addmm.default"} & (fw_ops | bw_ops)  # no op internals


@pytest.mark.slow  # inductor's C++ compile takes ~20 s cold on 2 cores
def test_compile_fullgraph_inductor():
    z1, z2 = make_views(8, 16)
    compiled = torch.compile(functools.partial(barlow_twins_loss, lambd=LAMBD), fullgraph=True)
    assert_close(loss_and_grads(compiled, z1, z2),
                 loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD), 1e-6, 1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_cuda_matches_reference(mode, dtype):
    z1, z2 = make_views(256, 2048, dtype, device="cuda")
    want = loss_and_grads(reference_loss, z1.double(), z2.double(), lambd=LAMBD)
    got = loss_and_grads(barlow_twins_loss, z1, z2, lambd=LAMBD, mode=mode)
    assert got[0].device.type == "cuda" and got[1].dtype == dtype
    tol_grad = {torch.float32: 1e-5, torch.bfloat16: 2**-8 + 1e-5, torch.float16: 2**-11 + 1e-5}
    assert_close(got, want, 1e-5, tol_grad[dtype])


def graph_ops(gm):
    return {str(node.target) for node in gm.graph.nodes if node.op == "call_function"}


class OpRecorder(TorchDispatchMode):
    """Records the names of the ops that reach dispatch (a custom op arrives whole)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastbt":
            self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class IncomingGrads(TorchFunctionMode):
    """Captures the gradient entering each batch_norm's backward, in z's units (dL/dA / sigma)."""

    def __init__(self):
        super().__init__()
        self.grads = []  # one per batch_norm call, in call order

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.batch_norm:
            k = len(self.grads)
            self.grads.append(None)
            sigma = (args[0].var(0, unbiased=False) + kwargs["eps"]).sqrt()
            out.register_hook(lambda g: self.grads.__setitem__(k, g / sigma))
        return out
