"""No host sync inside a training step (issue 14, item 4).

On CPU a host sync has no cost to catch, so the test forbids what would be one on a GPU: reading a
tensor on the host (`.item()`, `.tolist()`, `bool(tensor)`) anywhere on the step's code path. On
CUDA (marked gpu) the same steps run under `torch.cuda.set_sync_debug_mode("error")`.
"""


import pytest
import torch

from fastbt import config, dist
from fastbt.train.run import build_run
from fastbt.train.step import no_host_syncs

import distributed

TINY = ["data.backend=torchvision", "data.workers=0", "model.arch=resnet18", "model.projector=[32,32]",
        "aug.size=32", "train.batch_size=8", "logging.progress_bar=false", "runtime.compile=false"]


def no_host_reads():
    return no_host_syncs("cpu")  # on the CPU: reading a tensor on the host raises


def steps_without_host_reads(world: dist.World, images, out_dir, guard, *extra) -> torch.Tensor:
    cfg = config.load(None, [*TINY, f"data.path={images}", f"train.out_dir={out_dir}",
                             f"runtime.device={world.device.type}", *extra])
    run = build_run(cfg, world)
    view1, view2 = next(iter(run.loader))
    run.set_lr(0)
    run.train_step(view1, view2)  # warm-up: lazy state (momenta, cudnn plans) may be created here
    losses = []
    with guard():
        for step in range(1, 4):
            run.set_lr(step)
            losses.append(run.train_step(view1, view2))
    return torch.stack(losses).cpu()


def test_a_cpu_step_reads_nothing_back_to_the_host(images, tmp_path):
    with no_host_reads(), pytest.raises(RuntimeError, match="host read"):  # the guard guards
        bool(torch.ones(()))
    world = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    losses = steps_without_host_reads(world, images, tmp_path, no_host_reads, "runtime.precision=fp32")
    assert torch.isfinite(losses).all()


def _two_process_steps(rank, world_size, images, out_dir):
    world = dist.World(rank=rank, local_rank=rank, size=world_size, device=torch.device("cpu"))
    return steps_without_host_reads(world, images, out_dir, no_host_reads, "runtime.precision=fp32")


@pytest.mark.dist
def test_a_distributed_cpu_step_with_global_bn_and_ddp_reads_nothing_back(images, tmp_path):
    losses = distributed.run(_two_process_steps, 2, images, tmp_path)
    torch.testing.assert_close(losses[0], losses[1])  # the global loss on every rank


def cuda_sync_is_an_error():
    return no_host_syncs("cuda")  # torch's sync debug mode: any host sync raises


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_cuda_bf16_channels_last_step_never_syncs(images, tmp_path, compiled):
    world = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cuda", 0))
    losses = steps_without_host_reads(world, images, tmp_path, cuda_sync_is_an_error,
                                      "runtime.precision=bf16", "runtime.channels_last=true",
                                      f"runtime.compile={str(compiled).lower()}")
    assert torch.isfinite(losses).all()
