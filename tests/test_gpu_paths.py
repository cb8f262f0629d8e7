"""The CUDA-only paths (marked gpu; they skip without CUDA; scripts/gpu_check.sh runs them):
DALI's mixed (nvJPEG) decode, the compiled bf16 augmentation on CUDA against CPU on the same seed,
and global BN over NCCL under torch.compile. The bf16 / channels-last / compiled training step is
in tests/test_step_sync.py, the loss op on CUDA in tests/test_loss.py."""

import pytest
import torch

import pipelines
from pipelines import augment as A

import distributed
from test_augment import _images
from test_norm_compile import small_two_view_net
from test_pipelines import AUG, BATCH, data, identify  # noqa: F401 (data: a fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_dali_mixed_decode_gives_the_right_images_on_the_gpu(data):
    paths, colours, labels = data
    loader = pipelines.build_loader("dali", paths["dali"], aug=AUG, batch_size=BATCH, device="cuda")
    batches = 0
    for crops1, crops2, batch_labels in loader.crops:
        assert crops1.device.type == crops2.device.type == "cuda" and crops1.dtype == torch.uint8
        assert crops1.shape == (BATCH, 3, AUG.size, AUG.size)
        for crops in (crops1, crops2):  # both views come from the images the labels name
            assert (labels[identify(crops.cpu(), colours)] == batch_labels.cpu().numpy()).all()
        batches += 1
    assert batches == len(loader)


def test_compiled_bf16_augmentation_on_cuda_equals_cpu_on_the_same_seed():
    spec = A.AugSpec()
    x = (_images(16, h=64, w=64, seed=9) * 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    cpu = A.augment_pair(x, x, spec, torch.Generator().manual_seed(10))
    cuda = A.augment_pair(x.cuda(), x.cuda(), spec, torch.Generator().manual_seed(10),
                          dtype=torch.bfloat16, compiled=True)
    for a, b in zip(cpu, cuda):
        assert b.dtype == torch.bfloat16 and b.is_contiguous(memory_format=torch.channels_last)
        assert (a - b.float().cpu()).abs().max() <= 2.7 * 2 ** -8 + 1e-4  # one bf16 rounding


def _nccl_compiled_forward(rank, world_size):
    import torch.distributed as dist
    from fastbt.norm import use_global_batch_norm
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=torch.device("cuda", rank))
    try:
        torch.manual_seed(0)
        model = use_global_batch_norm(small_two_view_net().cuda(), torch.device("cuda", rank))
        views = [torch.randn(4, 3, 12, 12, device="cuda") for _ in range(2)]
        explained = torch._dynamo.explain(model)(*views)
        z1, _ = torch.compile(model, fullgraph=True)(*views)
        z1.sum().backward()
        return explained.graph_break_count, explained.graph_count
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_global_bn_over_nccl_compiles_with_no_graph_breaks():
    for breaks, graphs in distributed.run(_nccl_compiled_forward, 2, init_group=False):
        assert (breaks, graphs) == (0, 1)
