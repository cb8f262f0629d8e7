"""Several "nodes" on one machine (issue 21): the data each process reads is chosen by its GLOBAL
rank, so nodes x processes read every sample exactly once per epoch (with the local rank, every
node would read node 0's shard); and end to end, two torchrun "nodes" (--nnodes=2, c10d
rendezvous) train the same weights as one node with two processes, stop with one line within
60 s when the other node dies, and resume from the last checkpoint when both are started again.

Each test image is one flat colour, so a crop's mean colour names the image it came from
(`test_pipelines.identify`).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
from PIL import Image

from fastbt import config, dist
from fastbt.errors import RunStopped
from fastbt.train import run
from pipelines.convert import convert
from pipelines.convert.options import Options
from pipelines.sample_images import identify, make_image_folder

REPO = Path(__file__).resolve().parents[1]
N, GLOBAL_BATCH = 32, 16  # 2 or 4 processes: 2 full batches each, every image used
TINY = ["aug.size=32", f"train.batch_size={GLOBAL_BATCH}", "data.workers=1", "model.projector=[32,32]",
        "logging.progress_bar=false", "logging.every_steps=1"]
SLOW_BACKENDS = [pytest.param(b, marks=pytest.mark.slow) for b in ("ffcv", "dali")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """({backend: path}, the source images' mean colours): one folder and its two conversions,
    "on shared storage" (every node reads the same path)."""
    root = tmp_path_factory.mktemp("multinode")
    files = make_image_folder(root / "src", classes=("a", "b"), per_class=N // 2, size=(48, 40))
    colours = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float64).mean((0, 1)) for f in files])
    return {"torchvision": str(root / "src"), "root": root}, colours


def converted(dataset, backend: str) -> str:
    paths = dataset[0]
    if backend not in paths:
        convert(Path(paths["torchvision"]), paths["root"] / backend, Options(backend, shard_size=10),
                workers=1, progress=False)
        paths[backend] = str(paths["root"] / backend)
    return paths[backend]


def torchrun_env(node: int, local: int, nnodes: int, nproc: int) -> dict:
    """What torchrun sets in process `local` of node `node`."""
    return {"RANK": str(node * nproc + local), "LOCAL_RANK": str(local), "GROUP_RANK": str(node),
            "WORLD_SIZE": str(nnodes * nproc), "LOCAL_WORLD_SIZE": str(nproc)}


def images_read(cfg, nnodes: int, nproc: int, colours, monkeypatch) -> list:
    """The source images every process of the job reads in epoch 0, through the loader the CLI
    builds (`run.build_train_loader`) with the world the CLI reads from the environment."""
    seen = []
    for node in range(nnodes):
        for local in range(nproc):
            for key, value in torchrun_env(node, local, nnodes, nproc).items():
                monkeypatch.setenv(key, value)
            crops = run.build_train_loader(cfg, dist.from_env("cpu")).crops
            crops.set_epoch(0)
            seen += [i for view1, _, _ in crops for i in identify(view1, colours)]
    return seen


@pytest.mark.parametrize("backend", ["torchvision", *SLOW_BACKENDS])
@pytest.mark.parametrize("nnodes, nproc", [(2, 1), (2, 2), (4, 1)])
def test_every_image_is_read_once_per_epoch_across_nodes(backend, nnodes, nproc, dataset, monkeypatch):
    workers = 0 if backend == "torchvision" else 1  # no DataLoader process to start: fast
    cfg = config.load(REPO / "configs" / "tiny_cpu.yaml", [*TINY, f"data.workers={workers}",
                      f"data.backend={backend}", f"data.path={converted(dataset, backend)}"])
    seen = images_read(cfg, nnodes, nproc, dataset[1], monkeypatch)
    assert sorted(seen) == list(range(N))


GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
              "[127.0.0.1]:19876: Connection reset by peer. This is typically caused by a remote worker "
              "hanging or bugs in the application. Check the logs")  # what gloo raised when a node died


def test_a_collective_failing_for_a_lost_peer_stops_the_run_in_one_line():
    two = dist.World(rank=1, local_rank=0, size=2, device=torch.device("cpu"))
    with pytest.raises(RunStopped) as stopped, dist.lost_peers_stop_the_run(two):
        raise RuntimeError(GLOO_RESET)
    message = str(stopped.value)
    assert "\n" not in message and "Connection reset by peer" in message and "pair.cc" not in message
    assert message.startswith("rank 1 lost contact") and "resume from the last checkpoint" in message
    for world, error in [(two, RuntimeError("CUDA out of memory")),  # not a lost peer
                         (dist.World(0, 0, 1, torch.device("cpu")), RuntimeError(GLOO_RESET))]:  # no peers
        with pytest.raises(RuntimeError) as raised, dist.lost_peers_stop_the_run(world):
            raise error
        assert raised.value is error


# End to end: torchrun "nodes" on this machine, all joined through one c10d rendezvous store that
# this test process serves on a port the OS picked and holds (no other process can take it);
# is_host=false makes every torchrun agent a client of it, as agents on nodes other than the
# endpoint's host are.

EPOCHS = 8  # 2 steps an epoch: long enough to kill a node mid-run
E2E = [*TINY, f"train.epochs={EPOCHS}", "train.checkpoint_every_steps=1"]


class Job:
    """One torchrun per node, each in its own session (so a node can be killed whole)."""

    def __init__(self, nnodes: int, nproc: int, overrides: list, logs: Path):
        self.store = torch_dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.logs = [logs / f"node{node}.log" for node in range(nnodes)]
        self.nodes = [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node_rank={node}",
             f"--nproc_per_node={nproc}", "--rdzv-backend=c10d", "--rdzv-conf=is_host=false",
             f"--rdzv-endpoint=127.0.0.1:{self.store.port}", "--rdzv-id=multinode", "--max-restarts=0",
             "-m", "fastbt.cli", "pretrain", str(REPO / "configs" / "tiny_cpu.yaml"), *overrides],
            cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
            for node, log in enumerate(self.logs)]

    def wait(self, timeout: float = 900) -> list:
        codes = [node.wait(timeout) for node in self.nodes]
        return codes

    def output(self, node: int) -> str:
        return self.logs[node].read_text()

    def signal_node(self, node: int, sig: int) -> None:
        """`sig` to every process of `node`: torchrun starts its workers in their own session."""
        for pid in reversed(descendants(self.nodes[node].pid)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def descendants(pid: int) -> list:
    """`pid` and every process below it."""
    try:
        kids = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        kids = []
    return [pid] + [p for kid in kids for p in descendants(kid)]


def final_weights(run_dir: Path) -> dict:
    last = max(run_dir.glob("ckpt_*.pt"))
    return torch.load(last, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst == 0, f"largest difference {worst}"


def checkpointed_steps(run_dir: Path) -> list:
    return sorted(int(p.stem.split("_")[1]) for p in run_dir.glob("ckpt_*.pt"))


@pytest.mark.slow  # ~4 torchrun launches of ~1-3 minutes each on the shared 2-core machine
@pytest.mark.dist
@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_two_nodes_match_one_node_die_in_one_line_and_resume(backend, dataset, tmp_path):
    data = [f"data.backend={backend}", f"data.path={converted(dataset, backend)}"]
    one_node = Job(1, 2, [*E2E, *data, f"train.out_dir={tmp_path / 'one'}"], tmp_path / "logs_one")
    assert one_node.wait() == [0], one_node.output(0)
    two_nodes = Job(2, 1, [*E2E, *data, f"train.out_dir={tmp_path / 'two'}"], tmp_path / "logs_two")
    assert two_nodes.wait() == [0, 0], two_nodes.output(0) + two_nodes.output(1)
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))

    killed = tmp_path / "killed"
    job = Job(2, 1, [*E2E, *data, f"train.out_dir={killed}"], tmp_path / "logs_killed")
    while not [s for s in checkpointed_steps(killed) if s >= 2]:  # mid-run, a checkpoint written
        assert job.nodes[0].poll() is None, job.output(0)
        time.sleep(0.2)
    job.signal_node(1, signal.SIGKILL)  # node 1 dies: its agent and its worker
    died = time.monotonic()
    code = job.nodes[0].wait(120)
    took = time.monotonic() - died
    print(f"node 0 exited {code} {took:.1f} s after node 1 was killed")
    assert code != 0 and took < 60, job.output(0)
    ours = [line for line in job.output(0).splitlines() if line.startswith("fastbt pretrain:")]
    assert len(ours) == 1 and "rerun" in ours[0], job.output(0)
    assert "Traceback" not in job.output(0).split("fastbt pretrain:")[0], job.output(0)
    last = checkpointed_steps(killed)[-1]
    assert last < 2 * EPOCHS

    rerun = Job(2, 1, [*E2E, *data, f"train.out_dir={killed}"], tmp_path / "logs_rerun")
    assert rerun.wait() == [0, 0], rerun.output(0) + rerun.output(1)
    assert f"resumed from {killed / f'ckpt_{last:09d}.pt'}" in rerun.output(0)
    assert_same_weights(final_weights(tmp_path / "two"), final_weights(killed))  # an exact replay
