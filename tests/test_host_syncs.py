"""No host syncs in the augmentation, the loss op and the model forward, proven on CPU (issue 20).

FakeTensorMode makes `device="cuda"` tensors without a GPU (no data, shapes and devices only), so
the code runs its CUDA path here. A dispatch mode under it fails on what would stall the host on a
GPU: reading a value (`_local_scalar_dense`: .item(), bool(t)), a data-dependent shape
(`nonzero`), a host-to-GPU copy that blocks (`_to_copy` / `copy_` with non_blocking=False). It
also counts the host-to-GPU copies: the augmentation's per-sample parameters travel in one.
Autocast is off for fake CUDA here (no CUDA to enable it for); the bf16 views still run the bf16
path of the augmentation. The autograd engine needs a real CUDA context, so the loss's backward
is checked on CPU tensors (where the reads, not the copies, are what can be caught).
"""
import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from fastbt.config import LossConfig
from fastbt.train.model import build_model
from fastbt.train.ops import barlow_twins_loss
from pipelines.augment import AugSpec, augment_pair

LAMBD = LossConfig().lambd


class HostSyncs(TorchDispatchMode):
    """Records the ops that would make the host wait for the GPU, and the host-to-GPU copies."""

    def __init__(self):
        super().__init__()
        self.syncs, self.uploads = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero"):
            self.syncs.append(name)
        elif name in ("_to_copy", "copy_"):
            self._check_copy(name, args, kwargs)
        return func(*args, **kwargs)

    def _check_copy(self, name, args, kwargs):
        if name == "_to_copy":
            src, dst = args[0].device, torch.device(kwargs.get("device") or args[0].device)
            non_blocking = kwargs.get("non_blocking", False)
        else:
            src, dst = args[1].device, args[0].device
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        if src.type == "cpu" and dst.type == "cuda":
            self.uploads += 1
            if not non_blocking:
                self.syncs.append(f"blocking {name} to the GPU")


@pytest.fixture
def fake_cuda(monkeypatch):
    # FakeTensorMode implements no aten._pin_memory: pinning is the identity here
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def crops(n=4, size=32):
    return torch.empty(n, 3, size, size, dtype=torch.uint8, device="cuda").contiguous(
        memory_format=torch.channels_last)


def test_the_guard_catches_each_kind_of_sync(fake_cuda):
    x = torch.ones(3, device="cuda")
    for sync in (lambda: x.sum().item(), lambda: x.nonzero(), lambda: torch.ones(3).to("cuda")):
        with HostSyncs() as guard, contextlib.suppress(RuntimeError):  # fake tensors have no values
            sync()
        assert guard.syncs
    with HostSyncs() as guard:
        torch.ones(3).to("cuda", non_blocking=True)
    assert guard.syncs == [] and guard.uploads == 1


def test_augmenting_both_views_on_cuda_never_syncs_and_uploads_once(fake_cuda):
    x1, x2 = crops(), crops()
    with HostSyncs() as guard:
        v1, v2 = augment_pair(x1, x2, AugSpec(size=32), torch.Generator().manual_seed(0), torch.bfloat16)
    assert guard.syncs == []
    assert guard.uploads == 1  # both views' per-sample parameters, in one copy
    for v in (v1, v2):
        assert v.device.type == "cuda" and v.dtype == torch.bfloat16
        assert v.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_the_loss_op_on_cuda_never_syncs(fake_cuda, mode):
    z1, z2 = (torch.empty(8, 16, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    with HostSyncs() as guard:
        loss = barlow_twins_loss(z1, z2, LAMBD, mode=mode)
    assert guard.syncs == [] and guard.uploads == 0
    assert loss.device.type == "cuda" and loss.dtype == torch.float32


@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_the_loss_op_forward_and_backward_read_nothing(mode):
    z1, z2 = (torch.randn(8, 16, requires_grad=True) for _ in range(2))
    with HostSyncs() as guard:
        barlow_twins_loss(z1, z2, LAMBD, mode=mode).backward()
    assert guard.syncs == []


def test_the_model_forward_on_cuda_never_syncs(fake_cuda):
    # bf16 weights stand in for autocast; built in place: FakeTensorMode cannot swap a module's
    # parameters (Module.to)
    with torch.device("cuda"), _default_dtype(torch.bfloat16):
        model = build_model("resnet18", [32, 32], channels_last=False)
    views = [crops().to(torch.bfloat16) for _ in range(2)]
    with HostSyncs() as guard:
        z1, z2 = model(*views)
        barlow_twins_loss(z1, z2, LAMBD)
    assert guard.syncs == [] and guard.uploads == 0
    assert z1.shape == (4, 32) and z1.device.type == "cuda"


@contextlib.contextmanager
def _default_dtype(dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)
